//! The `vision-gateway run` process, driven as systemd and an operator
//! would: started on a config file, ready when it says `READY=1` on its
//! notification socket and `/readyz` answers, read through `/metrics`,
//! stopped with SIGTERM (or killed, or frozen, for the crash tests).

use crate::net::{http_get, samples};
use crate::process::{signal, NotifySocket};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a start may take (a cold model load on a busy machine).
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// How long a stop may take before it is a failure (systemd's
/// `TimeoutStopSec` does the same to the service).
pub const STOP_LIMIT: Duration = Duration::from_secs(120);

/// A running gateway, killed on drop.
pub struct Gateway {
    /// Its telemetry port.
    pub http_port: u16,
    /// Its standard error (the log), a file beside the config.
    pub stderr: PathBuf,
    child: Option<Child>,
    notify: Option<NotifySocket>,
    _notify_dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Spawns `exe run --config <config>` with `RUST_LOG=info` and `env`,
    /// without waiting. Unless `env` names its own `NOTIFY_SOCKET`, one is
    /// bound for it. With `WATCHDOG_USEC` in `env`, a shell sets
    /// `WATCHDOG_PID` to the gateway's own pid and execs it.
    ///
    /// # Errors
    /// The log file or the socket cannot be made, or the process not spawned.
    pub fn spawn(exe: &Path, config: &Path, http_port: u16, env: &[(&str, &str)]) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let stderr = config.with_extension(format!("{nanos}.log"));
        let err = std::fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let mut cmd = if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\""]).arg(exe).arg(config);
            c
        } else {
            let mut c = Command::new(exe);
            c.args(["run", "--config"]).arg(config);
            c
        };
        cmd.env("RUST_LOG", "info");
        let (notify, notify_dir) = if env.iter().any(|(k, _)| *k == "NOTIFY_SOCKET") {
            (None, None)
        } else {
            let dir = tempfile::tempdir()?;
            let sock = NotifySocket::bind(dir.path())?;
            cmd.env("NOTIFY_SOCKET", &sock.path);
            (Some(sock), Some(dir))
        };
        let child = cmd.envs(env.iter().copied()).stdout(Stdio::null()).stderr(err).spawn()?;
        Ok(Self { http_port, stderr, child: Some(child), notify, _notify_dir: notify_dir })
    }

    /// Spawns it and waits until it is ready (subscribed).
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) and [`wait_ready`](Self::wait_ready).
    pub fn start(exe: &Path, config: &Path, http_port: u16) -> Result<Self> {
        Self::start_env(exe, config, http_port, &[])
    }

    /// As [`start`](Self::start), with extra environment.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) and [`wait_ready`](Self::wait_ready).
    pub fn start_env(exe: &Path, config: &Path, http_port: u16, env: &[(&str, &str)]) -> Result<Self> {
        let g = Self::spawn(exe, config, http_port, env)?;
        g.wait_ready(START_LIMIT)?;
        Ok(g)
    }

    /// Spawns it and waits only until `/healthz` answers (a service that
    /// starts on a full disk is alive but cannot be ready).
    ///
    /// # Errors
    /// It exits, or does not answer within [`START_LIMIT`].
    pub fn start_alive(exe: &Path, config: &Path, http_port: u16) -> Result<Self> {
        let g = Self::spawn(exe, config, http_port, &[])?;
        g.poll("/healthz answering", START_LIMIT, || g.get("/healthz").0 == 200)?;
        Ok(g)
    }

    /// Waits for `READY=1` on its notification socket (when it has ours),
    /// then for `/readyz` to answer 200 (MQTT subscribed).
    ///
    /// # Errors
    /// It exits first, or is not ready within `limit`.
    pub fn wait_ready(&self, limit: Duration) -> Result<()> {
        let t = Instant::now();
        if let Some(n) = &self.notify {
            if !n.wait_for("READY=1", limit, || self.running()) {
                bail!("no READY=1 within {limit:?}{}", self.exit_note());
            }
        }
        self.poll("/readyz answering 200", limit.saturating_sub(t.elapsed()), || self.get("/readyz").0 == 200)
    }

    /// Polls `ready` every 20 ms while the process runs.
    fn poll(&self, what: &str, limit: Duration, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !ready() {
            if !self.running() || Instant::now() > deadline {
                bail!("gave up waiting for {what}{}", self.exit_note());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn exit_note(&self) -> String {
        let state = if self.running() { "still running" } else { "the gateway exited" };
        format!(" ({state}); gateway log:\n{}", self.log())
    }

    /// True while the process has not exited.
    pub fn running(&self) -> bool {
        // A process that exited and was not waited for is a zombie (Z).
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).is_ok_and(|st| !st.contains(") Z "))
    }

    /// The process id (0 once it was waited for).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Status and body of a GET on the telemetry port ((0, "") if unreachable).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    /// Every sample of `/metrics`, keyed by `name{labels}`.
    pub fn metrics(&self) -> HashMap<String, f64> {
        samples(&self.get("/metrics").1)
    }

    /// One sample of `/metrics` (NaN when absent).
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(f64::NAN)
    }

    /// Polls `/metrics` until `pred` holds.
    ///
    /// # Errors
    /// Not within `limit`: the error lists every metric and the log.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&HashMap<String, f64>) -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if pred(&self.metrics()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut m: Vec<String> = self.metrics().into_iter().map(|(k, v)| format!("{k} {v}")).collect();
                m.sort();
                bail!("gave up waiting for {what}; metrics:\n{}\ngateway log:\n{}", m.join("\n"), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGSTOP: the process runs no further instruction (in particular it
    /// sends no PUBACK and issues no write or fsync) until killed. A power
    /// cut is `freeze`, then `LazyFs::clear_cache`, then `kill9`: had the
    /// process run on while the cache was dropped, it could acknowledge
    /// writes the cut already lost, which no real power cut allows.
    ///
    /// # Errors
    /// `kill` fails.
    pub fn freeze(&self) -> Result<()> {
        signal(self.child.as_ref().context("not running")?, "STOP")
    }

    /// `kill -9`, and waits for the exit.
    ///
    /// # Errors
    /// Already waited for.
    pub fn kill9(mut self) -> Result<()> {
        let mut c = self.child.take().context("not running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// SIGTERM; whether it exited 0, and its log.
    ///
    /// # Errors
    /// As [`terminate_timed`](Self::terminate_timed).
    pub fn terminate(self) -> Result<(bool, String)> {
        let (ok, log, _) = self.terminate_timed()?;
        Ok((ok, log))
    }

    /// SIGTERM; whether it exited 0, its log, and how long it took.
    ///
    /// # Errors
    /// It did not exit within [`STOP_LIMIT`] (it is then killed).
    pub fn terminate_timed(mut self) -> Result<(bool, String, Duration)> {
        let mut c = self.child.take().context("not running")?;
        let t0 = Instant::now();
        signal(&c, "TERM")?;
        let status = wait_at_most(&mut c, STOP_LIMIT)?;
        Ok((status.success(), self.log(), t0.elapsed()))
    }

    /// SIGTERM, and it must exit 0.
    ///
    /// # Errors
    /// Not within [`STOP_LIMIT`], or a non-zero exit (with the log).
    pub fn stop(self) -> Result<()> {
        let (ok, log, _) = self.terminate_timed()?;
        anyhow::ensure!(ok, "the gateway did not exit cleanly on SIGTERM; its log:\n{log}");
        Ok(())
    }
}

/// Waits for `child`; kills it after `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the process did not exit within {limit:?} of SIGTERM (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident memory of a process, MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
