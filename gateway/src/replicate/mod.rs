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
//! - **Delivered means acknowledged.** A batch of records is produced, and
//!   the cursor moves past it (which frees its local data, in the same log
//!   batch) only after every record of the batch has a successful delivery
//!   report. A failed or timed-out delivery keeps the batch on disk; it is
//!   sent again after a capped backoff. So a crash or an outage re-sends at
//!   most the batch in flight (consumers de-duplicate by `frame_id` and
//!   `chunk_index`).
//! - **Order per camera**: records are produced in sequence order with the
//!   camera id as key, through one idempotent producer.
//! - **Large images are chunked** at `replicate.chunk_bytes` with headers
//!   `frame_id`, `camera`, `content_type`, `sha256` (of the whole image),
//!   `chunk_index`, `chunk_count`; [`reassemble`] puts them back together.
//! - **Bounded memory**: at most 256 records, and at most 64 MiB of sampled
//!   images, are in flight per batch; librdkafka's own queue limits pass
//!   through.
//! - **Offline for days**: the backlog is on disk; when Kafka returns the
//!   stage drains it batch after batch at full speed, while detect keeps
//!   appending behind it.

pub mod reassemble;

use crate::config::ReplicateConfig;
use crate::log::{Area, Cursor, DurableLog, LogError};
use crate::records::{header, DeadLetter, FrameAnnotation, FrameRecord, GapRecord, SCHEMA_VERSION};
use crate::telemetry::RateLimiter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Records (annotations and dead letters, or gap records) per batch.
const BATCH: usize = 256;
/// Sampled image bytes per batch at most (a batch holds at least one
/// record): with 16 MiB frames, 256 sampled images would be 4 GiB in RAM.
const BATCH_IMAGE_BYTES: usize = 64 << 20;

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
    c.create_with_context(KafkaContext::default()).map_err(ReplicateError::Config)
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

/// The producer the stage uses.
pub type KafkaProducer = FutureProducer<KafkaContext>;

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

/// Hands one record to librdkafka; when its queue is full, lets it drain
/// and tries again. Any other error is returned.
///
/// # Errors
/// The producer's error.
pub fn enqueue(
    producer: &KafkaProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                // librdkafka's queue is full: let it drain a little.
                producer.poll(Duration::from_millis(50));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
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

    /// Runs until `stop`: sends batch after batch, waits on the log when
    /// caught up, backs off when Kafka fails. On `stop` the batch in flight
    /// is given a few seconds to be acknowledged.
    ///
    /// # Errors
    /// [`ReplicateError::Log`] if the log fails.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ReplicateError> {
        if crate::faults::Faults::from_env().replicate_fail {
            return Err(ReplicateError::Task("injected fault: the replicate stage fails for good".into()));
        }
        let mut failures: u32 = 0;
        let mut strikes: HashMap<Part, u32> = HashMap::new();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let seen = self.log.generation();
            let records = self.next_records()?;
            let gaps = self.log.read_gaps(
                self.log.cursor(Cursor::ReplicateGaps)?,
                self.log.bound(Cursor::ReplicateGaps)?,
                BATCH,
            )?;
            if records.is_empty() && gaps.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.log.changed_since(seen) => {}
                }
                continue;
            }
            let sent = tokio::select! {
                r = self.send_batch(&records, &gaps) => r,
                _ = async { stop.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => break,
            };
            match sent {
                Ok(()) => {
                    failures = 0;
                    strikes.clear();
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let mut b = self.log.batch();
                    if let Some(last) = records.last() {
                        b.set_cursor(Cursor::Replicate, last.seq() + 1);
                    }
                    if let Some((last, _)) = gaps.last() {
                        b.set_cursor(Cursor::ReplicateGaps, last + 1);
                    }
                    self.log.apply(b)?;
                }
                Err(failed) => {
                    let (gave_up, transient) = self.give_up_poison(&failed, &mut strikes).await?;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if gave_up {
                        continue; // the batch again, without what was given up
                    }
                    if transient {
                        self.stats.connected.store(false, Ordering::Relaxed);
                        self.stats.waits.fetch_add(1, Ordering::Relaxed);
                    }
                    failures = failures.saturating_add(1);
                    let e = &failed[0];
                    let e = format!("{} on {}: {}", e.part.kind(), e.topic, e.error);
                    let wait =
                        Duration::from_millis(200).saturating_mul(1 << failures.min(8)).min(Duration::from_secs(30));
                    if let Some(held) = self.warn.check("send") {
                        tracing::warn!(error = %e, retry_in = ?wait, records = records.len(), suppressed = held, "Kafka delivery failed; the batch stays on disk");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(2));
        Ok(())
    }

    /// The next annotations and dead letters after the cursor, merged in
    /// sequence order, never past the detect cursor: a dead letter written
    /// at intake waits for the frames before it to be annotated, so the
    /// cursor cannot jump over them.
    fn next_records(&self) -> Result<Vec<Out>, ReplicateError> {
        let from = self.log.cursor(Cursor::Replicate)?;
        let to = if self.unbounded {
            // Injected fault (tests only): the pre-fix bound.
            self.log.bound(Cursor::Detect)?
        } else {
            self.log.bound(Cursor::Replicate)?
        };
        let n = BATCH;
        let anns = self.log.read_blobs(Area::Annotations, from, to, n)?;
        let dead = self.log.read_blobs(Area::DeadLetters, from, to, n)?;
        let mut out = Vec::with_capacity(n);
        let mut image_bytes = 0usize;
        let (mut a, mut d) = (anns.into_iter().peekable(), dead.into_iter().peekable());
        while out.len() < n && image_bytes < BATCH_IMAGE_BYTES {
            let take_a = match (a.peek(), d.peek()) {
                (Some((sa, _)), Some((sd, _))) => sa < sd,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_a {
                let Some((seq, json)) = a.next() else { break };
                match serde_json::from_slice::<FrameAnnotation>(&json) {
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

    fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, KafkaError> {
        enqueue(&self.producer, topic, key, payload, headers)
    }

    /// Produces a batch and waits for every delivery report. Returns every
    /// failed delivery (an image counts once, for all its chunks).
    async fn send_batch(&self, records: &[Out], gaps: &[(u64, GapRecord)]) -> Result<(), Vec<Failure>> {
        let mut futures: Vec<(DeliveryFuture, Part, &str, &'static str, u64)> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        let h = |k: &'static str, v: &str, hs: OwnedHeaders| hs.insert(Header { key: k, value: Some(v) });
        let cfg = &self.cfg;
        for r in records {
            match r {
                Out::Annotation { seq, camera, frame_id, model, json, image } => {
                    let part = Part::Annotation(*seq);
                    let headers = h(
                        header::SCHEMA,
                        &SCHEMA_VERSION.to_string(),
                        h(header::MODEL, model, h(header::FRAME_ID, frame_id, OwnedHeaders::new())),
                    );
                    match self.enqueue(&cfg.annotations_topic, camera, json, headers) {
                        Ok(f) => futures.push((f, part, &cfg.annotations_topic, "annotation", json.len() as u64)),
                        Err(e) => failures.push(Failure::new(part, &cfg.annotations_topic, &e)),
                    }
                    if let Some(img) = image {
                        let part = Part::Image(*seq);
                        let sha = hex::encode(Sha256::digest(&img.payload));
                        let parts = chunks(&img.payload, cfg.chunk_bytes as usize);
                        let count = parts.len().to_string();
                        for (i, chunk) in parts.iter().enumerate() {
                            let headers = h(
                                header::CHUNK_COUNT,
                                &count,
                                h(
                                    header::CHUNK_INDEX,
                                    &i.to_string(),
                                    h(
                                        header::SHA256,
                                        &sha,
                                        h(
                                            header::CONTENT_TYPE,
                                            &img.content_type,
                                            h(
                                                header::CAMERA,
                                                camera,
                                                h(header::FRAME_ID, frame_id, OwnedHeaders::new()),
                                            ),
                                        ),
                                    ),
                                ),
                            );
                            let kind = if i + 1 == parts.len() { "image" } else { "chunk" };
                            match self.enqueue(&cfg.images_topic, camera, chunk, headers) {
                                Ok(f) => futures.push((f, part, &cfg.images_topic, kind, chunk.len() as u64)),
                                Err(e) => {
                                    failures.push(Failure::new(part, &cfg.images_topic, &e));
                                    break;
                                }
                            }
                        }
                    }
                }
                Out::DeadLetter { seq, camera, frame_id, json } => {
                    let part = Part::DeadLetter(*seq);
                    let headers = h(header::FRAME_ID, frame_id, OwnedHeaders::new());
                    match self.enqueue(&cfg.dead_letters_topic, camera, json, headers) {
                        Ok(f) => futures.push((f, part, &cfg.dead_letters_topic, "dead_letter", json.len() as u64)),
                        Err(e) => failures.push(Failure::new(part, &cfg.dead_letters_topic, &e)),
                    }
                }
            }
        }
        for (id, g) in gaps {
            let part = Part::Gap(*id);
            let json = serde_json::to_vec(g).unwrap_or_default();
            let headers = h(header::REASON, g.reason.name(), OwnedHeaders::new());
            match self.enqueue(&cfg.gaps_topic, &g.gateway_id, &json, headers) {
                Ok(f) => futures.push((f, part, &cfg.gaps_topic, "gap", json.len() as u64)),
                Err(e) => failures.push(Failure::new(part, &cfg.gaps_topic, &e)),
            }
        }
        // Every delivery report must be a success.
        let mut counted: Vec<(&'static str, u64)> = Vec::new();
        for (f, part, topic, kind, bytes) in futures {
            match f.await {
                Ok(Ok(_)) => counted.push((kind, bytes)),
                Ok(Err((e, _))) => {
                    if !failures.iter().any(|x| x.part == part) {
                        failures.push(Failure::new(part, topic, &e));
                    }
                }
                Err(_) => {
                    if !failures.iter().any(|x| x.part == part) {
                        failures.push(Failure {
                            part,
                            topic: topic.to_owned(),
                            code: None,
                            error: "delivery report lost".into(),
                        });
                    }
                }
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
        Ok(())
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
