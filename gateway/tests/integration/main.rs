//! The gateway crate's integration tests, one test binary (one link of the
//! library, tract and librdkafka instead of six):
//!
//! - [`cli`]: the `vision-gateway` binary as a user runs it;
//! - [`layers`]: the architecture (no import cycle, layers one way);
//! - [`log_crash`], [`log_model`]: the durable log under kill -9 and against
//!   an in-memory model;
//! - [`replicate_mock`]: the replicate stage on librdkafka's mock cluster;
//! - [`store_s3`]: the claim check's S3 client on a real store (SeaweedFS);
//! - [`systemd_unit`]: the shipped unit (exposure, verify, MDWE).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod layers;
mod log_crash;
mod log_model;
mod replicate_mock;
mod store_s3;
mod systemd_unit;
