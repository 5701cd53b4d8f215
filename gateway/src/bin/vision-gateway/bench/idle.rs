//! The CPU of an idle gateway: the real service (this binary) connected to
//! a private mosquitto and librdkafka's mock cluster, nothing arriving,
//! measured from /proc over a few seconds.

use super::live::{config, stand_ins};
use super::service::Service;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::net::free_port;

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
    gateway::util::threads::process_cpu_ticks(pid).unwrap_or(0)
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
