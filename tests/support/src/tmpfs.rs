//! A small tmpfs to fill: the disk-full tests' file system.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken fixture is a failed test, with the reason"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `mib` MiB mounted on a fresh folder (a small file system to
/// fill), unmounted on drop; `None` with the reason when mounting is not
/// allowed here (not root).
pub struct TmpFs {
    /// The mount point.
    pub dir: tempfile::TempDir,
}

impl TmpFs {
    /// Mounts it.
    ///
    /// # Errors
    /// Not allowed here (not root): the reason.
    pub fn mount(mib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(self.dir.path()).unwrap()
    }

    /// Another program's file takes every free byte: writes until ENOSPC.
    pub fn fill(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", p.display());
                break;
            }
        }
        // The last partial chunk: byte by byte is too slow; smaller writes.
        for size in [4096usize, 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
        p
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
