//! The vision gateway: MQTT frames -> durable log -> ONNX annotations ->
//! Kafka.
//!
//! The crate is laid out by stage (see `DESIGN.md` at the workspace root):
//!
//! - [`config`]: the typed, validated configuration;
//! - [`log`]: the durable on-disk log, the only shared state;
//! - [`bench`]: measurements printed by `vision-gateway bench`;
//! - [`demo`]: the self-contained demo.
//!
//! Intake (MQTT), detect (inference), sampling, replicate (Kafka) and
//! telemetry land with their issues; [`run`] says so until then.

pub mod bench;
pub mod config;
pub mod demo;
pub mod log;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Errors that stop the service.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The durable log failed.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// A part of the pipeline is not in this build.
    #[error("{0} is not available in this build yet")]
    NotAvailable(&'static str),
}

/// Opens the log described by `config`.
///
/// # Errors
/// [`log::LogError`] if it cannot be opened; a log held by a running gateway
/// is reported as such.
pub fn open_log(config: &config::Config) -> Result<log::DurableLog, log::LogError> {
    let mut o = log::LogOptions::new(&config.log.path, &config.gateway_id);
    o.max_bytes = config.log.max_bytes;
    o.when_full = config.log.when_full;
    o.cache_bytes = config.log.cache_bytes;
    log::DurableLog::open(o)
}

/// Runs the service until `shutdown` is cancelled.
///
/// # Errors
/// A [`GatewayError`] when a stage fails for good. In this build the log is
/// opened (so a bad `log.path` is reported) and then the missing MQTT intake
/// is reported.
pub async fn run(config: config::Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let log = open_log(&config)?;
    tracing::info!(path = %log.path().display(), gateway_id = log.gateway_id(), "log opened");
    log.flush().await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    Err(GatewayError::NotAvailable("the MQTT intake stage (`run` needs intake, detect and replicate)"))
}
