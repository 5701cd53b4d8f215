//! Intake: camera frames from MQTT into the durable log.
//!
//! Owns the MQTT session (rumqttc, MQTT 5, QoS 1, persistent session with
//! `clean_start = false` and a long session expiry) and the checks applied
//! to every payload before it is stored.
//!
//! # Promises
//!
//! - **A frame acknowledged is a frame on disk.** Acknowledgements are
//!   manual: a batch of frames is appended, the log is flushed (one fsync,
//!   group commit, overlapped with writing the next batch), and only then
//!   are their PUBACKs queued, in the order the frames arrived (see [`acks`]: never dropped while their connection
//!   lives, so a redelivery always falls inside the log's fingerprint
//!   window). Frames received on a connection that has since dropped
//!   are stored but not acknowledged: the broker redelivers them on the new
//!   connection. A redelivered frame that was already stored is recognised
//!   by its fingerprint and acknowledged without being stored again, so
//!   one camera frame gets one frame id (see [`DurableLog::append_frame_once`]).
//! - **Bounded memory.** The broker may have at most `mqtt.receive_maximum`
//!   unacknowledged frames in flight to us (MQTT 5 receive maximum), so the
//!   queue between the event loop and the appender never holds more.
//! - **Backpressure.** When the log is at its budget with `when_full =
//!   "block"`, the appender waits for space and acknowledges nothing; the
//!   broker stops sending after `receive_maximum` frames and keeps the rest
//!   in our session. Intake resumes by itself when space frees. The event
//!   loop keeps running meanwhile, so keep-alives go on.
//! - **Bad input never stops intake.** Unknown topics, empty, oversize,
//!   non-image, truncated and decompression-bomb payloads are quarantined
//!   (a dead-letter record in the frame sequence, payload kept up to
//!   `mqtt.quarantine_max_bytes`), counted by reason, logged at a limited
//!   rate, and acknowledged.
//! - **Reconnects** use capped exponential backoff with jitter.
//! - **Shutdown**: on cancellation the event loop stops reading first; the
//!   appender stores and flushes what was already received, the
//!   acknowledgements are sent and the session is disconnected cleanly.

mod acks;
mod tls;
pub mod validate;

use crate::config::MqttConfig;
use crate::log::{DurableLog, FrameHead, LogError, Once};
use crate::records::Area;
use crate::records::DeadLetter;
use crate::records::QuarantineReason;
use crate::util::{now_ms, RateLimiter};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use validate::Limits;

/// Frames appended per group commit at most.
const MAX_BATCH: usize = 64;
/// Payload bytes per group commit at most: frames held in memory between
/// their arrival and their flush stay bounded whatever their size.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Capacity of rumqttc's request channel (acks, subscribes); PUBACKs
/// beyond it wait in order in [`acks::AckQueue`].
const ACK_QUEUE: usize = 8192;

/// What stops intake.
#[derive(Debug, Error)]
pub enum IntakeError {
    /// The TLS files are unusable.
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// The log failed (not "full": that only pauses intake).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The appender task ended unexpectedly.
    #[error("intake appender stopped: {0}")]
    Appender(String),
}

impl IntakeError {
    /// True when retrying later may succeed without a change.
    pub fn is_transient(&self) -> bool {
        match self {
            IntakeError::Log(e) => e.is_transient(),
            IntakeError::Tls(_) | IntakeError::Appender(_) => false,
        }
    }
}

/// Live counters of the intake stage (read by metrics and tests).
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Publishes received from the broker (including redeliveries).
    pub received: AtomicU64,
    /// Frames stored in the log.
    pub stored: AtomicU64,
    /// Payload bytes of stored frames.
    pub stored_bytes: AtomicU64,
    /// PUBACKs handed to the MQTT client after durability, in order.
    pub acked: AtomicU64,
    /// PUBACKs of durable frames waiting for room in the MQTT client's
    /// request channel (in order; see [`acks`]).
    pub acks_pending: AtomicU64,
    /// PUBACKs discarded because their connection was lost before they
    /// could be sent (the broker delivers those frames again).
    pub acks_discarded: AtomicU64,
    /// Quarantined frames, by reason (index of [`QuarantineReason::ALL`]).
    pub quarantined: [AtomicU64; QuarantineReason::COUNT],
    /// Successful connections (first one included).
    pub connects: AtomicU64,
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Subscriptions acknowledged on the current connection.
    pub subscribed: AtomicBool,
    /// Waiting for log space now (`block` policy).
    pub blocked: AtomicBool,
    /// Waiting for free space on the log's file system now (below
    /// `log.reserve` free; see `log/space.rs`).
    pub disk_full: AtomicBool,
    /// Bytes free on the log's file system when intake last found it full.
    pub disk_free: AtomicU64,
    /// Events the MQTT event loop returned (keep-alives and reconnect
    /// attempts included): the loop's heartbeat, for the watchdog.
    pub polls: AtomicU64,
    /// Publishes the broker delivered again that were already stored
    /// (acknowledged, not stored twice).
    pub duplicates: AtomicU64,
}

impl IntakeStats {
    /// Quarantine counts by reason name.
    pub fn quarantined_by_reason(&self) -> BTreeMap<&'static str, u64> {
        QuarantineReason::ALL
            .iter()
            .map(|r| (r.name(), self.quarantined[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A publish handed from the event loop to the appender, with the
/// connection it arrived on.
struct Incoming {
    publish: Publish,
    connection: u64,
}

/// The intake stage.
pub struct Intake {
    cfg: MqttConfig,
    log: DurableLog,
    stats: Arc<IntakeStats>,
}

impl Intake {
    /// A stage that will read from the broker in `cfg` into `log`.
    pub fn new(cfg: MqttConfig, log: DurableLog) -> Self {
        Self { cfg, log, stats: Arc::new(IntakeStats::default()) }
    }

    /// Its live counters.
    pub fn stats(&self) -> Arc<IntakeStats> {
        self.stats.clone()
    }

    fn options(&self) -> Result<MqttOptions, IntakeError> {
        let c = &self.cfg;
        let mut o = MqttOptions::new(&c.client_id, &c.broker.host, c.broker.port);
        o.set_keep_alive(c.keep_alive.max(Duration::from_secs(5)));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(u32::try_from(c.session_expiry.as_secs()).unwrap_or(u32::MAX)));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(c.receive_maximum));
        // The broker must be able to deliver a frame up to twice the limit
        // so that oversize frames reach us and are quarantined and counted
        // (an MQTT 5 broker silently drops packets above this size).
        let packet = c.max_frame_bytes.saturating_mul(2).saturating_add(64 << 10).min(256 << 20);
        o.set_max_packet_size(Some(u32::try_from(packet).unwrap_or(u32::MAX)));
        // Acks never wait for room: the appender queues them without
        // blocking (see `Appender::run`), so this channel only needs to hold
        // the acks of frames not yet acknowledged, which the broker bounds
        // by the receive maximum (with a wide margin for brokers that
        // overshoot it after a session resume, as mosquitto 2.0.11 does).
        o.set_request_channel_capacity(ACK_QUEUE);
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            o.set_credentials(u.clone(), p.expose().to_owned());
        } else if let Some(u) = &c.username {
            o.set_credentials(u.clone(), "");
        }
        if let Some(t) = &c.tls {
            let cfg = tls::client_config(t)?;
            o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(cfg)));
        } else if c.broker.tls {
            return Err(IntakeError::Tls("mqtts:// without [mqtt.tls]".into()));
        }
        Ok(o)
    }

    /// Runs until `stop` is cancelled or the log fails.
    ///
    /// # Errors
    /// [`IntakeError`] when TLS files are unusable or the log fails for good.
    pub async fn run(self, stop: CancellationToken) -> Result<(), IntakeError> {
        let opts = self.options()?;
        let (client, eventloop) = AsyncClient::new(opts, ACK_QUEUE);
        let (tx, rx) = mpsc::channel::<Incoming>(usize::from(self.cfg.receive_maximum) * 2 + 8);
        let connection = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(acks::AckQueue::default());
        let mut sender = tokio::spawn(acks::send(acks.clone(), client.clone(), connection.clone(), self.stats.clone()));
        let appender = Appender {
            log: self.log.clone(),
            acks: acks.clone(),
            stats: self.stats.clone(),
            limits: Limits { max_bytes: self.cfg.max_frame_bytes, max_pixels: self.cfg.max_pixels },
            topics: self.cfg.topics.clone(),
            quarantine_max: self.cfg.quarantine_max_bytes,
            warn: RateLimiter::new(Duration::from_secs(10)),
        };
        let append_stop = CancellationToken::new();
        let mut appender = tokio::spawn(appender.run(rx, append_stop.clone()));
        let mut events = EventTask {
            eventloop,
            client: client.clone(),
            acks: acks.clone(),
            stats: self.stats.clone(),
            connection,
            topics: self.cfg.topics.clone(),
            max_backoff: self.cfg.reconnect_max_backoff,
            warn: RateLimiter::new(Duration::from_secs(30)),
        };

        // Read until told to stop (or the appender fails).
        let outcome = tokio::select! {
            r = events.read(tx, &stop) => r,
            r = &mut appender => {
                sender.abort();
                return match r {
                    Ok(r) => r,
                    Err(e) => Err(IntakeError::Appender(e.to_string())),
                };
            }
        };
        // Intake stops first: no more reads. The appender stores and acks
        // what it already has; if it is blocked on a full log it gives up
        // (those frames are not acked, the broker redelivers them).
        append_stop.cancel();
        let appended = match appender.await {
            Ok(r) => r,
            Err(e) => Err(IntakeError::Appender(e.to_string())),
        };
        // The PUBACKs still queued go out before the DISCONNECT.
        acks.close();
        events.send_acks(&mut sender).await;
        sender.abort();
        events.disconnect().await;
        self.stats.connected.store(false, Ordering::Relaxed);
        self.stats.subscribed.store(false, Ordering::Relaxed);
        outcome.and(appended)
    }
}

struct EventTask {
    eventloop: EventLoop,
    client: AsyncClient,
    acks: Arc<acks::AckQueue>,
    stats: Arc<IntakeStats>,
    connection: Arc<AtomicU64>,
    topics: Vec<String>,
    max_backoff: Duration,
    warn: RateLimiter,
}

impl EventTask {
    async fn read(&mut self, tx: mpsc::Sender<Incoming>, stop: &CancellationToken) -> Result<(), IntakeError> {
        let mut failures: u32 = 0;
        loop {
            let ev = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                ev = self.eventloop.poll() => ev,
            };
            self.stats.polls.fetch_add(1, Ordering::Relaxed);
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    {
                        let _gate = self.acks.gate();
                        self.connection.fetch_add(1, Ordering::SeqCst);
                    }
                    let n = self.stats.connects.load(Ordering::Relaxed) + 1;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    tracing::info!(
                        connection = n,
                        session_present = ack.session_present,
                        "connected to the MQTT broker"
                    );
                    let subs = self.topics.iter().map(|t| rumqttc::v5::mqttbytes::v5::Filter::new(t, QoS::AtLeastOnce));
                    if let Err(e) = self.client.try_subscribe_many(subs) {
                        tracing::error!(error = %e, "cannot queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as C;
                    let ok =
                        ack.return_codes.iter().all(|c| matches!(c, C::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)));
                    if ok {
                        self.stats.subscribed.store(true, Ordering::Relaxed);
                        tracing::info!(topics = ?self.topics, "subscribed with QoS 1");
                    } else {
                        tracing::error!(codes = ?ack.return_codes, topics = ?self.topics, "the broker refused or downgraded the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let connection = self.connection.load(Ordering::SeqCst);
                    // The channel is full while the appender waits for log
                    // space; stop must still end the read (the frame is not
                    // acknowledged, the broker redelivers it).
                    let sent = tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(()),
                        r = tx.send(Incoming { publish, connection }) => r,
                    };
                    if sent.is_err() {
                        return Ok(()); // the appender ended; its result tells why
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    tracing::warn!(reason = ?d.reason_code, "the broker closed the session");
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acks.written(),
                Ok(_) => {}
                Err(e) => {
                    self.retire_connection();
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.stats.subscribed.store(false, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures, self.max_backoff);
                    if let Some(held) = self.warn.check("mqtt") {
                        tracing::warn!(error = %e, retry_in = ?wait, suppressed = held, "MQTT connection failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// The connection is lost: PUBACKs of its frames must not reach the
    /// next one (a packet id names another publish there). rumqttc dropped
    /// the PUBACKs in its channel when the connection failed; under the
    /// gate, the connection number moves on (the sender discards what is
    /// still queued for the old one) and the channel is purged again of
    /// anything the sender handed over in between.
    fn retire_connection(&mut self) {
        let _gate = self.acks.gate();
        self.connection.fetch_add(1, Ordering::SeqCst);
        self.eventloop.clean();
    }

    /// At shutdown: keeps the event loop turning until the sender has
    /// handed over every queued PUBACK (bounded time). Publishes read
    /// meanwhile are not stored and not acknowledged: the broker keeps them.
    async fn send_acks(&mut self, sender: &mut tokio::task::JoinHandle<()>) {
        if !self.stats.connected.load(Ordering::Relaxed) {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut *sender => return,
                ev = self.eventloop.poll() => match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acks.written(),
                    Ok(_) => {}
                    Err(_) => {
                        self.retire_connection();
                        return;
                    }
                }
            }
        }
    }

    /// Sends the queued acknowledgements and a clean DISCONNECT (bounded time).
    async fn disconnect(&mut self) {
        if !self.stats.connected.load(Ordering::Relaxed) {
            return;
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                ev = self.eventloop.poll() => match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Capped exponential backoff with jitter: 100 ms x 2^(n-1), capped, then
/// scaled by a factor in [0.5, 1.0).
fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = base.min(cap);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(jitter)
}

struct Appender {
    log: DurableLog,
    acks: Arc<acks::AckQueue>,
    stats: Arc<IntakeStats>,
    limits: Limits,
    topics: Vec<String>,
    quarantine_max: u64,
    warn: RateLimiter,
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
    async fn run(self, mut rx: mpsc::Receiver<Incoming>, stop: CancellationToken) -> Result<(), IntakeError> {
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
            let mut stored = 0;
            for m in &batch {
                if syncing.as_ref().is_some_and(|s| s.flush.is_finished()) {
                    self.settle(&mut syncing).await?;
                }
                if !self.store(&m.publish, &stop, &mut syncing).await? {
                    break; // stopped while waiting for space
                }
                stored += 1;
            }
            // Durable after this batch's flush: acknowledge then, in
            // arrival order. Never wait on rumqttc here: the event loop may
            // itself be waiting for this task to take the next frame. The
            // queue keeps every PUBACK, in order, until rumqttc has room
            // (see `acks`); those of a connection lost meanwhile are
            // discarded there (the broker redelivers).
            let acks: Vec<acks::PendingAck> = batch
                .drain(..)
                .take(stored)
                .filter(|m| m.publish.qos == QoS::AtLeastOnce)
                .map(|m| acks::PendingAck { pkid: m.publish.pkid, connection: m.connection })
                .collect();
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

    /// Stores one publish as a frame or a dead letter. Returns false if
    /// `stop` came while waiting for log space (nothing stored).
    /// While it waits for space, the batch flushing before it is settled
    /// first, so its PUBACKs do not wait with it.
    async fn store(
        &self,
        p: &Publish,
        stop: &CancellationToken,
        syncing: &mut Option<Syncing>,
    ) -> Result<bool, IntakeError> {
        let received_at_ms = now_ms();
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let (camera, checked) = match validate::camera_id(&self.topics, &topic) {
            Ok(c) => (Some(c.to_owned()), validate::check_payload(&p.payload, self.limits)),
            Err(why) => (None, Err(why)),
        };
        let (captured_at_ms, camera_seq) = metadata(p);
        let fingerprint = fingerprint(p, &topic, camera_seq, captured_at_ms);
        let check = may_be_duplicate(p, camera_seq);
        loop {
            let result = match (&camera, checked) {
                (Some(camera), Ok(c)) => {
                    let head = FrameHead {
                        camera,
                        content_type: c.format.content_type(),
                        received_at_ms,
                        captured_at_ms,
                        camera_seq,
                    };
                    self.log.append_payload_once(head, &p.payload, fingerprint, check).inspect(|o| {
                        if matches!(o, Once::Stored(_)) {
                            self.stats.stored.fetch_add(1, Ordering::Relaxed);
                            self.stats.stored_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                        }
                    })
                }
                _ => {
                    let reason = checked.err().unwrap_or(QuarantineReason::UnknownTopic);
                    let used = self.log.area_stats(Area::DeadLetters).bytes;
                    let keep = used + p.payload.len() as u64 <= self.quarantine_max;
                    let d = DeadLetter {
                        camera_seq,
                        captured_at_ms,
                        topic: topic.clone(),
                        camera: camera.clone(),
                        reason,
                        size: p.payload.len() as u64,
                        received_at_ms,
                        payload_kept: keep,
                    };
                    let r =
                        self.log.append_dead_letter_once(&d.encode(keep.then_some(&p.payload[..])), fingerprint, check);
                    if let Ok(Once::Stored(a)) = &r {
                        self.stats.quarantined[reason as usize].fetch_add(1, Ordering::Relaxed);
                        if let Some(held) = self.warn.check(reason.name()) {
                            tracing::warn!(
                                reason = reason.name(),
                                topic = %topic,
                                size = p.payload.len(),
                                frame_id = %a.frame_id,
                                suppressed = held,
                                "frame quarantined"
                            );
                        }
                    }
                    r
                }
            };
            match result {
                Ok(once) => {
                    self.stats.blocked.store(false, Ordering::Relaxed);
                    if self.stats.disk_full.swap(false, Ordering::Relaxed) {
                        tracing::info!("disk space is back: intake resumes");
                    }
                    if let Once::Duplicate(seq) = once {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        if let Some(held) = self.warn.check("duplicate") {
                            tracing::info!(seq, topic = %topic, dup = p.dup, suppressed = held, "publish delivered again; already stored, acknowledged without storing");
                        }
                    }
                    return Ok(true);
                }
                Err(LogError::Full { needed, used, max }) => {
                    self.settle(syncing).await?;
                    if !self.stats.blocked.swap(true, Ordering::Relaxed) {
                        tracing::warn!(used, max, needed, "log full: intake paused, frames stay on the broker");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = self.log.wait_for_space(needed) => {}
                    }
                    tracing::info!("log space freed: intake resumes");
                }
                Err(LogError::NoSpace { path, free }) => {
                    self.settle(syncing).await?;
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
                    // Space freed by another program comes with no signal:
                    // look again in a second.
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
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

impl crate::stage::Stage for Intake {
    const NAME: &'static str = "intake";
    type Error = IntakeError;

    fn run(self, stop: CancellationToken) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        Intake::run(self, stop)
    }

    fn task_failed(why: String) -> Self::Error {
        IntakeError::Appender(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cap = Duration::from_secs(30);
        assert!(backoff(1, cap) <= Duration::from_millis(100));
        assert!(backoff(1, cap) >= Duration::from_millis(50));
        assert!(backoff(5, cap) >= Duration::from_millis(800));
        assert!(backoff(40, cap) <= cap);
        assert!(backoff(40, cap) >= cap / 2);
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
