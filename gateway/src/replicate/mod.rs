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

mod batch;
mod context;
mod head;
mod images;
mod lanes;
mod part;
mod poison;
mod producer;
pub mod reassemble;
mod store;
mod wire;

pub use context::{KafkaContext, SecurityFailures};
pub use images::Reference;
pub use poison::{refusal, Refusal, POISON_STRIKES};
pub use producer::{enqueue_yielding, producer, DeliveryFuture, KafkaProducer};
pub use store::{Store, StoreError, Stored};
pub use wire::{annotation_headers, chunk_headers, chunks, ImageHead};

use batch::Pending;
use part::Part;

use crate::config::ReplicateConfig;
use crate::faults::Faults;
use crate::log::{DurableLog, LogError};
use crate::util::RateLimiter;
use rdkafka::error::KafkaError;
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
/// longer, the backlog may take every slot but one: the live lane's, so
/// the first live record after a quiet spell (the broker just came back)
/// is produced at once instead of after the oldest backfill batch.
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
    /// The claim check's store client could not be made.
    #[error(transparent)]
    Store(StoreError),
    /// The stage's task ended abnormally.
    #[error("{0}")]
    Task(String),
}

impl ReplicateError {
    /// True when retrying later may succeed without a change.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicateError::Log(e) => e.is_transient(),
            ReplicateError::Config(_) | ReplicateError::Store(_) | ReplicateError::Task(_) => false,
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
    /// SASL and TLS failures of the uplink, as its client reports them.
    pub security: Arc<SecurityFailures>,
    /// Claim check: images the store holds and a reference was produced
    /// for (uploaded now or found from an earlier attempt).
    pub stored: AtomicU64,
    /// Claim check: bytes uploaded.
    pub stored_bytes: AtomicU64,
    /// Claim check: reference records acknowledged by Kafka.
    pub references: AtomicU64,
    /// Claim check: failed uploads by kind (conflict, refused,
    /// unavailable).
    pub store_failures: [AtomicU64; 3],
    /// Claim check: the last upload succeeded.
    pub store_up: AtomicBool,
    /// Where the main lane's time goes, in nanoseconds: reading records
    /// from the log (index, segments, the annotation's head), handing them
    /// to librdkafka, and committing acknowledged batches (cursors and the
    /// deletions that follow them). `bench replicate` prints them per
    /// record next to the bare producer's whole cost.
    pub time_ns: StageTimes,
}

/// Time the main lane spent in each of its steps (see
/// [`ReplicateStats::time_ns`]).
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Reading the next records from the log.
    pub read: AtomicU64,
    /// Handing them to librdkafka.
    pub produce: AtomicU64,
    /// Committing acknowledged batches to the log.
    pub commit: AtomicU64,
}

impl StageTimes {
    /// Adds the time since `since` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The replicate stage.
pub struct Replicate {
    log: DurableLog,
    cfg: ReplicateConfig,
    producer: KafkaProducer,
    stats: Arc<ReplicateStats>,
    warn: RateLimiter,
    /// Injected faults (none in production).
    faults: Faults,
    /// The image lane has handed its cursor to the main lane (claim check
    /// off, nothing of its own left): `replicate` moves it too.
    images_follow: AtomicBool,
}

impl Replicate {
    /// A stage producing with `producer`.
    pub fn new(log: DurableLog, cfg: ReplicateConfig, producer: KafkaProducer) -> Self {
        Self {
            log,
            cfg,
            stats: Arc::new(ReplicateStats { security: producer.security_failures(), ..ReplicateStats::default() }),
            producer,
            warn: RateLimiter::new(Duration::from_secs(30)),
            faults: Faults::default(),
            images_follow: AtomicBool::new(false),
        }
    }

    /// The same stage with `faults` injected (tests and chaos runs only; the
    /// supervisor reads them from `VISION_GATEWAY_FAULTS`).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
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
        if self.faults.replicate_fail {
            return Err(ReplicateError::Task("injected fault: the replicate stage fails for good".into()));
        }
        // With the claim check off and nothing held back by its lane, the
        // main lane moves the image cursor from its first commit on.
        if self.cfg.claim_check.is_none()
            && self.log.cursor(crate::log::Cursor::ReplicateImages)?
                >= self.log.cursor(crate::log::Cursor::Replicate)?
        {
            self.images_follow.store(true, Ordering::Relaxed);
        }
        let main = self.run_main(&stop);
        let images = async {
            let r = self.run_images(&stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        };
        let (main, images) = tokio::join!(main, images);
        let _ = self.producer.flush(Duration::from_secs(2));
        images.and(main)
    }

    /// The main lane (annotations, dead letters, gap records, and sampled
    /// images when the claim check is off).
    async fn run_main(&self, stop: &CancellationToken) -> Result<(), ReplicateError> {
        let mut failures: u32 = 0;
        let mut strikes: HashMap<Part, u32> = HashMap::new();
        let mut inflight: VecDeque<Pending> = VecDeque::new();
        // Where each lane reads next: ahead of the durable cursors by what
        // is in flight.
        let mut lanes = self.lanes()?;
        let grace = grace(stop);
        tokio::pin!(grace);
        loop {
            let seen = self.log.generation();
            self.fill(&mut lanes, &mut inflight, stop).await?;
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
            // The backoff counts from when the failed batch was sent: a
            // delivery that timed out (the broker is away) has waited its
            // `message.timeout.ms` already, and more sleep would only leave
            // the gateway blind to the broker's return.
            let backoff = Duration::from_millis(200).saturating_mul(1 << failures.min(8)).min(Duration::from_secs(30));
            let wait = backoff.saturating_sub(front.sent_at.elapsed()).max(Duration::from_millis(200));
            if let Some(held) = self.warn.check("send") {
                tracing::warn!(error = %e, retry_in = ?wait, records = in_flight, suppressed = held, "Kafka delivery failed; the records stay on disk");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }
}

/// Resolves a few seconds after `stop`: what a lane in flight is given to
/// be acknowledged before the stage ends.
async fn grace(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
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
