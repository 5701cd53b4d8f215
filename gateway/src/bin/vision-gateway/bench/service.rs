//! A gateway process under a benchmark: the test-support crate's process
//! handle (ready on `READY=1` and `/readyz`, stopped with SIGTERM), driven
//! from the benchmark's async code on blocking threads; its metrics and
//! memory read from outside, as an operator would.

use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::gateway::{rss_mib, Gateway};

/// A start of the service.
#[derive(Debug, Clone, Serialize)]
pub struct Start {
    /// Seconds from spawn to `/readyz` answering 200.
    pub ready_s: f64,
    /// Resident memory once ready, MiB.
    pub rss_mib: f64,
}

/// One sample of the gateway's `/metrics` on `port` (0 when absent).
pub(crate) async fn metric(port: u16, name: &str) -> f64 {
    let name = name.to_owned();
    let body = tokio::task::spawn_blocking(move || testkit::net::http_get(port, "/metrics").1).await;
    body.ok().and_then(|b| testkit::net::samples(&b).get(&name).copied()).unwrap_or(0.0)
}

/// The service, started by [`Service::start`].
pub(crate) struct Service(Gateway);

impl Service {
    /// Starts `exe run --config <config>` (its log beside the config,
    /// `RUST_LOG` from `VG_BENCH_LOG`, default warn) and waits until ready.
    pub(crate) async fn start(exe: &Path, config: &Path, port: u16) -> anyhow::Result<(Self, Start)> {
        let (exe, config) = (exe.to_owned(), config.to_owned());
        let level = std::env::var("VG_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let g = Gateway::spawn(&exe, &config, port, &[("RUST_LOG", level.as_str())])?;
            g.wait_ready(Duration::from_secs(120))?;
            let start = Start { ready_s: t.elapsed().as_secs_f64(), rss_mib: rss_mib(g.pid()) };
            Ok((Self(g), start))
        })
        .await?
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// SIGTERM; it must exit 0 within two minutes (as systemd's
    /// `TimeoutStopSec`: a gateway that does not stop fails the run).
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || self.0.stop()).await?
    }
}
