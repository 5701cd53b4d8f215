//! The image lane of the claim check: every sampled image, in sequence
//! order, from cursor `replicate_images`, beside the main lane (which then
//! carries annotations, dead letters and gap records only).
//!
//! # Promises
//!
//! - **Upload, then reference, then free, each durable**: an image at or
//!   over `min_bytes` is PUT to the store and acknowledged by it
//!   ([`Store::put_once`]: `If-None-Match: *`, `x-amz-checksum-sha256`)
//!   before its reference record is produced (acks=all, idempotent); the
//!   image is removed in the same log batch as the cursor moves past it,
//!   once Kafka has acknowledged the reference. A crash anywhere in between
//!   uploads again from the cursor, which finds the same object and
//!   produces the reference: no reference without its object, no second
//!   object. Images under `min_bytes` go in chunks, as without the claim
//!   check.
//! - **A store outage stalls images only**: this lane waits and backs off;
//!   the main lane (annotations, dead letters, gaps) does not wait for it.
//!   Images keep their order per camera in the images topic, so an image
//!   under the threshold behind one waiting for the store waits too.
//! - **Bounded**: at most `max_in_flight` uploads (and
//!   [`IN_FLIGHT_IMAGE_BYTES`] of images read and not yet handed on) and
//!   [`MAX_DELIVERIES`] images awaiting Kafka's reports; uploads paced to
//!   `max_bytes_per_second`.
//! - **Conflicts are reported, never overwritten**: different bytes at an
//!   image's key give up the image with an `undeliverable` gap record, a
//!   counter and a warning.
//! - **Turned off with images waiting**: the lane sends the images it
//!   still holds below `replicate` in chunks, then hands its cursor to the
//!   main lane, so nothing is lost when the claim check is switched off.

use super::part::{Failure, Part, Sent};
use super::producer::{enqueue_yielding, DeliveryFuture};
use super::store::{Store, StoreError, Stored};
use super::wire::{chunk_headers, with_header, ImageHead};
use super::{Replicate, ReplicateError, IN_FLIGHT_IMAGE_BYTES};
use crate::log::Cursor;
use crate::records::{header, Area, FrameRecord};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::error::KafkaError;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Images produced and waiting for their delivery reports, at most (they
/// hold no image bytes: librdkafka has its copy, a reference is small);
/// uploads in flight are bounded by `max_in_flight`.
const MAX_DELIVERIES: usize = 64;

/// The reference record of an image in the store (the payload of its
/// record in the images topic, header `claim_check = s3`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Reference {
    /// `s3`.
    pub claim_check: String,
    /// The frame's id.
    pub frame_id: String,
    /// Its camera.
    pub camera: String,
    /// The bucket.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// The image's size in bytes.
    pub size: u64,
    /// sha256 of the image, hex.
    pub sha256: String,
    /// MIME type of the image.
    pub content_type: String,
}

/// An image ready to be produced, in sequence order.
enum Ready {
    /// Sent in chunks (under the threshold, or the claim check off).
    Chunks(FrameRecord),
    /// In the store: its reference.
    Reference(Reference, Stored),
    /// Given up (a conflicting object at its key), with why.
    GiveUp(String),
}

/// One image taken from the log.
struct Job {
    seq: u64,
    bytes: usize,
    ready: Result<Ready, StoreError>,
}

/// One image handed to librdkafka, waiting for its reports.
struct Delivery {
    seq: u64,
    reports: VecDeque<(DeliveryFuture, Sent, u64)>,
    failure: Option<Failure>,
    give_up: Option<String>,
    reference: bool,
    /// Records and payload bytes handed to librdkafka.
    records: u64,
    wire_bytes: u64,
}

/// Where the lane is between rounds.
struct Round {
    uploads: FuturesOrdered<BoxFuture<'static, Job>>,
    deliveries: VecDeque<Delivery>,
    next: u64,
    held: usize,
    pace: Instant,
}

impl Replicate {
    /// The image lane (see the module's promises). With the claim check
    /// off, drains what it still holds and returns.
    pub(super) async fn run_images(&self, stop: &CancellationToken) -> Result<(), ReplicateError> {
        let store = match &self.cfg.claim_check {
            Some(c) => Store::new(c, self.log.gateway_id()).map_err(ReplicateError::Store)?,
            None if self.images_follow.load(Ordering::Relaxed) => return Ok(()),
            None => {
                let to = self.log.cursor(Cursor::Replicate)?;
                if self.log.cursor(Cursor::ReplicateImages)? < to {
                    tracing::info!("the claim check is off: the images its lane still holds go to Kafka in chunks");
                    self.image_lane(None, Some(to), stop).await?;
                }
                self.images_follow.store(true, Ordering::Relaxed);
                return Ok(());
            }
        };
        self.image_lane(Some(&store), None, stop).await
    }

    async fn image_lane(
        &self,
        store: Option<&Store>,
        until: Option<u64>,
        stop: &CancellationToken,
    ) -> Result<(), ReplicateError> {
        let max_in_flight = self.max_images_in_flight();
        let mut r = self.new_round()?;
        let mut failures: u32 = 0;
        let mut strikes: HashMap<Part, u32> = HashMap::new();
        let grace = super::grace(stop);
        tokio::pin!(grace);
        loop {
            let seen = self.log.generation();
            self.fill_images(&mut r, store, until, stop)?;
            if r.uploads.is_empty() && r.deliveries.is_empty() {
                // Idle: the cursor moves over the sequence numbers without
                // an image.
                if r.next > self.log.cursor(Cursor::ReplicateImages)? {
                    let mut b = self.log.batch();
                    b.set_cursor(Cursor::ReplicateImages, r.next);
                    self.log.apply(b)?;
                }
                if stop.is_cancelled() || until.is_some_and(|t| r.next >= t) {
                    return Ok(());
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.log.changed_since(seen) => {}
                }
                continue;
            }
            let room = !stop.is_cancelled() && r.uploads.len() < max_in_flight && r.deliveries.len() < MAX_DELIVERIES;
            let failed: Vec<Failure> = tokio::select! {
                Some(job) = r.uploads.next(), if !r.uploads.is_empty() => {
                    // Its bytes are with the store or librdkafka now.
                    r.held = r.held.saturating_sub(job.bytes);
                    match job.ready {
                        Ok(ready) => {
                            let d = self.produce_image(job.seq, ready).await;
                            r.deliveries.push_back(d);
                            continue;
                        }
                        Err(e) => {
                            self.store_failed(&e, failures);
                            Vec::new()
                        }
                    }
                }
                result = settle(r.deliveries.front_mut(), &self.cfg.images_topic), if !r.deliveries.is_empty() => {
                    let Some(d) = r.deliveries.pop_front() else { continue };
                    match result {
                        Ok(()) => {
                            failures = 0;
                            self.commit_image(&d)?;
                            continue;
                        }
                        Err(f) => vec![f],
                    }
                }
                _ = self.log.changed_since(seen), if room => continue,
                _ = &mut grace => return Ok(()),
            };
            let (failed, gave_up) = self.recover(&mut r, failed, &mut strikes).await?;
            if gave_up {
                continue;
            }
            failures = failures.saturating_add(1);
            let wait = Duration::from_millis(200).saturating_mul(1 << failures.min(8)).min(Duration::from_secs(15));
            if let Some(f) = failed.first() {
                if let Some(held) = self.warn.check("images") {
                    tracing::warn!(error = %f.error, retry_in = ?wait, suppressed = held, "Kafka delivery of an image failed; the images stay on disk");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn max_images_in_flight(&self) -> usize {
        self.cfg.claim_check.as_ref().map_or(4, |c| c.max_in_flight)
    }

    /// Takes images from the log while there is room, up to `until` (or the
    /// lane's bound), each prepared in sequence order.
    fn fill_images(
        &self,
        r: &mut Round,
        store: Option<&Store>,
        until: Option<u64>,
        stop: &CancellationToken,
    ) -> Result<(), ReplicateError> {
        let to = match until {
            Some(t) => t,
            None => self.log.bound(Cursor::ReplicateImages)?,
        };
        while !stop.is_cancelled()
            && r.uploads.len() < self.max_images_in_flight()
            && r.deliveries.len() < MAX_DELIVERIES
            && r.held < IN_FLIGHT_IMAGE_BYTES
            && r.next < to
        {
            let Some((seq, img)) = self.log.read_area_frames(Area::Images, r.next, to, 1)?.pop() else {
                r.next = to;
                break;
            };
            r.next = seq + 1;
            r.held += img.payload.len();
            let job = self.prepare(store, seq, img, &mut r.pace);
            r.uploads.push_back(job);
        }
        Ok(())
    }

    /// After a failure: what is produced is awaited (librdkafka must be
    /// done with it) and committed in order up to the first failure, what
    /// is not is dropped; records refused for good are given up. The round
    /// starts again from the cursor. Returns every failed delivery and
    /// whether something was given up.
    async fn recover(
        &self,
        r: &mut Round,
        mut failed: Vec<Failure>,
        strikes: &mut HashMap<Part, u32>,
    ) -> Result<(Vec<Failure>, bool), ReplicateError> {
        r.uploads = FuturesOrdered::new();
        while let Some(mut d) = r.deliveries.pop_front() {
            match settle(Some(&mut d), &self.cfg.images_topic).await {
                Ok(()) if failed.is_empty() => self.commit_image(&d)?,
                Ok(()) => {}
                Err(f) => failed.push(f),
            }
        }
        let (gave_up, _) = self.give_up_poison(&failed, strikes).await?;
        *r = self.new_round()?;
        Ok((failed, gave_up))
    }

    /// A fresh round from the lane's durable cursor.
    fn new_round(&self) -> Result<Round, ReplicateError> {
        Ok(Round {
            uploads: FuturesOrdered::new(),
            deliveries: VecDeque::new(),
            next: self.log.cursor(Cursor::ReplicateImages)?,
            held: 0,
            pace: Instant::now(),
        })
    }

    /// What the image at `seq` becomes: an upload paced to the rate limit
    /// (at or over the threshold, with a store), or chunks.
    fn prepare(
        &self,
        store: Option<&Store>,
        seq: u64,
        img: FrameRecord,
        pace: &mut Instant,
    ) -> BoxFuture<'static, Job> {
        let bytes = img.payload.len();
        let (Some(store), Some(cc)) = (store, self.cfg.claim_check.as_ref()) else {
            return Box::pin(std::future::ready(Job { seq, bytes, ready: Ok(Ready::Chunks(img)) }));
        };
        if (bytes as u64) < cc.min_bytes {
            return Box::pin(std::future::ready(Job { seq, bytes, ready: Ok(Ready::Chunks(img)) }));
        }
        let start = paced(pace, Instant::now(), bytes, cc.max_bytes_per_second);
        let sha256 = hex::encode(Sha256::digest(&img.payload));
        let key = store.key(&img.camera, seq, &sha256, &img.content_type);
        let reference = Reference {
            claim_check: header::S3.into(),
            frame_id: self.log.frame_id(seq),
            camera: img.camera,
            bucket: store.bucket().to_owned(),
            key: key.to_string(),
            size: bytes as u64,
            sha256,
            content_type: img.content_type,
        };
        let store = store.clone();
        Box::pin(async move {
            tokio::time::sleep_until(start).await;
            let ready = match store.put_once(&key, img.payload, &reference.sha256).await {
                Ok(stored) => Ok(Ready::Reference(reference, stored)),
                Err(e @ StoreError::Conflict { .. }) => Ok(Ready::GiveUp(e.to_string())),
                Err(e) => Err(e),
            };
            Job { seq, bytes, ready }
        })
    }

    /// Hands an image (its chunks or its reference) to librdkafka.
    async fn produce_image(&self, seq: u64, ready: Ready) -> Delivery {
        let mut d = Delivery {
            seq,
            reports: VecDeque::new(),
            failure: None,
            give_up: None,
            reference: false,
            records: 0,
            wire_bytes: 0,
        };
        match ready {
            Ready::Chunks(img) => {
                let (sent, failure) = self.enqueue_chunks(seq, &self.log.frame_id(seq), &img, false).await;
                d.reports.extend(sent);
                d.failure = failure;
            }
            Ready::Reference(r, stored) => {
                d.reference = true;
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                if stored == Stored::Created {
                    self.stats.stored_bytes.fetch_add(r.size, Ordering::Relaxed);
                }
                self.stats.store_up.store(true, Ordering::Relaxed);
                let json = serde_json::to_vec(&r).unwrap_or_default();
                let head = ImageHead {
                    frame_id: &r.frame_id,
                    camera: &r.camera,
                    content_type: &r.content_type,
                    sha256: &r.sha256,
                };
                let headers = with_header(header::CLAIM_CHECK, header::S3, chunk_headers(&head, 0, "1"));
                let topic = &self.cfg.images_topic;
                match enqueue_yielding(&self.producer, topic, &r.camera, &json, headers).await {
                    Ok(f) => d.reports.push_back((f, Sent::Image, json.len() as u64)),
                    Err(e) => d.failure = Some(Failure::new(Part::Image(seq), topic, &e)),
                }
            }
            Ready::GiveUp(why) => {
                d.give_up = Some(format!("image not uploaded: {why}"));
                self.stats.store_failures[0].fetch_add(1, Ordering::Relaxed);
                if let Some(held) = self.warn.check("store conflict") {
                    tracing::warn!(seq, error = %why, suppressed = held, "image not sent: a different object is at its key in the store");
                }
            }
        }
        d.records = d.reports.len() as u64;
        d.wire_bytes = d.reports.iter().map(|r| r.2).sum();
        d
    }

    /// Counts and reports a failed upload.
    fn store_failed(&self, e: &StoreError, failures: u32) {
        let k = match e.kind() {
            "conflict" => 0,
            "refused" => 1,
            _ => 2,
        };
        self.stats.store_failures[k].fetch_add(1, Ordering::Relaxed);
        self.stats.store_up.store(false, Ordering::Relaxed);
        if let Some(held) = self.warn.check(e.kind()) {
            tracing::error!(error = %e, failures, suppressed = held, "upload to the object store failed; images wait on disk (annotations keep flowing)");
        }
    }

    /// The cursor past an image Kafka has (or one given up), and the image
    /// freed, in one log batch.
    fn commit_image(&self, d: &Delivery) -> Result<(), ReplicateError> {
        let mut b = self.log.batch();
        match &d.give_up {
            Some(why) => b.undeliverable(Area::Images, d.seq, why.clone()),
            None => b.remove(Area::Images, d.seq),
        };
        b.set_cursor(Cursor::ReplicateImages, d.seq + 1);
        self.log.apply(b)?;
        if d.give_up.is_none() {
            self.stats.images.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes.fetch_add(d.wire_bytes, Ordering::Relaxed);
            if !d.reference {
                self.stats.chunks.fetch_add(d.records, Ordering::Relaxed);
            }
            if d.reference {
                self.stats.references.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// When an upload of `bytes` may start, at `now`, under a limit of
/// `rate` bytes per second (0: none): uploads start one after another's
/// share of time, so a backlog goes up at the rate, not in a burst. `pace`
/// is when the next one may start.
fn paced(pace: &mut Instant, now: Instant, bytes: usize, rate: u64) -> Instant {
    let start = (*pace).max(now);
    if rate > 0 {
        *pace = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
    }
    start
}

/// Waits for every report of an image (cancel-safe: reports are taken as
/// they resolve).
async fn settle(d: Option<&mut Delivery>, topic: &str) -> Result<(), Failure> {
    let Some(d) = d else { return Ok(()) };
    if let Some(f) = d.failure.take() {
        return Err(f);
    }
    while let Some(front) = d.reports.front_mut() {
        let result = (&mut front.0).await;
        d.reports.pop_front();
        match result {
            Ok(()) => {}
            Err(KafkaError::Canceled) => {
                let error = "delivery report lost".into();
                return Err(Failure { part: Part::Image(d.seq), topic: topic.to_owned(), code: None, error });
            }
            Err(e) => return Err(Failure::new(Part::Image(d.seq), topic, &e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_paced_to_the_rate_limit_and_idle_time_is_not_saved_up() {
        let t0 = Instant::now();
        let mut pace = t0;
        let mb = 1_000_000;
        // A backlog of three 2 MB images at 1 MB/s: they start 2 s apart.
        let starts: Vec<Duration> = (0..3).map(|_| paced(&mut pace, t0, 2 * mb, mb as u64) - t0).collect();
        assert_eq!(starts, [0, 2, 4].map(Duration::from_secs));
        // After a quiet minute the next one starts at once, and one
        // after it waits its share again (no burst from saved-up time).
        let later = t0 + Duration::from_secs(60);
        assert_eq!(paced(&mut pace, later, mb, mb as u64), later);
        assert_eq!(paced(&mut pace, later, mb, mb as u64), later + Duration::from_secs(1));
        // No limit: never held back.
        let mut free = t0;
        assert!((0..100).all(|_| paced(&mut free, t0, 10 * mb, 0) == t0));
    }
}
