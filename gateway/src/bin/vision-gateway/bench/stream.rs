//! The traffic of the live benchmarks: a camera stream published over
//! MQTT with its capture times (also used by `backlog.rs`), and a consumer
//! that reads the annotations back from Kafka and times each live frame.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock ms since the Unix epoch (the cameras' capture stamps).
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A stream of frames: `frames` over `cameras` cameras from `camera_seq`
/// `seq0`, at `fps` frames/s in all (0: as fast as the broker acks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stream {
    pub(crate) cameras: u64,
    pub(crate) frames: u64,
    pub(crate) seq0: u64,
    pub(crate) fps: f64,
}

/// Publishes `n` frames over `cameras` cameras at `fps` frames/s in all (0:
/// as fast as the broker acks), each with `captured_at_ms` and
/// `camera_seq` (from `seq0`), and waits for the PUBACKs.
pub(crate) async fn publish_stream(port: u16, client: String, stream: Stream, payload: Vec<u8>) -> anyhow::Result<()> {
    let Stream { cameras, frames: n, seq0, fps } = stream;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(client, "127.0.0.1", port);
    o.set_max_packet_size(Some(64 << 20));
    let (c, mut el) = AsyncClient::new(o, 256);
    let pubs = tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        for i in 0..n {
            let cam = i % cameras.max(1);
            let props = PublishProperties {
                user_properties: vec![
                    ("captured_at_ms".into(), now_ms().to_string()),
                    ("camera_seq".into(), (seq0 + i / cameras.max(1)).to_string()),
                ],
                content_type: Some("image/jpeg".into()),
                ..Default::default()
            };
            c.publish_with_properties(
                format!("cameras/cam{cam}/frames"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
                props,
            )
            .await?;
            if fps > 0.0 {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64((i + 1) as f64 / fps)).await;
            }
        }
        Ok::<_, anyhow::Error>(c)
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await? {
            acked += 1;
        }
    }
    let c = pubs.await??;
    let _ = c.try_disconnect();
    Ok(())
}

/// Consumes the annotations of gateway `gateway` until `want_live` distinct
/// live frames (camera_seq from `live_seq0`) and `backlog` distinct backlog
/// frames (camera_seq from `backlog_seq0`, below `live_seq0`) arrived.
/// Returns the live frames and the wall time (ms) when the last backlog
/// annotation arrived. Only the fields it needs are parsed: the consumer
/// reads the whole backlog too, and its own lag would count as latency.
pub(super) async fn consume(
    brokers: String,
    gateway: &'static str,
    (want_live, live_seq0): (u64, u64),
    (backlog, backlog_seq0): (u64, u64),
) -> anyhow::Result<(Vec<LiveFrame>, Instant, u64)> {
    use rdkafka::Message;
    #[derive(serde::Deserialize)]
    struct Seen<'a> {
        #[serde(borrow)]
        gateway_id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        frame_id: std::borrow::Cow<'a, str>,
        camera_seq: Option<u64>,
        captured_at_ms: Option<u64>,
        received_at_ms: Option<u64>,
    }
    let consumer = crate::demo::latency_consumer(&brokers, gateway::records::header::ANNOTATIONS_TOPIC)?;
    let mut seen = std::collections::HashSet::new();
    let (mut live, mut old) = (Vec::new(), 0u64);
    let (mut last_old, mut last_old_ms) = (Instant::now(), now_ms());
    let deadline = Instant::now() + Duration::from_secs(600);
    while (live.len() as u64) < want_live || old < backlog {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv()).await.map_err(|_| {
            anyhow::anyhow!(
                "{} of {want_live} live and {old} of {backlog} backlog annotations within 10 minutes",
                live.len()
            )
        })??;
        let at = now_ms();
        let v: Seen<'_> = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if v.gateway_id != gateway || !seen.insert(v.frame_id.into_owned()) {
            continue;
        }
        let seq = v.camera_seq.unwrap_or(0);
        if seq >= live_seq0 {
            let captured = v.captured_at_ms.unwrap_or(0);
            let since = |t: u64| t.saturating_sub(captured) as f64;
            let produced = m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()).unwrap_or(at);
            live.push(LiveFrame {
                captured_ms: captured,
                consumed: since(at),
                intake: since(v.received_at_ms.unwrap_or(captured)),
                produced: since(produced),
            });
        } else if seq >= backlog_seq0 {
            old += 1;
            (last_old, last_old_ms) = (Instant::now(), at);
        }
    }
    Ok((live, last_old, last_old_ms))
}

/// A live frame as the consumer saw it: when it was captured, and ms from
/// there to the gateway's intake, to the annotation's produce call (its
/// CreateTime) and to the consumer.
#[derive(Debug, Clone, Copy)]
pub(super) struct LiveFrame {
    pub(super) captured_ms: u64,
    pub(super) intake: f64,
    pub(super) produced: f64,
    pub(super) consumed: f64,
}

/// Runs the consumer and the publisher as tasks of their own: joined in
/// one task, a consumer reading a long run of ready records would hold up
/// the publisher's MQTT event loop, and the delay would be counted as the
/// gateway's.
pub(super) async fn both<C, P>(consumer: C, publisher: P) -> anyhow::Result<(C::Output, P::Output)>
where
    C: std::future::Future + Send + 'static,
    C::Output: Send + 'static,
    P: std::future::Future + Send + 'static,
    P::Output: Send + 'static,
{
    let (c, p) = (tokio::spawn(consumer), tokio::spawn(publisher));
    Ok((c.await?, p.await?))
}
