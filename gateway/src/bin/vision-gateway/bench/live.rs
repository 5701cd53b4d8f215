//! Live-traffic figures of the real service: capture→Kafka latency of live
//! frames while a backlog drains (next to the same stream with no
//! backlog), the drain rate next to the live rate, and the CPU of an idle
//! gateway.
//!
//! The service is the `vision-gateway` binary itself, on a private
//! mosquitto and librdkafka's mock cluster (started in this process, on
//! loopback). Detect forwards frames here (no model), so a backlog of tens
//! of thousands of frames builds in seconds; the model's share of latency is
//! measured by [`super::all`] with the bundled model at half its capacity.

use super::service::{metric, Service};
use crate::demo::percentile;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::config::{Detect, GatewayToml};
use testkit::frames::synthetic_jpeg;
use testkit::mosquitto::{Mosquitto, Persistence};
use testkit::net::free_port;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Results of the drain benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct DrainBench {
    /// Frames in the backlog (stored while Kafka was unreachable).
    pub backlog: u64,
    /// Seconds from the broker coming back to the gateway's first
    /// acknowledged batch (its retry timer and librdkafka's reconnect).
    pub found_back_s: f64,
    /// Live frames per second, over all cameras.
    pub live_fps: f64,
    /// Live frames published during each run.
    pub live_frames: u64,
    /// Backlog records per second from the gateway finding the broker back
    /// until the last one was consumed from Kafka.
    pub drain_per_s: f64,
    /// Live frames, capture to consumed from Kafka, with the backlog
    /// draining: p50 and p99, ms.
    pub live_p50_ms: f64,
    /// See `live_p50_ms`.
    pub live_p99_ms: f64,
    /// Live frames captured while the backlog was still draining, after
    /// the first second (left out as in the baseline: connections warming
    /// up).
    pub during_drain: u64,
    /// Backlog records the service sent behind its live lane (header
    /// `lane = backfill`; 0 with `replicate.live_lane_after = 0`).
    pub backfilled: u64,
    /// Their p99, capture to consumed, ms (the starvation figure).
    pub during_p99_ms: f64,
    /// Their p99 from capture to the gateway's intake, ms (the MQTT part).
    pub during_intake_p99_ms: f64,
    /// Their p99 from capture to the gateway handing the annotation to
    /// librdkafka (the record's CreateTime), ms: intake, log, detect and
    /// the replicate stage's lanes.
    pub during_produce_p99_ms: f64,
    /// The same live stream on an empty gateway, after its first second:
    /// p50 and p99, ms.
    pub idle_p50_ms: f64,
    /// See `idle_p50_ms`.
    pub idle_p99_ms: f64,
}

impl DrainBench {
    /// Drain rate over live rate.
    pub fn drain_ratio(&self) -> f64 {
        self.drain_per_s / self.live_fps
    }
    /// p99 of the live frames captured during the drain over live p99
    /// with no backlog.
    pub fn starvation_ratio(&self) -> f64 {
        self.during_p99_ms / self.idle_p99_ms.max(1.0)
    }
}

impl std::fmt::Display for DrainBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "drain: {} backlog frames (stored while the broker was down), then the broker back (found after {:.1} s) and {} live frames at {:.0}/s (detect forward, mock cluster)",
            self.backlog, self.found_back_s, self.live_frames, self.live_fps
        )?;
        writeln!(
            f,
            "  backlog drained at {:.0} records/s = {:.0} x the live rate ({} of them behind the live lane)",
            self.drain_per_s,
            self.drain_ratio(),
            self.backfilled
        )?;
        writeln!(
            f,
            "  live capture->Kafka: {} frames captured during the drain, p99 {:.0} ms (capture->intake p99 {:.0} ms, capture->produced p99 {:.0} ms); all live frames of that run p50 {:.0} ms, p99 {:.0} ms; \
             with no backlog p50 {:.0} ms, p99 {:.0} ms (p99 ratio during the drain {:.2})",
            self.during_drain,
            self.during_p99_ms,
            self.during_intake_p99_ms,
            self.during_produce_p99_ms,
            self.live_p50_ms,
            self.live_p99_ms,
            self.idle_p50_ms,
            self.idle_p99_ms,
            self.starvation_ratio()
        )
    }
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// A gateway without a model forwarding to `brokers`, its log at `log`,
/// written as `<dir>/<name>.toml`.
fn config(dir: &Path, name: &str, log: &Path, ports: (u16, u16), upstream: (&str, u64)) -> anyhow::Result<PathBuf> {
    let (mqtt, http) = ports;
    let (brokers, live_lane_after) = upstream;
    let mut t = GatewayToml::new(&format!("bench-{name}"), log, mqtt);
    t.max_bytes = "8GiB".into();
    t.client_id = Some(format!("bench-{name}"));
    t.max_frame_bytes = Some("16MiB".into());
    t.detect = Detect::Off { when_disabled: "forward" };
    t.kafka = brokers.into();
    t.live_lane_after = Some(live_lane_after);
    t.http_port = Some(http);
    Ok(t.write(&dir.join(format!("{name}.toml")))?)
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
async fn consume(
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
struct LiveFrame {
    captured_ms: u64,
    intake: f64,
    produced: f64,
    consumed: f64,
}

/// Runs the consumer and the publisher as tasks of their own: joined in
/// one task, a consumer reading a long run of ready records would hold up
/// the publisher's MQTT event loop, and the delay would be counted as the
/// gateway's.
async fn both<C, P>(consumer: C, publisher: P) -> anyhow::Result<(C::Output, P::Output)>
where
    C: std::future::Future + Send + 'static,
    C::Output: Send + 'static,
    P: std::future::Future + Send + 'static,
    P::Output: Send + 'static,
{
    let (c, p) = (tokio::spawn(consumer), tokio::spawn(publisher));
    Ok((c.await?, p.await?))
}

/// Runs the drain benchmark: `backlog` frames stored while the broker is
/// down, then the broker back, and once the gateway has found it, `live_fps`
/// live frames for `seconds` while the backlog drains; and the same live
/// stream on an empty gateway.
///
/// # Errors
/// mosquitto missing, the service failing, annotations missing.
// One measured sequence: live frames alone, then a backlog, then live
// frames during its drain, on the same gateway and cluster.
#[allow(clippy::too_many_lines)]
pub async fn drain(
    dir: &Path,
    backlog: u64,
    live_fps: f64,
    seconds: f64,
    live_lane_after: u64,
) -> anyhow::Result<DrainBench> {
    let exe = std::env::current_exe()?;
    let (broker, mock) = stand_ins()?;
    let mqtt = broker.port;
    let brokers = mock.bootstrap_servers();
    let payload = synthetic_jpeg(2_000, 3);
    let cameras = 4;
    let live_frames = (live_fps * seconds).round().max(1.0) as u64;

    // The live stream alone, on an empty gateway.
    let idle = {
        let http = free_port()?;
        let cfg = config(dir, "drain-idle", &dir.join("drain-idle-log"), (mqtt, http), (&brokers, live_lane_after))?;
        let (svc, _) = Service::start(&exe, &cfg, http).await?;
        let (c, p) = both(
            consume(brokers.clone(), "bench-drain-idle", (live_frames, 0), (0, 0)),
            publish_stream(
                mqtt,
                "bench-live-idle".into(),
                Stream { cameras, frames: live_frames, seq0: 0, fps: live_fps },
                payload.clone(),
            ),
        )
        .await?;
        p?;
        let (lat, _, _) = c?;
        svc.stop().await?;
        // Steady state: the first second (the producer fetching topic
        // metadata, connections warming up) is left out of the baseline.
        let first = lat.iter().map(|l| l.captured_ms).min().unwrap_or(0);
        sorted(lat.into_iter().filter(|l| l.captured_ms >= first + 1_000).map(|l| l.consumed))
    };

    // The backlog, stored while the broker is down (the uplink is out).
    let log = dir.join("drain-log");
    let http = free_port()?;
    let cfg = config(dir, "drain", &log, (mqtt, http), (&brokers, live_lane_after))?;
    mock.broker_down(1)?;
    let (svc, _) = Service::start(&exe, &cfg, http).await?;
    publish_stream(
        mqtt,
        "bench-backlog".into(),
        Stream { cameras, frames: backlog, seq0: 1_000_000, fps: 0.0 },
        payload.clone(),
    )
    .await?;
    let t = Instant::now();
    while metric(http, "vision_gateway_frames_annotated_total").await < backlog as f64 {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "the backlog was not stored within 5 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The broker is back. Once the stage has found it (at its next retry,
    // after its backoff), the live stream starts while the backlog drains.
    mock.broker_up(1)?;
    let t = Instant::now();
    while metric(http, "vision_gateway_kafka_connected").await < 1.0 {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "the gateway did not reconnect within 2 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let up = Instant::now();
    let found_back_s = t.elapsed().as_secs_f64();
    let (c, p) = both(
        consume(brokers.clone(), "bench-drain", (live_frames, 2_000_000), (backlog, 1_000_000)),
        publish_stream(
            mqtt,
            "bench-live".into(),
            Stream { cameras, frames: live_frames, seq0: 2_000_000, fps: live_fps },
            payload,
        ),
    )
    .await?;
    p?;
    let (live, last_old, last_old_ms) = c?;
    let backfilled = metric(http, "vision_gateway_replicate_backfilled_total").await as u64;
    svc.stop().await?;
    // Live frames captured while the backlog was still draining, after the
    // first second (as in the baseline).
    let first = live.iter().map(|l| l.captured_ms).min().unwrap_or(0);
    let during_live = || live.iter().filter(|l| l.captured_ms >= first + 1_000 && l.captured_ms <= last_old_ms);
    let during = sorted(during_live().map(|l| l.consumed));
    let during_intake = sorted(during_live().map(|l| l.intake));
    let during_produce = sorted(during_live().map(|l| l.produced));
    let live = sorted(live.into_iter().map(|l| l.consumed));
    let drained_in = last_old.saturating_duration_since(up).as_secs_f64().max(1e-3);
    let _ = std::fs::remove_dir_all(&log);
    let _ = std::fs::remove_dir_all(dir.join("drain-idle-log"));
    Ok(DrainBench {
        backlog,
        found_back_s,
        live_fps,
        live_frames,
        drain_per_s: backlog as f64 / drained_in,
        live_p50_ms: percentile(&live, 0.5),
        live_p99_ms: percentile(&live, 0.99),
        during_drain: during.len() as u64,
        backfilled,
        during_p99_ms: percentile(&during, 0.99),
        during_intake_p99_ms: percentile(&during_intake, 0.99),
        during_produce_p99_ms: percentile(&during_produce, 0.99),
        idle_p50_ms: percentile(&idle, 0.5),
        idle_p99_ms: percentile(&idle, 0.99),
    })
}

/// Several drain runs, each with its own baseline: the live lane's p99
/// moves with whatever else the machine does (a p99 of the few dozen live
/// frames of one drain is nearly its maximum), so the figure is the worst
/// run's and the spread is printed.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRuns {
    /// Each run, in order.
    pub runs: Vec<DrainBench>,
}

impl DrainRuns {
    fn ratios(&self, f: impl Fn(&DrainBench) -> f64) -> Vec<f64> {
        sorted(self.runs.iter().map(f))
    }
    /// The worst (highest) p99 ratio of the live frames during a drain.
    pub fn worst_starvation(&self) -> f64 {
        self.worst().map_or(f64::NAN, DrainBench::starvation_ratio)
    }
    /// The worst (lowest) drain rate over the live rate.
    pub fn worst_drain(&self) -> f64 {
        self.ratios(DrainBench::drain_ratio).first().copied().unwrap_or(f64::NAN)
    }
    /// The run with the worst p99 ratio.
    pub fn worst(&self) -> Option<&DrainBench> {
        self.runs.iter().max_by(|a, b| a.starvation_ratio().total_cmp(&b.starvation_ratio()))
    }
    /// Live frames captured during the drains, all runs.
    pub fn during(&self) -> u64 {
        self.runs.iter().map(|r| r.during_drain).sum()
    }
}

impl std::fmt::Display for DrainRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, r) in self.runs.iter().enumerate() {
            write!(f, "drain run {} of {}: {r}", k + 1, self.runs.len())?;
        }
        let list = |v: Vec<f64>| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        writeln!(
            f,
            "drain over {} runs: live p99 ratio {} (worst {:.2}); drain / live rate {} (worst {:.0})",
            self.runs.len(),
            list(self.ratios(DrainBench::starvation_ratio)),
            self.worst_starvation(),
            list(self.ratios(DrainBench::drain_ratio)),
            self.worst_drain()
        )
    }
}

/// [`drain`] `runs` times, each in a directory of its own under `dir`.
///
/// # Errors
/// As [`drain`].
pub async fn drain_runs(
    dir: &Path,
    runs: usize,
    backlog: u64,
    (live_fps, seconds): (f64, f64),
    live_lane_after: u64,
) -> anyhow::Result<DrainRuns> {
    let mut out = Vec::with_capacity(runs);
    for k in 0..runs.max(1) {
        let d = dir.join(format!("run-{k}"));
        std::fs::create_dir_all(&d)?;
        out.push(drain(&d, backlog, live_fps, seconds, live_lane_after).await?);
        let _ = std::fs::remove_dir_all(&d);
    }
    Ok(DrainRuns { runs: out })
}

/// The benchmark's brokers: a private mosquitto and librdkafka's mock
/// cluster (in this process) with the gateway's topics.
fn stand_ins() -> anyhow::Result<(Mosquitto, MockCluster<'static, DefaultProducerContext>)> {
    let broker = Mosquitto::start_with(Persistence::Off, 0)?;
    let mock = MockCluster::new(1)?;
    for t in gateway::records::header::ALL_TOPICS {
        mock.create_topic(t, 1, 1)?;
    }
    Ok((broker, mock))
}

/// CPU of an idle gateway: connected to mosquitto and Kafka (mock cluster),
/// nothing arriving.
#[derive(Debug, Clone, Serialize)]
pub struct IdleBench {
    /// Seconds measured (after a settling second).
    pub seconds: f64,
    /// CPU time used (user + system) over wall time, percent of one core.
    pub cpu_percent: f64,
}

impl std::fmt::Display for IdleBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "idle gateway (connected, nothing arriving, {:.0} s): {:.2}% of one core",
            self.seconds, self.cpu_percent
        )
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) : utime is the
    // 14th field of the line, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Measures the CPU of an idle service for `seconds`.
///
/// # Errors
/// mosquitto missing, the service failing.
pub async fn idle(dir: &Path, seconds: f64) -> anyhow::Result<IdleBench> {
    let exe = std::env::current_exe()?;
    let (broker, mock) = stand_ins()?;
    let mqtt = broker.port;
    let http = free_port()?;
    let cfg = config(dir, "idle", &dir.join("idle-log"), (mqtt, http), (&mock.bootstrap_servers(), 1000))?;
    let (svc, _) = Service::start(&exe, &cfg, http).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // /proc counts CPU time in USER_HZ ticks, 100 per second on Linux.
    let hz = 100.0;
    let (c0, t0) = (cpu_ticks(svc.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (c1, wall) = (cpu_ticks(svc.pid()), t0.elapsed().as_secs_f64());
    svc.stop().await?;
    let _ = std::fs::remove_dir_all(dir.join("idle-log"));
    Ok(IdleBench { seconds: wall, cpu_percent: (c1.saturating_sub(c0)) as f64 / hz / wall * 100.0 })
}
