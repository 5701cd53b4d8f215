//! What the tests, the demo and the benches share to drive the gateway
//! from outside, as a site would.
//!
//! - processes: [`mosquitto`], [`tansu`] (Kafka protocol), [`seaweedfs`]
//!   (S3), [`lazyfs`] (power
//!   cuts), [`tmpfs`] (full disks), [`gateway`] (the `vision-gateway run`
//!   process, ready on `READY=1`), [`browser`] (status page screenshots),
//!   with [`net`] and [`process`] under them;
//! - inputs: the gateway's config file ([`config`]), camera fixtures
//!   published over MQTT ([`replay`]), camera folders made on the fly
//!   ([`cameras`]) and synthetic frames ([`frames`]).
//!
//! Not a dependency of the gateway's library: only its binary (for the
//! `replay`, `demo` and `bench` subcommands) and the tests use it. It
//! imports nothing of the gateway, so the layering stays one way.
//!
//! Process handles kill their process on drop. What the demo and the
//! benches use returns errors; what only tests use panics with the reason,
//! as an assertion does.

pub mod browser;
pub mod cameras;
pub mod config;
pub mod frames;
pub mod gateway;
pub mod lazyfs;
pub mod mosquitto;
pub mod net;
pub mod process;
pub mod replay;
pub mod seaweedfs;
pub mod stunnel;
pub mod tansu;
pub mod tls;
pub mod tmpfs;
