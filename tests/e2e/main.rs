//! The end-to-end suite, one test binary: the real `vision-gateway` binary
//! against real brokers (Debian's mosquitto, tansu for Kafka), real file
//! systems (LazyFS for power cuts, tmpfs for full disks) and the bundled
//! model. One binary links the harness once; its tests run side by side.
//!
//! - [`intake`]: MQTT in, durable before the PUBACK, quarantine, full disk;
//! - [`detect`]: annotations, the status page, a model that lags;
//! - [`labels`]: codes on the label and the print-against-code check;
//! - [`replicate`]: Kafka out, in order, outages, chunked images;
//! - [`service`]: systemd readiness and watchdog, stop, upgrade, full disk;
//! - [`claim`]: the claim check to a real S3 store (SeaweedFS), with its faults;
//! - [`security`]: Kafka over TLS, mTLS and SASL/SCRAM (stunnel, tansu);
//! - [`power`]: power cuts under load (LazyFS);
//! - [`chaos`]: the seeded chaos run and its checker.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod harness;

mod chaos;
mod claim;
mod detect;
mod intake;
mod labels;
mod power;
mod replicate;
mod security;
mod service;
