//! A gateway process under a benchmark: started on a config, ready when
//! `/readyz` says so, stopped with SIGTERM; its metrics and memory read from
//! outside, as an operator would.

use crate::demo::http_get;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// A start of the service.
#[derive(Debug, Clone, Serialize)]
pub struct Start {
    /// Seconds from spawn to `/readyz` answering 200.
    pub ready_s: f64,
    /// Resident memory once ready, MiB.
    pub rss_mib: f64,
}

/// Resident memory of a process, MiB (0 if it is gone).
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) async fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

pub(crate) struct Service {
    child: tokio::process::Child,
}

impl Service {
    pub(crate) async fn start(exe: &Path, config: &Path, port: u16) -> anyhow::Result<(Self, Start)> {
        let t = Instant::now();
        let child = tokio::process::Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("VG_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        while http_get(port, "/readyz").await.0 != 200 {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "the gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready_s = t.elapsed().as_secs_f64();
        let s = Self { child };
        let rss = rss_mib(s.pid());
        Ok((s, Start { ready_s, rss_mib: rss }))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await?;
        // As systemd's TimeoutStopSec: a gateway that does not stop is a
        // failure of the run, not a hang of the benchmark.
        let status = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the gateway did not stop within 60 s of SIGTERM");
            }
        };
        anyhow::ensure!(status.success(), "the gateway exited with {status}");
        Ok(())
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
