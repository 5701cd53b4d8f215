//! A private mosquitto (Debian's) on a free loopback port with its own
//! config and folder, killed on drop. The intake tests, the demo and the
//! benches all start their broker here.

use crate::net::{free_port, wait_for_close, wait_for_port};
use anyhow::Result;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How the broker keeps state across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Sessions and queued messages live in memory only.
    Off,
    /// Saved on SIGTERM (as a packaged broker does), so
    /// [`Mosquitto::restart`] keeps what it acknowledged to publishers.
    OnStop,
}

/// A mosquitto process.
pub struct Mosquitto {
    /// Its listener on 127.0.0.1.
    pub port: u16,
    /// Its config, database and log (`mosquitto.log`).
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// A broker without persistence, queueing up to 100,000 messages per
    /// offline session.
    ///
    /// # Errors
    /// mosquitto missing, or not listening within 20 s.
    pub fn start() -> Result<Self> {
        Self::start_with(Persistence::Off, 100_000)
    }

    /// A broker with the given persistence and `max_queued_messages`
    /// (0: unlimited). `E2E_KEEP=1` keeps its folder with a full protocol
    /// log.
    ///
    /// # Errors
    /// mosquitto missing, its folder not writable, or not listening within 20 s.
    pub fn start_with(persistence: Persistence, max_queued: u64) -> Result<Self> {
        let keep = std::env::var_os("E2E_KEEP").is_some();
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        let persist = match persistence {
            Persistence::Off => "persistence false\n".to_owned(),
            Persistence::OnStop => {
                // mosquitto started as root drops to its own user, which
                // must be able to write its database here.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
                format!("persistence true\npersistence_location {}/\nautosave_interval 0\n", dir.path().display())
            }
        };
        let logging = if keep { "all" } else { "error\nlog_type warning\nlog_type notice" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persist}\
                 max_queued_messages {max_queued}\nmax_queued_bytes 0\nlog_type {logging}\n"
            ),
        )?;
        let mut m = Self { port, dir, conf, child: None };
        m.spawn()?;
        if keep {
            eprintln!("mosquitto folder kept: {}", m.dir.path().display());
            let kept = std::mem::replace(&mut m.dir, tempfile::tempdir()?);
            let _ = kept.keep();
        }
        Ok(m)
    }

    fn spawn(&mut self) -> Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.conf.with_file_name("mosquitto.log"))?;
        let child = Command::new(crate::process::program(&["mosquitto"], "mosquitto")?)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto", Duration::from_secs(20))
    }

    /// Stops mosquitto with SIGTERM (it saves its state when persistent)
    /// and starts it again on the same port.
    ///
    /// # Errors
    /// The new process does not listen within 20 s.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            crate::process::signal(&c, "TERM")?;
            let _ = c.wait();
        }
        // The port must be free again before the new process binds it.
        wait_for_close(self.port, Duration::from_secs(10));
        self.spawn()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
