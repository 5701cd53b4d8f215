//! Replicate: annotations, sampled images, dead letters and gap records to
//! Kafka, store-and-forward.
//!
//! Owns cursors `replicate` (annotations, dead letters and sampled images,
//! all in the frame sequence), `replicate_live` (the live lane, below) and
//! `replicate_gaps` (gap records), and the Kafka producer (librdkafka
//! through `rdkafka`, `acks=all`, `enable.idempotence=true`, zstd).
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
//!   are awaited, and everything from the cursors on is sent again after a
//!   capped backoff. So a crash or an outage re-sends at most what was in
//!   flight (consumers de-duplicate by `frame_id` and `chunk_index`).
//! - **Order per camera**: records are produced in sequence order with the
//!   camera id as key, through one idempotent producer, within each lane.
//! - **Live frames do not wait behind a backlog** (the live lane). When the
//!   uplink is (re)tried (start-up, after a failed round) with more than
//!   `replicate.live_lane_after` records waiting, the stage opens a live
//!   lane at the end of what it can read: `replicate_live` is set there,
//!   and every record from there on goes first, as it comes. The records
//!   below are the backlog; they follow, in sequence order, with header
//!   `lane = backfill`, at most [`BACKFILL_IN_FLIGHT`] batches at a time
//!   while live records are coming (every free slot of [`IN_FLIGHT`] after
//!   [`LIVE_QUIET`] without one), so a live record shares its partition
//!   queue with few of them. A live
//!   record is deleted as soon as it is acknowledged (retention follows
//!   `replicate`, which waits for the backlog), and `replicate_live` moves
//!   past it; when the backlog lane has sent everything below
//!   `replicate_live`, `replicate` jumps there and there is one lane again.
//!   So a camera's records are in sequence order within each lane, and the
//!   backfill header says which lane a record came by; `frame_id`'s
//!   sequence orders the two. `live_lane_after = 0` keeps one lane (strict
//!   order, live records wait for the backlog).
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
//!   stage drains it behind the live lane, while detect keeps appending.

mod producer;
pub mod reassemble;

pub use producer::{DeliveryFuture, KafkaProducer};

use crate::config::ReplicateConfig;
use crate::log::{Cursor, DurableLog, LogError};
use crate::records::Area;
use crate::records::{header, DeadLetter, FrameRecord, GapRecord, SCHEMA_VERSION};
use crate::util::RateLimiter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Records (annotations and dead letters, or gap records) per batch.
pub const BATCH: usize = 128;
/// Batches produced and not yet wholly acknowledged, at most.
pub const IN_FLIGHT: usize = 8;
/// Backfill batches in flight, at most, while a backlog drains behind the
/// live lane and live records are coming (one produced within
/// [`LIVE_QUIET`]): a live record shares its camera's partition queue with
/// them, so this bounds what it can wait behind. With no live record for
/// longer, the backlog may take every free slot.
pub const BACKFILL_IN_FLIGHT: usize = 2;
/// How long after its last record the live lane counts as quiet.
pub const LIVE_QUIET: Duration = Duration::from_secs(1);
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
    /// Records acknowledged in the backfill lane (a backlog sent behind
    /// the live lane).
    pub backfilled: AtomicU64,
    /// Times a live lane was opened in front of a backlog.
    pub lanes_opened: AtomicU64,
    /// A backlog is draining behind the live lane now.
    pub live_lane: AtomicBool,
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

/// Which lane a batch belongs to (see the module's promise on the live
/// lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// No backlog lane: the only one.
    Main,
    /// New records, first, while a backlog drains behind them.
    Live,
    /// The backlog behind the live lane (header `lane = backfill`).
    Backfill,
}

/// Where each lane reads next.
#[derive(Debug, Clone, Copy)]
struct Lanes {
    /// The main lane, or the live lane while a backlog drains.
    next: u64,
    /// Gap records (they always travel in the main or live lane).
    next_gap: u64,
    /// The backfill lane's next record, while a backlog drains behind the
    /// live lane; it reads up to the `replicate_live` cursor.
    backfill: Option<u64>,
    /// When the live lane last produced a batch.
    live_at: Option<std::time::Instant>,
}

/// A batch handed to librdkafka: its delivery reports to await, and where
/// the cursors go once they are all successes.
struct Pending {
    lane: Lane,
    /// (report, record, counter kind, payload bytes), in send order; taken
    /// from the front as they resolve, so waiting can be interrupted.
    reports: std::collections::VecDeque<(DeliveryFuture, Part, &'static str, u64)>,
    /// Successful reports seen so far (counter kind, payload bytes).
    counted: Vec<(&'static str, u64)>,
    /// Failed deliveries, and records librdkafka would not even take.
    failures: Vec<Failure>,
    /// Every record of the batch (an annotation with its image as two).
    parts: Vec<Part>,
    /// `replicate` (or `replicate_live`) cursor after this batch, if it
    /// holds records.
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
        let mut inflight: VecDeque<Pending> = VecDeque::new();
        // Where each lane reads next: ahead of the durable cursors by what
        // is in flight.
        let mut lanes = self.lanes()?;
        let grace = async {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        tokio::pin!(grace);
        loop {
            let seen = self.log.generation();
            self.fill(&mut lanes, &mut inflight, &stop).await?;
            let room = !stop.is_cancelled() && inflight.len() < IN_FLIGHT;
            let Some(front) = inflight.front_mut() else {
                if stop.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.log.changed_since(seen) => {}
                }
                continue;
            };
            // Waiting for the oldest batch gives way to new records (the
            // wait resumes where it was): a live record is produced at once,
            // not after the batch ahead of it is acknowledged.
            let settled = tokio::select! {
                r = self.settle(front) => r,
                _ = &mut grace => break,
                _ = self.log.changed_since(seen), if room => continue,
            };
            let Some(front) = inflight.pop_front() else { continue };
            let failed = match settled {
                Ok(()) => {
                    failures = 0;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.commit(&lanes, &front, &mut strikes)?;
                    continue;
                }
                Err(f) => f,
            };
            // A batch failed: the ones behind it are awaited (their records
            // are sent again from the cursors; librdkafka must be done with
            // them first), and their refusals count too.
            let mut failed = failed;
            let in_flight = inflight.iter().map(|p| p.records).sum::<usize>() + front.records;
            while let Some(mut p) = inflight.pop_front() {
                if let Err(more) = self.settle(&mut p).await {
                    failed.extend(more);
                }
            }
            let (gave_up, transient) = self.give_up_poison(&failed, &mut strikes).await?;
            // Again from the durable cursors (a live lane may open now: the
            // uplink is about to be tried again).
            lanes = self.lanes()?;
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

    /// How far the stage may read (exclusive): never past detect.
    fn read_bound(&self) -> Result<u64, ReplicateError> {
        Ok(if self.unbounded {
            // Injected fault (tests only): the pre-fix bound.
            self.log.bound(Cursor::Detect)?
        } else {
            self.log.bound(Cursor::Replicate)?
        })
    }

    /// The lanes from the durable cursors, with nothing in flight (start-up,
    /// after a failed round), opening the live lane if a backlog waits.
    /// Called again during an outage, it moves the live lane's start up to
    /// the end again, so what waits in the live lane stays near the bound.
    fn lanes(&self) -> Result<Lanes, ReplicateError> {
        let done = self.log.cursor(Cursor::Replicate)?;
        let live = self.log.cursor(Cursor::ReplicateLive)?;
        let mut lanes = Lanes {
            next: done.max(live),
            next_gap: self.log.cursor(Cursor::ReplicateGaps)?,
            backfill: (live > done).then_some(done),
            live_at: None,
        };
        self.open_live_lane(&mut lanes)?;
        self.stats.live_lane.store(lanes.backfill.is_some(), Ordering::Relaxed);
        Ok(lanes)
    }

    /// Opens a live lane when more than `replicate.live_lane_after` records
    /// wait to be read: `replicate_live` is set at the end of what can be
    /// read now, new records go first from there, and everything below
    /// (from where the backfill lane already was, or else from where the
    /// main lane was reading) is the backlog. No live-lane batch may be in
    /// flight (its cursor would move back).
    fn open_live_lane(&self, lanes: &mut Lanes) -> Result<(), ReplicateError> {
        let after = self.cfg.live_lane_after;
        let bound = self.read_bound()?;
        if after == 0 || bound.saturating_sub(lanes.next) <= after {
            return Ok(());
        }
        let mut b = self.log.batch();
        b.set_cursor(Cursor::ReplicateLive, bound);
        self.log.apply(b)?;
        let from = lanes.backfill.unwrap_or(lanes.next);
        tracing::info!(
            backlog = bound - from,
            live_from = bound,
            "a backlog waits: new records go first, the backlog follows in order behind them (header lane=backfill)"
        );
        self.stats.lanes_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.live_lane.store(true, Ordering::Relaxed);
        lanes.backfill = Some(from);
        lanes.next = bound;
        Ok(())
    }

    /// Produces batches while there is room: the main or live lane first,
    /// then the backfill lane, with at most [`BACKFILL_IN_FLIGHT`] of its
    /// batches in flight while live records are coming. A main lane that has fallen behind (the broker
    /// came back before any delivery timed out, or Kafka is slower than the
    /// cameras) opens the live lane here: its batches in flight stay below
    /// the backlog. When the backfill lane has nothing left and nothing
    /// below the live lane is in flight, the lanes merge.
    async fn fill(
        &self,
        lanes: &mut Lanes,
        inflight: &mut VecDeque<Pending>,
        stop: &CancellationToken,
    ) -> Result<(), ReplicateError> {
        // Not while live-lane batches of a lane just merged are in flight:
        // their commits would move `replicate_live` back.
        if lanes.backfill.is_none() && !inflight.iter().any(|p| p.lane == Lane::Live) {
            self.open_live_lane(lanes)?;
        }
        while !stop.is_cancelled() && inflight.len() < IN_FLIGHT {
            let held: usize = inflight.iter().map(|p| p.image_bytes).sum();
            if held >= IN_FLIGHT_IMAGE_BYTES {
                break;
            }
            let budget = IN_FLIGHT_IMAGE_BYTES - held;
            let records = self.next_records(lanes.next, self.read_bound()?, budget)?;
            let gaps = self.log.read_gaps(lanes.next_gap, self.log.bound(Cursor::ReplicateGaps)?, BATCH)?;
            if !records.is_empty() || !gaps.is_empty() {
                let lane = if lanes.backfill.is_some() { Lane::Live } else { Lane::Main };
                if lane == Lane::Live {
                    lanes.live_at = Some(std::time::Instant::now());
                }
                let p = self.produce(lane, records, gaps).await;
                lanes.next = p.records_end.unwrap_or(lanes.next);
                lanes.next_gap = p.gaps_end.unwrap_or(lanes.next_gap);
                let refused = !p.failures.is_empty();
                inflight.push_back(p);
                if refused {
                    break; // settle what is in flight, then retry from the cursors
                }
                continue;
            }
            let Some(from) = lanes.backfill else { break };
            let waiting = inflight.iter().filter(|p| p.lane == Lane::Backfill).count();
            let live_coming = lanes.live_at.is_some_and(|t| t.elapsed() < LIVE_QUIET);
            if live_coming && waiting >= BACKFILL_IN_FLIGHT {
                break;
            }
            let live = self.log.cursor(Cursor::ReplicateLive)?;
            let records = self.next_records(from, live, budget)?;
            if records.is_empty() {
                if inflight.iter().any(|p| p.lane != Lane::Live) {
                    break;
                }
                // Every record below the live lane's cursor is in Kafka:
                // the backlog lane's or acknowledged (and deleted) live.
                let mut b = self.log.batch();
                b.set_cursor(Cursor::Replicate, live);
                self.log.apply(b)?;
                lanes.backfill = None;
                self.stats.live_lane.store(false, Ordering::Relaxed);
                tracing::info!(at = live, "backlog drained: one lane again");
                continue;
            }
            let p = self.produce(Lane::Backfill, records, Vec::new()).await;
            lanes.backfill = Some(p.records_end.unwrap_or(from));
            let refused = !p.failures.is_empty();
            inflight.push_back(p);
            if refused {
                break;
            }
        }
        Ok(())
    }

    /// Moves the cursors past a wholly acknowledged batch, in one log
    /// batch. A live-lane batch above a backlog moves `replicate_live` and
    /// deletes its records itself (retention follows `replicate`, which
    /// waits for the backlog); every other batch moves `replicate`.
    fn commit(&self, lanes: &Lanes, p: &Pending, strikes: &mut HashMap<Part, u32>) -> Result<(), ReplicateError> {
        let mut b = self.log.batch();
        for part in &p.parts {
            strikes.remove(part);
        }
        if let Some(end) = p.records_end {
            if p.lane == Lane::Live && lanes.backfill.is_some() {
                b.set_cursor(Cursor::ReplicateLive, end);
                for part in p.parts.iter().filter(|k| !matches!(k, Part::Gap(_))) {
                    b.remove(part.area(), part.seq());
                }
            } else {
                b.set_cursor(Cursor::Replicate, end);
            }
        }
        if let Some(end) = p.gaps_end {
            b.set_cursor(Cursor::ReplicateGaps, end);
        }
        if p.lane == Lane::Backfill {
            self.stats.backfilled.fetch_add(p.records as u64, Ordering::Relaxed);
        }
        self.log.apply(b)?;
        Ok(())
    }

    /// The next annotations and dead letters in `[from, to)`, merged in
    /// sequence order; `to` never passes the detect cursor: a dead letter
    /// written at intake waits for the frames before it to be annotated, so
    /// the cursor cannot jump over them. Sampled images are read while
    /// their bytes stay under `image_budget` (at least one record is
    /// returned).
    fn next_records(&self, from: u64, to: u64, image_budget: usize) -> Result<Vec<Out>, ReplicateError> {
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
    /// memory is freed here. Backfill records carry header `lane =
    /// backfill`.
    async fn produce(&self, lane: Lane, records: Vec<Out>, gaps: Vec<(u64, GapRecord)>) -> Pending {
        let mut p = Pending {
            lane,
            reports: VecDeque::new(),
            counted: Vec::new(),
            failures: Vec::new(),
            parts: Vec::with_capacity(records.len() + gaps.len()),
            records_end: records.last().map(|r| r.seq() + 1),
            gaps_end: gaps.last().map(|(id, _)| id + 1),
            image_bytes: 0,
            records: records.len() + gaps.len(),
        };
        let h = |k: &'static str, v: &str, hs: OwnedHeaders| hs.insert(Header { key: k, value: Some(v) });
        let lane_of = |hs: OwnedHeaders| {
            if lane == Lane::Backfill {
                with_header(header::LANE, header::BACKFILL, hs)
            } else {
                hs
            }
        };
        let cfg = &self.cfg;
        for r in &records {
            match r {
                Out::Annotation { seq, camera, frame_id, model, json, image } => {
                    let part = Part::Annotation(*seq);
                    p.parts.push(part);
                    let headers = lane_of(annotation_headers(frame_id, model));
                    match enqueue_yielding(&self.producer, &cfg.annotations_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push_back((f, part, "annotation", json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.annotations_topic, &e)),
                    }
                    if let Some(img) = image {
                        let part = Part::Image(*seq);
                        p.parts.push(part);
                        p.image_bytes += img.payload.len();
                        let sha = hex::encode(Sha256::digest(&img.payload));
                        let parts = chunks(&img.payload, cfg.chunk_bytes as usize);
                        let count = parts.len().to_string();
                        for (i, chunk) in parts.iter().enumerate() {
                            let headers = lane_of(chunk_headers(frame_id, camera, &img.content_type, &sha, i, &count));
                            let kind = if i + 1 == parts.len() { "image" } else { "chunk" };
                            match enqueue_yielding(&self.producer, &cfg.images_topic, camera, chunk, headers).await {
                                Ok(f) => p.reports.push_back((f, part, kind, chunk.len() as u64)),
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
                    p.parts.push(part);
                    let headers = lane_of(h(header::FRAME_ID, frame_id, OwnedHeaders::new()));
                    match enqueue_yielding(&self.producer, &cfg.dead_letters_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push_back((f, part, "dead_letter", json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.dead_letters_topic, &e)),
                    }
                }
            }
        }
        for (id, g) in &gaps {
            let part = Part::Gap(*id);
            p.parts.push(part);
            let json = serde_json::to_vec(g).unwrap_or_default();
            let headers = h(header::REASON, g.reason.name(), OwnedHeaders::new());
            match enqueue_yielding(&self.producer, &cfg.gaps_topic, &g.gateway_id, &json, headers).await {
                Ok(f) => p.reports.push_back((f, part, "gap", json.len() as u64)),
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

    /// Waits for every delivery report of a batch. On success counts it;
    /// otherwise returns every failed delivery (an image counts once, for
    /// all its chunks). Cancel-safe: reports are taken from the batch as
    /// they resolve, so a wait given up is resumed by the next call.
    async fn settle(&self, p: &mut Pending) -> Result<(), Vec<Failure>> {
        while let Some(front) = p.reports.front_mut() {
            let result = (&mut front.0).await;
            let Some((_, part, kind, bytes)) = p.reports.pop_front() else { break };
            let error = match result {
                Ok(()) => {
                    p.counted.push((kind, bytes));
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
            if !p.failures.iter().any(|x| x.part == part) {
                p.failures.push(error);
            }
        }
        if !p.failures.is_empty() {
            return Err(std::mem::take(&mut p.failures));
        }
        for (kind, bytes) in p.counted.drain(..) {
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

impl crate::stage::Stage for Replicate {
    const NAME: &'static str = "replicate";
    type Error = ReplicateError;

    fn run(self, stop: CancellationToken) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        Replicate::run(self, stop)
    }

    fn task_failed(why: String) -> Self::Error {
        ReplicateError::Task(why)
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
