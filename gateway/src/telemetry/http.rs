//! The local HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`,
//! the status page `/` for field engineers (each camera's newest frame with
//! its boxes and text, rates, backlog, uplink state; refreshes itself),
//! `/cameras/{camera}/latest` (that frame's bytes) and `/api/status` (the
//! page's figures as JSON).
//!
//! Promise: every figure is read at request time from the stages' own
//! counters and the log's accounting (no scans, no locks held across
//! awaits), so scraping never slows the pipeline.

use super::page::render_page;
use super::status::{not_ready, status, Telemetry};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// Binds the endpoint's address (at start, so a taken port is reported
/// before anything else runs).
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// What the endpoint serves from: the running pipeline's [`Telemetry`], or,
/// while there is none (the log cannot be opened for lack of disk space,
/// see `crate::run`), why not. The endpoint outlives pipeline restarts, so
/// `/healthz` answers and `/readyz` says why for as long as the process
/// runs.
#[derive(Clone, Default)]
pub struct Endpoint {
    current: Arc<RwLock<Option<Telemetry>>>,
    down: Arc<RwLock<Option<String>>>,
}

impl Endpoint {
    /// The pipeline now serving figures (`None`: none runs).
    pub fn set(&self, t: Option<Telemetry>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Why no pipeline runs (`None`: it runs, or is starting).
    pub fn set_down(&self, why: Option<String>) {
        *self.down.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn get(&self) -> Option<Telemetry> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn why_down(&self) -> String {
        self.down.read().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "starting".into())
    }
}

/// Serves until `stop` is cancelled.
///
/// # Errors
/// If serving fails.
pub async fn serve(listener: tokio::net::TcpListener, t: Endpoint, stop: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(status_page))
        .route("/api/status", get(status_json))
        .route("/cameras/{camera}/latest", get(latest_image))
        .with_state(t);
    tracing::info!(address = %listener.local_addr()?, "telemetry listening (/ status page, /metrics, /healthz, /readyz)");
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

async fn readyz(State(e): State<Endpoint>) -> impl IntoResponse {
    let missing = e.get().map_or_else(|| vec![e.why_down()], |t| not_ready(&t));
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", missing.join(", ")))
    }
}

async fn metrics(State(e): State<Endpoint>) -> impl IntoResponse {
    let text = match e.get() {
        Some(t) => super::metrics::render(&t),
        None => super::metrics::render_down(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn status_json(State(e): State<Endpoint>) -> impl IntoResponse {
    // Serialising plain data cannot fail.
    let body = match e.get() {
        Some(t) => serde_json::to_string(&status(&t)).unwrap_or_default(),
        None => serde_json::json!({ "not_ready": [e.why_down()] }).to_string(),
    };
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn latest_image(State(e): State<Endpoint>, Path(camera): Path<String>) -> axum::response::Response {
    let Some(t) = e.get() else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    match t.detect.as_ref().and_then(|d| d.latest.image(&camera)) {
        Some((ct, bytes)) => {
            ([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, "no-store".to_owned())], bytes.as_ref().clone())
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no annotated frame of this camera yet\n").into_response(),
    }
}

/// `/?refresh=0` turns the page's self-refresh off (for screenshots and
/// printing); `refresh=N` sets it to N seconds.
async fn status_page(State(e): State<Endpoint>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let refresh = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("refresh="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    match e.get() {
        Some(t) => axum::response::Html(render_page(&status(&t), refresh)),
        None => axum::response::Html(crate::telemetry::page::page(
            "vision-gateway",
            "the pipeline is not running",
            &format!("<p class=\"warn\">Not ready: {}</p>", crate::telemetry::page::esc(&e.why_down())),
            Some(refresh.max(1)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectStats;
    use crate::intake::IntakeStats;
    use crate::log::DurableLog;
    use crate::replicate::ReplicateStats;

    #[test]
    fn every_documented_metric_is_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let log = DurableLog::open(crate::log::LogOptions::new(dir.path(), "t")).unwrap();
        let t = Telemetry {
            log,
            intake: Arc::new(IntakeStats::default()),
            detect: Some(Arc::new(DetectStats::default())),
            replicate: Arc::new(ReplicateStats::default()),
            started: std::time::Instant::now(),
        };
        if let Some(d) = &t.detect {
            d.fields.lock().unwrap().insert(
                "lot".into(),
                crate::detect::FieldCounts { read: 3, uncertain: 1, missing: 2, ..Default::default() },
            );
        }
        let text = super::super::metrics::render(&t);
        for name in [
            "vision_gateway_frames_received_total",
            "vision_gateway_frames_stored_total",
            "vision_gateway_frames_acked_total",
            "vision_gateway_intake_acks_pending",
            "vision_gateway_intake_acks_discarded_total",
            "vision_gateway_frames_duplicate_total",
            "vision_gateway_frames_quarantined_total{reason=\"oversize\"}",
            "vision_gateway_mqtt_connected",
            "vision_gateway_mqtt_subscribed",
            "vision_gateway_disk_full",
            "vision_gateway_disk_free_bytes",
            "vision_gateway_pipeline_up",
            "vision_gateway_intake_blocked",
            "vision_gateway_frames_annotated_total",
            "vision_gateway_annotation_errors_total",
            "vision_gateway_images_sampled_total",
            "vision_gateway_detect_latency_seconds_bucket{le=\"+Inf\"}",
            "vision_gateway_fields_total{field=\"lot\",outcome=\"missing\"}",
            "vision_gateway_replicated_total{kind=\"image\"}",
            "vision_gateway_replicate_retries_total",
            "vision_gateway_replicate_backfilling",
            "vision_gateway_replicate_backfilled_total",
            "vision_gateway_kafka_connected",
            "vision_gateway_kafka_auth_failures_total{kind=\"sasl\"}",
            "vision_gateway_store_failures_total{kind=\"conflict\"}",
            "vision_gateway_store_references_total",
            "vision_gateway_log_records{area=\"frames\"}",
            "vision_gateway_log_used_bytes",
            "vision_gateway_log_gaps_total",
            "vision_gateway_dropped_records_total{reason=\"frame_dropped_for_space\"}",
            "vision_gateway_backlog_records{stage=\"detect\"}",
            "vision_gateway_backlog_bytes{stage=\"replicate\"}",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing");
        }
        // A declared field name is a label value: quoted, escaped.
        t.detect
            .as_ref()
            .unwrap()
            .fields
            .lock()
            .unwrap()
            .insert("lot \"A\"\\2".into(), crate::detect::FieldCounts { read: 1, ..Default::default() });
        let text = super::super::metrics::render(&t);
        assert!(
            text.contains("vision_gateway_fields_total{field=\"lot \\\"A\\\"\\\\2\",outcome=\"read\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE vision_gateway_fields_total counter\n"));
        assert!(super::super::metrics::render_down().starts_with("# HELP vision_gateway_pipeline_up "));
    }
}
