//! Free space on the log's file system: the floor intake stops at, and the
//! reserve the log keeps for itself.
//!
//! A file system filled by something else (another file, another service)
//! is a state the log rides out, not a failure:
//!
//! - **Floor.** Intake's appends are refused with [`LogError::NoSpace`]
//!   (transient, like [`LogError::Full`]) while the file system has less
//!   than the floor free. The stages that only free space (replicate,
//!   retention) keep writing below it: their index writes are small, and
//!   each one lets bytes go.
//! - **Reserve.** `<log.path>/reserve` is a file of half the floor that the
//!   log creates while there is room (twice the floor free) and deletes
//!   when the file system runs out: on open when the index cannot be opened
//!   for lack of space (so the service starts on a full disk and drains),
//!   when free space falls below half the floor, and when a flush fails for
//!   lack of space (so the stages that free space have room for their own
//!   writes; intake stays paused, since free space is still under the
//!   floor). It comes back once there is room for it again.
//! - ENOSPC, EDQUOT and EIO on a write are recognised wherever they surface
//!   ([`LogError::is_no_space`]), so the supervisor can tell "wait for
//!   space" from a damaged disk.

use std::path::Path;

/// Name of the reserve file in the log directory.
pub const RESERVE_FILE: &str = "reserve";

/// Bytes available to an unprivileged writer on the file system of `path`.
///
/// # Errors
/// If the file system cannot be queried.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    // A file system that reports no size at all (some FUSE file systems
    // without a statfs of their own) says nothing about free space: treat
    // it as roomy rather than as full forever.
    if fs2::total_space(path)? == 0 {
        return Ok(u64::MAX);
    }
    fs2::available_space(path)
}

/// True for the errors a full file system (or quota) gives on a write. EIO
/// is included: on a full thin-provisioned or network volume a write fails
/// with it, and retrying once space returns is the right answer there too.
pub fn is_no_space_io(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT | EIO)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// True when sled failed for lack of space.
pub fn is_no_space_sled(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if is_no_space_io(io))
}

/// Creates the reserve file of `bytes` in `dir` if it is missing and the
/// file system keeps at least `keep_free` bytes free besides it. Returns
/// whether a reserve is in place. Best effort: a failure leaves no reserve.
pub fn ensure_reserve(dir: &Path, bytes: u64, keep_free: u64) -> bool {
    let path = dir.join(RESERVE_FILE);
    if bytes == 0 {
        return false;
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return true;
    }
    if free_bytes(dir).map_or(true, |free| free < bytes.saturating_add(keep_free)) {
        return false;
    }
    let made = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&path)?;
        fs2::FileExt::allocate(&f, bytes)?;
        f.sync_all()?;
        super::segments::sync_dir(dir)
    })();
    match made {
        Ok(()) => {
            tracing::info!(path = %path.display(), bytes, "disk space reserve in place");
            true
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::debug!(error = %e, "no disk space reserve");
            false
        }
    }
}

/// Deletes the reserve file, if there is one; returns whether it did.
pub fn release_reserve(dir: &Path) -> bool {
    let path = dir.join(RESERVE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            let _ = super::segments::sync_dir(dir);
            tracing::warn!(path = %path.display(), "disk full: released the log's space reserve");
            true
        }
        Err(_) => false,
    }
}
