//! LazyFS, the FUSE file system that loses unsynced writes on command:
//! the power cut of the crash tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken fixture is a failed test, with the reason"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A LazyFS mount (a FUSE file system that keeps every write in its own
/// cache until it is fsynced, and drops the unsynced rest on
/// `lazyfs::clear-cache`, which is what a power cut does), unmounted on drop.
///
/// `LAZYFS_BIN` names the binary (tests/run builds it from
/// `../shared/lazyfs`); without it, the build cache is looked at. Needs root
/// and `/dev/fuse`: [`LazyFs::unavailable`] says why it cannot run.
pub struct LazyFs {
    /// Where it is mounted: put the gateway's log under it.
    pub mnt: PathBuf,
    fifo: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl LazyFs {
    fn bin() -> Option<PathBuf> {
        if let Some(b) = std::env::var_os("LAZYFS_BIN") {
            return Some(PathBuf::from(b)).filter(|p| p.exists());
        }
        let cache = std::env::var_os("VISION_GATEWAY_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/vision-gateway")))?;
        Some(cache.join("lazyfs-a47a5ba/lazyfs/build/lazyfs")).filter(|p| p.exists())
    }

    /// Why power-cut tests cannot run here, if they cannot.
    pub fn unavailable() -> Option<String> {
        if Self::bin().is_none() {
            return Some("LazyFS is not built (bash tests/run builds it from ../shared/lazyfs)".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("/dev/fuse is missing".into());
        }
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.ok().as_deref() != Some("0") {
            return Some("not root (FUSE with allow_other)".into());
        }
        None
    }

    /// Whether power cuts can run here; if not, prints `context: why`.
    pub fn available(context: &str) -> bool {
        match Self::unavailable() {
            Some(why) => {
                println!("{context}: {why}");
                false
            }
            None => true,
        }
    }

    /// Mounts a fresh LazyFS and waits until it serves. A LazyFS that
    /// exits or does not serve within 30 s (a loaded machine) is stopped
    /// and started again on a fresh directory, 3 attempts; the failure
    /// carries the tail of its log.
    pub fn mount() -> Self {
        const ATTEMPTS: usize = 3;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match Self::try_mount(Duration::from_secs(30)) {
                Ok(me) => return me,
                Err(why) => {
                    eprintln!("LazyFS attempt {attempt} of {ATTEMPTS}: {why}");
                    last = why;
                }
            }
        }
        panic!("LazyFS did not mount in {ATTEMPTS} attempts; last: {last}");
    }

    fn try_mount(wait: Duration) -> Result<Self, String> {
        let bin = Self::bin().expect("LazyFS binary");
        let dir = tempfile::tempdir().unwrap();
        let (mnt, root, fifo) = (dir.path().join("mnt"), dir.path().join("root"), dir.path().join("faults.fifo"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let conf = dir.path().join("lazyfs.toml");
        std::fs::write(
            &conf,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"4gb\"\n\
                 blocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display()
            ),
        )
        .unwrap();
        let log_path = dir.path().join("lazyfs.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(bin)
            .arg(&mnt)
            .arg("--config-path")
            .arg(&conf)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut me = Self { mnt, fifo, child: Some(child), _dir: dir };
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(8)..].join(" | ")
        };
        let deadline = Instant::now() + wait;
        loop {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            if mounts.lines().any(|l| l.split_whitespace().nth(1) == me.mnt.to_str()) && me.fifo.exists() {
                return Ok(me);
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("lazyfs exited ({status}); its log ends: {}", tail()));
            }
            if Instant::now() >= deadline {
                let why = format!("not mounted at {} within {wait:?}; its log ends: {}", me.mnt.display(), tail());
                drop(me); // unmounts and stops it
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn command(&self, c: &str) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).unwrap();
        writeln!(f, "{c}").unwrap();
        drop(f);
        // LazyFS applies the command on its own thread; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Drops every write that was not fsynced: the power cut.
    pub fn clear_cache(&self) {
        self.command("lazyfs::clear-cache");
    }

    /// Writes everything cached to disk (what writeback does to old data).
    pub fn checkpoint(&self) {
        self.command("lazyfs::cache-checkpoint");
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
