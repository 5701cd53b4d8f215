//! The vision gateway: MQTT frames -> durable log -> ONNX annotations ->
//! Kafka.
//!
//! The crate is laid out by stage (see `DESIGN.md` at the workspace root):
//!
//! - [`config`]: the typed, validated configuration;
//! - [`log`]: the durable on-disk log, the only shared state;
//! - [`intake`]: MQTT frames into the log, acknowledged after durability;
//! - [`replay`]: publishes camera fixtures to a broker (`replay`);
//! - [`telemetry`]: rate-limited logging;
//! - [`bench`]: measurements printed by `vision-gateway bench`;
//! - [`demo`]: the self-contained demo.
//!
//! Detect (inference), sampling, replicate (Kafka) and metrics land with
//! their issues; until then [`run`] runs intake only and says so.

pub mod bench;
pub mod config;
pub mod demo;
pub mod intake;
pub mod log;
pub mod replay;
pub mod telemetry;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Errors that stop the service.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The durable log failed.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// The intake stage failed.
    #[error(transparent)]
    Intake(#[from] intake::IntakeError),
    /// The telemetry endpoint cannot start.
    #[error("telemetry: {0}")]
    Telemetry(String),
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

/// Runs the service until `shutdown` is cancelled: opens the log, runs the
/// stages, and on shutdown stops intake first, then flushes the log.
///
/// # Errors
/// A [`GatewayError`] when a stage fails for good.
pub async fn run(config: config::Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let log = open_log(&config)?;
    let s = log.stats()?;
    tracing::info!(
        path = %log.path().display(),
        gateway_id = log.gateway_id(),
        next_seq = s.next_seq,
        backlog = s.cursors.get(log::cursors::DETECT).map_or(0, |c| c.backlog_records),
        "log opened"
    );
    tracing::warn!(
        "this build has no detect or replicate stage yet: frames are stored and stay in the log \
         until its budget is reached"
    );
    let intake = intake::Intake::new(config.mqtt.clone(), log.clone());
    let telemetry = telemetry::http::Telemetry { log: log.clone(), intake: intake.stats() };
    let http_stop = CancellationToken::new();
    let listener = telemetry::http::bind(config.telemetry.listen)
        .await
        .map_err(|e| GatewayError::Telemetry(format!("cannot listen on {}: {e}", config.telemetry.listen)))?;
    let http = tokio::spawn(telemetry::http::serve(listener, telemetry, http_stop.clone()));
    let result = intake.run(shutdown.clone()).await;
    log.flush().await?;
    http_stop.cancel();
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, listen = %config.telemetry.listen, "telemetry endpoint failed"),
        Err(e) => tracing::error!(error = %e, "telemetry task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("log flushed; stopped");
    result.map_err(GatewayError::from)
}
