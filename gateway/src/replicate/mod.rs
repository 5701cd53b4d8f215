//! Replicate: annotations, sampled images, dead letters and gap records to
//! Kafka, store-and-forward.
//!
//! Owns cursors `replicate` (annotations, dead letters and sampled images,
//! all in the frame sequence) and `replicate_gaps` (gap records), and the
//! Kafka producer (librdkafka through `rdkafka`, `acks=all`,
//! `enable.idempotence=true`, zstd).
//!
//! # Promises
//!
//! - **Delivered means acknowledged.** Records are read in batches and
//!   produced; up to [`IN_FLIGHT`] batches are in flight at once. The
//!   cursor moves past a batch (which frees its local data, in the same log
//!   batch) only once every record of it and of every batch before it has a
//!   successful delivery report: it is the highest sequence below which
//!   every report has arrived, to a batch's granularity. A failed or
//!   timed-out delivery keeps the records on disk; the batches behind it
//!   are awaited, and everything from the cursor on is sent again after a
//!   capped backoff. So a crash or an outage re-sends at most what was in
//!   flight (consumers de-duplicate by `frame_id` and `chunk_index`).
//! - **Order per camera**: records are produced in sequence order with the
//!   camera id as key, through one idempotent producer.
//! - **Large images are chunked** at `replicate.chunk_bytes` with headers
//!   `frame_id`, `camera`, `content_type`, `sha256` (of the whole image),
//!   `chunk_index`, `chunk_count`; [`reassemble`] puts them back together.
//! - **Bounded memory**: at most [`IN_FLIGHT`] batches of [`BATCH`] records
//!   are in flight, and sampled images are read only while less than
//!   [`IN_FLIGHT_IMAGE_BYTES`] of them are unacknowledged (a batch holds at
//!   least one record, so the bound can be passed by one frame per batch);
//!   an image is dropped from the stage's memory once librdkafka has its
//!   copy. librdkafka's own queue limits pass through.
//! - **Never blocks the runtime**: when librdkafka's queue is full the
//!   stage yields and tries again; it never parks a tokio worker.
//! - **Offline for days**: the backlog is on disk; when Kafka returns the
//!   stage drains it at full speed, batches in flight back to back, while
//!   detect keeps appending behind it.

mod producer;
pub mod reassemble;

pub use producer::{DeliveryFuture, KafkaProducer};

use crate::config::ReplicateConfig;
use crate::log::{Area, Cursor, DurableLog, LogError};
use crate::records::{header, DeadLetter, FrameRecord, GapRecord, SCHEMA_VERSION};
use crate::telemetry::RateLimiter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Records (annotations and dead letters, or gap records) per batch.
pub const BATCH: usize = 128;
/// Batches produced and not yet wholly acknowledged, at most.
pub const IN_FLIGHT: usize = 8;
/// Sampled image bytes read and not yet acknowledged, at most (see the
/// module's promise): with 16 MiB frames, a batch of sampled images would
/// otherwise be 2 GiB in RAM.
pub const IN_FLIGHT_IMAGE_BYTES: usize = 64 << 20;

/// What stops the replicate stage.
#[derive(Debug, Error)]
pub enum ReplicateError {
    /// The producer could not be created (bad librdkafka option).
    #[error("Kafka producer: {0}")]
    Config(KafkaError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The stage's task ended abnormally.
    #[error("{0}")]
    Task(String),
}

impl ReplicateError {
    /// True when retrying later may succeed without a change.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicateError::Log(e) => e.is_transient(),
            ReplicateError::Config(_) | ReplicateError::Task(_) => false,
        }
    }
}

/// Live counters of the replicate stage.
#[derive(Debug, Default)]
pub struct ReplicateStats {
    /// Annotations acknowledged by Kafka.
    pub annotations: AtomicU64,
    /// Sampled images acknowledged (whole images).
    pub images: AtomicU64,
    /// Image chunks acknowledged.
    pub chunks: AtomicU64,
    /// Dead letters acknowledged.
    pub dead_letters: AtomicU64,
    /// Gap records acknowledged.
    pub gaps: AtomicU64,
    /// Payload bytes acknowledged.
    pub bytes: AtomicU64,
    /// Batches that failed and will be sent again.
    pub retries: AtomicU64,
    /// Failed attempts while Kafka was unreachable or slow (transient
    /// errors): the loop waiting for the uplink, a sign of life for the
    /// watchdog. Refusals (a missing topic, a record too large) are not.
    pub waits: AtomicU64,
    /// Records given up after [`POISON_STRIKES`] refusals, by kind
    /// (annotation, image, dead letter, gap record), each reported in a gap
    /// record (gap records themselves only in the log and this count).
    pub undeliverable: [AtomicU64; 4],
    /// Failed attempts because a topic is missing or forbidden.
    pub topic_refusals: AtomicU64,
    /// The last batch was delivered (Kafka reachable).
    pub connected: AtomicBool,
}

/// Creates the idempotent producer from the config (pass-through options
/// last, so a site can tune anything but the safety settings).
///
/// # Errors
/// [`ReplicateError::Config`] for an invalid option.
pub fn producer(cfg: &ReplicateConfig) -> Result<KafkaProducer, ReplicateError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "10000")
        .set("message.max.bytes", (cfg.chunk_bytes + (64 << 10)).max(1_000_000).to_string());
    for (k, v) in &cfg.librdkafka {
        c.set(k, v);
    }
    for (k, v) in &cfg.librdkafka_secrets {
        c.set(k, v.expose());
    }
    // Not overridable: the at-least-once design depends on them.
    c.set("enable.idempotence", "true").set("acks", "all");
    KafkaProducer::create(&c).map_err(ReplicateError::Config)
}

/// Why a pass-through librdkafka option cannot be allowed, if it cannot:
/// the options that would break order per camera, delivery reports or
/// idempotence, and the ones the gateway sets itself. The forced settings
/// (`enable.idempotence`, `acks`) are then applied over an option map
/// without any alias of them, so they win deterministically.
pub fn forbidden_option(key: &str, value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let num = v.parse::<i64>().ok();
    match key.trim() {
        "enable.idempotence" | "acks" | "request.required.acks" => {
            Some("is set by the gateway (enable.idempotence = true, acks = all): delivery depends on it".into())
        }
        "bootstrap.servers" | "metadata.broker.list" => Some("use replicate.brokers".into()),
        "transactional.id" => Some(
            "transactions are not used: the gateway's idempotent producer and cursors give exactly its guarantees"
                .into(),
        ),
        "partitioner" | "partitioner_cb" if v == "random" || key == "partitioner_cb" => {
            Some("would send one camera's records to several partitions and break their order".into())
        }
        "delivery.report.only.error" if v == "true" || v == "1" => {
            Some("the gateway moves its cursor on delivery reports; without them nothing is ever confirmed".into())
        }
        "queuing.strategy" if v != "fifo" => Some("would reorder records".into()),
        "max.in.flight.requests.per.connection" | "max.in.flight" if num.is_none_or(|n| n > 5) => {
            Some("must be 1..=5 with the idempotent producer (order and no duplicates)".into())
        }
        "retries" | "message.send.max.retries" if num.is_none_or(|n| n < 1) => {
            Some("must be at least 1 with the idempotent producer".into())
        }
        "dr_cb" | "dr_msg_cb" | "enable.gapless.guarantee" if v == "false" => {
            Some("is needed for delivery reports without gaps".into())
        }
        _ => None,
    }
}

/// Routes librdkafka's logs and client errors into `tracing`, rate-limited:
/// while the uplink is down librdkafka reports "all brokers down" on every
/// reconnect attempt, which would otherwise flood the journal. The stage's
/// own retry warnings say what matters (the batch stays on disk).
#[derive(Debug)]
pub struct KafkaContext {
    errors: RateLimiter,
}

impl Default for KafkaContext {
    fn default() -> Self {
        Self { errors: RateLimiter::new(Duration::from_secs(60)) }
    }
}

impl rdkafka::ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                if let Some(held) = self.errors.check(fac) {
                    tracing::error!(target: "librdkafka", facility = fac, suppressed = held, "{log_message}");
                }
            }
            L::Warning => {
                if let Some(held) = self.errors.check(fac) {
                    tracing::warn!(target: "librdkafka", facility = fac, suppressed = held, "{log_message}");
                }
            }
            L::Notice | L::Info => tracing::info!(target: "librdkafka", facility = fac, "{log_message}"),
            L::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let key = match error.rdkafka_error_code() {
            Some(c) => format!("{c:?}"),
            None => "other".to_owned(),
        };
        if let Some(held) = self.errors.check(&key) {
            tracing::warn!(target: "librdkafka", error = %error, suppressed = held, "Kafka client: {reason}");
        }
    }
}

/// Hands one record to librdkafka; when its queue is full, sleeps on the
/// tokio timer (1 ms) and tries again, never blocking a runtime thread (the
/// producer's own thread serves delivery reports meanwhile). Any other
/// error is returned.
///
/// # Errors
/// The producer's error.
pub async fn enqueue_yielding(
    producer: &KafkaProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<DeliveryFuture, KafkaError> {
    let mut headers = headers;
    loop {
        match producer.try_send(topic, key, payload, headers) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), h)) => {
                headers = h;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn with_header(k: &'static str, v: &str, hs: OwnedHeaders) -> OwnedHeaders {
    hs.insert(Header { key: k, value: Some(v) })
}

/// The Kafka headers of an annotation record.
pub fn annotation_headers(frame_id: &str, model: &str) -> OwnedHeaders {
    let hs = with_header(header::FRAME_ID, frame_id, OwnedHeaders::new_with_capacity(3));
    with_header(header::SCHEMA, &SCHEMA_VERSION.to_string(), with_header(header::MODEL, model, hs))
}

/// The Kafka headers of chunk `index` of `count` (as text) of an image.
pub fn chunk_headers(
    frame_id: &str,
    camera: &str,
    content_type: &str,
    sha256: &str,
    index: usize,
    count: &str,
) -> OwnedHeaders {
    let hs = with_header(header::FRAME_ID, frame_id, OwnedHeaders::new_with_capacity(6));
    let hs = with_header(
        header::SHA256,
        sha256,
        with_header(header::CONTENT_TYPE, content_type, with_header(header::CAMERA, camera, hs)),
    );
    with_header(header::CHUNK_COUNT, count, with_header(header::CHUNK_INDEX, &index.to_string(), hs))
}

/// Deliveries of one record that Kafka refused for good before the record
/// is given up (dropped with a gap record, or, for a refused topic of the
/// main streams, reported while it waits).
pub const POISON_STRIKES: u32 = 3;

/// How a failed delivery is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// May succeed later (broker down, timeout, leader change): the batch
    /// is retried with backoff, for as long as it takes.
    Transient,
    /// The topic is missing or forbidden: nothing can go to it until an
    /// operator acts.
    Topic,
    /// This record can never be accepted (too large for the broker,
    /// invalid).
    Record,
}

/// Classifies a delivery error by its Kafka error code.
pub fn refusal(code: Option<RDKafkaErrorCode>) -> Refusal {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::TopicAuthorizationFailed | C::InvalidTopic) => {
            Refusal::Topic
        }
        Some(
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord | C::PolicyViolation | C::InvalidMessage,
        ) => Refusal::Record,
        _ => Refusal::Transient,
    }
}

/// One record of a batch (an image stands for all its chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Part {
    Annotation(u64),
    Image(u64),
    DeadLetter(u64),
    Gap(u64),
}

impl Part {
    fn area(self) -> Area {
        match self {
            Part::Annotation(_) => Area::Annotations,
            Part::Image(_) => Area::Images,
            Part::DeadLetter(_) => Area::DeadLetters,
            Part::Gap(_) => Area::Gaps,
        }
    }

    fn seq(self) -> u64 {
        match self {
            Part::Annotation(s) | Part::Image(s) | Part::DeadLetter(s) | Part::Gap(s) => s,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Part::Annotation(_) => "annotation",
            Part::Image(_) => "image",
            Part::DeadLetter(_) => "dead letter",
            Part::Gap(_) => "gap record",
        }
    }
}

/// A delivery of a batch that failed.
#[derive(Debug)]
struct Failure {
    part: Part,
    topic: String,
    code: Option<RDKafkaErrorCode>,
    error: String,
}

impl Failure {
    fn new(part: Part, topic: &str, e: &KafkaError) -> Self {
        Self { part, topic: topic.to_owned(), code: e.rdkafka_error_code(), error: e.to_string() }
    }
}

/// Splits an image into chunks of at most `chunk` bytes (at least one,
/// even for an empty image).
pub fn chunks(bytes: &[u8], chunk: usize) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(chunk.max(1)).collect()
}

/// The fields of a stored [`FrameAnnotation`] the stage needs for keys
/// and headers; the rest (the items) is skipped without being built.
#[derive(serde::Deserialize)]
struct AnnotationHead {
    camera: String,
    frame_id: String,
    #[serde(default)]
    sampled: Option<serde::de::IgnoredAny>,
    annotation: ModelHead,
}

#[derive(serde::Deserialize)]
struct ModelHead {
    model: inference::ModelInfo,
}

enum Out {
    Annotation { seq: u64, camera: String, frame_id: String, model: String, json: Vec<u8>, image: Option<FrameRecord> },
    DeadLetter { seq: u64, camera: String, frame_id: String, json: Vec<u8> },
}

impl Out {
    fn seq(&self) -> u64 {
        match self {
            Out::Annotation { seq, .. } | Out::DeadLetter { seq, .. } => *seq,
        }
    }
}

/// A batch handed to librdkafka: its delivery reports to await, and where
/// the cursors go once they are all successes.
struct Pending {
    /// (report, record, topic, counter kind, payload bytes), in send order.
    reports: Vec<(DeliveryFuture, Part, &'static str, u64)>,
    /// Records librdkafka would not even take.
    failures: Vec<Failure>,
    /// `replicate` cursor after this batch, if it holds records.
    records_end: Option<u64>,
    /// `replicate_gaps` cursor after this batch, if it holds gap records.
    gaps_end: Option<u64>,
    /// Sampled image bytes in the batch (released once it settles).
    image_bytes: usize,
    /// Records (not chunks) in the batch.
    records: usize,
}

/// The replicate stage.
pub struct Replicate {
    log: DurableLog,
    cfg: ReplicateConfig,
    producer: KafkaProducer,
    stats: Arc<ReplicateStats>,
    warn: RateLimiter,
    unbounded: bool,
}

impl Replicate {
    /// A stage producing with `producer`.
    pub fn new(log: DurableLog, cfg: ReplicateConfig, producer: KafkaProducer) -> Self {
        Self {
            log,
            cfg,
            producer,
            stats: Arc::new(ReplicateStats::default()),
            warn: RateLimiter::new(Duration::from_secs(30)),
            unbounded: crate::faults::Faults::from_env().replicate_unbounded,
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ReplicateStats> {
        self.stats.clone()
    }

    /// Runs until `stop`: keeps up to [`IN_FLIGHT`] batches produced,
    /// moves the cursors as the oldest one is wholly acknowledged, waits on
    /// the log when caught up, backs off when Kafka fails. On `stop` the
    /// batches in flight are given a few seconds to be acknowledged.
    ///
    /// # Errors
    /// [`ReplicateError::Log`] if the log fails.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ReplicateError> {
        if crate::faults::Faults::from_env().replicate_fail {
            return Err(ReplicateError::Task("injected fault: the replicate stage fails for good".into()));
        }
        let mut failures: u32 = 0;
        let mut strikes: HashMap<Part, u32> = HashMap::new();
        let mut inflight: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
        // Where the next batch is read from: ahead of the durable cursors by
        // what is in flight.
        let mut next = (self.log.cursor(Cursor::Replicate)?, self.log.cursor(Cursor::ReplicateGaps)?);
        let grace = async {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        tokio::pin!(grace);
        loop {
            let seen = self.log.generation();
            // Fill: batches back to back while there is room.
            while !stop.is_cancelled() && inflight.len() < IN_FLIGHT {
                let held: usize = inflight.iter().map(|p| p.image_bytes).sum();
                if held >= IN_FLIGHT_IMAGE_BYTES {
                    break;
                }
                let records = self.next_records(next.0, IN_FLIGHT_IMAGE_BYTES - held)?;
                let gaps = self.log.read_gaps(next.1, self.log.bound(Cursor::ReplicateGaps)?, BATCH)?;
                if records.is_empty() && gaps.is_empty() {
                    break;
                }
                let p = self.produce(records, gaps).await;
                next = (p.records_end.unwrap_or(next.0), p.gaps_end.unwrap_or(next.1));
                let refused = !p.failures.is_empty();
                inflight.push_back(p);
                if refused {
                    break; // settle what is in flight, then retry from the cursor
                }
            }
            let Some(front) = inflight.pop_front() else {
                if stop.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.log.changed_since(seen) => {}
                }
                continue;
            };
            let failed_records = front.records;
            let settled = tokio::select! {
                r = self.settle(front) => r,
                _ = &mut grace => break,
            };
            let failed = match settled {
                Ok(p) => {
                    failures = 0;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let mut b = self.log.batch();
                    if let Some(end) = p.records_end {
                        b.set_cursor(Cursor::Replicate, end);
                        strikes.retain(|k, _| matches!(k, Part::Gap(_)) || k.seq() >= end);
                    }
                    if let Some(end) = p.gaps_end {
                        b.set_cursor(Cursor::ReplicateGaps, end);
                        strikes.retain(|k, _| !matches!(k, Part::Gap(_)) || k.seq() >= end);
                    }
                    self.log.apply(b)?;
                    continue;
                }
                Err(f) => f,
            };
            // A batch failed: the ones behind it are awaited (their records
            // are sent again from the cursor; librdkafka must be done with
            // them first), and their refusals count too.
            let mut failed = failed;
            let in_flight = inflight.iter().map(|p| p.records).sum::<usize>() + failed_records;
            while let Some(p) = inflight.pop_front() {
                if let Err(more) = self.settle(p).await {
                    failed.extend(more);
                }
            }
            next = (self.log.cursor(Cursor::Replicate)?, self.log.cursor(Cursor::ReplicateGaps)?);
            let (gave_up, transient) = self.give_up_poison(&failed, &mut strikes).await?;
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            if gave_up {
                continue; // again from the cursor, without what was given up
            }
            if transient {
                self.stats.connected.store(false, Ordering::Relaxed);
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
            }
            failures = failures.saturating_add(1);
            let e = &failed[0];
            let e = format!("{} on {}: {}", e.part.kind(), e.topic, e.error);
            let wait = Duration::from_millis(200).saturating_mul(1 << failures.min(8)).min(Duration::from_secs(30));
            if let Some(held) = self.warn.check("send") {
                tracing::warn!(error = %e, retry_in = ?wait, records = in_flight, suppressed = held, "Kafka delivery failed; the records stay on disk");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let _ = self.producer.flush(Duration::from_secs(2));
        Ok(())
    }

    /// The next annotations and dead letters from `from`, merged in
    /// sequence order, never past the detect cursor: a dead letter written
    /// at intake waits for the frames before it to be annotated, so the
    /// cursor cannot jump over them. Sampled images are read while their
    /// bytes stay under `image_budget` (at least one record is returned).
    fn next_records(&self, from: u64, image_budget: usize) -> Result<Vec<Out>, ReplicateError> {
        let to = if self.unbounded {
            // Injected fault (tests only): the pre-fix bound.
            self.log.bound(Cursor::Detect)?
        } else {
            self.log.bound(Cursor::Replicate)?
        };
        if from >= to {
            return Ok(Vec::new());
        }
        let n = BATCH;
        let anns = self.log.read_blobs(Area::Annotations, from, to, n)?;
        let dead = self.log.read_blobs(Area::DeadLetters, from, to, n)?;
        let mut out = Vec::with_capacity(n);
        let mut image_bytes = 0usize;
        let (mut a, mut d) = (anns.into_iter().peekable(), dead.into_iter().peekable());
        while out.len() < n && image_bytes < image_budget.max(1) {
            let take_a = match (a.peek(), d.peek()) {
                (Some((sa, _)), Some((sd, _))) => sa < sd,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_a {
                let Some((seq, json)) = a.next() else { break };
                match serde_json::from_slice::<AnnotationHead>(&json) {
                    Ok(fa) => {
                        let image =
                            if fa.sampled.is_some() { self.log.read_area_frame(Area::Images, seq)? } else { None };
                        image_bytes += image.as_ref().map_or(0, |i| i.payload.len());
                        out.push(Out::Annotation {
                            seq,
                            camera: fa.camera,
                            frame_id: fa.frame_id,
                            model: format!("{}@{}", fa.annotation.model.name, fa.annotation.model.hash),
                            json,
                            image,
                        });
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "annotation record does not parse; sent as is");
                        out.push(Out::Annotation {
                            seq,
                            camera: String::new(),
                            frame_id: self.log.frame_id(seq),
                            model: String::new(),
                            json,
                            image: None,
                        });
                    }
                }
            } else {
                let Some((seq, body)) = d.next() else { break };
                let frame_id = self.log.frame_id(seq);
                let (camera, json) = match DeadLetter::decode(&body) {
                    Ok((dl, _)) => {
                        let mut v = serde_json::to_value(&dl).unwrap_or_default();
                        v["frame_id"] = serde_json::Value::String(frame_id.clone());
                        v["gateway_id"] = serde_json::Value::String(self.log.gateway_id().to_owned());
                        (dl.camera.unwrap_or_default(), serde_json::to_vec(&v).unwrap_or_default())
                    }
                    Err(e) => (String::new(), format!("{{\"frame_id\":{frame_id:?},\"error\":{e:?}}}").into_bytes()),
                };
                out.push(Out::DeadLetter { seq, camera, frame_id, json });
            }
        }
        Ok(out)
    }

    /// Hands a batch to librdkafka, in sequence order, and returns what to
    /// await. Each record's payload is copied by librdkafka, so the batch's
    /// memory is freed here.
    async fn produce(&self, records: Vec<Out>, gaps: Vec<(u64, GapRecord)>) -> Pending {
        let mut p = Pending {
            reports: Vec::new(),
            failures: Vec::new(),
            records_end: records.last().map(|r| r.seq() + 1),
            gaps_end: gaps.last().map(|(id, _)| id + 1),
            image_bytes: 0,
            records: records.len() + gaps.len(),
        };
        let h = |k: &'static str, v: &str, hs: OwnedHeaders| hs.insert(Header { key: k, value: Some(v) });
        let cfg = &self.cfg;
        for r in &records {
            match r {
                Out::Annotation { seq, camera, frame_id, model, json, image } => {
                    let part = Part::Annotation(*seq);
                    let headers = annotation_headers(frame_id, model);
                    match enqueue_yielding(&self.producer, &cfg.annotations_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push((f, part, "annotation", json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.annotations_topic, &e)),
                    }
                    if let Some(img) = image {
                        let part = Part::Image(*seq);
                        p.image_bytes += img.payload.len();
                        let sha = hex::encode(Sha256::digest(&img.payload));
                        let parts = chunks(&img.payload, cfg.chunk_bytes as usize);
                        let count = parts.len().to_string();
                        for (i, chunk) in parts.iter().enumerate() {
                            let headers = chunk_headers(frame_id, camera, &img.content_type, &sha, i, &count);
                            let kind = if i + 1 == parts.len() { "image" } else { "chunk" };
                            match enqueue_yielding(&self.producer, &cfg.images_topic, camera, chunk, headers).await {
                                Ok(f) => p.reports.push((f, part, kind, chunk.len() as u64)),
                                Err(e) => {
                                    p.failures.push(Failure::new(part, &cfg.images_topic, &e));
                                    break;
                                }
                            }
                        }
                    }
                }
                Out::DeadLetter { seq, camera, frame_id, json } => {
                    let part = Part::DeadLetter(*seq);
                    let headers = h(header::FRAME_ID, frame_id, OwnedHeaders::new());
                    match enqueue_yielding(&self.producer, &cfg.dead_letters_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push((f, part, "dead_letter", json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.dead_letters_topic, &e)),
                    }
                }
            }
        }
        for (id, g) in &gaps {
            let part = Part::Gap(*id);
            let json = serde_json::to_vec(g).unwrap_or_default();
            let headers = h(header::REASON, g.reason.name(), OwnedHeaders::new());
            match enqueue_yielding(&self.producer, &cfg.gaps_topic, &g.gateway_id, &json, headers).await {
                Ok(f) => p.reports.push((f, part, "gap", json.len() as u64)),
                Err(e) => p.failures.push(Failure::new(part, &cfg.gaps_topic, &e)),
            }
        }
        p
    }

    /// The topic a record goes to.
    fn topic(&self, part: Part) -> &str {
        match part {
            Part::Annotation(_) => &self.cfg.annotations_topic,
            Part::Image(_) => &self.cfg.images_topic,
            Part::DeadLetter(_) => &self.cfg.dead_letters_topic,
            Part::Gap(_) => &self.cfg.gaps_topic,
        }
    }

    /// Waits for every delivery report of a batch. On success counts it and
    /// returns it (for its cursor ends); otherwise returns every failed
    /// delivery (an image counts once, for all its chunks).
    async fn settle(&self, mut p: Pending) -> Result<Pending, Vec<Failure>> {
        let mut failures = std::mem::take(&mut p.failures);
        let mut counted: Vec<(&'static str, u64)> = Vec::with_capacity(p.reports.len());
        for (f, part, kind, bytes) in std::mem::take(&mut p.reports) {
            let error = match f.await {
                Ok(()) => {
                    counted.push((kind, bytes));
                    continue;
                }
                Err(KafkaError::Canceled) => Failure {
                    part,
                    topic: self.topic(part).to_owned(),
                    code: None,
                    error: "delivery report lost".into(),
                },
                Err(e) => Failure::new(part, self.topic(part), &e),
            };
            if !failures.iter().any(|x| x.part == part) {
                failures.push(error);
            }
        }
        if !failures.is_empty() {
            return Err(failures);
        }
        for (kind, bytes) in counted {
            self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            let c = match kind {
                "annotation" => &self.stats.annotations,
                "image" => {
                    self.stats.chunks.fetch_add(1, Ordering::Relaxed);
                    &self.stats.images
                }
                "chunk" => &self.stats.chunks,
                "dead_letter" => &self.stats.dead_letters,
                _ => &self.stats.gaps,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(p)
    }

    /// Counts the refusals of a failed batch and gives up the records
    /// refused [`POISON_STRIKES`] times, in one log batch:
    ///
    /// - an image or a dead letter (the topic refused, or the record): the
    ///   record is dropped with an `undeliverable` gap record saying why;
    /// - an annotation the broker refuses as a record (too large): the same;
    /// - an annotation or gap record whose *topic* is missing or forbidden
    ///   is kept: the main streams wait on disk for the operator (the
    ///   error is logged and counted, and the watchdog sees no progress);
    /// - a gap record refused as a record is deleted and counted (a gap of
    ///   a gap would be refused again).
    ///
    /// Returns whether anything was given up (then the batch is sent again
    /// at once, without it) and whether every failure was transient.
    async fn give_up_poison(
        &self,
        failures: &[Failure],
        strikes: &mut HashMap<Part, u32>,
    ) -> Result<(bool, bool), ReplicateError> {
        let mut b = self.log.batch();
        let mut gave_up = false;
        let mut transient = true;
        for f in failures {
            let r = refusal(f.code);
            if r == Refusal::Transient {
                continue;
            }
            transient = false;
            if r == Refusal::Topic {
                self.stats.topic_refusals.fetch_add(1, Ordering::Relaxed);
            }
            let n = strikes.entry(f.part).or_insert(0);
            *n += 1;
            let hold = r == Refusal::Topic && matches!(f.part, Part::Annotation(_) | Part::Gap(_));
            if *n < POISON_STRIKES || hold {
                if hold {
                    if let Some(held) = self.warn.check(&f.topic) {
                        tracing::error!(topic = %f.topic, error = %f.error, suppressed = held, "Kafka refuses the topic: create it (or fix replicate.*_topic); the records wait on disk");
                    }
                }
                continue;
            }
            let detail = format!("{} refused by Kafka on topic {} ({} times): {}", f.part.kind(), f.topic, n, f.error);
            tracing::error!(kind = f.part.kind(), seq = f.part.seq(), topic = %f.topic, error = %f.error, "record undeliverable: given up so the records behind it flow");
            let k = match f.part {
                Part::Annotation(_) => 0,
                Part::Image(_) => 1,
                Part::DeadLetter(_) => 2,
                Part::Gap(_) => 3,
            };
            self.stats.undeliverable[k].fetch_add(1, Ordering::Relaxed);
            match f.part {
                Part::Gap(id) => {
                    b.remove(Area::Gaps, id);
                }
                p => {
                    b.undeliverable(p.area(), p.seq(), detail);
                }
            }
            strikes.remove(&f.part);
            gave_up = true;
        }
        if gave_up {
            self.log.apply(b)?;
            // Gap records go up once durable; nothing else may flush soon.
            self.log.flush().await?;
        }
        Ok((gave_up, transient))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_the_image_exactly() {
        let img: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let c = chunks(&img, 1000);
        assert_eq!(c.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        assert_eq!(c.concat(), img);
        assert_eq!(chunks(&img[..1000], 1000).len(), 1);
        assert_eq!(chunks(&[], 1000).len(), 1);
    }
}
