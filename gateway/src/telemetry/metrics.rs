//! The Prometheus text exposition (format 0.0.4) of every figure, read at
//! scrape time from the stages' counters and the log's accounting. One
//! function per part of the pipeline; the names and labels are the
//! interface of dashboards and alerts (`README.md`, "Metrics"): renaming
//! one is a breaking change.

use super::status::{Backlog, Telemetry};
use crate::detect::{DetectStats, LATENCY_BUCKETS_MS};
use crate::intake::IntakeStats;
use crate::records::QuarantineReason;
use crate::replicate::ReplicateStats;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// A metric without labels: name, type, help, and how to read its value.
type Metric<S> = (&'static str, &'static str, &'static str, fn(&S) -> u64);

/// The text being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A metric family: HELP, TYPE, then one sample per label set.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }

    /// Metrics without labels, each read from `stats`.
    fn table<S>(&mut self, stats: &S, metrics: &[Metric<S>]) {
        for (name, kind, help, read) in metrics {
            self.one(name, kind, help, read(stats));
        }
    }

    /// A metric without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.family(name, kind, help, &[(String::new(), v)]);
    }
}

fn ld(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn lb(a: &AtomicBool) -> u64 {
    u64::from(a.load(Ordering::Relaxed))
}

/// Samples labelled `{key="value"}`.
fn labelled<'a>(key: &str, values: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<(String, u64)> {
    values.into_iter().map(|(v, n)| (format!("{{{key}=\"{v}\"}}"), n)).collect()
}

/// Every figure of a running pipeline.
pub fn render(t: &Telemetry) -> String {
    let mut e = Exposition::default();
    intake(&mut e, t);
    let none = DetectStats::default();
    detect(&mut e, t.detect.as_deref().unwrap_or(&none));
    replicate(&mut e, &t.replicate);
    log(&mut e, t);
    e.0
}

/// While the pipeline is down (the log cannot be opened: a full disk).
pub fn render_down() -> String {
    let mut e = Exposition::default();
    e.one("vision_gateway_pipeline_up", GAUGE, "The pipeline runs (log open).", 0);
    e.one("vision_gateway_disk_full", GAUGE, "Intake waits for disk space.", 1);
    e.0
}

fn intake(e: &mut Exposition, t: &Telemetry) {
    let i: &IntakeStats = &t.intake;
    e.table(
        i,
        &[
            (
                "vision_gateway_frames_received_total",
                COUNTER,
                "MQTT publishes received (redeliveries included).",
                |i| ld(&i.received),
            ),
            ("vision_gateway_frames_stored_total", COUNTER, "Frames stored in the log.", |i| ld(&i.stored)),
            ("vision_gateway_frames_stored_bytes_total", COUNTER, "Payload bytes of stored frames.", |i| {
                ld(&i.stored_bytes)
            }),
            ("vision_gateway_frames_acked_total", COUNTER, "PUBACKs sent after the frame was durable.", |i| {
                ld(&i.acked)
            }),
            (
                "vision_gateway_intake_acks_pending",
                GAUGE,
                "PUBACKs of durable frames waiting, in order, for room in the MQTT client.",
                |i| ld(&i.acks_pending),
            ),
            (
                "vision_gateway_intake_acks_discarded_total",
                COUNTER,
                "PUBACKs discarded because their connection was lost first (the broker delivers those frames again).",
                |i| ld(&i.acks_discarded),
            ),
            (
                "vision_gateway_frames_duplicate_total",
                COUNTER,
                "Publishes delivered again that were already stored (acknowledged, not stored twice).",
                |i| ld(&i.duplicates),
            ),
        ],
    );
    let q = labelled("reason", QuarantineReason::ALL.iter().map(|r| (r.name(), ld(&i.quarantined[*r as usize]))));
    e.family("vision_gateway_frames_quarantined_total", COUNTER, "Frames quarantined, by reason.", &q);
    e.table(
        i,
        &[
            ("vision_gateway_mqtt_connected", GAUGE, "1 while connected to the MQTT broker.", |i| lb(&i.connected)),
            ("vision_gateway_mqtt_subscribed", GAUGE, "1 while the subscriptions are acknowledged.", |i| {
                lb(&i.subscribed)
            }),
            ("vision_gateway_mqtt_connects_total", COUNTER, "Successful MQTT connections.", |i| ld(&i.connects)),
            ("vision_gateway_intake_blocked", GAUGE, "1 while intake waits for log space.", |i| lb(&i.blocked)),
        ],
    );
    e.one("vision_gateway_pipeline_up", GAUGE, "The pipeline runs (log open).", 1);
    let full = u64::from(i.disk_full.load(Ordering::Relaxed) || t.log.below_floor());
    e.one(
        "vision_gateway_disk_full",
        GAUGE,
        "1 while intake waits for free space on the log's file system (log.reserve).",
        full,
    );
    if let Ok(free) = crate::log::space::free_bytes(t.log.path()) {
        e.one("vision_gateway_disk_free_bytes", GAUGE, "Bytes free on the log's file system.", free);
    }
}

fn detect(e: &mut Exposition, d: &DetectStats) {
    e.table(
        d,
        &[
            ("vision_gateway_frames_annotated_total", COUNTER, "Frames annotated (errors included).", |d| {
                ld(&d.annotated)
            }),
            ("vision_gateway_annotation_errors_total", COUNTER, "Frames that could not be decoded or run.", |d| {
                ld(&d.errors)
            }),
            ("vision_gateway_images_sampled_total", COUNTER, "Frames whose image was kept for upload.", |d| {
                ld(&d.sampled)
            }),
            ("vision_gateway_annotation_items_total", COUNTER, "Items (texts, objects) found.", |d| ld(&d.items)),
        ],
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
    e.family(
        "vision_gateway_fields_total",
        COUNTER,
        "Label fields per declared field: read, read uncertain, required and missing.",
        &fields,
    );
    let o = &mut e.0;
    let name = "vision_gateway_detect_latency_seconds";
    let _ = writeln!(o, "# HELP {name} Decode to annotation, per frame.\n# TYPE {name} histogram");
    let mut cum = 0;
    for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cum += ld(&d.latency[i]);
        let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {cum}", b / 1000.0);
    }
    cum += ld(&d.latency[LATENCY_BUCKETS_MS.len()]);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cum}");
    let _ = writeln!(o, "{name}_sum {}", ld(&d.busy_us) as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {cum}");
}

fn replicate(e: &mut Exposition, r: &ReplicateStats) {
    let sent = labelled(
        "kind",
        [
            ("annotation", ld(&r.annotations)),
            ("image", ld(&r.images)),
            ("image_chunk", ld(&r.chunks)),
            ("dead_letter", ld(&r.dead_letters)),
            ("gap", ld(&r.gaps)),
        ],
    );
    e.family("vision_gateway_replicated_total", COUNTER, "Records Kafka acknowledged, by kind.", &sent);
    e.table(
        r,
        &[
            ("vision_gateway_replicated_bytes_total", COUNTER, "Payload bytes Kafka acknowledged.", |r| ld(&r.bytes)),
            ("vision_gateway_replicate_retries_total", COUNTER, "Batches that failed and are sent again.", |r| {
                ld(&r.retries)
            }),
        ],
    );
    let gone =
        labelled("kind", ["annotation", "image", "dead_letter", "gap"].into_iter().zip(r.undeliverable.iter().map(ld)));
    e.family(
        "vision_gateway_replicate_undeliverable_total",
        COUNTER,
        "Records Kafka refused for good, given up after bounded retries (reported in gap records), by kind.",
        &gone,
    );
    e.table(
        r,
        &[
        ("vision_gateway_replicate_topic_refusals_total", COUNTER, "Failed deliveries because a topic is missing or forbidden.", |r| ld(&r.topic_refusals)),
        ("vision_gateway_replicate_backfilled_total", COUNTER, "Records acknowledged in the backfill lane (a backlog sent behind the live lane, header lane=backfill).", |r| ld(&r.backfilled)),
        ("vision_gateway_replicate_live_lanes_total", COUNTER, "Times a live lane was opened in front of a backlog (replicate.live_lane_after).", |r| ld(&r.lanes_opened)),
        ("vision_gateway_replicate_backfilling", GAUGE, "1 while a backlog drains behind the live lane.", |r| lb(&r.live_lane)),
        ("vision_gateway_kafka_connected", GAUGE, "1 while the last batch was acknowledged.", |r| lb(&r.connected)),
        ],
    );
}

fn log(e: &mut Exposition, t: &Telemetry) {
    let c = t.log.counts();
    let recs = labelled("area", c.areas.iter().map(|(a, s)| (a.name(), s.records)));
    let bytes = labelled("area", c.areas.iter().map(|(a, s)| (a.name(), s.bytes)));
    e.family("vision_gateway_log_records", GAUGE, "Records in the log, by area.", &recs);
    e.family("vision_gateway_log_bytes", GAUGE, "Bytes in the log, by area.", &bytes);
    e.one("vision_gateway_log_used_bytes", GAUGE, "Bytes the log budget counts.", c.used_bytes);
    e.one("vision_gateway_log_max_bytes", GAUGE, "The log budget.", c.max_bytes);
    e.one("vision_gateway_log_next_seq", GAUGE, "Next frame sequence number.", c.next_seq);
    e.one("vision_gateway_log_gaps_total", COUNTER, "Gap records written.", c.gaps_written);
    e.one("vision_gateway_log_set_aside_total", COUNTER, "Unreadable records set aside.", c.set_aside);
    let dropped = labelled("reason", c.dropped.iter().map(|(r, n)| (r.name(), *n)));
    e.family(
        "vision_gateway_dropped_records_total",
        COUNTER,
        "Records dropped or set aside since start (each covered by a gap record), by reason.",
        &dropped,
    );
    let b = Backlog::of(&c);
    let records = labelled("stage", [("detect", b.detect.records), ("replicate", b.replicate.records)]);
    let bytes = labelled("stage", [("detect", b.detect.bytes), ("replicate", b.replicate.bytes)]);
    e.family("vision_gateway_backlog_records", GAUGE, "Records waiting for a stage.", &records);
    e.family("vision_gateway_backlog_bytes", GAUGE, "Bytes waiting for a stage.", &bytes);
}
