//! The acknowledgement queue: PUBACKs of durable frames, sent in order,
//! never dropped while their connection lives.
//!
//! The appender pushes the PUBACKs of a group commit here after the flush
//! and never waits; one sender task hands them to rumqttc in the same
//! order, waiting for room in rumqttc's request channel. Waiting there is
//! safe because nothing the event loop waits on waits on this task.
//!
//! Why not `try_ack` and drop on a full channel: rumqttc's event loop takes
//! one request per turn but reads up to ten packets per turn, so under a
//! burst (mosquitto hands a queued session over far beyond
//! `receive_maximum`) acknowledgements fall behind reads. A dropped PUBACK
//! leaves a stored frame in flight at the broker while later frames are
//! acknowledged; the broker then delivers it again after any number of
//! appends, past the fingerprint window, and it got a second `frame_id`.
//! Kept in order, an unacknowledged frame is always followed only by
//! unacknowledged frames, all in flight under distinct packet ids, which
//! bounds what the window must cover (see [`crate::log::RECENT`]).
//!
//! What this holds is bounded by the same argument: at most one entry per
//! packet id the broker has in flight (65,535), a few bytes each, never a
//! payload. PUBACKs of a connection that has since dropped are discarded:
//! the broker delivers those frames again on the new connection (as
//! duplicates of what is stored) and they are acknowledged then.

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::ClientError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

use super::IntakeStats;

/// One PUBACK to send: the packet id and the connection it belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingAck {
    pub pkid: u16,
    pub connection: u64,
}

/// The queue shared by the appender (producer), the sender task and the
/// event loop task.
#[derive(Default)]
pub(super) struct AckQueue {
    queue: Mutex<VecDeque<PendingAck>>,
    ready: Notify,
    /// Set once the appender has pushed its last PUBACK.
    closed: AtomicBool,
    /// Held while a PUBACK is checked against the connection and handed to
    /// rumqttc, and while the event loop task retires a lost connection:
    /// a PUBACK of a lost connection can never reach the next one, where
    /// its packet id would acknowledge a frame that is not stored.
    gate: Mutex<()>,
    /// Notified when rumqttc has written a PUBACK (its channel has room).
    room: Notify,
}

impl AckQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<PendingAck>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate (see the field).
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// rumqttc wrote a PUBACK: its request channel has room again.
    pub fn written(&self) {
        self.room.notify_one();
    }

    /// Queues PUBACKs in order; never waits.
    pub fn push(&self, acks: impl IntoIterator<Item = PendingAck>, stats: &IntakeStats) {
        let mut q = self.lock();
        q.extend(acks);
        stats.acks_pending.store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
    }

    /// No more PUBACKs will come: the sender ends once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_one();
    }

    #[cfg(test)]
    pub fn take_front(&self) -> Option<PendingAck> {
        self.lock().pop_front()
    }

    fn front(&self) -> Option<PendingAck> {
        self.lock().front().copied()
    }

    fn pop(&self, stats: &IntakeStats) {
        let mut q = self.lock();
        q.pop_front();
        stats.acks_pending.store(q.len() as u64, Ordering::Relaxed);
    }
}

/// Hands queued PUBACKs to rumqttc, in order, until the queue is closed and
/// empty. Those of an earlier connection are discarded (see the module
/// docs).
pub(super) async fn send(
    queue: Arc<AckQueue>,
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    stats: Arc<IntakeStats>,
) {
    loop {
        let Some(a) = queue.front() else {
            if queue.closed.load(Ordering::SeqCst) {
                return;
            }
            queue.ready.notified().await;
            continue;
        };
        let handed = {
            let _gate = queue.gate();
            if a.connection != connection.load(Ordering::SeqCst) {
                stats.acks_discarded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else {
                let mut stub = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new(), None);
                stub.pkid = a.pkid;
                client.try_ack(&stub).inspect(|()| {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                })
            }
        };
        match handed {
            Ok(()) => queue.pop(&stats),
            // Full: wait until the event loop has written a PUBACK. (The
            // same error stands for an event loop that is gone; at shutdown
            // the intake aborts this task once it has disconnected.)
            Err(ClientError::TryRequest(_) | ClientError::Request(_)) => queue.room.notified().await,
        }
    }
}
