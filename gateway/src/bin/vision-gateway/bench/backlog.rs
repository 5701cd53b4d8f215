//! `vision-gateway bench backlog`: memory, start-up and disk of the real
//! service with a large backlog.
//!
//! Runs the `vision-gateway` binary itself (detect on hold, Kafka
//! unreachable: the offline-for-days case) against a private mosquitto and
//! prints, from one run: time to ready and resident memory of an empty
//! gateway, the peak while a backlog of the given size is stored, the same
//! after a restart on that backlog, and the bytes on disk against
//! `log.max_bytes` at the budget under `block` and `drop_oldest`.

use super::service::{metric, Service, Start};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::config::{Detect, GatewayToml};
use testkit::frames::synthetic_jpeg;
use testkit::gateway::rss_mib;
use testkit::mosquitto::{Mosquitto, Persistence};
use testkit::net::free_port;

/// The disk budget under one policy.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// `block` or `drop_oldest`.
    pub policy: String,
    /// `log.max_bytes`.
    pub max_bytes: u64,
    /// Bytes published (twice the budget).
    pub published_bytes: u64,
    /// Largest size of the log directory seen (sampled every 50 ms).
    pub peak_disk_bytes: u64,
    /// Frames the gateway acknowledged.
    pub acked: u64,
    /// Records dropped into gap records.
    pub dropped: u64,
}

/// Results of the backlog benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogBench {
    /// Frame size.
    pub frame_bytes: usize,
    /// Frames stored in the backlog.
    pub frames: u64,
    /// Logical bytes of the backlog.
    pub backlog_bytes: u64,
    /// Bytes on disk of the log holding it (segments + index).
    pub disk_bytes: u64,
    /// Bytes of the index alone.
    pub index_bytes: u64,
    /// An empty gateway.
    pub empty: Start,
    /// Peak resident memory while the backlog was stored, MiB.
    pub filling_peak_rss_mib: f64,
    /// Peak resident memory while the first tenth was stored, MiB.
    pub first_tenth_peak_rss_mib: f64,
    /// A restart on the backlog.
    pub restart: Start,
    /// Peak resident memory in the 5 s after that restart, MiB.
    pub restart_peak_rss_mib: f64,
    /// Disk at the budget.
    pub budget: Vec<BudgetRow>,
}

fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A gateway without a model on the bench's broker: `max_bytes` of log,
/// `when_full`, frames held (`when_disabled`), written as `<dir>/<name>.toml`.
fn config(
    dir: &Path,
    name: &str,
    ports: (u16, u16),
    budget: (u64, &str),
    when_disabled: &'static str,
) -> anyhow::Result<PathBuf> {
    let (mqtt, http) = ports;
    let (max_bytes, when_full) = budget;
    let mut t = GatewayToml::new("bench", &dir.join(name), mqtt);
    t.max_bytes = max_bytes.to_string();
    t.when_full = Some(when_full.into());
    t.client_id = Some(format!("bench-{name}"));
    t.max_frame_bytes = Some("16MiB".into());
    t.detect = Detect::Off { when_disabled };
    t.http_port = Some(http);
    Ok(t.write(&dir.join(format!("{name}.toml")))?)
}

/// Publishes `n` copies of `payload` with QoS 1 (one camera, as fast as
/// the broker acks) and waits for the broker's PUBACKs.
async fn publish(port: u16, n: u64, payload: Vec<u8>) -> anyhow::Result<()> {
    let stream = super::stream::Stream { cameras: 1, frames: n, seq0: 0, fps: 0.0 };
    super::stream::publish_stream(port, format!("bench-backlog-pub-{}", std::process::id()), stream, payload).await
}

/// Runs the benchmark in `dir` with a backlog of `bytes` in frames of
/// `frame_bytes`, and the budget rows at `budget` bytes.
///
/// # Errors
/// mosquitto missing, the service failing to start or stop.
pub async fn backlog(dir: &Path, bytes: u64, frame_bytes: usize, budget: u64) -> anyhow::Result<BacklogBench> {
    let exe = std::env::current_exe()?;
    let broker = Mosquitto::start_with(Persistence::Off, 0)?;
    let mqtt = broker.port;
    let payload = synthetic_jpeg(frame_bytes, 11);
    let http = free_port()?;

    // An empty gateway.
    let cfg = config(dir, "backlog", (mqtt, http), (bytes * 2 + (1 << 30), "block"), "hold")?;
    let (svc, empty) = Service::start(&exe, &cfg, http).await?;

    // Store the backlog, sampling memory.
    let frames = bytes.div_ceil(payload.len() as u64);
    let pid = svc.pid();
    let publisher = tokio::spawn(publish(mqtt, frames, payload.clone()));
    let mut peak: f64 = empty.rss_mib;
    let mut early: Option<f64> = None;
    let t = Instant::now();
    loop {
        let acked = metric(http, "vision_gateway_frames_acked_total").await;
        if acked >= frames as f64 {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(1800), "the backlog was not stored within 30 minutes");
        // Frames in flight (receive_maximum) cost memory whatever the
        // backlog; the figure that matters is whether it grows with it.
        if early.is_none() && acked >= frames as f64 / 10.0 {
            early = Some(peak);
        }
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(rss_mib(pid));
    publisher.await??;
    svc.stop().await?;

    // Restart on the backlog.
    let (svc, restart) = Service::start(&exe, &cfg, http).await?;
    let mut restart_peak = restart.rss_mib;
    for _ in 0..50 {
        restart_peak = restart_peak.max(rss_mib(svc.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    svc.stop().await?;
    let (disk_bytes, index_bytes) = (du(&dir.join("backlog")), du(&dir.join("backlog/index")));
    let backlog_bytes = frames * payload.len() as u64;
    std::fs::remove_dir_all(dir.join("backlog"))?;

    let mut rows = Vec::new();
    for policy in ["block", "drop_oldest"] {
        rows.push(at_budget(&exe, dir, mqtt, (budget, policy), &payload).await?);
    }
    Ok(BacklogBench {
        frame_bytes: payload.len(),
        frames,
        backlog_bytes,
        disk_bytes,
        index_bytes,
        empty,
        filling_peak_rss_mib: peak,
        first_tenth_peak_rss_mib: early.unwrap_or(peak),
        restart,
        restart_peak_rss_mib: restart_peak,
        budget: rows,
    })
}

async fn at_budget(
    exe: &Path,
    dir: &Path,
    mqtt: u16,
    (budget, policy): (u64, &str),
    payload: &[u8],
) -> anyhow::Result<BudgetRow> {
    let http = free_port()?;
    let name = format!("budget-{policy}");
    let cfg = config(dir, &name, (mqtt, http), (budget, policy), "hold")?;
    let (svc, _) = Service::start(exe, &cfg, http).await?;
    let n = (2 * budget).div_ceil(payload.len() as u64);
    let publisher = tokio::spawn(publish(mqtt, n, payload.to_vec()));
    let log_dir = dir.join(&name);
    let mut peak = 0;
    let mut last = (0.0, Instant::now());
    loop {
        peak = peak.max(du(&log_dir));
        let acked = metric(http, "vision_gateway_frames_acked_total").await;
        if acked >= n as f64 {
            break;
        }
        if acked > last.0 {
            last = (acked, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            // `block`: intake stopped acknowledging at the budget.
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(du(&log_dir));
    let acked = metric(http, "vision_gateway_frames_acked_total").await as u64;
    let dropped = metric(http, "vision_gateway_dropped_records_total{reason=\"frame_dropped_for_space\"}").await as u64;
    svc.stop().await?;
    publisher.abort();
    std::fs::remove_dir_all(&log_dir)?;
    Ok(BudgetRow {
        policy: policy.into(),
        max_bytes: budget,
        published_bytes: n * payload.len() as u64,
        peak_disk_bytes: peak,
        acked,
        dropped,
    })
}

impl std::fmt::Display for BacklogBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        writeln!(
            f,
            "backlog: {} frames of {} B = {:.0} MB stored (detect on hold, Kafka unreachable); {:.0} MB on disk ({:.2}x), index {:.1} MB",
            self.frames,
            self.frame_bytes,
            mb(self.backlog_bytes),
            mb(self.disk_bytes),
            self.disk_bytes as f64 / self.backlog_bytes.max(1) as f64,
            mb(self.index_bytes)
        )?;
        writeln!(f, "{:<40} {:>10} {:>10}", "", "ready s", "RSS MiB")?;
        writeln!(f, "{:<40} {:>10.2} {:>10.1}", "empty gateway", self.empty.ready_s, self.empty.rss_mib)?;
        writeln!(f, "{:<40} {:>10} {:>10.1}", "peak while storing its first tenth", "", self.first_tenth_peak_rss_mib)?;
        writeln!(f, "{:<40} {:>10} {:>10.1}", "peak while storing all of it", "", self.filling_peak_rss_mib)?;
        writeln!(f, "{:<40} {:>10.2} {:>10.1}", "restart on the backlog", self.restart.ready_s, self.restart.rss_mib)?;
        writeln!(f, "{:<40} {:>10} {:>10.1}", "peak in the 5 s after that restart", "", self.restart_peak_rss_mib)?;
        writeln!(
            f,
            "RSS: +{:.1} MiB from the first tenth of the backlog to all of it; +{:.1} MiB over the empty gateway while \
             filling (frames in flight); +{:.1} MiB after restart; ready +{:.2} s",
            self.filling_peak_rss_mib - self.first_tenth_peak_rss_mib,
            self.filling_peak_rss_mib - self.empty.rss_mib,
            self.restart_peak_rss_mib - self.empty.rss_mib,
            self.restart.ready_s - self.empty.ready_s
        )?;
        writeln!(f, "disk at the budget (log directory sampled every 50 ms, twice the budget published):")?;
        for r in &self.budget {
            writeln!(
                f,
                "  {:<12} max_bytes {:>6.0} MB, peak on disk {:>6.1} MB ({:.3} of the budget), {} frames acknowledged, {} dropped into gaps",
                r.policy,
                mb(r.max_bytes),
                mb(r.peak_disk_bytes),
                r.peak_disk_bytes as f64 / r.max_bytes as f64,
                r.acked,
                r.dropped
            )?;
        }
        Ok(())
    }
}

/// Results of `bench cameras`.
#[derive(Debug, Clone, Serialize)]
pub struct CamerasBench {
    /// Distinct camera ids, one frame each.
    pub cameras: u64,
    /// Frame size.
    pub frame_bytes: usize,
    /// (cameras so far, resident memory MiB) after each thousand.
    pub rss_mib: Vec<(u64, f64)>,
    /// Largest RSS after the first thousand minus RSS at the first thousand.
    pub growth_after_first_thousand_mib: f64,
}

/// The real service (detect off, `forward`: every frame goes through
/// intake, the detect stage's commit, the sampler and the status view)
/// receiving one frame from each of `n` distinct camera ids; resident
/// memory after each thousand.
///
/// # Errors
/// mosquitto missing, the service failing to start or stop.
pub async fn cameras(dir: &Path, n: u64, frame_bytes: usize) -> anyhow::Result<CamerasBench> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let exe = std::env::current_exe()?;
    let broker = Mosquitto::start_with(Persistence::Off, 0)?;
    let mqtt = broker.port;
    let http = free_port()?;
    let cfg = config(dir, "cameras", (mqtt, http), (4 << 30, "block"), "forward")?;
    let (svc, _) = Service::start(&exe, &cfg, http).await?;
    let payload = synthetic_jpeg(frame_bytes, 5);
    let mut o = MqttOptions::new(format!("bench-cameras-pub-{}", std::process::id()), "127.0.0.1", mqtt);
    o.set_max_packet_size(Some(64 << 20));
    let (c, mut el) = AsyncClient::new(o, 64);
    let mut rows = Vec::new();
    let mut sent = 0u64;
    while sent < n {
        let upto = (sent + 1000).min(n);
        let (c2, p) = (c.clone(), payload.clone());
        let from = sent;
        let pubs = tokio::spawn(async move {
            for i in from..upto {
                c2.publish(format!("cameras/cam{i:06}/frames"), QoS::AtLeastOnce, false, p.clone()).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
        let mut acked = sent;
        while acked < upto {
            if let Event::Incoming(Packet::PubAck(_)) = el.poll().await? {
                acked += 1;
            }
        }
        pubs.await??;
        sent = upto;
        let t = Instant::now();
        while metric(http, "vision_gateway_frames_annotated_total").await < sent as f64 {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "frames were not processed within 5 minutes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rows.push((sent, rss_mib(svc.pid())));
    }
    let _ = c.try_disconnect();
    svc.stop().await?;
    let first = rows.first().map_or(0.0, |r| r.1);
    let max = rows.iter().map(|r| r.1).fold(first, f64::max);
    Ok(CamerasBench {
        cameras: n,
        frame_bytes: payload.len(),
        rss_mib: rows,
        growth_after_first_thousand_mib: max - first,
    })
}

impl std::fmt::Display for CamerasBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} distinct camera ids, one {}-byte frame each (detect forward):",
            self.cameras, self.frame_bytes
        )?;
        for (n, rss) in &self.rss_mib {
            writeln!(f, "  after {n:>6} cameras: RSS {rss:7.1} MiB")?;
        }
        writeln!(f, "  growth after the first thousand: {:+.1} MiB", self.growth_after_first_thousand_mib)
    }
}
