//! The Prometheus text exposition (format 0.0.4) of every figure, read at
//! scrape time from the stages' counters and the log's accounting and
//! encoded by `prometheus-client` (escaping, `_total` suffixes, histogram
//! buckets). One function per part of the pipeline; the names and labels
//! are the interface of dashboards and alerts (`README.md`, "Metrics"):
//! renaming one is a breaking change.

use super::status::{Backlog, Telemetry};
use crate::detect::{DetectStats, LATENCY_BUCKETS_MS};
use crate::intake::IntakeStats;
use crate::records::QuarantineReason;
use crate::replicate::ReplicateStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a metric counts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Only goes up (from the start of the process).
    Counter,
    /// A current value.
    Gauge,
}
const COUNTER: Kind = Kind::Counter;
const GAUGE: Kind = Kind::Gauge;

/// A metric without labels: name, type, help, and how to read its value.
type Metric<S> = (&'static str, Kind, &'static str, fn(&S) -> u64);

/// One label set of a family: `[(key, value)]`.
type Labels = Vec<(&'static str, String)>;

/// The families being encoded (what a scrape writes, in order).
struct Exposition<'a, 'e> {
    enc: &'e mut DescriptorEncoder<'a>,
    /// The first encoding error (only a failing writer gives one).
    failed: fmt::Result,
}

impl Exposition<'_, '_> {
    /// A metric family: HELP, TYPE, then one sample per label set.
    fn family(&mut self, name: &'static str, kind: Kind, help: &str, samples: &[(Labels, u64)]) {
        let r = self.try_family(name, kind, help, samples);
        self.failed = self.failed.and(r);
    }

    fn try_family(&mut self, name: &'static str, kind: Kind, help: &str, samples: &[(Labels, u64)]) -> fmt::Result {
        // The encoder writes the `_total` of a counter itself.
        let (base, ty) = match kind {
            Kind::Counter => (name.strip_suffix("_total").unwrap_or(name), MetricType::Counter),
            Kind::Gauge => (name, MetricType::Gauge),
        };
        let mut family = self.enc.encode_descriptor(base, help, None, ty)?;
        for (labels, v) in samples {
            let m = family.encode_family(labels)?;
            match kind {
                Kind::Counter => ConstCounter::new(*v).encode(m)?,
                Kind::Gauge => ConstGauge::new(*v).encode(m)?,
            }
        }
        Ok(())
    }

    /// Metrics without labels, each read from `stats`.
    fn table<S>(&mut self, stats: &S, metrics: &[Metric<S>]) {
        for (name, kind, help, read) in metrics {
            self.one(name, *kind, help, read(stats));
        }
    }

    /// A metric without labels (an empty label set writes no braces).
    fn one(&mut self, name: &'static str, kind: Kind, help: &str, v: u64) {
        self.family(name, kind, help, &[(Vec::new(), v)]);
    }

    /// A histogram without labels: per-bucket counts (the last one above
    /// every bound), and the sum of the observations.
    fn histogram(&mut self, name: &'static str, help: &str, buckets: &[(f64, u64)], sum: f64) {
        let r = (|| {
            let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            let count = buckets.iter().map(|(_, n)| n).sum();
            m.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
        })();
        self.failed = self.failed.and(r);
    }
}

fn ld(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn lb(a: &AtomicBool) -> u64 {
    u64::from(a.load(Ordering::Relaxed))
}

/// Samples labelled `{key="value"}`.
fn labelled<'a>(key: &'static str, values: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<(Labels, u64)> {
    values.into_iter().map(|(v, n)| (vec![(key, v.to_owned())], n)).collect()
}

/// A scrape of a running pipeline.
struct Running(Telemetry);

/// A scrape while the pipeline is down (the log cannot be opened: a full disk).
#[derive(Debug)]
struct Down;

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Running")
    }
}

impl Collector for Running {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let t = &self.0;
        let mut e = Exposition { enc: &mut enc, failed: Ok(()) };
        intake(&mut e, t);
        let none = DetectStats::default();
        detect(&mut e, t.detect.as_deref().unwrap_or(&none));
        replicate(&mut e, &t.replicate);
        log(&mut e, t);
        e.failed
    }
}

impl Collector for Down {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut e = Exposition { enc: &mut enc, failed: Ok(()) };
        e.one("vision_gateway_pipeline_up", GAUGE, "The pipeline runs (log open).", 0);
        e.one("vision_gateway_disk_full", GAUGE, "Intake waits for disk space.", 1);
        e.failed
    }
}

/// The text of one scrape of `collector`.
fn exposition(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    // Writing to a String cannot fail, and no metric above returns an error.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// Every figure of a running pipeline.
pub fn render(t: &Telemetry) -> String {
    exposition(Running(t.clone()))
}

/// While the pipeline is down (the log cannot be opened: a full disk).
pub fn render_down() -> String {
    exposition(Down)
}

fn intake(e: &mut Exposition<'_, '_>, t: &Telemetry) {
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

fn detect(e: &mut Exposition<'_, '_>, d: &DetectStats) {
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
            ("vision_gateway_codes_read_total", COUNTER, "Codes read on frames ([detect.codes]).", |d| ld(&d.codes)),
            (
                "vision_gateway_codes_timeouts_total",
                COUNTER,
                "Frames whose code reading ran out of detect.codes.budget.",
                |d| ld(&d.codes_timeouts),
            ),
            ("vision_gateway_codes_errors_total", COUNTER, "Frames whose code reader failed.", |d| ld(&d.codes_errors)),
            (
                "vision_gateway_label_mismatches_total",
                COUNTER,
                "Frames with a printed field that disagrees with its code (verify).",
                |d| ld(&d.mismatched_frames),
            ),
        ],
    );
    let fields: Vec<(Labels, u64)> = d
        .fields
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flat_map(|(name, c)| {
            [
                ("read", c.read),
                ("uncertain", c.uncertain),
                ("missing", c.missing),
                ("verified", c.verified),
                ("mismatch", c.mismatch),
                ("unverified", c.unverified),
            ]
            .map(|(k, v)| (vec![("field", name.clone()), ("outcome", k.to_owned())], v))
        })
        .collect();
    e.family(
        "vision_gateway_fields_total",
        COUNTER,
        "Label fields per declared field: read, read uncertain, required and missing; with verify: agreeing with \
         the code, disagreeing, no code.",
        &fields,
    );
    let mut buckets: Vec<(f64, u64)> =
        LATENCY_BUCKETS_MS.iter().zip(&d.latency).map(|(ms, n)| (ms / 1000.0, ld(n))).collect();
    buckets.push((f64::INFINITY, ld(&d.latency[LATENCY_BUCKETS_MS.len()])));
    let sum = ld(&d.busy_us) as f64 / 1e6;
    e.histogram("vision_gateway_detect_latency_seconds", "Decode to annotation, per frame.", &buckets, sum);
}

fn replicate(e: &mut Exposition<'_, '_>, r: &ReplicateStats) {
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
    let security = labelled("kind", [("sasl", ld(&r.security.sasl)), ("tls", ld(&r.security.tls))]);
    e.family(
        "vision_gateway_kafka_auth_failures_total",
        COUNTER,
        "Connections to Kafka that failed their security, by kind: sasl (credentials refused), tls (handshake failed).",
        &security,
    );
    claim_check(e, r);
}

/// The claim check's store (zero while it is off).
fn claim_check(e: &mut Exposition<'_, '_>, r: &ReplicateStats) {
    e.table(
        r,
        &[
        ("vision_gateway_store_objects_total", COUNTER, "Claim check: images in the object store that a reference was produced for (uploaded, or found from an earlier attempt).", |r| ld(&r.stored)),
        ("vision_gateway_store_uploaded_bytes_total", COUNTER, "Claim check: bytes uploaded to the object store.", |r| ld(&r.stored_bytes)),
        ("vision_gateway_store_references_total", COUNTER, "Claim check: reference records Kafka acknowledged.", |r| ld(&r.references)),
        ("vision_gateway_store_up", GAUGE, "Claim check: 1 while the last upload succeeded.", |r| lb(&r.store_up)),
        ],
    );
    let failures =
        labelled("kind", ["conflict", "refused", "unavailable"].into_iter().zip(r.store_failures.iter().map(ld)));
    e.family(
        "vision_gateway_store_failures_total",
        COUNTER,
        "Claim check: failed uploads, by kind: conflict (a different object at the key, image given up), refused (credentials or access), unavailable (retried).",
        &failures,
    );
}

fn log(e: &mut Exposition<'_, '_>, t: &Telemetry) {
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
