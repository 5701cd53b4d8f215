//! The index: sled, holding small records and pointers into segments.
//!
//! Owns the `index/` directory. One sled tree holds everything, so that one
//! `apply_batch` is one atomic step across areas. Keys are a one-byte prefix
//! and a big-endian u64, so a prefix scan is ordered by sequence number:
//!
//! ```text
//! F seq  frame (pointer)      I seq  sampled image (pointer)   A seq  annotation
//! D seq  dead letter          G id   gap record                C name cursor (u64 BE)
//! M ...  accounting (`Mstate`), gateway id, format      X key  set-aside record
//! ```
//!
//! A value is a codec record ([`super::codec`]): the record itself when it is
//! small, or a [`RecordKind::Pointer`] to a segment record.
//!
//! # Durability
//!
//! sled's own `flush` writes its log with `sync_file_range`, which persists
//! no metadata and gives no crash guarantee, and sled never fsyncs its
//! directory or its `conf` file. [`Index::flush_durable`] therefore follows
//! sled's flush with an `fsync` of the `db` file and of the directory. The
//! values stay far below sled's blob threshold (a quarter of its 512 KiB
//! segment), so sled's never-fsynced blob files are not used.

use super::codec::{self, CodecError, RecordKind};
use super::segments::{sync_dir, SegPtr};
use super::LogError;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What the budget counts for the index at least: sled writes its file in
/// 512 KiB segments, so it takes that much as soon as anything is written.
pub const INDEX_FLOOR: u64 = 512 << 10;

/// Length of a record key.
pub const KEY_LEN: u64 = 9;
pub(super) const META_STATE: &[u8] = b"Mstate";
/// The next seq after the last completed flush: every record below it had
/// its payload synced before this was written (records at or above it were
/// never acknowledged).
pub(super) const META_DURABLE: &[u8] = b"Mdurable";
pub(super) const META_GATEWAY: &[u8] = b"Mgateway_id";
pub(super) const META_FORMAT: &[u8] = b"Mformat";
/// Layout of this log: 2 = payloads in segments, index in `index/`.
pub(super) const FORMAT: &[u8] = b"2";
pub(super) const CURSOR_PREFIX: u8 = b'C';
pub(super) const ASIDE_PREFIX: u8 = b'X';
/// Fingerprints of recent appends (`R` + seq -> fingerprint), for
/// [`DurableLog::append_once`](super::DurableLog::append_once).
pub(super) const RECENT_PREFIX: u8 = b'R';

/// The key of record `seq` in the area with prefix `prefix`.
pub fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The u64 of a prefixed key.
pub fn seq_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// What an index value says about its record, without reading a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The record is the value itself (`len` bytes).
    Inline(u64),
    /// The record is in a segment.
    Ptr(SegPtr),
}

impl Slot {
    /// Logical bytes of the record.
    pub fn logical(&self) -> u64 {
        match self {
            Slot::Inline(n) => *n,
            Slot::Ptr(p) => u64::from(p.len),
        }
    }

    /// Reads the slot of a stored value. A damaged pointer is reported as an
    /// inline value of its length: the reader then finds the damage.
    pub fn of(value: &[u8]) -> Slot {
        if value.get(1) == Some(&(RecordKind::Pointer as u8)) {
            if let Ok(p) = pointer(value) {
                return Slot::Ptr(p);
            }
        }
        Slot::Inline(value.len() as u64)
    }
}

/// The stored value of a pointer.
pub fn encode_pointer(p: &SegPtr) -> Vec<u8> {
    codec::encode(RecordKind::Pointer, &p.encode())
}

/// Parses a pointer value.
///
/// # Errors
/// A [`CodecError`] if the value is damaged or not a pointer.
pub fn pointer(value: &[u8]) -> Result<SegPtr, CodecError> {
    match codec::decode(value)? {
        (RecordKind::Pointer, b) => SegPtr::decode(b).ok_or(CodecError::Malformed("segment pointer".into())),
        (k, _) => Err(CodecError::Malformed(format!("expected a pointer, found {k:?}"))),
    }
}

/// sled plus the files to fsync after its flush.
pub struct Index {
    dir: PathBuf,
    /// The database.
    pub db: sled::Db,
    /// The one tree.
    pub tree: sled::Tree,
    db_file: File,
    /// (name, inode) of every entry of `dir` at its last fsync.
    synced_listing: std::sync::Mutex<Vec<(std::ffi::OsString, u64)>>,
}

impl Index {
    /// Opens sled in `dir`. The directory lock can outlive a closed handle
    /// for a moment (sled's background threads release it when they
    /// finish), so a lock conflict is retried for up to two seconds.
    ///
    /// # Errors
    /// [`LogError::Open`] if sled cannot open it.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, LogError> {
        remove_unfinished_snapshots(dir).map_err(|source| LogError::Io { path: dir.to_path_buf(), source })?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(LogError::Open { path: dir.to_path_buf(), source }),
            }
        };
        let tree = db.open_tree("log").map_err(|source| LogError::Open { path: dir.to_path_buf(), source })?;
        let io = |source| LogError::Io { path: dir.to_path_buf(), source };
        let db_file = File::open(dir.join("db")).map_err(io)?;
        // sled writes `conf` without an fsync.
        File::open(dir.join("conf")).and_then(|f| f.sync_all()).map_err(io)?;
        Ok(Self { dir: dir.to_path_buf(), db, tree, db_file, synced_listing: std::sync::Mutex::new(Vec::new()) })
    }

    /// Makes every change applied so far durable: sled's flush, then an
    /// fdatasync of its file (its size included) and, when sled created,
    /// renamed or removed a file since the last time (snapshots), an fsync
    /// of its directory. Returns the index's size on disk, from the same
    /// look at the directory ([`size_on_disk`](Self::size_on_disk)).
    ///
    /// # Errors
    /// [`LogError::Storage`] or [`LogError::Io`].
    pub fn flush_durable(&self) -> Result<u64, LogError> {
        self.db.flush()?;
        let io = |source| LogError::Io { path: self.dir.clone(), source };
        self.db_file.sync_data().map_err(io)?;
        let (listing, bytes) = scan(&self.dir).map_err(io)?;
        let mut synced = self.synced_listing.lock().unwrap_or_else(|p| p.into_inner());
        if *synced != listing {
            sync_dir(&self.dir).map_err(io)?;
            *synced = listing;
        }
        Ok(bytes)
    }

    /// Bytes the index's files take: every file under `index/` (sled's
    /// `db`, `conf`, snapshots and blobs), so the budget sees them all.
    ///
    /// # Errors
    /// [`LogError::Io`].
    pub fn size_on_disk(&self) -> Result<u64, LogError> {
        scan(&self.dir).map(|(_, bytes)| bytes).map_err(|source| LogError::Io { path: self.dir.clone(), source })
    }

    /// A cursor's stored position.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, LogError> {
        Ok(self.tree.get(cursor_key(name))?.as_deref().and_then(decode_u64))
    }
}

/// The entries of `dir` as (name, inode), sorted, and the bytes of every
/// file below it.
fn scan(dir: &Path) -> std::io::Result<(Vec<(std::ffi::OsString, u64)>, u64)> {
    use std::os::unix::fs::DirEntryExt;
    let (mut listing, mut bytes) = (Vec::new(), 0);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = match e.metadata() {
            Ok(m) => m,
            // sled removes old snapshots in the background.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        bytes += if m.is_dir() { scan(&e.path())?.1 } else { m.len() };
        listing.push((e.file_name(), e.ino()));
    }
    listing.sort();
    Ok((listing, bytes))
}

/// Removes the snapshot files sled did not finish writing, while no
/// process holds the database. Returns how many.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`; but at open it reads the newest `snap.*`
/// file, an unfinished one included, and refuses a torn one ("Read
/// corrupted data"). A snapshot write cut short (a full disk, a kill -9 or
/// a power cut while it is written) would otherwise keep the log from
/// opening until someone deletes the file by hand: the crash loop of a
/// full disk that outlives the full disk. Such a file is never needed:
/// sled removes the previous snapshot only after the rename. Found by the
/// chaos checker's disk-full fault.
pub fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<usize> {
    use fs2::FileExt;
    let db = match File::open(dir.join("db")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    // sled holds an exclusive flock on `db` while the database is open
    // (in this process or another): then nothing is touched. A database
    // just closed in this process (the pipeline reopening its log) can
    // hold it a moment longer, as can a child process between its fork and
    // exec: the lock is tried for up to two seconds.
    let mut tries = 0;
    while db.try_lock_exclusive().is_err() {
        tries += 1;
        if tries == 20 {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut removed = 0;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(dir.join(&*name))?;
            tracing::warn!(file = %dir.join(&*name).display(), "removed a snapshot sled did not finish writing");
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    drop(db);
    Ok(removed)
}

/// Key of a cursor.
pub fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(CURSOR_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

/// A big-endian u64 value.
pub fn decode_u64(v: &[u8]) -> Option<u64> {
    let b: [u8; 8] = v.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_damage_is_detected() {
        let p = SegPtr { segment: 3, offset: 24, len: 600_000, crc: 0xdead_beef };
        let v = encode_pointer(&p);
        assert_eq!(Slot::of(&v), Slot::Ptr(p));
        assert_eq!(pointer(&v).unwrap(), p);
        let mut bad = v.clone();
        bad[10] ^= 4;
        assert!(pointer(&bad).is_err());
        assert_eq!(Slot::of(&bad), Slot::Inline(bad.len() as u64));
        let inline = codec::encode(RecordKind::Blob, b"{}");
        assert_eq!(Slot::of(&inline), Slot::Inline(inline.len() as u64));
    }
}
