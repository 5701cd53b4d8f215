//! The supervisor: runs the pipeline on one open log, stops its stages in
//! order (intake, then detect, then replicate, then the log is flushed),
//! and rides out full disks by reopening the log in the same process while
//! the telemetry endpoint stays up.

use crate::{config, detect, intake, log, replicate, stage, telemetry};
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
    /// The detect stage failed.
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
    /// The replicate stage failed.
    #[error(transparent)]
    Replicate(#[from] replicate::ReplicateError),
    /// The telemetry endpoint cannot start.
    #[error("telemetry: {0}")]
    Telemetry(String),
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
    o.reserve_bytes = config.log.reserve_bytes;
    log::DurableLog::open(o)
}

impl GatewayError {
    /// True when the log's file system had no room (see `log/space.rs`):
    /// the supervisor waits and reopens the log instead of exiting.
    pub fn is_no_space(&self) -> bool {
        match self {
            GatewayError::Log(e)
            | GatewayError::Intake(intake::IntakeError::Log(e))
            | GatewayError::Detect(detect::DetectError::Log(e))
            | GatewayError::Replicate(replicate::ReplicateError::Log(e)) => e.is_no_space(),
            _ => false,
        }
    }
}

/// Runs the service until `shutdown` is cancelled: binds the telemetry
/// endpoint, then opens the log and runs the stages; on shutdown intake
/// stops first, then the log is flushed.
///
/// A full disk is a state, not an exit: when the log cannot be opened or
/// written for lack of space (ENOSPC, EDQUOT, EIO on a write), the
/// pipeline stops in order, the telemetry endpoint stays up and says why
/// (`/healthz` answers, `/readyz` gives `disk full at <path>: N bytes
/// free`), and the log is reopened with backoff, in the same process. Once
/// open, the stages that free space (replicate, retention) run while intake
/// waits for the free-space floor (`log.reserve`).
///
/// # Errors
/// A [`GatewayError`] when a stage fails for good.
pub async fn run(config: config::Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let endpoint = telemetry::http::Endpoint::default();
    let http_stop = CancellationToken::new();
    let listener = telemetry::http::bind(config.telemetry.listen)
        .await
        .map_err(|e| GatewayError::Telemetry(format!("cannot listen on {}: {e}", config.telemetry.listen)))?;
    let http = tokio::spawn(telemetry::http::serve(listener, endpoint.clone(), http_stop.clone()));
    let result = ride_out_full_disks(&config, &endpoint, &shutdown).await;
    http_stop.cancel();
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, listen = %config.telemetry.listen, "telemetry endpoint failed"),
        Err(e) => tracing::error!(error = %e, "telemetry task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Runs the pipeline, and again after every stop for lack of disk space.
async fn ride_out_full_disks(
    config: &config::Config,
    endpoint: &telemetry::http::Endpoint,
    shutdown: &CancellationToken,
) -> Result<(), GatewayError> {
    let mut failures: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        let outcome = match open_log(config) {
            Ok(log) => {
                endpoint.set_down(None);
                pipeline(config, log, endpoint, shutdown).await
            }
            Err(e) => Err(GatewayError::Log(e)),
        };
        endpoint.set(None);
        let e = match outcome {
            Err(e) if e.is_no_space() && !shutdown.is_cancelled() => e,
            other => return other,
        };
        failures = if started.elapsed() > std::time::Duration::from_secs(60) { 1 } else { failures.saturating_add(1) };
        let wait = std::time::Duration::from_secs(1 << failures.saturating_sub(1).min(5));
        let free = log::space::free_bytes(&config.log.path).unwrap_or(0);
        let why = format!("disk full at {}: {free} bytes free", config.log.path.display());
        tracing::warn!(error = %e, retry_in = ?wait, "{why}: the pipeline stopped; the log is opened again (nothing acknowledged is lost, the broker keeps the rest)");
        endpoint.set_down(Some(why.clone()));
        telemetry::systemd::waiting(&why);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One run of the pipeline on an open log, until `shutdown` or a stage
/// fails for good.
async fn pipeline(
    config: &config::Config,
    log: log::DurableLog,
    endpoint: &telemetry::http::Endpoint,
    shutdown: &CancellationToken,
) -> Result<(), GatewayError> {
    let config = config.clone();
    let s = log.stats()?;
    tracing::info!(
        path = %log.path().display(),
        gateway_id = log.gateway_id(),
        next_seq = s.next_seq,
        backlog = s.cursors.get(log::Cursor::Detect.name()).map_or(0, |c| c.backlog_records),
        "log opened"
    );
    let detect = start_detect(&config, &log).await?;
    let producer = replicate::producer(&config.replicate)?;
    let faults = crate::faults::Faults::from_env();
    let replicate = replicate::Replicate::new(log.clone(), config.replicate.clone(), producer).with_faults(faults);
    let intake = intake::Intake::new(config.mqtt.clone(), log.clone());
    let telemetry = telemetry::status::Telemetry {
        log: log.clone(),
        intake: intake.stats(),
        detect: detect.stats(),
        replicate: replicate.stats(),
        started: std::time::Instant::now(),
    };
    let supervise_stop = shutdown.child_token();
    let supervise = tokio::spawn(telemetry::systemd::supervise(telemetry.clone(), supervise_stop.clone()));
    endpoint.set(Some(telemetry));

    // Shutdown order: intake stops reading first, then detect finishes the
    // frames in flight, then replicate gets its batch acknowledged (or
    // keeps it on disk), then the log is flushed.
    let replicate_stop = CancellationToken::new();
    let mut replicate_task = stage::spawn(replicate, replicate_stop.clone());
    let intake_stop = shutdown.child_token();
    let detect_stop = CancellationToken::new();
    let mut detect_task = stage::spawn(detect, detect_stop.clone());
    let mut intake_task = stage::spawn(intake, intake_stop.clone());
    // Supervision: whichever stage ends first (shutdown, or a failure for
    // good), the others are stopped in order: intake, then detect finishes
    // its batch, then replicate.
    let mut replicate_done = None;
    let (intake_result, detect_result) = tokio::select! {
        r = &mut intake_task => {
            detect_stop.cancel();
            (stage::joined::<intake::Intake>(r), stage::joined::<detect::DetectStage>(detect_task.await))
        }
        r = &mut detect_task => {
            // Detect failed on its own: stop taking frames in.
            intake_stop.cancel();
            let d = stage::joined::<detect::DetectStage>(r);
            (stage::joined::<intake::Intake>(intake_task.await), d)
        }
        r = &mut replicate_task => {
            let r = stage::joined::<replicate::Replicate>(r);
            if let Err(e) = &r {
                tracing::error!(error = %e, "the replicate stage failed for good; stopping intake and detect");
            }
            replicate_done = Some(r.and(Err(replicate::ReplicateError::Task("the replicate stage stopped".into()))));
            intake_stop.cancel();
            let i = stage::joined::<intake::Intake>(intake_task.await);
            detect_stop.cancel();
            (i, stage::joined::<detect::DetectStage>(detect_task.await))
        }
    };
    supervise_stop.cancel();
    let _ = supervise.await;
    replicate_stop.cancel();
    let replicate_result = match replicate_done {
        Some(r) => r,
        None => stage::joined::<replicate::Replicate>(replicate_task.await),
    };
    let result = intake_result
        .map_err(GatewayError::from)
        .and(detect_result.map_err(GatewayError::from))
        .and(replicate_result.map_err(GatewayError::from));
    endpoint.set(None);
    let flushed = log.flush().await;
    if flushed.is_ok() {
        tracing::info!("log flushed; stopped");
    }
    result.and(flushed.map_err(GatewayError::from))
}

/// The detect stage `config` asks for: the model loaded on its worker
/// threads, or the stand-in that holds the frames.
async fn start_detect(config: &config::Config, log: &log::DurableLog) -> Result<detect::DetectStage, GatewayError> {
    let opts = detect::DetectOptions {
        enabled: config.detect.enabled,
        model: config.detect.model.clone(),
        library: config.detect.onnxruntime.clone(),
        workers: config.detect.workers as usize,
        intra_threads: config.detect.intra_threads as usize,
        queue: config.detect.queue as usize,
        max_pixels: config.mqtt.max_pixels,
        max_frame_memory: config.detect.max_frame_memory,
        ocr_side: config.detect.ocr_side,
        camera_sides: config.detect.camera_sides.clone(),
        backend: config.detect.backend,
        text: config.detect.text,
        codes: config.detect.codes.clone(),
        fields: config.fields.clone(),
        sample: config.sample.clone(),
        faults: crate::faults::Faults::from_env(),
    };
    Ok(if !config.detect.enabled && config.detect.hold_when_disabled {
        tracing::warn!("detect.enabled = false, when_disabled = \"hold\": frames stay in the log unannotated");
        detect::DetectStage::Hold
    } else {
        if !config.detect.enabled {
            tracing::warn!(
                "detect.enabled = false: frames are forwarded upstream without annotations (model \"none\"), images sampled as configured"
            );
        }
        let l = log.clone();
        let o = opts.clone();
        let d = tokio::task::spawn_blocking(move || detect::Detect::start(l, &o))
            .await
            .map_err(|e| detect::DetectError::Worker(e.to_string()))??;
        if config.detect.enabled {
            tracing::info!(model = %config.detect.model.display(), workers = opts.workers, "model loaded");
        }
        detect::DetectStage::Model(Box::new(d))
    })
}
