//! What the endpoint reports on ([`Telemetry`]: the log and each stage's
//! counters), and the figures read from it: readiness, the backlog per
//! stage, and the status page's [`Status`].

use crate::detect::DetectStats;
use crate::intake::IntakeStats;
use crate::log::DurableLog;
use crate::records::Area;
use crate::replicate::ReplicateStats;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
