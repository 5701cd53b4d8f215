//! The MQTT side of intake: rumqttc's event loop polled in one task
//! (connect, subscribe, publishes handed to the appender with the
//! connection they arrived on, reconnects with capped backoff), and the
//! PUBACKs queued by the appender handed to the client before a
//! DISCONNECT.

use super::{acks, Incoming, IntakeError, IntakeStats};
use crate::util::RateLimiter;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The event loop and what it reports to.
pub(super) struct EventTask {
    pub(super) eventloop: EventLoop,
    pub(super) client: AsyncClient,
    pub(super) acks: Arc<acks::AckQueue>,
    pub(super) stats: Arc<IntakeStats>,
    pub(super) connection: Arc<AtomicU64>,
    pub(super) topics: Vec<String>,
    pub(super) max_backoff: Duration,
    pub(super) warn: RateLimiter,
}

impl EventTask {
    pub(super) async fn read(
        &mut self,
        tx: mpsc::Sender<Incoming>,
        stop: &CancellationToken,
    ) -> Result<(), IntakeError> {
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
    pub(super) fn retire_connection(&mut self) {
        let _gate = self.acks.gate();
        self.connection.fetch_add(1, Ordering::SeqCst);
        self.eventloop.clean();
    }

    /// At shutdown: keeps the event loop turning until the sender has
    /// handed over every queued PUBACK (bounded time). Publishes read
    /// meanwhile are not stored and not acknowledged: the broker keeps them.
    pub(super) async fn send_acks(&mut self, sender: &mut tokio::task::JoinHandle<()>) {
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
    pub(super) async fn disconnect(&mut self) {
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
}
