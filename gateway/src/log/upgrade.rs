//! Upgrades a log written by an earlier release, in place, before it opens.
//!
//! Owns the log's format history and the step from each format to the
//! next. Promises:
//!
//! - **The backlog survives an upgrade.** Every record keeps its area, its
//!   sequence number (so its `frame_id`) and its bytes; gap ids, cursors,
//!   the next sequence number and the set-aside records are carried over.
//!   Nothing already sent upstream is sent under another id, nothing waiting
//!   is lost.
//! - **A crash or a power cut anywhere leaves one whole log.** The new log
//!   is written beside the old one (`<log.path>/.upgrade/`), checked record
//!   for record against it, made durable, and only then moved into place;
//!   the old files go last. Until the move, the old log is untouched and
//!   the next start redoes the upgrade from the beginning.
//! - **Downgrades are refused, not guessed**: a log of a newer format than
//!   this release knows stops the start with a clear error (see
//!   [`LogError::NewerFormat`]), before anything is written.
//!
//! # Formats
//!
//! | format | releases | layout |
//! |---|---|---|
//! | 1 | up to the status-page release | one sled database at `<log.path>` (files `conf`, `db`, `blobs/`, `snap.*`), tree `log`: every record and payload inside sled |
//! | 2 | since | payload segments in `<log.path>/segments/`, sled index in `<log.path>/index/`, `Mformat = "2"` |
//!
//! Record values (the codec's format 1: frame, blob, gap) are the same in
//! both, so records are copied byte for byte; only where they live changes.
//! The upgrade needs free space about the size of the old log; without it
//! the open fails with a no-space error, which the service waits out like
//! any full disk.

use super::index::{self, ASIDE_PREFIX, CURSOR_PREFIX};
use super::{codec, segments, Area, Cursor, DurableLog, LogError, LogOptions, Txn};
use std::path::{Path, PathBuf};

/// The format this release writes.
pub const CURRENT: u32 = 2;
/// The name of the staging directory inside `<log.path>`.
const STAGING: &str = ".upgrade";
/// Key of the format a log was upgraded from (in the new index).
pub(super) const META_UPGRADED_FROM: &[u8] = b"Mupgraded_from";
/// Records per transaction while copying (each one sled batch).
const PER_TXN: usize = 256;
/// Bytes of payload per transaction while copying.
const BYTES_PER_TXN: usize = 64 << 20;

/// What an upgrade did, for the log line and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// The format the log had.
    pub from: u32,
    /// Records copied per area, in [`Area::ALL`] order.
    pub records: [u64; 5],
    /// Cursors carried over.
    pub cursors: usize,
    /// Set-aside (unreadable) records carried over.
    pub set_aside: u64,
    /// Next sequence number and gap id carried over.
    pub next: (u64, u64),
}

/// Files sled keeps in a database directory (format 1 at `<log.path>`).
fn is_format1_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Makes `<opts.path>` hold a log of the [`CURRENT`] format: upgrades an
/// older one, clears what a finished upgrade left behind, does nothing to a
/// current or a new log.
///
/// # Errors
/// [`LogError::GatewayIdMismatch`] if the old log belongs to another id,
/// [`LogError::Io`]/[`LogError::Open`]/[`LogError::Storage`] if it cannot
/// be read or the new one written (a full disk included), and
/// [`LogError::UpgradeMismatch`] if the copy does not match the original
/// (the old log is left as it was).
pub(super) fn prepare(opts: &LogOptions) -> Result<Option<Upgraded>, LogError> {
    let path = &opts.path;
    let io = |source| LogError::Io { path: path.clone(), source };
    if !path.join("conf").exists() {
        return Ok(None);
    }
    if path.join("index").exists() {
        // An upgrade finished and moved its index in, then stopped while
        // the old files were being removed.
        remove_format1(path).map_err(io)?;
        return Ok(None);
    }
    let staging = path.join(STAGING);
    for leftover in [staging.clone(), path.join("segments")] {
        // Only an interrupted upgrade writes these in a format-1 directory.
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(io)?;
        }
    }
    tracing::info!(path = %path.display(), from = 1, to = CURRENT, "upgrading the log; the backlog is kept");
    let done = copy_format1(opts, &staging)?;
    // Into place: segments first, then the index (whose presence says the
    // upgrade is done), each rename made durable before the next step.
    segments::sync_dir(&staging.join("segments")).map_err(io)?;
    segments::sync_dir(&staging).map_err(io)?;
    std::fs::rename(staging.join("segments"), path.join("segments")).map_err(io)?;
    segments::sync_dir(path).map_err(io)?;
    std::fs::rename(staging.join("index"), path.join("index")).map_err(io)?;
    segments::sync_dir(path).map_err(io)?;
    remove_format1(path).map_err(io)?;
    let _ = std::fs::remove_dir_all(&staging);
    segments::sync_dir(path).map_err(io)?;
    tracing::info!(
        path = %path.display(),
        frames = done.records[0],
        images = done.records[1],
        annotations = done.records[2],
        dead_letters = done.records[3],
        gaps = done.records[4],
        next_seq = done.next.0,
        "log upgraded from format 1 to {CURRENT}"
    );
    Ok(Some(done))
}

fn remove_format1(path: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_format1_file(&name) {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The old database's accounting: next seq, next gap id, set aside.
fn old_counters(v: &[u8]) -> Option<(u64, u64, u64)> {
    let (_, b) = codec::decode(v).ok()?;
    let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
    Some((word(0)?, word(1)?, word(2)?))
}

fn area_of(prefix: u8) -> Option<Area> {
    Area::ALL.into_iter().find(|a| a.prefix() == prefix)
}

fn cursor_of(name: &[u8]) -> Option<Cursor> {
    Cursor::ALL.into_iter().find(|c| c.name().as_bytes() == name)
}

/// The old database and its one tree, refused if it belongs to another
/// gateway.
fn open_format1(opts: &LogOptions) -> Result<(sled::Db, sled::Tree), LogError> {
    let old_path = opts.path.clone();
    index::remove_unfinished_snapshots(&old_path).map_err(|source| LogError::Io { path: old_path.clone(), source })?;
    let db = sled::Config::new()
        .path(&old_path)
        .cache_capacity(opts.cache_bytes)
        .open()
        .map_err(|source| LogError::Open { path: old_path.clone(), source })?;
    let tree = db.open_tree("log").map_err(|source| LogError::Open { path: old_path.clone(), source })?;
    if let Some(found) = tree.get(super::META_GATEWAY)? {
        if found.as_ref() != opts.gateway_id.as_bytes() {
            return Err(LogError::GatewayIdMismatch {
                path: old_path,
                found: String::from_utf8_lossy(&found).into_owned(),
                configured: opts.gateway_id.clone(),
            });
        }
    }
    Ok((db, tree))
}

/// Copies a format-1 log at `opts.path` into a new log at `staging`,
/// checks it and closes it durably.
fn copy_format1(opts: &LogOptions, staging: &Path) -> Result<Upgraded, LogError> {
    let (db, tree) = open_format1(opts)?;
    let (mut next_seq, mut next_gap, mut set_aside) =
        tree.get(super::META_STATE)?.as_deref().and_then(old_counters).unwrap_or_default();

    let mut new_opts = opts.clone();
    new_opts.path = staging.to_path_buf();
    new_opts.reserve_bytes = 0;
    let log = DurableLog::open(new_opts)?;
    let mut done = Upgraded { from: 1, ..Upgraded::default() };
    let mut aside = Vec::new();
    let mut iter = tree.iter().peekable();
    while iter.peek().is_some() {
        let mut core = log.inner.lock();
        let mut txn = Txn::new(&log.inner, &mut core);
        let (mut n, mut bytes) = (0, 0);
        while n < PER_TXN && bytes < BYTES_PER_TXN {
            let Some(kv) = iter.next() else { break };
            let (k, v) = kv?;
            match (k.first().copied(), index::seq_of(&k)) {
                (Some(p), Some(seq)) if area_of(p).is_some() => {
                    let Some(area) = area_of(p) else { continue };
                    bytes += v.len();
                    txn.put(area, seq, v.to_vec())?;
                    done.records[area.index()] += 1;
                    if area == Area::Gaps {
                        next_gap = next_gap.max(seq + 1);
                    } else {
                        next_seq = next_seq.max(seq + 1);
                    }
                }
                (Some(CURSOR_PREFIX), _) => match cursor_of(&k[1..]) {
                    Some(c) => {
                        let at = index::decode_u64(&v).unwrap_or(0);
                        txn.set_cursor(c, at);
                        done.cursors += 1;
                        if c == Cursor::ReplicateGaps {
                            next_gap = next_gap.max(at);
                        } else {
                            next_seq = next_seq.max(at);
                        }
                    }
                    None => {
                        tracing::warn!(key = %String::from_utf8_lossy(&k), "unknown cursor in the old log; left out")
                    }
                },
                (Some(ASIDE_PREFIX), _) => aside.push((k.to_vec(), v.to_vec())),
                (Some(b'M'), _) => {}
                _ => tracing::warn!(key = ?k.as_ref(), "unknown key in the old log; left out"),
            }
            n += 1;
        }
        txn.commit()?;
        drop(core);
        log.inner.flush()?;
    }
    for (k, v) in &aside {
        log.inner.index.tree.insert(k.as_slice(), v.as_slice())?;
    }
    set_aside = set_aside.max(aside.len() as u64);
    {
        let mut core = log.inner.lock();
        core.state.next_seq = core.state.next_seq.max(next_seq);
        core.state.next_gap = core.state.next_gap.max(next_gap);
        core.state.set_aside = core.state.set_aside.max(set_aside);
        core.state_dirty = true;
        done.next = (core.state.next_seq, core.state.next_gap);
    }
    log.inner.index.tree.insert(META_UPGRADED_FROM, b"1")?;
    log.inner.flush()?;
    done.set_aside = set_aside;
    verify(&tree, &log, &done)?;
    drop(log);
    drop(tree);
    db.flush()?;
    Ok(done)
}

/// Every record of the old tree is in the new log with the same bytes, and
/// the counts agree.
fn verify(tree: &sled::Tree, log: &DurableLog, done: &Upgraded) -> Result<(), LogError> {
    let counts = log.counts();
    for (i, (area, stats)) in counts.areas.iter().enumerate() {
        if stats.records != done.records[i] {
            return Err(LogError::UpgradeMismatch {
                path: log.path().to_path_buf(),
                detail: format!("{} records of {} copied, {} found", done.records[i], area.name(), stats.records),
            });
        }
    }
    for kv in tree.iter() {
        let (k, v) = kv?;
        let (Some(area), Some(seq)) = (k.first().copied().and_then(area_of), index::seq_of(&k)) else { continue };
        let copy = log.read(area, seq..seq.saturating_add(1), 1, |r| Ok(r.to_vec()))?;
        let same = copy.first().is_some_and(|(_, c)| c.as_slice() == v.as_ref());
        if !same {
            return Err(LogError::UpgradeMismatch {
                path: log.path().to_path_buf(),
                detail: format!("{} record {seq} differs after the copy", area.name()),
            });
        }
    }
    Ok(())
}

/// The staging directory of an upgrade in `path` (for tests and `du`).
pub fn staging(path: &Path) -> PathBuf {
    path.join(STAGING)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Area, DurableLog, FrameRecord, LogOptions};
    use std::path::{Path, PathBuf};

    /// The committed format-1 log (see `tests/fixtures/log-format1/make`).
    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/log-format1")
    }

    fn expected() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
    }

    fn unpack(dir: &Path) -> PathBuf {
        let ok = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(fixture().join("log.tar.gz"))
            .arg("-C")
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        dir.join("log")
    }

    fn opts(path: &Path) -> LogOptions {
        let mut o = LogOptions::new(path, expected()["gateway_id"].as_str().unwrap());
        o.max_bytes = 64 << 20;
        o.reserve_bytes = 0;
        o
    }

    /// The log holds what the old release's `log stats` said it held.
    fn assert_as_before(log: &DurableLog) {
        let want = expected();
        let stats = log.stats().unwrap();
        for area in Area::ALL {
            let n = want["areas"][area.name()]["records"].as_u64().unwrap_or(0);
            assert_eq!(stats.areas.get(&area).map_or(0, |a| a.records), n, "{}", area.name());
        }
        for c in ["detect", "replicate", "replicate_gaps"] {
            let at = want["cursors"][c]["position"].as_u64().unwrap_or(0);
            assert_eq!(stats.cursors.get(c).map_or(0, |s| s.position), at, "cursor {c}");
        }
        assert_eq!(stats.next_seq, want["next_seq"].as_u64().unwrap());
    }

    fn frame() -> FrameRecord {
        FrameRecord {
            camera: "cam".into(),
            content_type: "image/jpeg".into(),
            received_at_ms: 1,
            captured_at_ms: None,
            camera_seq: Some(1),
            payload: vec![1; 100],
        }
    }

    #[test]
    fn a_format1_log_keeps_its_backlog_ids_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let path = unpack(dir.path());
        let log = DurableLog::open(opts(&path)).unwrap();
        assert_as_before(&log);
        for old in ["conf", "db", "blobs"] {
            assert!(!path.join(old).exists(), "{old} left behind");
        }
        assert!(path.join("index").is_dir() && !super::staging(&path).exists());
        let gw = log.gateway_id().to_owned();
        let frames = log.read_frames(0, 10_000).unwrap();
        assert_eq!(frames.len() as u64, log.area_stats(Area::Frames).records);
        assert!(frames.iter().all(|(_, f)| !f.payload.is_empty() && !f.camera.is_empty()));
        let anns = log.read_blobs(Area::Annotations, 0, u64::MAX, 10_000).unwrap();
        assert!(!anns.is_empty());
        for (seq, json) in &anns {
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            assert_eq!(v["frame_id"], format!("{gw}:{seq}"), "an annotation keeps its frame id");
        }
        let images = log.area_stats(Area::Images).records;
        for (seq, _) in anns.iter().take(20) {
            let _ = log.read_area_frame(Area::Images, *seq).unwrap();
        }
        assert_eq!(log.area_stats(Area::Images).records, images, "no image set aside as unreadable");
        let next = log.counts().next_seq;
        assert_eq!(log.append_frame(&frame()).unwrap().seq, next, "the sequence goes on");
        drop(log);
        let log = DurableLog::open(opts(&path)).unwrap();
        assert_eq!(log.counts().next_seq, next + 1, "reopened as it is, no second upgrade");
    }

    #[test]
    fn an_interrupted_upgrade_is_redone_and_a_finished_one_tidied() {
        let dir = tempfile::tempdir().unwrap();
        let path = unpack(dir.path());
        // A copy that stopped half-way: staging and moved segments.
        std::fs::create_dir_all(super::staging(&path).join("index")).unwrap();
        std::fs::write(super::staging(&path).join("index").join("db"), b"half").unwrap();
        std::fs::create_dir_all(path.join("segments")).unwrap();
        std::fs::write(path.join("segments").join("0000000000000001.seg"), b"torn").unwrap();
        let log = DurableLog::open(opts(&path)).unwrap();
        assert_as_before(&log);
        drop(log);
        // An upgrade that stopped while removing the old files.
        std::fs::write(path.join("conf"), b"segment_size: 524288").unwrap();
        std::fs::write(path.join("snap.0000000000000060"), b"old").unwrap();
        let log = DurableLog::open(opts(&path)).unwrap();
        assert_as_before(&log);
        assert!(!path.join("conf").exists() && !path.join("snap.0000000000000060").exists());
    }

    #[test]
    fn a_format1_log_of_another_gateway_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = unpack(dir.path());
        let mut o = opts(&path);
        o.gateway_id = "someone-else".into();
        let err = DurableLog::open(o).unwrap_err();
        assert!(matches!(err, super::LogError::GatewayIdMismatch { .. }), "{err}");
        assert!(path.join("conf").exists() && !path.join("index").exists());
        assert_as_before(&DurableLog::open(opts(&path)).unwrap());
    }
}
