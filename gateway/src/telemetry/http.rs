//! The local HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`,
//! the status page `/` for field engineers (each camera's newest frame with
//! its boxes and text, rates, backlog, uplink state; refreshes itself),
//! `/cameras/{camera}/latest` (that frame's bytes) and `/api/status` (the
//! page's figures as JSON).
//!
//! Promise: every figure is read at request time from the stages' own
//! counters and the log's accounting (no scans, no locks held across
//! awaits), so scraping never slows the pipeline.

use crate::detect::{DetectStats, LATENCY_BUCKETS_MS};
use crate::intake::IntakeStats;
use crate::log::DurableLog;
use crate::records::Area;
use crate::records::QuarantineReason;
use crate::replicate::ReplicateStats;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
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
    /// When the service started.
    pub started: std::time::Instant,
}

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

/// What start-up still waits for (systemd's `READY=1` waits for it), empty
/// once started.
pub fn starting(t: &Telemetry) -> Vec<String> {
    let mut missing = Vec::new();
    if t.detect.as_ref().is_some_and(|d| !d.model_loaded.load(Ordering::Relaxed)) {
        missing.push("model not loaded".to_owned());
    }
    if !t.intake.subscribed.load(Ordering::Relaxed) {
        missing.push("mqtt not subscribed".to_owned());
    }
    missing
}

/// What `/readyz` waits for, empty when ready: start-up, and a disk full
/// of something else (intake paused, `disk full at <path>: N bytes free`).
pub fn not_ready(t: &Telemetry) -> Vec<String> {
    let mut missing = starting(t);
    if t.intake.disk_full.load(Ordering::Relaxed) || t.log.below_floor() {
        let free = crate::log::space::free_bytes(t.log.path()).unwrap_or(t.intake.disk_free.load(Ordering::Relaxed));
        missing.push(format!("disk full at {}: {free} bytes free", t.log.path().display()));
    }
    missing
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
        Some(t) => render(&t),
        None => {
            let mut o = String::new();
            metric(&mut o, "vision_gateway_pipeline_up", "gauge", "The pipeline runs (log open).", &one(0));
            metric(&mut o, "vision_gateway_disk_full", "gauge", "Intake waits for disk space.", &one(1));
            o
        }
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
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
    metric(
        &mut o,
        "vision_gateway_intake_acks_pending",
        "gauge",
        "PUBACKs of durable frames waiting, in order, for room in the MQTT client.",
        &one(ld(&i.acks_pending)),
    );
    metric(
        &mut o,
        "vision_gateway_intake_acks_discarded_total",
        "counter",
        "PUBACKs discarded because their connection was lost first (the broker delivers those frames again).",
        &one(ld(&i.acks_discarded)),
    );
    metric(
        &mut o,
        "vision_gateway_frames_duplicate_total",
        "counter",
        "Publishes delivered again that were already stored (acknowledged, not stored twice).",
        &one(ld(&i.duplicates)),
    );
    let q: Vec<(String, u64)> = QuarantineReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.name()), ld(&i.quarantined[*r as usize])))
        .collect();
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
    metric(&mut o, "vision_gateway_pipeline_up", "gauge", "The pipeline runs (log open).", &one(1));
    metric(
        &mut o,
        "vision_gateway_disk_full",
        "gauge",
        "1 while intake waits for free space on the log's file system (log.reserve).",
        &one(u64::from(i.disk_full.load(Ordering::Relaxed) || t.log.below_floor())),
    );
    if let Ok(free) = crate::log::space::free_bytes(t.log.path()) {
        metric(&mut o, "vision_gateway_disk_free_bytes", "gauge", "Bytes free on the log's file system.", &one(free));
    }
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
    let fields: Vec<(String, u64)> = d
        .fields
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flat_map(|(name, c)| {
            [("read", c.read), ("uncertain", c.uncertain), ("missing", c.missing)]
                .map(|(k, v)| (format!("{{field=\"{name}\",outcome=\"{k}\"}}"), v))
        })
        .collect();
    metric(
        &mut o,
        "vision_gateway_fields_total",
        "counter",
        "Label fields per declared field: read, read uncertain, required and missing.",
        &fields,
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
    let gone: Vec<(String, u64)> = ["annotation", "image", "dead_letter", "gap"]
        .iter()
        .zip(&r.undeliverable)
        .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), ld(v)))
        .collect();
    metric(
        &mut o,
        "vision_gateway_replicate_undeliverable_total",
        "counter",
        "Records Kafka refused for good, given up after bounded retries (reported in gap records), by kind.",
        &gone,
    );
    metric(
        &mut o,
        "vision_gateway_replicate_topic_refusals_total",
        "counter",
        "Failed deliveries because a topic is missing or forbidden.",
        &one(ld(&r.topic_refusals)),
    );
    metric(
        &mut o,
        "vision_gateway_replicate_backfilled_total",
        "counter",
        "Records acknowledged in the backfill lane (a backlog sent behind the live lane, header lane=backfill).",
        &one(ld(&r.backfilled)),
    );
    metric(
        &mut o,
        "vision_gateway_replicate_live_lanes_total",
        "counter",
        "Times a live lane was opened in front of a backlog (replicate.live_lane_after).",
        &one(ld(&r.lanes_opened)),
    );
    metric(
        &mut o,
        "vision_gateway_replicate_backfilling",
        "gauge",
        "1 while a backlog drains behind the live lane.",
        &one(lb(&r.live_lane)),
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
    let dropped: Vec<(String, u64)> =
        c.dropped.iter().map(|(r, n)| (format!("{{reason=\"{}\"}}", r.name()), *n)).collect();
    metric(
        &mut o,
        "vision_gateway_dropped_records_total",
        "counter",
        "Records dropped or set aside since start (each covered by a gap record), by reason.",
        &dropped,
    );
    let b = Backlog::of(&c);
    metric(
        &mut o,
        "vision_gateway_backlog_records",
        "gauge",
        "Records waiting for a stage.",
        &[("{stage=\"detect\"}".into(), b.detect.records), ("{stage=\"replicate\"}".into(), b.replicate.records)],
    );
    metric(
        &mut o,
        "vision_gateway_backlog_bytes",
        "gauge",
        "Bytes waiting for a stage.",
        &[("{stage=\"detect\"}".into(), b.detect.bytes), ("{stage=\"replicate\"}".into(), b.replicate.bytes)],
    );
    o
}

/// What waits for each stage. Consumed records are deleted in the batch that
/// moves a cursor past them, so an area's contents are its consumer's
/// backlog: frames wait for detect; annotations, sampled images, dead
/// letters and gaps wait for replicate.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Backlog {
    /// Frames not yet annotated.
    pub detect: crate::log::AreaStats,
    /// Records not yet acknowledged by Kafka.
    pub replicate: crate::log::AreaStats,
}

impl Backlog {
    /// From the log's counters.
    pub fn of(c: &crate::log::LogCounts) -> Self {
        let mut b = Backlog::default();
        for (a, s) in &c.areas {
            let into = if *a == Area::Frames { &mut b.detect } else { &mut b.replicate };
            into.records += s.records;
            into.bytes += s.bytes;
        }
        b
    }
}

/// The figures of the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Gateway id.
    pub gateway_id: String,
    /// Version of the binary.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// What `/readyz` still waits for.
    pub not_ready: Vec<String>,
    /// MQTT connected.
    pub mqtt_connected: bool,
    /// MQTT subscriptions acknowledged.
    pub mqtt_subscribed: bool,
    /// Intake waits for log space.
    pub intake_blocked: bool,
    /// The last Kafka batch was acknowledged.
    pub kafka_connected: bool,
    /// Frames received.
    pub frames_received: u64,
    /// Frames quarantined (every reason).
    pub frames_quarantined: u64,
    /// Frames annotated.
    pub frames_annotated: u64,
    /// Annotations Kafka acknowledged.
    pub annotations_replicated: u64,
    /// Images Kafka acknowledged.
    pub images_replicated: u64,
    /// Records dropped since start (every reason).
    pub records_dropped: u64,
    /// What waits for each stage.
    pub backlog: Backlog,
    /// Bytes the log budget counts.
    pub log_used_bytes: u64,
    /// The log budget.
    pub log_max_bytes: u64,
    /// Per camera.
    pub cameras: Vec<CameraStatus>,
}

/// One camera on the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraStatus {
    /// Camera id.
    pub camera: String,
    /// Frames annotated since start.
    pub frames: u64,
    /// Annotated frames per second, recently.
    pub fps: f64,
    /// Newest frame's annotation.
    pub latest: crate::records::FrameAnnotation,
    /// When it was annotated (ms since the epoch).
    pub latest_at_ms: u64,
}

/// Reads the status (cheap: counters and the in-memory newest frames).
pub fn status(t: &Telemetry) -> Status {
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let lb = |a: &std::sync::atomic::AtomicBool| a.load(Ordering::Relaxed);
    let c = t.log.counts();
    let i = &t.intake;
    let cameras = t
        .detect
        .as_ref()
        .map(|d| d.latest.snapshot())
        .unwrap_or_default()
        .into_iter()
        .map(|v| CameraStatus {
            camera: v.annotation.camera.clone(),
            frames: v.frames,
            fps: v.fps(),
            latest_at_ms: v.last_ms(),
            latest: v.annotation,
        })
        .collect();
    Status {
        gateway_id: t.log.gateway_id().to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: t.started.elapsed().as_secs(),
        not_ready: not_ready(t),
        mqtt_connected: lb(&i.connected),
        mqtt_subscribed: lb(&i.subscribed),
        intake_blocked: lb(&i.blocked),
        kafka_connected: lb(&t.replicate.connected),
        frames_received: ld(&i.received),
        frames_quarantined: i.quarantined.iter().map(ld).sum(),
        frames_annotated: t.detect.as_ref().map_or(0, |d| ld(&d.annotated)),
        annotations_replicated: ld(&t.replicate.annotations),
        images_replicated: ld(&t.replicate.images),
        records_dropped: c.dropped.iter().map(|(_, n)| n).sum(),
        backlog: Backlog::of(&c),
        log_used_bytes: c.used_bytes,
        log_max_bytes: c.max_bytes,
        cameras,
    }
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

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The status page's HTML.
pub fn render_page(s: &Status, refresh_s: u32) -> String {
    use super::page::{camera_card, esc, page, path_segment, tiles, Tile};
    use crate::util::units::format_size;
    let now_ms = crate::util::now_ms();
    let updown = |ok: bool, yes: &str, no: &str| if ok { (yes.to_owned(), "ok") } else { (no.to_owned(), "bad") };
    let (mqtt, mc) = if s.mqtt_subscribed {
        ("subscribed".to_owned(), "ok")
    } else {
        updown(s.mqtt_connected, "connected", "disconnected")
    };
    let (kafka, kc) = updown(s.kafka_connected, "up", "down / idle");
    let pct = if s.log_max_bytes > 0 { s.log_used_bytes as f64 * 100.0 / s.log_max_bytes as f64 } else { 0.0 };
    let mut body = tiles(&[
        Tile::new("MQTT", mqtt, mc),
        Tile::new("Kafka uplink", kafka, kc),
        Tile::new("frames received", s.frames_received.to_string(), ""),
        Tile::new("annotated", s.frames_annotated.to_string(), ""),
        Tile::new("annotations sent", s.annotations_replicated.to_string(), ""),
        Tile::new("images sent", s.images_replicated.to_string(), ""),
        Tile::new("waiting for model", s.backlog.detect.records.to_string(), ""),
        Tile::new(
            "waiting for uplink",
            format!("{} ({})", s.backlog.replicate.records, format_size(s.backlog.replicate.bytes)),
            if s.backlog.replicate.records > 1000 { "warn" } else { "" },
        ),
        Tile::new(
            "disk budget",
            format!("{pct:.0}% of {}", format_size(s.log_max_bytes)),
            if pct > 90.0 {
                "bad"
            } else if pct > 70.0 {
                "warn"
            } else {
                ""
            },
        ),
        Tile::new("quarantined", s.frames_quarantined.to_string(), if s.frames_quarantined > 0 { "warn" } else { "" }),
        Tile::new("dropped", s.records_dropped.to_string(), if s.records_dropped > 0 { "bad" } else { "" }),
    ]);
    if s.intake_blocked {
        body.push_str("<p class=\"bad\">Intake is paused: the log is at its byte budget and the uplink is behind. Frames wait on the MQTT broker.</p>");
    }
    if !s.not_ready.is_empty() {
        body.push_str(&format!("<p class=\"warn\">Not ready: {}</p>", esc(&s.not_ready.join(", "))));
    }
    if s.cameras.is_empty() {
        body.push_str("<p>No annotated frame yet.</p>");
    }
    body.push_str("<div class=\"cams\">");
    for c in &s.cameras {
        let meta = format!(
            "{} frames, {:.1} frames/s, newest {} ago: {}",
            c.frames,
            c.fps,
            ago(now_ms.saturating_sub(c.latest_at_ms)),
            c.latest.frame_id
        );
        body.push_str(&camera_card(&c.latest, &format!("/cameras/{}/latest", path_segment(&c.camera)), &meta));
    }
    body.push_str("</div>");
    page(
        &format!("vision-gateway {}", s.gateway_id),
        &format!(
            "version {}, up {}{}",
            s.version,
            ago(s.uptime_s * 1000),
            if refresh_s > 0 { format!(", this page refreshes every {refresh_s} s") } else { String::new() }
        ),
        &body,
        (refresh_s > 0).then_some(refresh_s),
    )
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
            d.fields
                .lock()
                .unwrap()
                .insert("lot".into(), crate::detect::FieldCounts { read: 3, uncertain: 1, missing: 2 });
        }
        let text = render(&t);
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
            "vision_gateway_log_records{area=\"frames\"}",
            "vision_gateway_log_used_bytes",
            "vision_gateway_log_gaps_total",
            "vision_gateway_dropped_records_total{reason=\"frame_dropped_for_space\"}",
            "vision_gateway_backlog_records{stage=\"detect\"}",
            "vision_gateway_backlog_bytes{stage=\"replicate\"}",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing");
        }
    }
}
