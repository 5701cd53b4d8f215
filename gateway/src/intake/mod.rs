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
mod appender;
mod events;
mod tls;
pub mod validate;

use crate::config::MqttConfig;
use crate::log::{DurableLog, LogError};
use crate::records::QuarantineReason;
use crate::util::RateLimiter;
use appender::Appender;
use events::EventTask;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::{AsyncClient, MqttOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
