//! The durable log: the only shared state of the gateway.
//!
//! Owns every byte the gateway keeps on disk: frames as received, sampled
//! images waiting for upload, annotations waiting for replication, dead
//! letters (quarantined input), gap records (what was dropped and why), the
//! per-stage cursors and the accounting of all of it.
//!
//! # Layout (format 2; earlier formats are upgraded on open, `upgrade.rs`)
//!
//! ```text
//! <log.path>/segments/<id>.seg   payload segments: frame and image bytes (segments.rs)
//! <log.path>/index/              sled: pointers, small records, cursors, accounting (index.rs)
//! ```
//!
//! The seams: [`codec`] (record bytes), `segments` (payload files),
//! `index` (sled and its fsync), `accounting` (counters written with every
//! change), `txn` (atomic changes, retention, the budget), [`reader`] (bounded
//! typed readers).
//!
//! # Invariants
//!
//! - **Sequence.** Frames and dead letters share one sequence; `seq` grows by
//!   one per record and is never handed out twice: it is written in the same
//!   batch as the record, and on open it is raised above every key and every
//!   cursor, so neither a power cut nor damaged accounting can bring it back
//!   below a number already used. `frame_id = "{gateway_id}:{seq}"`.
//! - **Durability.** [`DurableLog::flush`] is a barrier: the payload segments
//!   written since the last flush are fdatasynced (and their directory
//!   fsynced when a file appeared), then the index is flushed and its file
//!   and directory fsynced. A record is durable once a flush that started
//!   after its append returned. Intake acknowledges MQTT only after that.
//! - **Nothing unsynced goes upstream.** The durable watermark is the
//!   sequence (and gap id) a completed flush covered. Readers are bounded:
//!   detect reads frames below the watermark; replicate reads below detect's
//!   cursor; gap records below the durable gap id. A frame_id Kafka has seen
//!   can therefore never name another frame after a power cut.
//! - **Atomic stages.** A stage writes its outputs, removals and new cursor in
//!   one [`StageBatch`]; after a crash either all of it is there or none.
//!   Cursors never move back.
//! - **Accounting.** Counts and bytes per area, and live records per segment,
//!   are written in the same batch as the change: exact after any crash;
//!   opening costs O(segments), never a scan of records.
//! - **Budget.** `max_bytes` bounds bytes on disk: segment files whole plus
//!   the index as measured plus a reserve for its growth (`index_reserve`).
//!   Room is made by retention, then by dropping sampled images not yet
//!   uploaded, then (`drop_oldest`) the oldest frames not yet detected, or
//!   (`block`) the append is refused with [`LogError::Full`]. Every drop is a
//!   [`GapRecord`] in the same batch. A segment file is deleted only after the
//!   index change that emptied it is durable.
//! - **Damage.** A record that cannot be read back (torn tail, missing
//!   segment, checksum, damaged index value) is moved aside (key `X`),
//!   counted, logged and reported as a gap with the reason; it never stops
//!   the log from opening or a reader from going on.
//! - **Waiting.** A reader that has caught up waits on a generation counter
//!   bumped by every change and flush (`tokio::sync::watch`), never polls.

mod accounting;
pub mod codec;
mod error;
mod index;
pub mod reader;
mod segments;
pub mod space;
mod txn;
pub mod upgrade;

pub use codec::{CodecError, FrameHead, RecordKind};
pub use error::LogError;
pub use reader::{LogReader, ReadBatch};

use crate::records::{Area, FrameRecord, GapReason, GapRecord};
use crate::util::now_ms;
use accounting::{SegLive, State};
use index::{key, seq_of, Index, Slot, ASIDE_PREFIX, META_DURABLE, META_FORMAT, META_GATEWAY, META_STATE};
use segments::{read_record, Lane, SegmentStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use txn::{Txn, RETAIN_PER_BATCH};

impl Area {
    fn prefix(self) -> u8 {
        match self {
            Area::Frames => b'F',
            Area::Images => b'I',
            Area::Annotations => b'A',
            Area::DeadLetters => b'D',
            Area::Gaps => b'G',
        }
    }

    /// Which segment lane its large records go to.
    fn lane(self) -> Lane {
        match self {
            Area::Frames | Area::DeadLetters => Lane::Intake,
            Area::Images | Area::Annotations | Area::Gaps => Lane::Stage,
        }
    }
}

/// The pipeline's durable cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cursor {
    /// The detect stage: every frame below it is annotated (and every other
    /// sequence number below it was not a frame).
    Detect,
    /// The replicate stage: annotations, images and dead letters below it
    /// are in Kafka. Never passes [`Cursor::Detect`].
    Replicate,
    /// Gap records below it are in Kafka.
    ReplicateGaps,
    /// The replicate stage's live lane: while a backlog drains behind it
    /// (this cursor above [`Cursor::Replicate`]), records from here on go
    /// first, and each is deleted as soon as Kafka has it; the records
    /// left between the two cursors are the backlog. At or below
    /// `replicate`: no backlog lane. Never passes [`Cursor::Detect`].
    ReplicateLive,
}

impl Cursor {
    /// Every cursor.
    pub const ALL: [Cursor; 4] = [Cursor::Detect, Cursor::Replicate, Cursor::ReplicateGaps, Cursor::ReplicateLive];

    /// Stable name (the key in the index, and in `log stats`).
    pub fn name(self) -> &'static str {
        match self {
            Cursor::Detect => "detect",
            Cursor::Replicate => "replicate",
            Cursor::ReplicateGaps => "replicate_gaps",
            Cursor::ReplicateLive => "replicate_live",
        }
    }
}

/// What to do when the byte budget is reached and retention and dropping
/// sampled images did not free enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the append ([`LogError::Full`]): intake stops acknowledging so
    /// the MQTT broker holds the frames. Nothing is dropped. The default.
    #[default]
    Block,
    /// Drop the oldest frames not yet detected, recording a gap for each run.
    DropOldest,
}

/// How to open a [`DurableLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of the log (created if missing).
    pub path: PathBuf,
    /// This gateway's id; stored at creation and checked on every open.
    pub gateway_id: String,
    /// Byte budget on disk: segments and index together.
    pub max_bytes: u64,
    /// Policy when the budget is reached.
    pub when_full: WhenFull,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Target size of a payload segment; `None`: `max_bytes / 32`, between
    /// 1 MiB and 64 MiB.
    pub segment_bytes: Option<u64>,
    /// Records larger than this go to segments even when their area keeps
    /// small records in the index (annotations, dead letters).
    pub inline_max: u64,
    /// Part of the budget kept for the index's growth between two
    /// measurements of its size (each flush measures it).
    pub index_reserve: u64,
    /// Which cursors must pass a record before retention may delete it.
    /// An area without consumers is never deleted by retention.
    pub retention: Vec<(Area, Cursor)>,
    /// Size of the space reserve file, and the free space on the file
    /// system below which intake's appends wait ([`LogError::NoSpace`]);
    /// see `space.rs`. 0 turns both off.
    pub reserve_bytes: u64,
}

impl LogOptions {
    /// Options with the pipeline's standard retention table: frames are
    /// needed by `detect`; images, annotations and dead letters by
    /// `replicate`; gaps by `replicate_gaps`.
    pub fn new(path: impl Into<PathBuf>, gateway_id: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            gateway_id: gateway_id.into(),
            max_bytes: 2 << 30,
            when_full: WhenFull::Block,
            cache_bytes: 64 << 20,
            segment_bytes: None,
            inline_max: 16 << 10,
            index_reserve: 1 << 20,
            retention: vec![
                (Area::Frames, Cursor::Detect),
                (Area::Images, Cursor::Replicate),
                (Area::Annotations, Cursor::Replicate),
                (Area::DeadLetters, Cursor::Replicate),
                (Area::Gaps, Cursor::ReplicateGaps),
            ],
            reserve_bytes: 16 << 20,
        }
    }

    fn consumers(&self, area: Area) -> impl Iterator<Item = Cursor> + '_ {
        self.retention.iter().filter(move |(a, _)| *a == area).map(|(_, c)| *c)
    }

    fn segment_target(&self) -> u64 {
        self.segment_bytes.unwrap_or((self.max_bytes / 32).clamp(1 << 20, 64 << 20))
    }
}

/// What [`DurableLog::append_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// Stored under a new seq.
    Stored(Appended),
    /// A recent record had the same fingerprint (its seq); nothing stored.
    Duplicate(u64),
}

/// Result of appending a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number given to the record.
    pub seq: u64,
    /// `"{gateway_id}:{seq}"`.
    pub frame_id: String,
    /// Gaps written to make room for it (empty in the common case).
    pub gaps: Vec<GapRecord>,
}

/// Records and bytes in one area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaStats {
    /// Number of records.
    pub records: u64,
    /// Logical bytes of the records (what was written, without overhead).
    pub bytes: u64,
}

/// Counters of the log, read without scanning (see [`DurableLog::counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCounts {
    /// Next sequence number to be given.
    pub next_seq: u64,
    /// Gap records written so far.
    pub gaps_written: u64,
    /// Records set aside as unreadable so far.
    pub set_aside: u64,
    /// Bytes on disk the budget counts (segments + index).
    pub used_bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Per area.
    pub areas: [(Area, AreaStats); 5],
    /// Records dropped or set aside since the log was opened, by reason.
    pub dropped: [(GapReason, u64); GapReason::COUNT],
}

impl std::fmt::Display for LogStats {
    /// The text of `vision-gateway log stats`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::util::units::format_size;
        writeln!(f, "log {} (gateway {})", self.path.display(), self.gateway_id)?;
        let (used, max, disk) =
            (format_size(self.used_bytes), format_size(self.max_bytes), format_size(self.size_on_disk));
        writeln!(f, "  used {used} of {max} ({disk} on disk)")?;
        writeln!(
            f,
            "  next seq {}, gaps written {}, records set aside {}",
            self.next_seq, self.gaps_written, self.set_aside
        )?;
        for (a, st) in &self.areas {
            writeln!(f, "  {:<13} {:>10} records {:>12}", a.name(), st.records, format_size(st.bytes))?;
        }
        for (n, cs) in &self.cursors {
            let bytes = format_size(cs.backlog_bytes);
            writeln!(f, "  cursor {n:<15} at {:>10}, backlog {} records, {bytes}", cs.position, cs.backlog_records)?;
        }
        Ok(())
    }
}

/// A cursor's position and what is behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorStats {
    /// Next sequence number the stage will process.
    pub position: u64,
    /// Records not yet released by this cursor in the areas it consumes.
    pub backlog_records: u64,
    /// Their logical bytes.
    pub backlog_bytes: u64,
}

/// A snapshot of the log for `log stats` and metrics (no scan of records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Gateway id stored in the log.
    pub gateway_id: String,
    /// Directory of the log.
    pub path: PathBuf,
    /// Next sequence number to be given.
    pub next_seq: u64,
    /// Sequence numbers below this are durable (covered by a flush).
    pub durable_seq: u64,
    /// Gap records written so far.
    pub gaps_written: u64,
    /// Records set aside as unreadable so far.
    pub set_aside: u64,
    /// Bytes on disk the budget counts: segments + index.
    pub used_bytes: u64,
    /// The budget (`log.max_bytes`).
    pub max_bytes: u64,
    /// Logical bytes of all records (without headers, index and dead space).
    pub logical_bytes: u64,
    /// Bytes of the payload segment files.
    pub segment_bytes: u64,
    /// Payload segment files.
    pub segments: u64,
    /// Bytes of the index (sled) files, at least 512 KiB (sled grows its
    /// file by 512 KiB segments; the budget counts the first from the start).
    pub index_bytes: u64,
    /// Same as `used_bytes` (kept for scripts of earlier versions).
    pub size_on_disk: u64,
    /// Per area.
    pub areas: BTreeMap<Area, AreaStats>,
    /// Per cursor, by name.
    pub cursors: BTreeMap<String, CursorStats>,
}

/// What the log's lock guards.
struct Core {
    state: State,
    segs: SegmentStore,
    /// Emptied segments, deleted after the next durable index flush.
    pending_delete: Vec<u64>,
    /// Appends changed `state` since `Mstate` was last written.
    state_dirty: bool,
    /// Fingerprint -> seq of the last [`RECENT`] appends that had one.
    recent: HashMap<u64, u64>,
}

/// How many appends' fingerprints are remembered for de-duplication.
///
/// It must cover every frame stored but not yet acknowledged to the broker,
/// whatever the broker does. Intake acknowledges in arrival order and never
/// drops an acknowledgement on a live connection, so while a frame is
/// unacknowledged every frame stored after it is unacknowledged too, and
/// all of them are in flight at the broker under distinct MQTT packet ids:
/// at most 65,535, even from a broker that ignores `receive_maximum`
/// (mosquitto does, on a queued session). The window is that packet-id
/// space plus a margin for the frames of a dropped connection still being
/// stored (the appender's queue and one group commit). About 2 MiB of
/// memory and 1.5 MiB in the index at most.
pub const RECENT: u64 = 65_536 + 8192;

struct Inner {
    opts: LogOptions,
    index: Index,
    core: Mutex<Core>,
    /// One flush at a time.
    flush_lock: Mutex<()>,
    /// Bumped by every change and flush; readers wait on it.
    changes: watch::Sender<u64>,
    /// Bytes on disk (segments + index as measured).
    used: watch::Sender<u64>,
    /// (next seq, next gap id) covered by the last completed flush.
    durable: watch::Sender<(u64, u64)>,
    index_bytes: AtomicU64,
    flushes: AtomicU64,
    /// The reserve file is in place (see `space.rs`).
    reserve: std::sync::atomic::AtomicBool,
    /// Records dropped or set aside since open, by [`GapReason::index`].
    dropped: [AtomicU64; GapReason::COUNT],
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave the persisted state
        // inconsistent (batches are atomic), so a poisoned lock is usable.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seg_io(&self, source: std::io::Error) -> LogError {
        LogError::Io { path: self.opts.path.join("segments"), source }
    }

    /// True if records of `len` bytes in `area` go to a segment.
    fn in_segment(&self, area: Area, len: u64) -> bool {
        matches!(area, Area::Frames | Area::Images) || len > self.opts.inline_max
    }

    /// Bytes on disk an append of a record of `len` bytes to `area` adds.
    fn cost(&self, core: &Core, area: Area, len: u64) -> u64 {
        if self.in_segment(area, len) {
            core.segs.cost(area.lane(), len)
        } else {
            index::KEY_LEN + len
        }
    }

    /// True if `need` more bytes fit the budget, counting `freed` bytes as
    /// already gone.
    fn fits(&self, core: &Core, need: u64, freed: u64) -> bool {
        let used = core.segs.disk_bytes() + self.index_bytes.load(Ordering::Relaxed);
        used.saturating_sub(freed) + need + self.opts.index_reserve <= self.opts.max_bytes
    }

    fn publish_used(&self, core: &Core) {
        let used = core.segs.disk_bytes() + self.index_bytes.load(Ordering::Relaxed);
        self.used.send_replace(used);
    }

    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn release_reserve(&self) {
        if space::release_reserve(&self.opts.path) {
            self.reserve.store(false, Ordering::Relaxed);
        }
    }

    /// The free-space floor for intake's appends (see `space.rs`): below
    /// it, [`LogError::NoSpace`]; below half of it, the reserve (half the
    /// floor) goes, which leaves intake paused and gives the stages that
    /// free space room for their writes. With twice the floor free, the
    /// reserve comes back.
    fn check_floor(&self) -> Result<(), LogError> {
        let floor = self.opts.reserve_bytes;
        if floor == 0 {
            return Ok(());
        }
        let free = space::free_bytes(&self.opts.path)
            .map_err(|source| LogError::Io { path: self.opts.path.clone(), source })?;
        if free < floor {
            if free < floor / 2 && self.reserve.load(Ordering::Relaxed) {
                self.release_reserve();
            }
            return Err(LogError::NoSpace { path: self.opts.path.clone(), free });
        }
        if !self.reserve.load(Ordering::Relaxed) && free >= floor.saturating_mul(2) {
            self.make_reserve();
        }
        Ok(())
    }

    fn make_reserve(&self) {
        let floor = self.opts.reserve_bytes;
        let made = space::ensure_reserve(&self.opts.path, floor / 2, floor + floor / 2);
        self.reserve.store(made, Ordering::Relaxed);
    }

    /// The barrier: segments, then index, then deletion of emptied segments.
    fn flush(&self) -> Result<(), LogError> {
        let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (plan, covered, deletable) = {
            let mut core = self.lock();
            if core.state_dirty {
                self.index.tree.insert(META_STATE, core.state.encode())?;
                core.state_dirty = false;
            }
            let plan = core.segs.take_sync_plan().map_err(|e| self.seg_io(e))?;
            (plan, (core.state.next_seq, core.state.next_gap), std::mem::take(&mut core.pending_delete))
        };
        // The durable mark goes in only once the payloads below it are
        // synced (sled may write it out any time after the insert).
        let synced = plan
            .run()
            .map_err(|e| self.seg_io(e))
            .and_then(|()| Ok(self.index.tree.insert(META_DURABLE, &covered.0.to_be_bytes())?))
            .and_then(|_| self.index.flush_durable());
        let index_bytes = match synced {
            Ok(n) => n,
            Err(e) => {
                let mut core = self.lock();
                core.segs.sync_failed(plan);
                core.pending_delete.extend(deletable);
                drop(core);
                if e.is_no_space() {
                    self.release_reserve();
                }
                return Err(e);
            }
        };
        self.index_bytes.store(index_bytes.max(index::INDEX_FLOOR), Ordering::Relaxed);
        self.durable.send_modify(|d| *d = (d.0.max(covered.0), d.1.max(covered.1)));
        {
            let mut core = self.lock();
            if !deletable.is_empty() {
                core.segs.delete(&deletable).map_err(|e| self.seg_io(e))?;
                let dir_plan = core.segs.take_sync_plan().map_err(|e| self.seg_io(e))?;
                drop(core);
                dir_plan.run().map_err(|e| self.seg_io(e))?;
                core = self.lock();
            }
            self.publish_used(&core);
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.bump();
        Ok(())
    }
}

impl Drop for Inner {
    /// Closing the log flushes it: a clean shutdown leaves nothing to
    /// recover.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(path = %self.opts.path.display(), error = %e, "flushing the log at close failed");
        }
    }
}

/// The durable, power-safe log shared by all stages. Cheap to clone.
#[derive(Clone)]
pub struct DurableLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLog").field("path", &self.inner.opts.path).finish_non_exhaustive()
    }
}

impl DurableLog {
    /// Opens (or creates) the log at `opts.path`. Reads accounting, cursors
    /// and the segment directory listing; never a record.
    ///
    /// # Errors
    /// [`LogError::Open`]/[`LogError::Io`] if the directory cannot be
    /// opened, [`LogError::GatewayIdMismatch`] if the log belongs to another
    /// gateway id, [`LogError::NewerFormat`] for a log of a later release.
    /// A log of an earlier format is upgraded first, keeping its backlog
    /// (see `upgrade.rs`).
    pub fn open(opts: LogOptions) -> Result<Self, LogError> {
        upgrade::prepare(&opts)?;
        let log = match Self::open_once(opts.clone()) {
            // A full file system: the reserve is there for this moment.
            Err(e) if e.is_no_space() && space::release_reserve(&opts.path) => Self::open_once(opts)?,
            r => r?,
        };
        log.inner.make_reserve();
        Ok(log)
    }

    fn open_once(opts: LogOptions) -> Result<Self, LogError> {
        let io = |source| LogError::Io { path: opts.path.clone(), source };
        if !opts.path.exists() {
            std::fs::create_dir_all(&opts.path).map_err(io)?;
            if let Some(parent) = opts.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                segments::sync_dir(parent).map_err(io)?;
            }
        }
        let index = Index::open(&opts.path.join("index"), opts.cache_bytes)?;
        check_identity(&index, &opts)?;
        let mut state = load_state(&index)?;
        raise_counters(&index, &mut state)?;
        let mut recent = HashMap::new();
        for kv in index.tree.scan_prefix([index::RECENT_PREFIX]) {
            let (k, v) = kv?;
            if let (Some(seq), Some(fp)) = (seq_of(&k), index::decode_u64(&v)) {
                recent.insert(fp, seq);
            }
        }
        let mut segs = SegmentStore::open(opts.path.join("segments"), opts.segment_target()).map_err(io)?;
        let mut dead = Vec::new();
        for id in segs.ids() {
            match state.segs.get(&id).and_then(SegLive::lane) {
                Some(lane) if state.segs.get(&id).is_some_and(|l| l.records > 0) => segs.set_lane(id, lane),
                _ => dead.push(id),
            }
        }
        for id in &dead {
            state.segs.remove(id);
        }
        for (id, l) in &state.segs {
            if segs.lane(*id).is_none() {
                tracing::error!(
                    segment = format!("{id:016x}"),
                    records = l.records,
                    "payload segment is missing; its records will be reported as unreadable gaps"
                );
            }
        }
        index.tree.insert(META_STATE, state.encode())?;
        let index_bytes = index.flush_durable()?.max(index::INDEX_FLOOR);
        // Only now, with the index durable, can unreferenced files go.
        segs.delete(&dead).map_err(io)?;
        segs.take_sync_plan().and_then(|p| p.run()).map_err(io)?;
        if !dead.is_empty() {
            tracing::info!(segments = dead.len(), "deleted payload segments nothing refers to");
        }
        let used = segs.disk_bytes() + index_bytes;
        let durable = (state.next_seq, state.next_gap);
        let inner = Inner {
            opts,
            index,
            core: Mutex::new(Core { state, segs, pending_delete: Vec::new(), state_dirty: false, recent }),
            flush_lock: Mutex::new(()),
            changes: watch::channel(0).0,
            used: watch::channel(used).0,
            durable: watch::channel(durable).0,
            index_bytes: AtomicU64::new(index_bytes),
            flushes: AtomicU64::new(0),
            reserve: std::sync::atomic::AtomicBool::new(false),
            dropped: Default::default(),
        };
        let log = Self { inner: Arc::new(inner) };
        log.trim_torn_tail()?;
        Ok(log)
    }

    /// After a crash: intake records appended after the last completed
    /// flush were never acknowledged, and a power cut can have kept some of
    /// their index entries (sled writes in the background) but not their
    /// payloads. From the first such record whose payload does not read
    /// back, every intake record is removed (with its fingerprint) and one
    /// gap record says so: the broker still holds those frames and delivers
    /// them again, so they are stored anew, in order, and not mistaken for
    /// duplicates. What is kept is a prefix of what was appended.
    fn trim_torn_tail(&self) -> Result<(), LogError> {
        let tree = &self.inner.index.tree;
        let Some(mark) = tree.get(META_DURABLE)?.as_deref().and_then(index::decode_u64) else { return Ok(()) };
        let lane = [Area::Frames, Area::DeadLetters];
        let mut first_bad: Option<u64> = None;
        for area in lane {
            for kv in tree.range(key(area.prefix(), mark)..=key(area.prefix(), u64::MAX)) {
                let (k, v) = kv?;
                let Some(seq) = seq_of(&k) else { continue };
                if first_bad.is_some_and(|b| seq >= b) {
                    break;
                }
                let torn = match Slot::of(&v) {
                    Slot::Ptr(_) => match index::pointer(&v) {
                        Ok(p) => self.fetch(&p, area, seq)?.is_err(),
                        Err(_) => true,
                    },
                    Slot::Inline(_) => false,
                };
                if torn {
                    first_bad = Some(seq);
                    break;
                }
            }
        }
        let Some(from) = first_bad else { return Ok(()) };
        let mut doomed = Vec::new();
        for area in lane {
            for kv in tree.range(key(area.prefix(), from)..=key(area.prefix(), u64::MAX)) {
                if let Some(seq) = seq_of(&kv?.0) {
                    doomed.push((area, seq));
                }
            }
        }
        // Fingerprints first: a crash in between leaves records without
        // fingerprints (trimmed again at the next open), never fingerprints
        // of records that are gone.
        let mut core = self.inner.lock();
        for (_, seq) in &doomed {
            if let Some(fp) = tree.remove(key(index::RECENT_PREFIX, *seq))?.as_deref().and_then(index::decode_u64) {
                if core.recent.get(&fp) == Some(seq) {
                    core.recent.remove(&fp);
                }
            }
        }
        let mut txn = Txn::new(&self.inner, &mut core);
        let (mut bytes, mut last) = (0, from);
        for (area, seq) in &doomed {
            bytes += txn.remove(*area, *seq)?.unwrap_or(0);
            last = last.max(*seq);
        }
        let g = txn.gap(
            Area::Frames,
            from,
            last,
            doomed.len() as u64,
            bytes,
            GapReason::Unreadable,
            Some(
                "appended after the last flush and torn by a crash: never acknowledged, so the broker delivers \
                 these frames again"
                    .into(),
            ),
        )?;
        self.finish(txn)?;
        drop(core);
        tracing::warn!(
            from_seq = from,
            to_seq = last,
            records = doomed.len(),
            gap = g.id,
            "crash recovery: unacknowledged torn tail removed; the broker redelivers it"
        );
        self.inner.flush()
    }

    /// The gateway id this log belongs to.
    pub fn gateway_id(&self) -> &str {
        &self.inner.opts.gateway_id
    }

    /// `"{gateway_id}:{seq}"`.
    pub fn frame_id(&self, seq: u64) -> String {
        format!("{}:{}", self.inner.opts.gateway_id, seq)
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.inner.opts.max_bytes
    }

    /// Bytes on disk now (segments + index), what the budget counts.
    pub fn used_bytes(&self) -> u64 {
        *self.inner.used.borrow()
    }

    /// True when the log's file system has less than the free-space floor
    /// (`log.reserve`) free: intake's appends wait (see `space.rs`).
    pub fn below_floor(&self) -> bool {
        let floor = self.inner.opts.reserve_bytes;
        floor > 0 && space::free_bytes(&self.inner.opts.path).is_ok_and(|free| free < floor)
    }

    /// Sequence numbers below this are durable.
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable.borrow().0
    }

    /// Counters of the log now (cheap: no scan), for metrics.
    pub fn counts(&self) -> LogCounts {
        let s = self.inner.lock().state.clone();
        LogCounts {
            next_seq: s.next_seq,
            gaps_written: s.next_gap,
            set_aside: s.set_aside,
            used_bytes: self.used_bytes(),
            max_bytes: self.inner.opts.max_bytes,
            areas: Area::ALL.map(|a| (a, s.areas[a.index()])),
            dropped: GapReason::ALL.map(|r| (r, self.inner.dropped[r.index()].load(Ordering::Relaxed))),
        }
    }

    /// Records and bytes of one area now (cheap: no scan).
    pub fn area_stats(&self, area: Area) -> AreaStats {
        self.inner.lock().state.areas[area.index()]
    }

    /// Appends a frame, making room per the budget policy. The frame is not
    /// durable until [`flush`](Self::flush) returns.
    ///
    /// # Errors
    /// [`LogError::Full`] (policy `block`, transient), [`LogError::TooLarge`],
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn append_frame(&self, frame: &FrameRecord) -> Result<Appended, LogError> {
        let (head, payload) = frame.encode_parts();
        self.append(Area::Frames, &[&head, payload], None)
    }

    /// Appends a frame, unless a record with the same `fingerprint` is among the last [`RECENT`]
    /// appends (and `check` is set): then returns [`Once::Duplicate`] with
    /// its seq and stores nothing. The fingerprint is remembered either way. Intake uses it so that a frame the broker delivers again
    /// (it was stored, but the gateway died before its PUBACK) is not
    /// stored twice under two frame ids. The fingerprint is written right
    /// after the record, so a crash can lose the fingerprint of a stored
    /// record (one duplicate) but never keep a fingerprint without its
    /// record (a loss).
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_frame_once(&self, frame: &FrameRecord, fingerprint: u64, check: bool) -> Result<Once, LogError> {
        self.append_payload_once(frame.head(), &frame.payload, fingerprint, check)
    }

    /// [`append_frame_once`](Self::append_frame_once) of a frame whose
    /// payload is held elsewhere (intake's network buffer): written from
    /// there, never copied.
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_payload_once(
        &self,
        head: codec::FrameHead<'_>,
        payload: &[u8],
        fingerprint: u64,
        check: bool,
    ) -> Result<Once, LogError> {
        self.append_once(Area::Frames, &[&head.encode(payload), payload], fingerprint, check)
    }

    /// [`append_dead_letter`](Self::append_dead_letter) with the
    /// de-duplication of [`append_frame_once`](Self::append_frame_once).
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_dead_letter_once(&self, body: &[u8], fingerprint: u64, check: bool) -> Result<Once, LogError> {
        self.append_once(Area::DeadLetters, &[&codec::encode(RecordKind::Blob, body)], fingerprint, check)
    }

    fn append_once(&self, area: Area, value: &[&[u8]], fingerprint: u64, check: bool) -> Result<Once, LogError> {
        if let Some(seq) = self.seen(fingerprint).filter(|_| check) {
            return Ok(Once::Duplicate(seq));
        }
        self.append(area, value, Some(fingerprint)).map(Once::Stored)
    }

    /// The seq of a recent append with this fingerprint, if any.
    pub fn seen(&self, fingerprint: u64) -> Option<u64> {
        self.inner.lock().recent.get(&fingerprint).copied()
    }

    /// Appends a dead letter (quarantined input, stage-encoded) in the frame
    /// sequence, so every sequence number is accounted for.
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_dead_letter(&self, body: &[u8]) -> Result<Appended, LogError> {
        self.append(Area::DeadLetters, &[&codec::encode(RecordKind::Blob, body)], None)
    }

    /// Appends a record given in parts (written one after the other), and
    /// its fingerprint if it has one.
    fn append(&self, area: Area, value: &[&[u8]], fingerprint: Option<u64>) -> Result<Appended, LogError> {
        self.inner.check_floor()?;
        let len: u64 = value.iter().map(|p| p.len() as u64).sum();
        let max = self.inner.opts.max_bytes;
        let worst = txn::worst_cost(len) + self.inner.opts.index_reserve;
        if worst > max {
            return Err(LogError::TooLarge { size: worst, max });
        }
        let mut gaps = Vec::new();
        let mut flushed = false;
        loop {
            let mut core = self.inner.lock();
            let need = self.inner.cost(&core, area, len);
            if self.inner.fits(&core, need, 0) {
                let seq = self.put_appended(&mut core, area, value, fingerprint)?;
                return Ok(Appended { seq, frame_id: self.frame_id(seq), gaps });
            }
            let mut txn = Txn::new(&self.inner, &mut core);
            gaps.extend(txn.make_room(need)?);
            // Keep what making room did (retention, drops and their gap
            // records); emptied segments go at the next flush.
            let fits_now = txn.fits(need, 0);
            let freed_later = txn.fits(need, txn.projected_free());
            if txn.is_dirty() {
                self.finish(txn)?;
            } else {
                drop(txn);
            }
            if fits_now {
                let seq = self.put_appended(&mut core, area, value, fingerprint)?;
                return Ok(Appended { seq, frame_id: self.frame_id(seq), gaps });
            }
            let used = core.segs.disk_bytes() + self.inner.index_bytes.load(Ordering::Relaxed);
            drop(core);
            if freed_later && !flushed {
                self.inner.flush()?;
                flushed = true;
                continue;
            }
            let needed = need + self.inner.opts.index_reserve;
            return Err(LogError::Full { used, needed, max });
        }
    }

    /// The append itself: the payload into its segment, one plain sled
    /// insert (a sled batch would cost two `sync_file_range` calls), the
    /// accounting in memory; it is written at the next flush or stage batch
    /// and recovered from the keys after a crash (see `accounting`).
    fn put_appended(
        &self,
        core: &mut Core,
        area: Area,
        value: &[&[u8]],
        fingerprint: Option<u64>,
    ) -> Result<u64, LogError> {
        let seq = core.state.next_seq;
        let k = key(area.prefix(), seq);
        let len: u64 = value.iter().map(|p| p.len() as u64).sum();
        let slot = if self.inner.in_segment(area, len) {
            let lane = area.lane();
            let before = core.segs.active_id(lane);
            let (p, created) = core.segs.append(lane, area.prefix(), seq, value).map_err(|e| self.inner.seg_io(e))?;
            if created {
                // The segment it rolled from may be empty already.
                if let Some(old) = before.filter(|o| core.state.segs.get(o).is_none_or(|l| l.records == 0)) {
                    core.state.segs.remove(&old);
                    core.pending_delete.push(old);
                }
                core.state.segs.insert(p.segment, SegLive { lane: lane as u8, records: 0, bytes: 0 });
            }
            self.inner.index.tree.insert(k, index::encode_pointer(&p))?;
            Slot::Ptr(p)
        } else {
            self.inner.index.tree.insert(k, value.concat())?;
            Slot::Inline(len)
        };
        if let Some(fp) = fingerprint {
            // After the record: see `append_frame_once`.
            let tree = &self.inner.index.tree;
            tree.insert(key(index::RECENT_PREFIX, seq), &fp.to_be_bytes())?;
            core.recent.insert(fp, seq);
            if let Some(old_seq) = seq.checked_sub(RECENT) {
                let old = tree.remove(key(index::RECENT_PREFIX, old_seq))?;
                if let Some(old_fp) = old.as_deref().and_then(index::decode_u64) {
                    if core.recent.get(&old_fp) == Some(&old_seq) {
                        core.recent.remove(&old_fp);
                    }
                }
            }
        }
        core.state.next_seq += 1;
        core.state.account(area, slot, true);
        core.state_dirty = true;
        self.inner.bump();
        self.inner.publish_used(core);
        Ok(seq)
    }

    fn finish(&self, txn: Txn<'_>) -> Result<(), LogError> {
        let dropped = txn.commit()?;
        for (i, n) in dropped.iter().enumerate() {
            self.inner.dropped[i].fetch_add(*n, Ordering::Relaxed);
        }
        self.inner.bump();
        Ok(())
    }

    /// Makes every record written so far durable (one fdatasync of the
    /// segments written and one fsync of the index for everything appended
    /// since the last flush: group commit), then deletes emptied segments.
    ///
    /// # Errors
    /// [`LogError::Io`]/[`LogError::Storage`] if a write or fsync failed;
    /// nothing written since the previous successful flush may be
    /// acknowledged.
    pub async fn flush(&self) -> Result<(), LogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush())
            .await
            .map_err(|e| LogError::Io { path: self.inner.opts.path.clone(), source: std::io::Error::other(e) })?
    }

    /// [`flush`](Self::flush) on the calling thread.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        self.inner.flush()
    }

    /// Position of a cursor (0 if it was never set).
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn cursor(&self, c: Cursor) -> Result<u64, LogError> {
        Ok(self.inner.index.cursor(c.name())?.unwrap_or(0))
    }

    /// How far a stage reading for cursor `c` may read (exclusive): detect
    /// reads durable frames only; replicate never passes detect; gap records
    /// go up once durable.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn bound(&self, c: Cursor) -> Result<u64, LogError> {
        let (seq, gap) = *self.inner.durable.borrow();
        Ok(match c {
            Cursor::Detect => seq,
            Cursor::Replicate | Cursor::ReplicateLive => seq.min(self.cursor(Cursor::Detect)?),
            Cursor::ReplicateGaps => gap,
        })
    }

    /// Reads up to `max` frames with `seq >= from`, in order. Unreadable
    /// records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_frames(&self, from: u64, max: usize) -> Result<Vec<(u64, FrameRecord)>, LogError> {
        self.read(Area::Frames, from..u64::MAX, max, FrameRecord::decode)
    }

    /// The frame record at `seq` in `area` (frames or sampled images), if
    /// present and readable (an unreadable one is set aside).
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_area_frame(&self, area: Area, seq: u64) -> Result<Option<FrameRecord>, LogError> {
        Ok(self.read(area, seq..seq.saturating_add(1), 1, FrameRecord::decode)?.into_iter().next().map(|(_, f)| f))
    }

    /// Reads up to `max` stage-encoded records of `area` with key in
    /// `from..to`. Unreadable records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_blobs(&self, area: Area, from: u64, to: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.read(area, from..to, max, |v| match codec::decode(v)? {
            (RecordKind::Blob, b) => Ok(b.to_vec()),
            (k, _) => Err(CodecError::Malformed(format!("expected a blob, found {k:?}"))),
        })
    }

    /// Reads up to `max` gap records with id in `from..to`.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_gaps(&self, from: u64, to: u64, max: usize) -> Result<Vec<(u64, GapRecord)>, LogError> {
        self.read(Area::Gaps, from..to, max, |v| match codec::decode(v)? {
            (RecordKind::Gap, b) => serde_json::from_slice(b).map_err(|e| CodecError::Malformed(e.to_string())),
            (k, _) => Err(CodecError::Malformed(format!("expected a gap, found {k:?}"))),
        })
    }

    fn read<T>(
        &self,
        area: Area,
        seqs: std::ops::Range<u64>,
        max: usize,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Vec<(u64, T)>, LogError> {
        let (from, to) = (seqs.start, seqs.end);
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let start = key(area.prefix(), from);
        let end = if to == u64::MAX { key(area.prefix() + 1, 0) } else { key(area.prefix(), to) };
        for kv in self.inner.index.tree.range(start.as_slice()..end.as_slice()) {
            if out.len() >= max {
                break;
            }
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            let record = match Slot::of(&v) {
                Slot::Ptr(p) => self.fetch(&p, area, seq)?,
                Slot::Inline(_) => Ok(v.to_vec()),
            };
            match record.map_err(|d| d.to_string()).and_then(|r| decode(&r).map_err(|e| e.to_string())) {
                Ok(t) => out.push((seq, t)),
                Err(why) => self.set_aside(area, seq, &v, why)?,
            }
        }
        Ok(out)
    }

    /// Reads a segment record (positioned read, nothing cached).
    fn fetch(&self, p: &segments::SegPtr, area: Area, seq: u64) -> Result<Result<Vec<u8>, String>, LogError> {
        let handle = self.inner.lock().segs.handle(p.segment);
        let file = match handle {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(segments::SegmentDamage::Missing(p.segment).to_string()))
            }
            Err(e) => return Err(self.inner.seg_io(e)),
        };
        match read_record(&file, p, seq, area.prefix()) {
            Ok(r) => Ok(r.map_err(|d| d.to_string())),
            Err(e) => Err(self.inner.seg_io(e)),
        }
    }

    fn set_aside(&self, area: Area, seq: u64, raw: &[u8], why: String) -> Result<(), LogError> {
        let mut core = self.inner.lock();
        let k = key(area.prefix(), seq);
        // Another reader may have moved it already.
        if self.inner.index.tree.get(k)?.as_deref() != Some(raw) {
            return Ok(());
        }
        let mut txn = Txn::new(&self.inner, &mut core);
        let bytes = txn.remove(area, seq)?.unwrap_or(0);
        let mut aside = vec![ASIDE_PREFIX];
        aside.extend_from_slice(&k);
        txn.batch.insert(aside, raw);
        txn.state.set_aside += 1;
        if area != Area::Gaps {
            txn.gap(area, seq, seq, 1, bytes, GapReason::Unreadable, Some(why.clone()))?;
        }
        self.finish(txn)?;
        self.inner.publish_used(&core);
        tracing::error!(area = area.name(), seq, error = %why, "unreadable log record set aside");
        Ok(())
    }

    /// Starts a batch of stage output. Nothing is written until
    /// [`apply`](Self::apply).
    pub fn batch(&self) -> StageBatch {
        StageBatch::default()
    }

    /// Applies a stage's batch atomically: its puts, removals and cursor
    /// moves, plus retention of what the moved cursors released (bounded per
    /// batch). Not durable until the next [`flush`](Self::flush); when the
    /// batch emptied a payload segment, the flush that deletes it is done
    /// here, so that space is given back without waiting for intake.
    ///
    /// # Errors
    /// [`LogError::CursorRegression`] if a cursor would move back (nothing
    /// is written then), [`LogError::Storage`], [`LogError::Io`].
    pub fn apply(&self, batch: StageBatch) -> Result<(), LogError> {
        let mut core = self.inner.lock();
        for (c, to) in &batch.cursors {
            let current = self.cursor(*c)?;
            if *to < current {
                return Err(LogError::CursorRegression { name: c.name().to_owned(), current, requested: *to });
            }
        }
        let mut txn = Txn::new(&self.inner, &mut core);
        for (c, to) in &batch.cursors {
            txn.set_cursor(*c, *to);
        }
        for op in batch.ops {
            match op {
                Op::Put(area, seq, v) => txn.put(area, seq, v)?,
                Op::Remove(area, seq) => {
                    txn.remove(area, seq)?;
                }
                Op::Undeliverable(area, seq, detail) => {
                    if let Some(bytes) = txn.remove(area, seq)? {
                        txn.gap(area, seq, seq, 1, bytes, GapReason::Undeliverable, Some(detail))?;
                    }
                }
            }
        }
        for (area, c) in &self.inner.opts.retention {
            if batch.cursors.contains_key(c) {
                txn.retain_area(*area, RETAIN_PER_BATCH)?;
            }
        }
        self.finish(txn)?;
        self.inner.publish_used(&core);
        let reclaim = !core.pending_delete.is_empty();
        drop(core);
        if reclaim {
            self.inner.flush()?;
        }
        Ok(())
    }

    /// Deletes every record that all its consumers' cursors have passed,
    /// and the segments that emptied. Returns how many records were deleted.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn retain(&self) -> Result<u64, LogError> {
        let mut total = 0;
        loop {
            let mut core = self.inner.lock();
            let mut txn = Txn::new(&self.inner, &mut core);
            let mut n = 0;
            for area in Area::ALL {
                n += txn.retain_area(area, RETAIN_PER_BATCH)?;
            }
            if n == 0 {
                let reclaim = !core.pending_delete.is_empty();
                drop(core);
                if reclaim {
                    self.inner.flush()?;
                }
                return Ok(total);
            }
            self.finish(txn)?;
            total += n;
        }
    }

    /// A counter that changes with every write and every flush.
    pub fn generation(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// Waits until the log changed after generation `seen`.
    pub async fn changed_since(&self, seen: u64) {
        let mut rx = self.inner.changes.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|g| *g != seen).await;
    }

    /// Waits until `needed` more bytes fit in the budget.
    pub async fn wait_for_space(&self, needed: u64) {
        let max = self.inner.opts.max_bytes;
        let mut rx = self.inner.used.subscribe();
        let _ = rx.wait_for(|used| used.saturating_add(needed) <= max).await;
    }

    /// A reader of frames for the detect stage, from its cursor, bounded by
    /// the durable watermark.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn frame_reader(&self) -> Result<LogReader, LogError> {
        LogReader::new(self.clone(), Area::Frames, Cursor::Detect)
    }

    /// A snapshot of counts, bytes, cursors and backlogs. Reads accounting,
    /// not records.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn stats(&self) -> Result<LogStats, LogError> {
        let (state, segment_bytes, segments) = {
            let core = self.inner.lock();
            (core.state.clone(), core.segs.disk_bytes(), core.segs.ids().len() as u64)
        };
        let index_bytes = self.inner.index.size_on_disk()?.max(index::INDEX_FLOOR);
        let mut areas = BTreeMap::new();
        for area in Area::ALL {
            areas.insert(area, state.areas[area.index()]);
        }
        let mut cursors = BTreeMap::new();
        for c in Cursor::ALL {
            let mut cs = CursorStats { position: self.cursor(c)?, backlog_records: 0, backlog_bytes: 0 };
            for (area, _) in self.inner.opts.retention.iter().filter(|(_, n)| *n == c) {
                cs.backlog_records += state.areas[area.index()].records;
                cs.backlog_bytes += state.areas[area.index()].bytes;
            }
            cursors.insert(c.name().to_owned(), cs);
        }
        let used = segment_bytes + index_bytes;
        Ok(LogStats {
            gateway_id: self.inner.opts.gateway_id.clone(),
            path: self.inner.opts.path.clone(),
            next_seq: state.next_seq,
            durable_seq: self.durable_seq(),
            gaps_written: state.next_gap,
            set_aside: state.set_aside,
            used_bytes: used,
            max_bytes: self.inner.opts.max_bytes,
            logical_bytes: state.logical(),
            segment_bytes,
            segments,
            index_bytes,
            size_on_disk: used,
            areas,
            cursors,
        })
    }

    /// The log directory.
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }
}

fn check_identity(index: &Index, opts: &LogOptions) -> Result<(), LogError> {
    match index.tree.get(META_GATEWAY)? {
        Some(found) if found.as_ref() != opts.gateway_id.as_bytes() => {
            return Err(LogError::GatewayIdMismatch {
                path: opts.path.clone(),
                found: String::from_utf8_lossy(&found).into_owned(),
                configured: opts.gateway_id.clone(),
            });
        }
        Some(_) => {}
        None => {
            index.tree.insert(META_GATEWAY, opts.gateway_id.as_bytes())?;
        }
    }
    match index.tree.get(META_FORMAT)? {
        None => {
            index.tree.insert(META_FORMAT, index::FORMAT)?;
        }
        Some(f) if f.as_ref() == index::FORMAT => {}
        Some(f) => {
            return Err(LogError::NewerFormat {
                path: opts.path.clone(),
                found: String::from_utf8_lossy(&f).into_owned(),
                known: upgrade::CURRENT,
            })
        }
    }
    Ok(())
}

/// Reads the accounting (one value) and counts the tail of appends after
/// it; recounts every record only when it is missing or damaged.
fn load_state(index: &Index) -> Result<State, LogError> {
    let stored = index.tree.get(META_STATE)?;
    if let Some(mut s) = stored.as_deref().and_then(State::decode) {
        count_tail(index, &mut s)?;
        return Ok(s);
    }
    if stored.is_some() {
        tracing::warn!("log accounting is unreadable; recounting all records");
    }
    recount(index)
}

/// Counts the appends that outlived the last written accounting: sled
/// recovers a prefix of its log, and appends are the only writes without
/// the accounting, so they are exactly the frames and dead letters at or
/// above `next_seq` (at most one group commit's worth).
fn count_tail(index: &Index, s: &mut State) -> Result<(), LogError> {
    for area in [Area::Frames, Area::DeadLetters] {
        let from = key(area.prefix(), s.next_seq);
        let to = key(area.prefix().saturating_add(1), 0);
        let mut tail = Vec::new();
        for kv in index.tree.range(from.as_slice()..to.as_slice()) {
            tail.push(Slot::of(&kv?.1));
        }
        for slot in tail {
            s.account(area, slot, true);
        }
    }
    Ok(())
}

/// Rebuilds the accounting by scanning every index entry (first open, or
/// damaged accounting). Payloads are not read.
fn recount(index: &Index) -> Result<State, LogError> {
    let mut s = State::default();
    for area in Area::ALL {
        for kv in index.tree.scan_prefix([area.prefix()]) {
            s.account(area, Slot::of(&kv?.1), true);
        }
    }
    s.set_aside = index.tree.scan_prefix([ASIDE_PREFIX]).count() as u64;
    Ok(s)
}

/// Raises `next_seq`/`next_gap` above every key present and every cursor,
/// whatever the accounting says: a number once used is never handed out
/// again, even after the records and the accounting are gone.
fn raise_counters(index: &Index, s: &mut State) -> Result<(), LogError> {
    for area in Area::ALL {
        if let Some((k, _)) = index.tree.scan_prefix([area.prefix()]).next_back().transpose()? {
            let next = seq_of(&k).map_or(0, |q| q + 1);
            if area == Area::Gaps {
                s.next_gap = s.next_gap.max(next);
            } else {
                s.next_seq = s.next_seq.max(next);
            }
        }
    }
    for kv in index.tree.scan_prefix([ASIDE_PREFIX]) {
        let (k, _) = kv?;
        if let (Some(&prefix), Some(seq)) = (k.get(1), k.get(1..).and_then(seq_of)) {
            if prefix == Area::Gaps.prefix() {
                s.next_gap = s.next_gap.max(seq + 1);
            } else {
                s.next_seq = s.next_seq.max(seq + 1);
            }
        }
    }
    for c in Cursor::ALL {
        let at = index.cursor(c.name())?.unwrap_or(0);
        if c == Cursor::ReplicateGaps {
            s.next_gap = s.next_gap.max(at);
        } else {
            s.next_seq = s.next_seq.max(at);
        }
    }
    Ok(())
}

/// Outputs of one stage step, applied atomically by [`DurableLog::apply`].
#[derive(Debug, Default)]
pub struct StageBatch {
    ops: Vec<Op>,
    cursors: BTreeMap<Cursor, u64>,
}

#[derive(Debug)]
enum Op {
    Put(Area, u64, Vec<u8>),
    Remove(Area, u64),
    Undeliverable(Area, u64, String),
}

impl StageBatch {
    /// Writes a stage-encoded record (annotation, ...) at `seq` in `area`.
    pub fn put_blob(&mut self, area: Area, seq: u64, body: &[u8]) -> &mut Self {
        self.ops.push(Op::Put(area, seq, codec::encode(RecordKind::Blob, body)));
        self
    }

    /// Writes a frame record at `seq` in `area` (for example a sampled image
    /// kept in [`Area::Images`]).
    pub fn put_frame(&mut self, area: Area, seq: u64, frame: &FrameRecord) -> &mut Self {
        self.ops.push(Op::Put(area, seq, frame.encode()));
        self
    }

    /// Removes the record at `seq` in `area` (no-op if absent).
    pub fn remove(&mut self, area: Area, seq: u64) -> &mut Self {
        self.ops.push(Op::Remove(area, seq));
        self
    }

    /// Removes the record at `seq` in `area` and writes a gap record for it
    /// with reason [`GapReason::Undeliverable`] and `detail` (a record
    /// Kafka refuses for good). No gap is written if the record is gone.
    pub fn undeliverable(&mut self, area: Area, seq: u64, detail: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Undeliverable(area, seq, detail.into()));
        self
    }

    /// Moves cursor `c` to `position` (the next seq to process).
    pub fn set_cursor(&mut self, c: Cursor, position: u64) -> &mut Self {
        self.cursors.insert(c, position);
        self
    }

    /// True if the batch would write nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.cursors.is_empty()
    }
}

#[cfg(test)]
mod tests;
