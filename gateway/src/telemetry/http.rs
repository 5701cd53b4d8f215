//! The local HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`.
//!
//! Promise: every figure is read at request time from the stages' own
//! counters and the log's accounting (no scans, no locks held across
//! awaits), so scraping never slows the pipeline.

use crate::detect::{DetectStats, LATENCY_BUCKETS_MS};
use crate::intake::validate::Reason;
use crate::intake::IntakeStats;
use crate::log::DurableLog;
use crate::replicate::ReplicateStats;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the endpoint reports on.
#[derive(Clone)]
pub struct Telemetry {
    /// The log.
    pub log: DurableLog,
    /// Intake counters.
    pub intake: Arc<IntakeStats>,
    /// Detect counters (`None` when `detect.enabled = false`).
    pub detect: Option<Arc<DetectStats>>,
    /// Replicate counters.
    pub replicate: Arc<ReplicateStats>,
}

/// Binds the endpoint's address (at start, so a taken port is reported
/// before anything else runs).
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves until `stop` is cancelled.
///
/// # Errors
/// If serving fails.
pub async fn serve(listener: tokio::net::TcpListener, t: Telemetry, stop: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(t);
    tracing::info!(address = %listener.local_addr()?, "telemetry listening (/metrics, /healthz, /readyz)");
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    let mut missing = Vec::new();
    if t.detect.as_ref().is_some_and(|d| !d.model_loaded.load(Ordering::Relaxed)) {
        missing.push("model not loaded");
    }
    if !t.intake.subscribed.load(Ordering::Relaxed) {
        missing.push("mqtt not subscribed");
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", missing.join(", ")))
    }
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&t))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: u64) -> Vec<(String, u64)> {
    vec![(String::new(), v)]
}

/// The Prometheus text exposition of every figure.
pub fn render(t: &Telemetry) -> String {
    let i = &t.intake;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let lb = |a: &std::sync::atomic::AtomicBool| u64::from(a.load(Ordering::Relaxed));
    let mut o = String::new();
    metric(
        &mut o,
        "vision_gateway_frames_received_total",
        "counter",
        "MQTT publishes received (redeliveries included).",
        &one(ld(&i.received)),
    );
    metric(&mut o, "vision_gateway_frames_stored_total", "counter", "Frames stored in the log.", &one(ld(&i.stored)));
    metric(
        &mut o,
        "vision_gateway_frames_stored_bytes_total",
        "counter",
        "Payload bytes of stored frames.",
        &one(ld(&i.stored_bytes)),
    );
    metric(
        &mut o,
        "vision_gateway_frames_acked_total",
        "counter",
        "PUBACKs sent after the frame was durable.",
        &one(ld(&i.acked)),
    );
    let q: Vec<(String, u64)> =
        Reason::ALL.iter().map(|r| (format!("{{reason=\"{}\"}}", r.name()), ld(&i.quarantined[*r as usize]))).collect();
    metric(&mut o, "vision_gateway_frames_quarantined_total", "counter", "Frames quarantined, by reason.", &q);
    metric(
        &mut o,
        "vision_gateway_mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        &one(lb(&i.connected)),
    );
    metric(
        &mut o,
        "vision_gateway_mqtt_subscribed",
        "gauge",
        "1 while the subscriptions are acknowledged.",
        &one(lb(&i.subscribed)),
    );
    metric(
        &mut o,
        "vision_gateway_mqtt_connects_total",
        "counter",
        "Successful MQTT connections.",
        &one(ld(&i.connects)),
    );
    metric(
        &mut o,
        "vision_gateway_intake_blocked",
        "gauge",
        "1 while intake waits for log space.",
        &one(lb(&i.blocked)),
    );
    let none = DetectStats::default();
    let d = t.detect.as_deref().unwrap_or(&none);
    metric(
        &mut o,
        "vision_gateway_frames_annotated_total",
        "counter",
        "Frames annotated (errors included).",
        &one(ld(&d.annotated)),
    );
    metric(
        &mut o,
        "vision_gateway_annotation_errors_total",
        "counter",
        "Frames that could not be decoded or run.",
        &one(ld(&d.errors)),
    );
    metric(
        &mut o,
        "vision_gateway_images_sampled_total",
        "counter",
        "Frames whose image was kept for upload.",
        &one(ld(&d.sampled)),
    );
    metric(
        &mut o,
        "vision_gateway_annotation_items_total",
        "counter",
        "Items (texts, objects) found.",
        &one(ld(&d.items)),
    );
    let _ = writeln!(o, "# HELP vision_gateway_detect_latency_seconds Decode to annotation, per frame.\n# TYPE vision_gateway_detect_latency_seconds histogram");
    let mut cum = 0;
    for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cum += ld(&d.latency[i]);
        let _ = writeln!(o, "vision_gateway_detect_latency_seconds_bucket{{le=\"{}\"}} {cum}", b / 1000.0);
    }
    cum += ld(&d.latency[LATENCY_BUCKETS_MS.len()]);
    let _ = writeln!(o, "vision_gateway_detect_latency_seconds_bucket{{le=\"+Inf\"}} {cum}");
    let _ = writeln!(o, "vision_gateway_detect_latency_seconds_sum {}", ld(&d.busy_us) as f64 / 1e6);
    let _ = writeln!(o, "vision_gateway_detect_latency_seconds_count {cum}");
    let r = &t.replicate;
    let sent: Vec<(String, u64)> = [
        ("annotation", &r.annotations),
        ("image", &r.images),
        ("image_chunk", &r.chunks),
        ("dead_letter", &r.dead_letters),
        ("gap", &r.gaps),
    ]
    .iter()
    .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), ld(v)))
    .collect();
    metric(&mut o, "vision_gateway_replicated_total", "counter", "Records Kafka acknowledged, by kind.", &sent);
    metric(
        &mut o,
        "vision_gateway_replicated_bytes_total",
        "counter",
        "Payload bytes Kafka acknowledged.",
        &one(ld(&r.bytes)),
    );
    metric(
        &mut o,
        "vision_gateway_replicate_retries_total",
        "counter",
        "Batches that failed and are sent again.",
        &one(ld(&r.retries)),
    );
    metric(
        &mut o,
        "vision_gateway_kafka_connected",
        "gauge",
        "1 while the last batch was acknowledged.",
        &one(lb(&r.connected)),
    );
    let c = t.log.counts();
    let recs: Vec<(String, u64)> =
        c.areas.iter().map(|(a, s)| (format!("{{area=\"{}\"}}", a.name()), s.records)).collect();
    let bytes: Vec<(String, u64)> =
        c.areas.iter().map(|(a, s)| (format!("{{area=\"{}\"}}", a.name()), s.bytes)).collect();
    metric(&mut o, "vision_gateway_log_records", "gauge", "Records in the log, by area.", &recs);
    metric(&mut o, "vision_gateway_log_bytes", "gauge", "Bytes in the log, by area.", &bytes);
    metric(&mut o, "vision_gateway_log_used_bytes", "gauge", "Bytes the log budget counts.", &one(c.used_bytes));
    metric(&mut o, "vision_gateway_log_max_bytes", "gauge", "The log budget.", &one(c.max_bytes));
    metric(&mut o, "vision_gateway_log_next_seq", "gauge", "Next frame sequence number.", &one(c.next_seq));
    metric(&mut o, "vision_gateway_log_gaps_total", "counter", "Gap records written.", &one(c.gaps_written));
    metric(&mut o, "vision_gateway_log_set_aside_total", "counter", "Unreadable records set aside.", &one(c.set_aside));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let log = DurableLog::open(crate::log::LogOptions::new(dir.path(), "t")).unwrap();
        let t = Telemetry {
            log,
            intake: Arc::new(IntakeStats::default()),
            detect: Some(Arc::new(DetectStats::default())),
            replicate: Arc::new(ReplicateStats::default()),
        };
        let text = render(&t);
        for name in [
            "vision_gateway_frames_received_total",
            "vision_gateway_frames_stored_total",
            "vision_gateway_frames_acked_total",
            "vision_gateway_frames_quarantined_total{reason=\"oversize\"}",
            "vision_gateway_mqtt_connected",
            "vision_gateway_mqtt_subscribed",
            "vision_gateway_intake_blocked",
            "vision_gateway_frames_annotated_total",
            "vision_gateway_annotation_errors_total",
            "vision_gateway_images_sampled_total",
            "vision_gateway_detect_latency_seconds_bucket{le=\"+Inf\"}",
            "vision_gateway_replicated_total{kind=\"image\"}",
            "vision_gateway_replicate_retries_total",
            "vision_gateway_kafka_connected",
            "vision_gateway_log_records{area=\"frames\"}",
            "vision_gateway_log_used_bytes",
            "vision_gateway_log_gaps_total",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing");
        }
    }
}
