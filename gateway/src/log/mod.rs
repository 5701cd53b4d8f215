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
mod append;
mod batch;
pub mod codec;
mod error;
mod index;
mod open;
mod options;
mod read;
pub mod reader;
mod segments;
pub mod space;
mod stats;
mod txn;
pub mod upgrade;

pub use append::{AppendOutcome, Appended, Dedup};
pub use batch::StageBatch;
pub use codec::{CodecError, FrameHead, RecordKind};
pub use error::LogError;
pub use options::{Cursor, LogOptions, WhenFull};
pub use reader::{LogReader, ReadBatch};
pub use stats::{AreaStats, CursorStats, LogCounts, LogStats};

use crate::records::{Area, FrameRecord, GapReason, GapRecord};
use crate::util::now_ms;
use accounting::{SegLive, State};
use index::{key, seq_of, Index, Slot, ASIDE_PREFIX, META_DURABLE, META_FORMAT, META_GATEWAY, META_STATE};
use segments::{read_record, SegmentStore, Writer};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use txn::{Lost, Txn, RETAIN_PER_BATCH};

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
    fn lane(self) -> Writer {
        match self {
            Area::Frames | Area::DeadLetters => Writer::Intake,
            Area::Images | Area::Annotations | Area::Gaps => Writer::Stage,
        }
    }
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
    /// Where retention scans from, per area.
    retained_below: RetainedBelow,
}

/// Per area: no key below this sequence number is in the index. Retention
/// scans from here, not from 0: sled walks the emptied leaves of a deleted
/// range, so a scan from 0 on every commit cost time in proportion to
/// everything deleted so far. In memory only; 0 after open.
#[derive(Debug, Clone, Copy, Default)]
struct RetainedBelow([u64; Area::ALL.len()]);

impl RetainedBelow {
    fn get(self, area: Area) -> u64 {
        self.0[area.index()]
    }

    /// Retention has deleted every key of `area` below `seq`.
    fn set(&mut self, area: Area, seq: u64) {
        self.0[area.index()] = seq;
    }

    /// A record was written at `seq` of `area`.
    fn written(&mut self, area: Area, seq: u64) {
        let below = &mut self.0[area.index()];
        *below = (*below).min(seq);
    }
}

impl Core {
    /// The state of a log just opened: nothing waiting for deletion,
    /// retention scans from the start.
    fn new(state: State, segs: SegmentStore, recent: HashMap<u64, u64>) -> Self {
        Self {
            state,
            segs,
            pending_delete: Vec::new(),
            state_dirty: false,
            recent,
            retained_below: RetainedBelow::default(),
        }
    }
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
            Cursor::Replicate | Cursor::ReplicateLive | Cursor::ReplicateImages => {
                seq.min(self.cursor(Cursor::Detect)?)
            }
            Cursor::ReplicateGaps => gap,
        })
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

    /// The log directory.
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }
}

#[cfg(test)]
mod tests;
