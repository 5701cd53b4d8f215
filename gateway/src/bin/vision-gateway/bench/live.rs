//! Live-traffic figures of the real service: capture→Kafka latency of live
//! frames while a backlog drains (next to the same stream with no
//! backlog), and the drain rate next to the live rate. The stand-in
//! brokers and the service's config are shared with `idle.rs`.
//!
//! The service is the `vision-gateway` binary itself, on a private
//! mosquitto and librdkafka's mock cluster (started in this process, on
//! loopback). Detect forwards frames here (no model), so a backlog of tens
//! of thousands of frames builds in seconds; the model's share of latency is
//! measured by [`super::all`] with the bundled model at half its capacity.

use super::service::{metric, Service};
use super::stream::{both, consume, publish_stream, Stream};
use crate::demo::percentile;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::config::{Detect, GatewayToml};
use testkit::frames::synthetic_jpeg;
use testkit::mosquitto::{Mosquitto, Persistence};
use testkit::net::free_port;

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
pub(super) fn config(
    dir: &Path,
    name: &str,
    log: &Path,
    ports: (u16, u16),
    upstream: (&str, u64),
) -> anyhow::Result<PathBuf> {
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
pub(super) fn stand_ins() -> anyhow::Result<(Mosquitto, MockCluster<'static, DefaultProducerContext>)> {
    let broker = Mosquitto::start_with(Persistence::Off, 0)?;
    let mock = MockCluster::new(1)?;
    for t in gateway::records::header::ALL_TOPICS {
        mock.create_topic(t, 1, 1)?;
    }
    Ok((broker, mock))
}
