//! Signals to child processes, and the systemd notification socket a
//! child reports its readiness on (`NOTIFY_SOCKET`, as systemd sets it).

use anyhow::{ensure, Result};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a program installed from a Debian package is: the first of `names`
/// found in the system's program folders.
///
/// # Errors
/// None of them is there; the error says which package to install.
pub fn program(names: &[&str], package: &str) -> Result<PathBuf> {
    for n in names {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!("{} not found (Debian: apt-get install {package}; bash tests/run installs it)", names.join(" or "))
}

/// `kill -<name> <pid>` (TERM, STOP, CONT, ...).
///
/// # Errors
/// `kill` cannot run or the process is gone.
pub fn signal(child: &Child, name: &str) -> Result<()> {
    let st = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status()?;
    ensure!(st.success(), "kill -{name} {} failed ({st})", child.id());
    Ok(())
}

/// A bound `NOTIFY_SOCKET`: every datagram the child sends is read at once
/// by a thread of its own (an unread queue would block the child's
/// `sd_notify`, as it would under a stuck systemd), and handed to
/// [`wait_for`](Self::wait_for).
pub struct NotifySocket {
    /// Where the child must send (`NOTIFY_SOCKET`).
    pub path: PathBuf,
    messages: Receiver<String>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn bind(dir: &Path) -> Result<Self> {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, messages) = channel();
        let done = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    // Nobody listening any more is fine: keep draining.
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        Ok(Self { path, messages, stop })
    }

    /// Waits for a datagram with the line `want` (`READY=1`), as long as
    /// `alive` says the child runs, at most `limit`. Returns whether it came.
    pub fn wait_for(&self, want: &str, limit: Duration, alive: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && alive() {
            match self.messages.recv_timeout(Duration::from_millis(200)) {
                Ok(m) if m.lines().any(|l| l == want) => return true,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
