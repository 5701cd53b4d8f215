//! The durable side of intake: each publish checked, then stored as a
//! frame (from the MQTT buffer it arrived in) or a dead letter, at most
//! once per redelivery (fingerprints), in group commits whose fdatasync
//! runs while the next batch is written; PUBACKs queued only after their
//! own batch's flush. A full log or a full disk pauses intake (the frames
//! stay on the broker) until there is room.

use super::validate::{self, Limits};
use super::{acks, Incoming, IntakeError, IntakeStats, MAX_BATCH, MAX_BATCH_BYTES};
use crate::log::{AppendOutcome, Dedup, DurableLog, FrameHead, LogError};
use crate::records::{Area, DeadLetter, QuarantineReason};
use crate::util::{now_ms, RateLimiter};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stores what the event loop hands over.
pub(super) struct Appender {
    pub(super) log: DurableLog,
    pub(super) acks: Arc<acks::AckQueue>,
    pub(super) stats: Arc<IntakeStats>,
    pub(super) limits: Limits,
    pub(super) topics: Vec<String>,
    pub(super) quarantine_max: u64,
    pub(super) warn: RateLimiter,
}

/// A batch whose flush (the fdatasync of its group commit) is running, with
/// the PUBACKs it releases.
struct Syncing {
    flush: tokio::task::JoinHandle<Result<(), LogError>>,
    acks: Vec<acks::PendingAck>,
}

impl Appender {
    /// Group commit, pipelined: while one batch's flush runs on a blocking
    /// thread, the next batch is received, checked and written; then the
    /// first flush is awaited, its PUBACKs queued, and the second batch's
    /// flush starts. One flush in flight at a time, so PUBACKs stay in
    /// arrival order and each is queued only after a flush that started
    /// after its frame was written returned.
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Incoming>,
        stop: CancellationToken,
    ) -> Result<(), IntakeError> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut syncing: Option<Syncing> = None;
        loop {
            let mut first = None;
            if let Some(s) = syncing.as_mut() {
                tokio::select! {
                    r = &mut s.flush => {
                        let acks = syncing.take().map(|s| s.acks).unwrap_or_default();
                        self.synced(r, acks)?;
                        continue;
                    }
                    m = rx.recv(), if !stop.is_cancelled() => match m {
                        Some(m) => first = Some(m),
                        None => {
                            self.settle(&mut syncing).await?;
                            return Ok(());
                        }
                    },
                    // From now on only the flush is awaited (above), then
                    // what was received is drained (below).
                    _ = stop.cancelled(), if !stop.is_cancelled() => continue,
                }
            }
            let first = match first {
                Some(m) => Some(m),
                None => tokio::select! {
                    m = rx.recv() => m,
                    // After stop, drain what was already received, then end.
                    _ = stop.cancelled() => rx.try_recv().ok(),
                },
            };
            let Some(first) = first else {
                self.settle(&mut syncing).await?;
                return Ok(());
            };
            let mut bytes = first.publish.payload.len();
            batch.push(first);
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.publish.payload.len();
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            let (acked, stored) = self.write(&batch, &stop, &mut syncing).await?;
            // Durable after this batch's flush: acknowledge then, in
            // arrival order. Never wait on rumqttc here: the event loop may
            // itself be waiting for this task to take the next frame. The
            // queue keeps every PUBACK, in order, until rumqttc has room
            // (see `acks`); those of a connection lost meanwhile are
            // discarded there (the broker redelivers).
            let acks = acks_of(&batch[acked..stored]);
            let stored = stored - acked;
            batch.clear();
            self.settle(&mut syncing).await?;
            if stored > 0 {
                let log = self.log.clone();
                let flush = tokio::task::spawn_blocking(move || log.flush_blocking());
                syncing = Some(Syncing { flush, acks });
            }
            if stored == 0 && stop.is_cancelled() {
                self.settle(&mut syncing).await?;
                return Ok(());
            }
        }
    }

    /// Writes a batch in order until it is written or `stop` comes while
    /// waiting for room. Returns `(acked, stored)`: `batch[..acked]` was
    /// flushed and acknowledged already (intake waited for room mid-batch),
    /// `batch[acked..stored]` is written, not yet flushed.
    async fn write(
        &self,
        batch: &[Incoming],
        stop: &CancellationToken,
        syncing: &mut Option<Syncing>,
    ) -> Result<(usize, usize), IntakeError> {
        let (mut stored, mut acked) = (0, 0);
        while stored < batch.len() {
            if syncing.as_ref().is_some_and(|s| s.flush.is_finished()) {
                self.settle(syncing).await?;
            }
            let e = match self.store(&batch[stored].publish)? {
                None => {
                    stored += 1;
                    continue;
                }
                Some(e) => e,
            };
            // No room. What this batch wrote is made durable and
            // acknowledged first: consumers read only durable records,
            // so until then they could not free the room it waits for.
            self.settle(syncing).await?;
            if stored > acked {
                let log = self.log.clone();
                let r = tokio::task::spawn_blocking(move || log.flush_blocking()).await;
                self.synced(r, acks_of(&batch[acked..stored]))?;
                acked = stored;
            }
            if !self.wait_for_room(e, stop).await? {
                break; // stopped while waiting for room
            }
        }
        Ok((acked, stored))
    }

    /// Waits for the flush in flight, if any, and queues its PUBACKs.
    async fn settle(&self, syncing: &mut Option<Syncing>) -> Result<(), IntakeError> {
        if let Some(s) = syncing.take() {
            let r = s.flush.await;
            self.synced(r, s.acks)?;
        }
        Ok(())
    }

    /// A flush returned: on success its PUBACKs are queued; on failure none
    /// is (the broker redelivers those frames) and intake stops.
    fn synced(
        &self,
        r: Result<Result<(), LogError>, tokio::task::JoinError>,
        acks: Vec<acks::PendingAck>,
    ) -> Result<(), IntakeError> {
        let flushed =
            r.map_err(|e| LogError::Io { path: self.log.path().to_path_buf(), source: std::io::Error::other(e) })?;
        flushed?;
        self.acks.push(acks, &self.stats);
        Ok(())
    }

    /// Stores one publish as a frame or a dead letter. Returns the error
    /// if there is no room for it (a full log or a full disk; nothing
    /// stored): the caller waits for room and tries again.
    fn store(&self, p: &Publish) -> Result<Option<LogError>, IntakeError> {
        let arrival = Arrival::of(p, &self.topics, self.limits);
        let result = match (&arrival.camera, arrival.checked) {
            (Some(camera), Ok(c)) => {
                let head = FrameHead {
                    camera,
                    content_type: c.format.content_type(),
                    received_at_ms: arrival.received_at_ms,
                    captured_at_ms: arrival.captured_at_ms,
                    camera_seq: arrival.camera_seq,
                };
                self.log.append_payload_once(head, &p.payload, arrival.fingerprint, arrival.dedup).inspect(|o| {
                    if matches!(o, AppendOutcome::Stored(_)) {
                        self.stats.stored.fetch_add(1, Ordering::Relaxed);
                        self.stats.stored_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    }
                })
            }
            (_, checked) => self.quarantine(p, &arrival, checked.err().unwrap_or(QuarantineReason::UnknownTopic)),
        };
        match result {
            Ok(outcome) => {
                self.stored(outcome, &arrival.topic, p.dup);
                Ok(None)
            }
            Err(e @ (LogError::Full { .. } | LogError::NoSpace { .. })) => Ok(Some(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a dead letter (its payload kept while the dead-letter area is
    /// under `mqtt.quarantine_max_bytes`) and warns, rate-limited.
    fn quarantine(&self, p: &Publish, arrival: &Arrival, reason: QuarantineReason) -> Result<AppendOutcome, LogError> {
        let used = self.log.area_stats(Area::DeadLetters).bytes;
        let keep = used + p.payload.len() as u64 <= self.quarantine_max;
        let d = DeadLetter {
            camera_seq: arrival.camera_seq,
            captured_at_ms: arrival.captured_at_ms,
            topic: arrival.topic.clone(),
            camera: arrival.camera.clone(),
            reason,
            size: p.payload.len() as u64,
            received_at_ms: arrival.received_at_ms,
            payload_kept: keep,
        };
        let blob = d.encode(keep.then_some(&p.payload[..]));
        let r = self.log.append_dead_letter_once(&blob, arrival.fingerprint, arrival.dedup);
        if let Ok(AppendOutcome::Stored(a)) = &r {
            self.stats.quarantined[reason as usize].fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.warn.check(reason.name()) {
                tracing::warn!(
                    reason = reason.name(),
                    topic = %arrival.topic,
                    size = p.payload.len(),
                    frame_id = %a.frame_id,
                    suppressed = held,
                    "frame quarantined"
                );
            }
        }
        r
    }

    /// A publish stored (or recognised as stored before): intake is no
    /// longer paused.
    fn stored(&self, outcome: AppendOutcome, topic: &str, dup: bool) {
        self.stats.blocked.store(false, Ordering::Relaxed);
        if self.stats.disk_full.swap(false, Ordering::Relaxed) {
            tracing::info!("disk space is back: intake resumes");
        }
        if let AppendOutcome::Duplicate(seq) = outcome {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.warn.check("duplicate") {
                tracing::info!(seq, topic = %topic, dup, suppressed = held, "publish delivered again; already stored, acknowledged without storing");
            }
        }
    }

    /// After a write refused for lack of room: waits for the log's budget
    /// to free up, or a second on a full disk (space freed by another
    /// program comes with no signal). False if `stop` came first; any other
    /// error is returned.
    async fn wait_for_room(&self, e: LogError, stop: &CancellationToken) -> Result<bool, IntakeError> {
        match e {
            LogError::Full { needed, used, max } => {
                if !self.stats.blocked.swap(true, Ordering::Relaxed) {
                    tracing::warn!(used, max, needed, "log full: intake paused, frames stay on the broker");
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(false),
                    _ = self.log.wait_for_space(needed) => {}
                }
                tracing::info!("log space freed: intake resumes");
            }
            LogError::NoSpace { path, free } => {
                self.stats.disk_free.store(free, Ordering::Relaxed);
                self.stats.disk_full.store(true, Ordering::Relaxed);
                if let Some(held) = self.warn.check("disk_full") {
                    tracing::warn!(
                        path = %path.display(),
                        free,
                        suppressed = held,
                        "disk full: intake paused, frames stay on the broker; the backlog keeps draining"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            e => return Err(e.into()),
        }
        Ok(true)
    }
}

/// The PUBACKs of stored publishes, in arrival order.
fn acks_of(stored: &[Incoming]) -> Vec<acks::PendingAck> {
    stored
        .iter()
        .filter(|m| m.publish.qos == QoS::AtLeastOnce)
        .map(|m| acks::PendingAck { pkid: m.publish.pkid, connection: m.connection })
        .collect()
}

/// What intake knows of a publish before storing it.
struct Arrival {
    received_at_ms: u64,
    topic: String,
    /// The camera id, if a filter matched the topic.
    camera: Option<String>,
    /// The payload's checks (or why the topic is refused).
    checked: Result<validate::Checked, QuarantineReason>,
    captured_at_ms: Option<u64>,
    camera_seq: Option<u64>,
    /// What identifies it across redeliveries.
    fingerprint: u64,
    /// Whether it may be matched against recent fingerprints.
    dedup: Dedup,
}

impl Arrival {
    fn of(p: &Publish, topics: &[String], limits: Limits) -> Self {
        let received_at_ms = now_ms();
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let (camera, checked) = match validate::camera_id(topics, &topic) {
            Ok(c) => (Some(c.to_owned()), validate::check_payload(&p.payload, limits)),
            Err(why) => (None, Err(why)),
        };
        let (captured_at_ms, camera_seq) = metadata(p);
        let fingerprint = fingerprint(p, &topic, camera_seq, captured_at_ms);
        let dedup = if may_be_duplicate(p, camera_seq) { Dedup::Check } else { Dedup::Remember };
        Self { received_at_ms, topic, camera, checked, captured_at_ms, camera_seq, fingerprint, dedup }
    }
}

/// What identifies a publish across redeliveries: topic, payload (length
/// and CRC-32) and the camera's `camera_seq`/`captured_at_ms`; a broker's
/// redelivery and a camera's own retry carry the same. Stable across
/// versions (a fingerprint written before an upgrade still matches).
fn fingerprint(p: &Publish, topic: &str, camera_seq: Option<u64>, captured_at_ms: Option<u64>) -> u64 {
    let mut meta = crc32fast::Hasher::new();
    meta.update(topic.as_bytes());
    meta.update(&(p.payload.len() as u64).to_le_bytes());
    for v in [camera_seq, captured_at_ms] {
        meta.update(&v.map_or([0xff; 9], |x| {
            let mut b = [0u8; 9];
            b[1..].copy_from_slice(&x.to_le_bytes());
            b
        }));
    }
    (u64::from(crc32fast::hash(&p.payload)) << 32) | u64::from(meta.finalize())
}

/// Whether a publish may be matched against recent fingerprints: always
/// when the camera numbers its frames, otherwise only a publish the broker
/// marks as a redelivery (DUP), since a still scene can give two
/// byte-identical frames without a `camera_seq`.
fn may_be_duplicate(p: &Publish, camera_seq: Option<u64>) -> bool {
    camera_seq.is_some() || p.dup
}

/// Capture time and camera sequence from MQTT 5 user properties
/// (`captured_at_ms`, `camera_seq`), if the camera sends them.
fn metadata(p: &Publish) -> (Option<u64>, Option<u64>) {
    let mut captured = None;
    let mut seq = None;
    if let Some(props) = &p.properties {
        for (k, v) in &props.user_properties {
            match k.as_str() {
                "captured_at_ms" => captured = v.trim().parse().ok(),
                "camera_seq" => seq = v.trim().parse().ok(),
                _ => {}
            }
        }
    }
    (captured, seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Cursor, LogOptions, WhenFull};

    fn jpeg(seed: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(160, 160, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed.wrapping_mul(97)) as u8;
            image::Rgb([v, v.rotate_left(3), v.rotate_left(5)])
        });
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        img.write_with_encoder(enc).unwrap();
        out
    }

    /// A batch that fills the log part-way: what it stored is flushed and
    /// acknowledged before intake waits for room, so the consumer can read
    /// it and free the room (it reads only durable records); before, the
    /// consumer waited for those records and intake for room, for ever.
    #[tokio::test]
    async fn a_batch_that_fills_the_log_is_made_durable_before_intake_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = (0..12).map(jpeg).collect();
        let size = frames[0].len() as u64;
        let mut o = LogOptions::new(dir.path(), "gw-test");
        o.index_reserve = 0;
        drop(DurableLog::open(o.clone()).unwrap());
        let base = DurableLog::open(o.clone()).unwrap().stats().unwrap().used_bytes;
        o.max_bytes = base + 4 * size + size / 2;
        o.when_full = WhenFull::Block;
        o.segment_bytes = Some(size * 2);
        let log = DurableLog::open(o).unwrap();
        let stats = Arc::new(IntakeStats::default());
        let acks = Arc::new(acks::AckQueue::default());
        let appender = Appender {
            log: log.clone(),
            acks: acks.clone(),
            stats: stats.clone(),
            limits: Limits { max_bytes: 1 << 20, max_pixels: 1 << 20 },
            topics: vec!["cameras/+/frames".into()],
            quarantine_max: 0,
            warn: RateLimiter::new(Duration::from_secs(10)),
        };
        // Everything is waiting before the appender starts: one batch.
        let (tx, rx) = mpsc::channel(64);
        for (i, f) in frames.iter().enumerate() {
            let mut publish = Publish::new("cameras/a/frames", QoS::AtLeastOnce, f.clone(), None);
            publish.pkid = i as u16 + 1;
            tx.send(Incoming { publish, connection: 1 }).await.unwrap();
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(appender.run(rx, stop.clone()));
        // Intake fills the log and waits for room before anything is read.
        tokio::time::timeout(Duration::from_secs(30), async {
            while !stats.blocked.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("intake paused on the full log");
        let stored = stats.stored.load(Ordering::Relaxed);
        assert!(stored < frames.len() as u64, "{stored} of {} stored before the pause", frames.len());
        let mut reader = log.frame_reader().unwrap();
        let mut read = 0;
        while read < frames.len() {
            let batch = tokio::time::timeout(Duration::from_secs(30), reader.next_frames(2))
                .await
                .expect("intake made what it stored durable while it waited for room")
                .unwrap();
            read += batch.records.len();
            let mut b = log.batch();
            b.set_cursor(Cursor::Detect, batch.upto);
            log.apply(b).unwrap();
        }
        drop(tx);
        stop.cancel();
        task.await.unwrap().unwrap();
        let pkids: Vec<u16> = std::iter::from_fn(|| acks.take_front()).map(|a| a.pkid).collect();
        assert_eq!(pkids, (1..=12).collect::<Vec<u16>>(), "every frame acknowledged once, in order");
        assert_eq!(log.counts().gaps_written, 0);
    }

    #[test]
    fn metadata_from_user_properties() {
        let mut p = Publish::new("cameras/a/frames", QoS::AtLeastOnce, vec![1u8], None);
        assert_eq!(metadata(&p), (None, None));
        p.properties = Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
            user_properties: vec![("captured_at_ms".into(), "1700".into()), ("camera_seq".into(), "42".into())],
            ..Default::default()
        });
        assert_eq!(metadata(&p), (Some(1700), Some(42)));
    }
}
