//! The Kafka producer of the replicate stage: librdkafka's producer, one
//! polling thread of our own, and a future per delivery report.
//!
//! Owns the producer's threads, its configuration (the safety settings a
//! site cannot override) and where librdkafka's own logs go. Promise: a delivery report resolves its
//! [`DeliveryFuture`] the moment librdkafka hands it over; an idle gateway
//! spends about nothing here.
//!
//! Why not rdkafka's `FutureProducer`: its polling thread polls in 100 ms
//! slices, and rdkafka turns the last sub-millisecond of each slice into a
//! non-blocking poll in a loop, so the thread spins up to 1 ms in every
//! 100: 0.87% of a core on an idle gateway (measured with `vision-gateway
//! bench all`, per-thread CPU from /proc). Here the slices are one second
//! long: the same short spin, a tenth as often; reports are still handled
//! as they arrive within a slice.

use futures::channel::oneshot;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::context::{KafkaContext, SecurityFailures};
use super::ReplicateError;
use crate::config::ReplicateConfig;
use rdkafka::types::RDKafkaErrorCode;

/// How long one poll of the polling thread lasts (see the module doc).
const POLL_SLICE: Duration = Duration::from_secs(1);

/// The delivery report of one record: `Ok` once Kafka acknowledged it
/// (acks=all), the error otherwise. A report that can never come (the
/// producer was dropped) is [`KafkaError::Canceled`].
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<(), KafkaError>>);

impl Future for DeliveryFuture {
    type Output = Result<(), KafkaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
    }
}

/// The producer: cheap to share by reference; its polling thread stops
/// within a second of it being dropped.
pub struct KafkaProducer {
    inner: Arc<BaseProducer<KafkaContext>>,
    stop: Arc<AtomicBool>,
}

impl KafkaProducer {
    /// Creates the producer and its polling thread.
    ///
    /// # Errors
    /// librdkafka refusing the configuration; the thread not starting.
    pub fn create(config: &ClientConfig, context: KafkaContext) -> Result<Self, KafkaError> {
        let inner: Arc<BaseProducer<KafkaContext>> = Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka poll".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.poll(POLL_SLICE);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the polling thread: {e}")))?;
        Ok(Self { inner, stop })
    }

    /// Hands one record to librdkafka. On failure the headers come back
    /// with the error, so that the caller can try again (queue full).
    ///
    /// # Errors
    /// librdkafka's error (`QueueFull` among them).
    pub fn try_send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<DeliveryFuture, (KafkaError, OwnedHeaders)> {
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(tx)).key(key).payload(payload).headers(headers);
        match self.inner.send(record) {
            Ok(()) => Ok(DeliveryFuture(rx)),
            Err((e, r)) => Err((e, r.headers.unwrap_or_default())),
        }
    }

    /// The security failures its client reported.
    pub fn security_failures(&self) -> Arc<SecurityFailures> {
        self.inner.context().security.clone()
    }

    /// Waits up to `timeout` for every queued record to be delivered.
    ///
    /// # Errors
    /// Records still queued after `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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
    KafkaProducer::create(&c, KafkaContext::new(cfg.security.to_string())).map_err(ReplicateError::Config)
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
