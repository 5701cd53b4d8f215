//! The vision gateway: MQTT frames -> durable log -> ONNX annotations ->
//! Kafka.
//!
//! The crate is laid out by stage (see `DESIGN.md` at the workspace root):
//!
//! - [`config`]: the typed, validated configuration;
//! - [`log`]: the durable on-disk log, the only shared state;
//! - [`records`]: the records stages hand to each other and send upstream
//!   (frame, annotation, dead letter, gap) and the Kafka header names;
//! - [`intake`]: MQTT frames into the log, acknowledged after durability;
//! - [`detect`]: frames through the model on worker threads, annotations
//!   into the log;
//! - [`replay`]: publishes camera fixtures to a broker (`replay`);
//! - [`telemetry`]: metrics, health, the status page, systemd notify and
//!   watchdog, rate-limited logging;
//! - [`bench`]: measurements printed by `vision-gateway bench`;
//! - [`demo`]: the self-contained demo.
//!
//! - [`stage`]: the contract every stage keeps (`run(self, stop)`);
//! - [`sample`]: which images go upstream;
//! - [`replicate`]: annotations, images, dead letters and gaps to Kafka.

pub mod config;
pub mod detect;
pub mod faults;
pub mod intake;
pub mod log;
pub mod records;
pub mod replicate;
pub mod sample;
pub mod stage;
pub mod supervisor;
pub mod telemetry;
pub mod util;

pub use supervisor::{open_log, run, GatewayError};
