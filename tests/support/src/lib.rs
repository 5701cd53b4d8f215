//! What the tests, the demo and the benches share to drive the gateway
//! from outside, as a site would: camera fixtures published over MQTT
//! ([`replay`]), synthetic frames ([`frames`]) and the gateway's config
//! file ([`config`]).
//!
//! Not a dependency of the gateway's library: only its binary (for the
//! `replay`, `demo` and `bench` subcommands) and the tests use it. It
//! imports nothing of the gateway, so the layering stays one way.

pub mod config;
pub mod frames;
pub mod replay;
