//! The vision gateway: MQTT frames -> durable log -> ONNX annotations ->
//! Kafka. The binary (`src/bin/vision-gateway/`) parses the command line
//! and calls [`run`]; the demo and the benchmarks live there too, not here.
//!
//! # Layers
//!
//! Lowest first. A module imports only from the layers below it (and from
//! earlier entries of its own layer); `gateway/tests/integration/layers.rs` checks it,
//! and that no import cycle joins two files, on every test run.
//!
//! 0. [`util`] (rate limiter, units, clock) and [`records`] (the
//!    vocabulary: frame, annotation, dead letter, gap, the log's areas,
//!    Kafka header names and default topics): they import nothing of the
//!    crate.
//! 1. [`log`]: the durable on-disk log, the only shared state.
//! 2. [`config`]: the typed, validated configuration, one file per section.
//! 3. [`sample`] (which images go upstream), [`faults`] (test-only fault
//!    injection), [`stage`] (the contract every stage keeps).
//! 4. The stages, which never import each other: [`intake`] (MQTT frames
//!    into the log, acknowledged after durability), [`detect`] (frames
//!    through the model on worker threads, annotations into the log),
//!    [`replicate`] (annotations, images, dead letters and gaps to Kafka).
//! 5. [`telemetry`]: metrics, health, the status page, systemd notify and
//!    watchdog.
//! 6. [`supervisor`]: runs the stages on one open log, stops them in order,
//!    rides out full disks.

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
