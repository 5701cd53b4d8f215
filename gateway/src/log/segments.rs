//! Payload segments: append-only files that hold frame and image bytes.
//!
//! Owns the `segments/` directory of the log. sled (the index) only holds
//! [`SegPtr`]s into these files, so a backlog costs disk, never RAM, and
//! opening the log never reads a payload.
//!
//! # Format (version 1)
//!
//! ```text
//! file   = header record*
//! header = "VGSEG\0\0\x01" (8) | segment id u64 LE | lane u8 | 0 (7)      = 24 bytes
//! record = "VGSR" (4) | body length u32 LE | seq u64 LE | area u8 | 0 (3)
//!          | CRC-32 u32 LE of bytes 4..20 and of the body's first 6 bytes | body = 24 + body
//! ```
//!
//! The body is the log codec's record: its first 6 bytes are the codec
//! header (version, kind, and the CRC-32 of the rest of the body), so the
//! record CRC covers the whole body through it and a payload is hashed once.
//! A torn or damaged body fails the codec's check when it is decoded.
//!
//! # Invariants
//!
//! - A segment is only ever appended to, by one writer (the log's lock), and
//!   only while it is its lane's active segment. After a restart every lane
//!   starts a new segment: a possibly torn tail is never written after.
//! - [`SegmentStore::sync`] fdatasyncs every segment written since the last
//!   sync and fsyncs the directory when a file appeared: after it returns,
//!   every record appended before it reads back byte-identical after a power
//!   cut.
//! - A read checks magic, length, seq and checksum against the pointer; a
//!   torn, damaged or missing record is a [`SegmentDamage`], never wrong data.
//! - A read allocates at most the pointer's length, which is bounded by the
//!   largest record the log accepts.
//! - A segment file is deleted whole, only after the index change that
//!   released its last record is durable; the directory is fsynced after.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Format version written in every segment header.
pub const SEGMENT_VERSION: u8 = 1;
const FILE_MAGIC: &[u8; 7] = b"VGSEG\0\0";
/// Bytes of a segment file's header.
pub const FILE_HEADER_LEN: u64 = 24;
const RECORD_MAGIC: &[u8; 4] = b"VGSR";
/// Bytes of a record's header in a segment.
pub const RECORD_HEADER_LEN: u64 = 24;

/// Which writer a segment belongs to (its lane of files). Records that
/// die together share a lane, so a segment empties as a whole: frames (freed after detect) do
/// not share files with sampled images (freed after upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Writer {
    /// Appended by intake: frames and large dead letters.
    Intake = 0,
    /// Written by stages: sampled images and large annotations.
    Stage = 1,
}

impl Writer {
    /// Both lanes.
    pub const ALL: [Writer; 2] = [Writer::Intake, Writer::Stage];

    /// The lane with this byte, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Writer::Intake),
            1 => Some(Writer::Stage),
            _ => None,
        }
    }
}

/// Where a record lives: stored in the index in place of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegPtr {
    /// Segment id (file name).
    pub segment: u64,
    /// Offset of the record header in the file.
    pub offset: u64,
    /// Body length.
    pub len: u32,
    /// The record's checksum.
    pub crc: u32,
}

impl SegPtr {
    /// Encoded length.
    pub const LEN: usize = 24;

    /// Little-endian fixed layout.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let u32_at = |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        Some(Self { segment: u64_at(0)?, offset: u64_at(8)?, len: u32_at(16)?, crc: u32_at(20)? })
    }

    /// Bytes the record takes in its segment.
    #[cfg(test)]
    pub fn disk_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.len)
    }
}

/// Why a record could not be read back from its segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentDamage {
    /// The segment file does not exist.
    #[error("segment {0:016x} is missing")]
    Missing(u64),
    /// The file ends before the record does (torn write, lost tail).
    #[error("segment {segment:016x} ends before the record at offset {offset} (torn or lost tail)")]
    Short {
        /// Segment id.
        segment: u64,
        /// Record offset.
        offset: u64,
    },
    /// Magic, length, seq or checksum do not match the index.
    #[error("record at segment {segment:016x} offset {offset} is damaged: {what}")]
    Damaged {
        /// Segment id.
        segment: u64,
        /// Record offset.
        offset: u64,
        /// What did not match.
        what: &'static str,
    },
}

/// A segment file the store knows about.
#[derive(Debug)]
struct Seg {
    lane: Writer,
    /// Bytes in the file (header + records written by this process, or the
    /// file's length when found at open).
    file_bytes: u64,
}

struct Active {
    id: u64,
    file: File,
}

/// The segment files of one log. Not thread-safe by itself: the log holds
/// it under its lock, and does the slow parts (fsync, reads) on handles
/// taken out of it.
pub struct SegmentStore {
    dir: PathBuf,
    target_bytes: u64,
    segs: BTreeMap<u64, Seg>,
    active: HashMap<Writer, Active>,
    next_id: u64,
    /// Segments written since the last sync.
    dirty: HashSet<u64>,
    /// A file appeared or disappeared since the last directory fsync.
    dir_dirty: bool,
    /// Read handles, opened on demand.
    readers: HashMap<u64, Arc<File>>,
    disk_bytes: u64,
}

/// What one sync must make durable, taken out of the store under the lock.
pub struct SyncPlan {
    files: Vec<(u64, Arc<File>)>,
    dir: Option<PathBuf>,
}

impl SyncPlan {
    /// fdatasyncs the files, then fsyncs the directory if needed.
    ///
    /// # Errors
    /// The first I/O error.
    pub fn run(&self) -> std::io::Result<()> {
        for (_, f) in &self.files {
            f.sync_data()?;
        }
        if let Some(d) = &self.dir {
            sync_dir(d)?;
        }
        Ok(())
    }
}

/// fsyncs a directory so that files created, renamed or removed in it
/// survive a power cut.
///
/// # Errors
/// The I/O error.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

impl SegmentStore {
    /// Opens the directory (created if missing) and lists its segments.
    /// Only file names and lengths are read: O(segments), not O(records).
    ///
    /// # Errors
    /// I/O errors listing or creating the directory.
    pub fn open(dir: PathBuf, target_bytes: u64) -> std::io::Result<Self> {
        let created = !dir.exists();
        std::fs::create_dir_all(&dir)?;
        if created {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut segs = BTreeMap::new();
        let mut disk_bytes = 0;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) =
                name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let len = e.metadata()?.len();
            disk_bytes += len;
            // The lane is corrected from the index by the caller.
            segs.insert(id, Seg { lane: Writer::Intake, file_bytes: len });
        }
        let next_id = segs.keys().next_back().map_or(1, |m| m + 1);
        Ok(Self {
            dir,
            target_bytes: target_bytes.max(FILE_HEADER_LEN + RECORD_HEADER_LEN + 1),
            segs,
            active: HashMap::new(),
            next_id,
            dirty: HashSet::new(),
            dir_dirty: false,
            readers: HashMap::new(),
            disk_bytes,
        })
    }

    /// Ids of the segment files present.
    pub fn ids(&self) -> Vec<u64> {
        self.segs.keys().copied().collect()
    }

    /// Sets a segment's lane (from the index at open).
    pub fn set_lane(&mut self, id: u64, lane: Writer) {
        if let Some(s) = self.segs.get_mut(&id) {
            s.lane = lane;
        }
    }

    /// Bytes of every segment file present (what the budget counts).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Bytes of one segment file.
    pub fn file_bytes(&self, id: u64) -> u64 {
        self.segs.get(&id).map_or(0, |s| s.file_bytes)
    }

    /// Writer of a segment, if present.
    pub fn lane(&self, id: u64) -> Option<Writer> {
        self.segs.get(&id).map(|s| s.lane)
    }

    /// Bytes appending a body of `len` to `lane` would add on disk (a new
    /// segment's header included when the active one is full).
    pub fn cost(&self, lane: Writer, len: u64) -> u64 {
        let rec = RECORD_HEADER_LEN + len;
        if self.rolls(lane, rec) {
            FILE_HEADER_LEN + rec
        } else {
            rec
        }
    }

    /// True if a record taking `rec` bytes starts a new segment of `lane`:
    /// there is no active one, or it is full (an empty one takes any size).
    fn rolls(&self, lane: Writer, rec: u64) -> bool {
        match self.active.get(&lane).and_then(|a| self.segs.get(&a.id)) {
            Some(s) => s.file_bytes + rec > self.target_bytes && s.file_bytes > FILE_HEADER_LEN,
            None => true,
        }
    }

    /// The lane's active segment, if it has one.
    pub fn active_id(&self, lane: Writer) -> Option<u64> {
        self.active.get(&lane).map(|a| a.id)
    }

    /// True if `id` is a lane's active segment.
    pub fn is_active(&self, id: u64) -> bool {
        self.active.values().any(|a| a.id == id)
    }

    /// Stops appending to `id` (it emptied); the next append of its lane
    /// starts a new segment.
    pub fn seal(&mut self, id: u64) {
        self.active.retain(|_, a| a.id != id);
    }

    /// Appends a record. Returns where it is and whether a new segment file
    /// was created for it.
    ///
    /// # Errors
    /// I/O errors; the record is then not in the log.
    pub fn append(&mut self, lane: Writer, area: u8, seq: u64, parts: &[&[u8]]) -> std::io::Result<(SegPtr, bool)> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
        let rec = RECORD_HEADER_LEN + u64::from(len);
        let mut created = false;
        if self.rolls(lane, rec) {
            self.create(lane)?;
            created = true;
        }
        let Some(active) = self.active.get_mut(&lane) else {
            return Err(std::io::Error::other("no active segment"));
        };
        let id = active.id;
        let offset = self.segs.get(&id).map_or(FILE_HEADER_LEN, |s| s.file_bytes);
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        head[0..4].copy_from_slice(RECORD_MAGIC);
        head[4..8].copy_from_slice(&len.to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16] = area;
        let mut h = crc32fast::Hasher::new();
        h.update(&head[4..20]);
        let mut first = [0u8; CODEC_HEAD];
        let mut n = 0;
        for p in parts {
            let take = (CODEC_HEAD - n).min(p.len());
            first[n..n + take].copy_from_slice(&p[..take]);
            n += take;
        }
        h.update(&first[..n]);
        let crc = h.finalize();
        head[20..24].copy_from_slice(&crc.to_le_bytes());
        let mut slices = Vec::with_capacity(parts.len() + 1);
        slices.push(&head[..]);
        slices.extend_from_slice(parts);
        let written = write_all_parts(&active.file, &slices, offset);
        if let Err(e) = written {
            // The tail may be partly written: never append after it.
            self.active.remove(&lane);
            return Err(e);
        }
        if let Some(s) = self.segs.get_mut(&id) {
            s.file_bytes = offset + rec;
        }
        self.disk_bytes += rec;
        self.dirty.insert(id);
        Ok((SegPtr { segment: id, offset, len, crc }, created))
    }

    fn create(&mut self, lane: Writer) -> std::io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let path = self.dir.join(file_name(id));
        let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let mut head = [0u8; FILE_HEADER_LEN as usize];
        head[..7].copy_from_slice(FILE_MAGIC);
        head[7] = SEGMENT_VERSION;
        head[8..16].copy_from_slice(&id.to_le_bytes());
        head[16] = lane as u8;
        file.write_all(&head)?;
        self.segs.insert(id, Seg { lane, file_bytes: FILE_HEADER_LEN });
        self.disk_bytes += FILE_HEADER_LEN;
        self.active.insert(lane, Active { id, file });
        self.dirty.insert(id);
        self.dir_dirty = true;
        Ok(())
    }

    /// Takes what the next sync must cover. Call under the log's lock, run
    /// the plan outside it.
    ///
    /// # Errors
    /// I/O errors opening a handle.
    pub fn take_sync_plan(&mut self) -> std::io::Result<SyncPlan> {
        let mut files = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            if !self.segs.contains_key(&id) {
                continue;
            }
            files.push((id, self.handle(id)?));
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        Ok(SyncPlan { files, dir })
    }

    /// Every segment (and the directory) to be synced at the next flush:
    /// at open, for what the previous process wrote after its last one.
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.segs.keys().copied());
        self.dir_dirty = true;
    }

    /// fdatasyncs segment `id` now, and the directory if a segment file
    /// appeared since the last sync: for records whose index entries must
    /// not become durable before their bytes (see `txn.rs`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync_now(&mut self, id: u64) -> std::io::Result<()> {
        self.handle(id)?.sync_data()?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Puts back what a failed sync did not make durable.
    pub fn sync_failed(&mut self, plan: SyncPlan) {
        self.dirty.extend(plan.files.iter().map(|(id, _)| *id));
        if plan.dir.is_some() {
            self.dir_dirty = true;
        }
    }

    /// A read handle on a segment (shared, opened once).
    ///
    /// # Errors
    /// `NotFound` if the file is missing, other I/O errors.
    pub fn handle(&mut self, id: u64) -> std::io::Result<Arc<File>> {
        if let Some(f) = self.readers.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.dir.join(file_name(id)))?);
        self.readers.insert(id, f.clone());
        Ok(f)
    }

    /// Deletes segment files (their last record is released durably). The
    /// directory is fsynced by the caller's next sync or [`sync_dir`].
    ///
    /// # Errors
    /// I/O errors other than the file being gone already.
    pub fn delete(&mut self, ids: &[u64]) -> std::io::Result<()> {
        for id in ids {
            self.seal(*id);
            self.readers.remove(id);
            self.dirty.remove(id);
            match std::fs::remove_file(self.dir.join(file_name(*id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(s) = self.segs.remove(id) {
                self.disk_bytes = self.disk_bytes.saturating_sub(s.file_bytes);
            }
            self.dir_dirty = true;
        }
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Bytes of the codec header at the start of every body.
const CODEC_HEAD: usize = 6;

/// Writes the slices one after the other at `offset`, in one system call
/// when it can (`pwritev`), finishing a short write with positioned writes.
fn write_all_parts(file: &File, parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::io::{IoSlice, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut done = loop {
        match f.write_vectored(&slices) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let mut at = offset;
    for p in parts {
        if done >= p.len() {
            done -= p.len();
        } else {
            file.write_all_at(&p[done..], at + done as u64)?;
            done = 0;
        }
        at += p.len() as u64;
    }
    Ok(())
}

/// Reads and checks one record on a handle. Allocates `ptr.len` bytes.
///
/// # Errors
/// [`SegmentDamage`] for a short, damaged or mismatched record; the I/O
/// error for anything else.
pub fn read_record(
    file: &File,
    ptr: &SegPtr,
    seq: u64,
    area: u8,
) -> Result<Result<Vec<u8>, SegmentDamage>, std::io::Error> {
    let mut head = [0u8; RECORD_HEADER_LEN as usize];
    let short = SegmentDamage::Short { segment: ptr.segment, offset: ptr.offset };
    match file.read_exact_at(&mut head, ptr.offset) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Err(short)),
        Err(e) => return Err(e),
    }
    let damaged = |what| SegmentDamage::Damaged { segment: ptr.segment, offset: ptr.offset, what };
    if &head[0..4] != RECORD_MAGIC {
        return Ok(Err(damaged("no record header")));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let stored_seq = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
    let stored_crc = u32::from_le_bytes([head[20], head[21], head[22], head[23]]);
    if len != ptr.len {
        return Ok(Err(damaged("length differs from the index")));
    }
    if stored_seq != seq || head[16] != area {
        return Ok(Err(damaged("record belongs to another sequence number")));
    }
    if stored_crc != ptr.crc {
        return Ok(Err(damaged("checksum differs from the index")));
    }
    let mut body = vec![0u8; len as usize];
    match file.read_exact_at(&mut body, ptr.offset + RECORD_HEADER_LEN) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Err(short)),
        Err(e) => return Err(e),
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&head[4..20]);
    h.update(&body[..CODEC_HEAD.min(body.len())]);
    if h.finalize() != stored_crc {
        return Ok(Err(damaged("checksum mismatch")));
    }
    Ok(Ok(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_roll_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path().join("segments"), 200).unwrap();
        let (a, created) = s.append(Writer::Intake, 1, 7, &[&[1u8; 100]]).unwrap();
        assert!(created);
        let (b, created) = s.append(Writer::Intake, 1, 8, &[&[2u8; 50], &[2u8; 50]]).unwrap();
        assert!(created, "the first segment is full");
        assert_ne!(a.segment, b.segment);
        let (c, _) = s.append(Writer::Stage, 2, 7, &[&[3u8; 10]]).unwrap();
        assert_ne!(c.segment, b.segment, "lanes never share a segment");
        let plan = s.take_sync_plan().unwrap();
        plan.run().unwrap();
        let f = s.handle(a.segment).unwrap();
        assert_eq!(read_record(&f, &a, 7, 1).unwrap().unwrap(), vec![1u8; 100]);
        assert!(read_record(&f, &a, 8, 1).unwrap().is_err(), "seq is checked");
        let before = s.disk_bytes();
        s.delete(&[a.segment]).unwrap();
        assert_eq!(s.disk_bytes(), before - (FILE_HEADER_LEN + a.disk_len()));
        assert!(matches!(s.handle(a.segment), Err(e) if e.kind() == std::io::ErrorKind::NotFound));
        // Reopen: files listed with their lengths.
        drop(s);
        let s = SegmentStore::open(dir.path().join("segments"), 200).unwrap();
        assert_eq!(s.ids(), vec![b.segment, c.segment]);
    }

    #[test]
    fn torn_and_flipped_records_are_damage_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let (p, _) = s.append(Writer::Intake, 1, 0, &[&[9u8; 1000]]).unwrap();
        let path = dir.path().join(file_name(p.segment));
        // Flip one byte of the body's head (the rest is the codec's to check).
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(p.offset + RECORD_HEADER_LEN + 3) as usize] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        assert!(matches!(read_record(&f, &p, 0, 1).unwrap(), Err(SegmentDamage::Damaged { .. })));
        // Cut the tail.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(p.offset + 100).unwrap();
        let f = File::open(&path).unwrap();
        assert!(matches!(read_record(&f, &p, 0, 1).unwrap(), Err(SegmentDamage::Short { .. })));
    }
}
