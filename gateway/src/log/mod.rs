//! The durable log: the only shared state of the gateway.
//!
//! Owns every byte the gateway keeps on disk: frames as received, sampled
//! images waiting for upload, annotations waiting for replication, dead
//! letters (quarantined input), gap records (what was dropped and why), the
//! per-stage cursors and the accounting of all of it. It sits on sled 0.34,
//! hidden behind [`DurableLog`] so the engine stays replaceable.
//!
//! # Layout
//!
//! One sled tree holds everything, so that one `apply_batch` is one atomic
//! step across areas. Keys are a one-byte area prefix and a big-endian u64,
//! so a prefix scan is ordered by sequence number:
//!
//! ```text
//! F seq   frame           I seq  sampled image     A seq  annotation
//! D seq   dead letter     G id   gap record        C name cursor (u64)
//! M state accounting      M gateway_id             X key  set-aside record
//! ```
//!
//! # Invariants
//!
//! - **Sequence.** Frames and dead letters share one sequence; `seq` grows by
//!   one per record and never repeats, across restarts (it is written in the
//!   same batch as the record). `frame_id = "{gateway_id}:{seq}"`.
//! - **Atomic stages.** A stage writes its outputs, removals and new cursor in
//!   one [`StageBatch`]; after a crash either all of it is there or none.
//!   Cursors never move back.
//! - **Durability.** A record is durable once [`DurableLog::flush`] returned
//!   after it was written. Intake acknowledges MQTT only after that.
//! - **Accounting.** Record counts and bytes (key + value) per area are
//!   written in the same batch as the change, so they are exact after any
//!   crash; opening costs O(1), not a scan.
//! - **Budget.** The sum of bytes never exceeds `max_bytes` because of an
//!   append: space is made by retention, then by dropping sampled images not
//!   yet uploaded, then (`drop_oldest`) by dropping the oldest frames not yet
//!   detected, or (`block`) the append is refused with [`LogError::Full`].
//!   Every drop is written as a [`GapRecord`] in the same batch.
//! - **Damage.** A record that fails its checksum is moved aside (area `X`),
//!   counted, logged and reported as a gap; it never stops the log from
//!   opening or a reader from going on.
//! - **Waiting.** A reader that has caught up waits on a per-area generation
//!   counter (`tokio::sync::watch`), never on a sleep loop.

mod codec;
mod error;

pub use codec::{CodecError, FrameRecord, RecordKind};
pub use error::LogError;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// One area of the log: a kind of record with its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Frames as received, waiting for the detect stage.
    Frames,
    /// Sampled images waiting for upload.
    Images,
    /// Annotations waiting for replication.
    Annotations,
    /// Quarantined input (bad frames), waiting for replication.
    DeadLetters,
    /// Gap records (keyed by gap id, not frame seq).
    Gaps,
}

impl Area {
    /// Every area, in prefix order.
    pub const ALL: [Area; 5] = [Area::Frames, Area::Images, Area::Annotations, Area::DeadLetters, Area::Gaps];

    fn prefix(self) -> u8 {
        match self {
            Area::Frames => b'F',
            Area::Images => b'I',
            Area::Annotations => b'A',
            Area::DeadLetters => b'D',
            Area::Gaps => b'G',
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Stable lower-case name (used in stats and gap records).
    pub fn name(self) -> &'static str {
        match self {
            Area::Frames => "frames",
            Area::Images => "images",
            Area::Annotations => "annotations",
            Area::DeadLetters => "dead_letters",
            Area::Gaps => "gaps",
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

/// Why records were dropped or set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// A sampled image was dropped before upload to stay within `log.max_bytes`.
    ImageDroppedForSpace,
    /// A frame was dropped before detection to stay within `log.max_bytes` (`drop_oldest`).
    FrameDroppedForSpace,
    /// A record failed its checksum or could not be decoded; its bytes are kept aside.
    Unreadable,
}

impl GapReason {
    /// Every reason.
    pub const ALL: [GapReason; 3] =
        [GapReason::ImageDroppedForSpace, GapReason::FrameDroppedForSpace, GapReason::Unreadable];

    fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name (as in gap records and metrics).
    pub fn name(self) -> &'static str {
        match self {
            GapReason::ImageDroppedForSpace => "image_dropped_for_space",
            GapReason::FrameDroppedForSpace => "frame_dropped_for_space",
            GapReason::Unreadable => "unreadable",
        }
    }
}

/// A contiguous run of records that will never be delivered, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// Gap id, increasing from 0 in this log.
    pub id: u64,
    /// Gateway that lost the records.
    pub gateway_id: String,
    /// Area the records were in.
    pub area: Area,
    /// First sequence number of the run.
    pub from_seq: u64,
    /// Last sequence number of the run (inclusive).
    pub to_seq: u64,
    /// Records actually removed in the run (sequence numbers can be sparse).
    pub records: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Why.
    pub reason: GapReason,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// How to open a [`DurableLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of the sled database (created if missing).
    pub path: PathBuf,
    /// This gateway's id; stored at creation and checked on every open.
    pub gateway_id: String,
    /// Byte budget for all records (keys + values).
    pub max_bytes: u64,
    /// Policy when the budget is reached.
    pub when_full: WhenFull,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Which cursors must pass a record before retention may delete it.
    /// An area without consumers is never deleted by retention.
    pub retention: Vec<(Area, String)>,
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
            retention: vec![
                (Area::Frames, cursors::DETECT.into()),
                (Area::Images, cursors::REPLICATE.into()),
                (Area::Annotations, cursors::REPLICATE.into()),
                (Area::DeadLetters, cursors::REPLICATE.into()),
                (Area::Gaps, cursors::REPLICATE_GAPS.into()),
            ],
        }
    }
}

/// Names of the pipeline's cursors.
pub mod cursors {
    /// The detect stage: frames below it are annotated.
    pub const DETECT: &str = "detect";
    /// The replicate stage: annotations, images and dead letters below it are in Kafka.
    pub const REPLICATE: &str = "replicate";
    /// Gap records below it are in Kafka.
    pub const REPLICATE_GAPS: &str = "replicate_gaps";
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
    /// Bytes of keys and values.
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
    /// Bytes in use.
    pub used_bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Per area.
    pub areas: [(Area, AreaStats); 5],
    /// Records dropped or set aside since the log was opened, by reason.
    pub dropped: [(GapReason, u64); 3],
}

/// A cursor's position and what is behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorStats {
    /// Next sequence number the stage will process.
    pub position: u64,
    /// Records at or after the position in the areas this cursor consumes.
    pub backlog_records: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
}

/// A snapshot of the log for `log stats` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Gateway id stored in the log.
    pub gateway_id: String,
    /// Directory of the log.
    pub path: PathBuf,
    /// Next sequence number to be given.
    pub next_seq: u64,
    /// Gap records written so far.
    pub gaps_written: u64,
    /// Records set aside as unreadable so far.
    pub set_aside: u64,
    /// Bytes in use (keys + values), what the budget counts.
    pub used_bytes: u64,
    /// The budget (`log.max_bytes`).
    pub max_bytes: u64,
    /// Bytes sled's files take on disk (includes engine overhead).
    pub size_on_disk: u64,
    /// Per area.
    pub areas: BTreeMap<Area, AreaStats>,
    /// Per cursor.
    pub cursors: BTreeMap<String, CursorStats>,
}

const META_STATE: &[u8] = b"Mstate";
const META_GATEWAY: &[u8] = b"Mgateway_id";
const CURSOR_PREFIX: u8 = b'C';
const ASIDE_PREFIX: u8 = b'X';
const KEY_LEN: u64 = 9;
/// Upper bound of records deleted by retention inside one stage batch; the
/// rest goes on the next batch or [`DurableLog::retain`].
const RETAIN_PER_BATCH: usize = 4096;

fn key(area: Area, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = area.prefix();
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(CURSOR_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Accounting, persisted as one value in every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    next_seq: u64,
    next_gap: u64,
    set_aside: u64,
    areas: [AreaStats; 5],
}

impl State {
    const ENCODED_LEN: usize = 8 * (3 + 2 * 5);

    fn used(&self) -> u64 {
        self.areas.iter().map(|a| a.bytes).sum()
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::ENCODED_LEN);
        for v in [self.next_seq, self.next_gap, self.set_aside] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for a in &self.areas {
            b.extend_from_slice(&a.records.to_le_bytes());
            b.extend_from_slice(&a.bytes.to_le_bytes());
        }
        codec::encode(RecordKind::Blob, &b)
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let (_, b) = codec::decode(v).ok()?;
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut words = b.chunks_exact(8).map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        });
        let mut s =
            State { next_seq: words.next()?, next_gap: words.next()?, set_aside: words.next()?, ..State::default() };
        for a in &mut s.areas {
            a.records = words.next()?;
            a.bytes = words.next()?;
        }
        Some(s)
    }
}

struct Inner {
    opts: LogOptions,
    db: sled::Db,
    tree: sled::Tree,
    state: Mutex<State>,
    generations: [watch::Sender<u64>; 5],
    used: watch::Sender<u64>,
    flushes: AtomicU64,
    /// Records dropped or set aside since open, by [`GapReason::index`].
    dropped: [AtomicU64; 3],
}

impl Drop for Inner {
    /// Closing the log flushes it: a clean shutdown leaves nothing to
    /// recover.
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::error!(path = %self.opts.path.display(), error = %e, "flushing the log at close failed");
        }
    }
}

/// The durable, crash-safe log shared by all stages. Cheap to clone.
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
    /// Opens (or creates) the log at `opts.path`.
    ///
    /// # Errors
    /// [`LogError::Open`] if sled cannot open the directory,
    /// [`LogError::GatewayIdMismatch`] if the log belongs to another gateway id.
    pub fn open(opts: LogOptions) -> Result<Self, LogError> {
        let db = Self::open_db(&opts)?;
        let tree = db.open_tree("log").map_err(|source| LogError::Open { path: opts.path.clone(), source })?;

        match tree.get(META_GATEWAY)? {
            Some(found) if found.as_ref() != opts.gateway_id.as_bytes() => {
                return Err(LogError::GatewayIdMismatch {
                    path: opts.path.clone(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    configured: opts.gateway_id.clone(),
                });
            }
            Some(_) => {}
            None => {
                tree.insert(META_GATEWAY, opts.gateway_id.as_bytes())?;
            }
        }

        let state = match tree.get(META_STATE)?.as_deref().map(State::decode) {
            Some(Some(s)) => s,
            Some(None) => {
                tracing::warn!(path = %opts.path.display(), "log accounting is unreadable; recounting all records");
                Self::recount(&tree)?
            }
            None => Self::recount(&tree)?,
        };
        let state = Self::reconcile_seq(&tree, state)?;
        tree.insert(META_STATE, state.encode())?;

        let used = state.used();
        let inner = Inner {
            opts,
            db,
            tree,
            state: Mutex::new(state),
            generations: std::array::from_fn(|_| watch::channel(0).0),
            used: watch::channel(used).0,
            flushes: AtomicU64::new(0),
            dropped: Default::default(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Opens sled. The directory lock can outlive a closed handle for a
    /// moment (sled's background writer threads release it when they
    /// finish), so a lock conflict is retried for up to two seconds before it
    /// is reported: a process that holds the log for longer is a real
    /// conflict.
    fn open_db(opts: &LogOptions) -> Result<sled::Db, LogError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match sled::Config::new().path(&opts.path).cache_capacity(opts.cache_bytes).open() {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(LogError::Open { path: opts.path.clone(), source }),
            }
        }
    }

    /// Rebuilds the accounting by scanning every record (first open, or
    /// damaged accounting).
    fn recount(tree: &sled::Tree) -> Result<State, LogError> {
        let mut s = State::default();
        for area in Area::ALL {
            for kv in tree.scan_prefix([area.prefix()]) {
                let (k, v) = kv?;
                let a = &mut s.areas[area.index()];
                a.records += 1;
                a.bytes += (k.len() + v.len()) as u64;
            }
        }
        s.set_aside = tree.scan_prefix([ASIDE_PREFIX]).count() as u64;
        Ok(s)
    }

    /// Makes sure `next_seq`/`next_gap` are above every key present, whatever
    /// the accounting says.
    fn reconcile_seq(tree: &sled::Tree, mut s: State) -> Result<State, LogError> {
        for area in Area::ALL {
            if let Some((k, _)) = tree.scan_prefix([area.prefix()]).next_back().transpose()? {
                let next = seq_of(&k).map_or(0, |q| q + 1);
                if area == Area::Gaps {
                    s.next_gap = s.next_gap.max(next);
                } else {
                    s.next_seq = s.next_seq.max(next);
                }
            }
        }
        Ok(s)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the persisted state
        // inconsistent (batches are atomic), so a poisoned lock is usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Bytes in use now (keys + values of all records).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// Counters of the log now (cheap: no scan), for metrics.
    pub fn counts(&self) -> LogCounts {
        let s = *self.lock();
        LogCounts {
            next_seq: s.next_seq,
            gaps_written: s.next_gap,
            set_aside: s.set_aside,
            used_bytes: s.used(),
            max_bytes: self.inner.opts.max_bytes,
            areas: Area::ALL.map(|a| (a, s.areas[a.index()])),
            dropped: GapReason::ALL.map(|r| (r, self.inner.dropped[r.index()].load(Ordering::Relaxed))),
        }
    }

    /// Records and bytes of one area now (cheap: no scan).
    pub fn area_stats(&self, area: Area) -> AreaStats {
        self.lock().areas[area.index()]
    }

    /// Appends a frame, making room per the budget policy. The frame is not
    /// durable until [`flush`](Self::flush) returns.
    ///
    /// # Errors
    /// [`LogError::Full`] (policy `block`, transient), [`LogError::TooLarge`],
    /// [`LogError::Storage`].
    pub fn append_frame(&self, frame: &FrameRecord) -> Result<Appended, LogError> {
        self.append(Area::Frames, frame.encode())
    }

    /// Appends a dead letter (quarantined input, stage-encoded) in the frame
    /// sequence, so every sequence number is accounted for.
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_dead_letter(&self, body: &[u8]) -> Result<Appended, LogError> {
        self.append(Area::DeadLetters, codec::encode(RecordKind::Blob, body))
    }

    fn append(&self, area: Area, value: Vec<u8>) -> Result<Appended, LogError> {
        let need = KEY_LEN + value.len() as u64;
        let max = self.inner.opts.max_bytes;
        if need > max {
            return Err(LogError::TooLarge { size: need, max });
        }
        let mut state = self.lock();
        let mut txn = Txn::new(&self.inner, *state);
        let mut gaps = Vec::new();
        if txn.state.used() + need > max {
            gaps = txn.make_room(need)?;
        }
        if txn.state.used() + need > max {
            // Keep what making room did (retention, dropped images and their
            // gap records), then refuse: the caller blocks until space frees.
            let used = txn.state.used();
            if !gaps.is_empty() || used != state.used() {
                txn.commit(&mut state)?;
            }
            return Err(LogError::Full { used, needed: need, max });
        }
        let seq = txn.state.next_seq;
        txn.state.next_seq += 1;
        txn.put(area, seq, value)?;
        txn.commit(&mut state)?;
        Ok(Appended { seq, frame_id: self.frame_id(seq), gaps })
    }

    /// Makes every record written so far durable (one fsync for everything
    /// appended since the last flush: group commit). Returns the bytes sled
    /// wrote.
    ///
    /// # Errors
    /// [`LogError::Storage`] if the write or fsync failed; nothing written
    /// since the previous successful flush may be acknowledged.
    pub async fn flush(&self) -> Result<usize, LogError> {
        let n = self.inner.db.flush_async().await?;
        self.inner.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Position of a cursor (0 if it was never set).
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn cursor(&self, name: &str) -> Result<u64, LogError> {
        Ok(self.inner.tree.get(cursor_key(name))?.as_deref().and_then(decode_u64).unwrap_or(0))
    }

    /// Reads up to `max` frames with `seq >= from`, in order. Unreadable
    /// records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn read_frames(&self, from: u64, max: usize) -> Result<Vec<(u64, FrameRecord)>, LogError> {
        self.read(Area::Frames, from, max, FrameRecord::decode)
    }

    /// The frame record at `seq` in `area` (frames or sampled images), if
    /// present and readable (an unreadable one is set aside).
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn read_area_frame(&self, area: Area, seq: u64) -> Result<Option<FrameRecord>, LogError> {
        Ok(self.read(area, seq, 1, FrameRecord::decode)?.into_iter().find(|(s, _)| *s == seq).map(|(_, f)| f))
    }

    /// Reads up to `max` stage-encoded records of `area` with key `>= from`.
    /// Unreadable records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn read_blobs(&self, area: Area, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.read(area, from, max, |v| match codec::decode(v)? {
            (RecordKind::Blob, b) => Ok(b.to_vec()),
            (k, _) => Err(CodecError::Malformed(format!("expected a blob, found {k:?}"))),
        })
    }

    /// Reads up to `max` gap records with id `>= from`.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn read_gaps(&self, from: u64, max: usize) -> Result<Vec<(u64, GapRecord)>, LogError> {
        self.read(Area::Gaps, from, max, |v| match codec::decode(v)? {
            (RecordKind::Gap, b) => serde_json::from_slice(b).map_err(|e| CodecError::Malformed(e.to_string())),
            (k, _) => Err(CodecError::Malformed(format!("expected a gap, found {k:?}"))),
        })
    }

    fn read<T>(
        &self,
        area: Area,
        from: u64,
        max: usize,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Vec<(u64, T)>, LogError> {
        let mut out = Vec::new();
        let end = [area.prefix() + 1];
        for kv in self.inner.tree.range(key(area, from).as_slice()..end.as_slice()) {
            if out.len() >= max {
                break;
            }
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            match decode(&v) {
                Ok(t) => out.push((seq, t)),
                Err(e) => self.set_aside(area, seq, &v, &e)?,
            }
        }
        Ok(out)
    }

    fn set_aside(&self, area: Area, seq: u64, raw: &[u8], why: &CodecError) -> Result<(), LogError> {
        let mut state = self.lock();
        let k = key(area, seq);
        // Another reader may have moved it already.
        if self.inner.tree.get(k)?.as_deref() != Some(raw) {
            return Ok(());
        }
        let mut txn = Txn::new(&self.inner, *state);
        let bytes = txn.remove(area, seq)?.unwrap_or(0);
        let mut aside = vec![ASIDE_PREFIX];
        aside.extend_from_slice(&k);
        txn.batch.insert(aside, raw);
        txn.state.set_aside += 1;
        if area != Area::Gaps {
            txn.gap(area, seq, seq, 1, bytes, GapReason::Unreadable)?;
        }
        txn.commit(&mut state)?;
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
    /// batch). Not durable until the next [`flush`](Self::flush).
    ///
    /// # Errors
    /// [`LogError::CursorRegression`] if a cursor would move back (nothing
    /// is written then), [`LogError::Storage`].
    pub fn apply(&self, batch: StageBatch) -> Result<(), LogError> {
        let mut state = self.lock();
        let mut txn = Txn::new(&self.inner, *state);
        for (name, to) in &batch.cursors {
            let current = self.cursor(name)?;
            if *to < current {
                return Err(LogError::CursorRegression { name: name.clone(), current, requested: *to });
            }
            txn.batch.insert(cursor_key(name), &to.to_be_bytes());
            txn.cursor_overrides.insert(name.clone(), *to);
        }
        for op in batch.ops {
            match op {
                Op::Put(area, seq, v) => txn.put(area, seq, v)?,
                Op::Remove(area, seq) => {
                    txn.remove(area, seq)?;
                }
            }
        }
        let moved: Vec<String> = batch.cursors.keys().cloned().collect();
        for (area, name) in &self.inner.opts.retention {
            if moved.contains(name) {
                txn.retain_area(*area, RETAIN_PER_BATCH)?;
            }
        }
        txn.commit(&mut state)
    }

    /// Deletes every record that all its consumers' cursors have passed.
    /// Returns how many records were deleted.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn retain(&self) -> Result<u64, LogError> {
        let mut total = 0;
        loop {
            let mut state = self.lock();
            let mut txn = Txn::new(&self.inner, *state);
            let mut n = 0;
            for area in Area::ALL {
                n += txn.retain_area(area, RETAIN_PER_BATCH)?;
            }
            if n == 0 {
                return Ok(total);
            }
            txn.commit(&mut state)?;
            total += n;
        }
    }

    /// Waits until the area has changed after generation `seen` (as returned
    /// by [`generation`](Self::generation)).
    pub async fn changed_since(&self, area: Area, seen: u64) {
        let mut rx = self.inner.generations[area.index()].subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|g| *g != seen).await;
    }

    /// A counter that changes every time a record is written to `area`.
    pub fn generation(&self, area: Area) -> u64 {
        *self.inner.generations[area.index()].borrow()
    }

    /// Waits until `needed` more bytes fit in the budget.
    pub async fn wait_for_space(&self, needed: u64) {
        let max = self.inner.opts.max_bytes;
        let mut rx = self.inner.used.subscribe();
        let _ = rx.wait_for(|used| used.saturating_add(needed) <= max).await;
    }

    /// A reader of `area` that starts at cursor `cursor`'s position.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn reader(&self, area: Area, cursor: &str) -> Result<LogReader, LogError> {
        Ok(LogReader { log: self.clone(), area, pos: self.cursor(cursor)? })
    }

    /// A snapshot of counts, bytes, cursors and backlogs.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn stats(&self) -> Result<LogStats, LogError> {
        let state = *self.lock();
        let mut areas = BTreeMap::new();
        for area in Area::ALL {
            areas.insert(area, state.areas[area.index()]);
        }
        let mut cursors = BTreeMap::new();
        for kv in self.inner.tree.scan_prefix([CURSOR_PREFIX]) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            cursors.insert(name, decode_u64(&v).unwrap_or(0));
        }
        for (_, name) in &self.inner.opts.retention {
            cursors.entry(name.clone()).or_insert(0);
        }
        let mut cstats = BTreeMap::new();
        for (name, position) in cursors {
            let mut c = CursorStats { position, backlog_records: 0, backlog_bytes: 0 };
            for (area, _) in self.inner.opts.retention.iter().filter(|(_, n)| *n == name) {
                let end = [area.prefix() + 1];
                for kv in self.inner.tree.range(key(*area, position).as_slice()..end.as_slice()) {
                    let (k, v) = kv?;
                    c.backlog_records += 1;
                    c.backlog_bytes += (k.len() + v.len()) as u64;
                }
            }
            cstats.insert(name, c);
        }
        Ok(LogStats {
            gateway_id: self.inner.opts.gateway_id.clone(),
            path: self.inner.opts.path.clone(),
            next_seq: state.next_seq,
            gaps_written: state.next_gap,
            set_aside: state.set_aside,
            used_bytes: state.used(),
            max_bytes: self.inner.opts.max_bytes,
            size_on_disk: self.inner.db.size_on_disk()?,
            areas,
            cursors: cstats,
        })
    }

    /// The log directory.
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }
}

fn decode_u64(v: &[u8]) -> Option<u64> {
    let b: [u8; 8] = v.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Outputs of one stage step, applied atomically by [`DurableLog::apply`].
#[derive(Debug, Default)]
pub struct StageBatch {
    ops: Vec<Op>,
    cursors: BTreeMap<String, u64>,
}

#[derive(Debug)]
enum Op {
    Put(Area, u64, Vec<u8>),
    Remove(Area, u64),
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

    /// Moves cursor `name` to `position` (the next seq to process).
    pub fn set_cursor(&mut self, name: &str, position: u64) -> &mut Self {
        self.cursors.insert(name.to_owned(), position);
        self
    }

    /// True if the batch would write nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.cursors.is_empty()
    }
}

/// Reads one area in order, waiting for new records when caught up. The
/// reader's position is in memory; stages persist progress with cursors.
#[derive(Debug)]
pub struct LogReader {
    log: DurableLog,
    area: Area,
    pos: u64,
}

impl LogReader {
    /// Next sequence number this reader will look at.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Returns the next 1..=`max` frames, waiting if there are none yet.
    /// Cancel-safe: dropping the future loses nothing.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub async fn next_frames(&mut self, max: usize) -> Result<Vec<(u64, FrameRecord)>, LogError> {
        loop {
            let seen = self.log.generation(self.area);
            let got = self.log.read_frames(self.pos, max)?;
            if let Some((last, _)) = got.last() {
                self.pos = last + 1;
                return Ok(got);
            }
            self.log.changed_since(self.area, seen).await;
        }
    }

    /// Returns the next 1..=`max` stage-encoded records, waiting if none.
    /// Cancel-safe.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub async fn next_blobs(&mut self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        loop {
            let seen = self.log.generation(self.area);
            let got = self.log.read_blobs(self.area, self.pos, max)?;
            if let Some((last, _)) = got.last() {
                self.pos = last + 1;
                return Ok(got);
            }
            self.log.changed_since(self.area, seen).await;
        }
    }
}

/// One atomic change being built under the state lock. Tracks the bytes of
/// keys it already touched so accounting stays exact within the batch.
struct Txn<'a> {
    inner: &'a Inner,
    batch: sled::Batch,
    state: State,
    pending: HashMap<[u8; 9], Option<u64>>,
    cursor_overrides: HashMap<String, u64>,
    touched: [bool; 5],
    dropped: [u64; 3],
}

impl<'a> Txn<'a> {
    fn new(inner: &'a Inner, state: State) -> Self {
        Self {
            inner,
            batch: sled::Batch::default(),
            state,
            pending: HashMap::new(),
            cursor_overrides: HashMap::new(),
            touched: [false; 5],
            dropped: [0; 3],
        }
    }

    fn current_len(&self, k: &[u8; 9]) -> Result<Option<u64>, LogError> {
        if let Some(p) = self.pending.get(k) {
            return Ok(*p);
        }
        Ok(self.inner.tree.get(k)?.map(|v| v.len() as u64))
    }

    fn put(&mut self, area: Area, seq: u64, value: Vec<u8>) -> Result<(), LogError> {
        let k = key(area, seq);
        let old = self.current_len(&k)?;
        let a = &mut self.state.areas[area.index()];
        if let Some(old) = old {
            a.records -= 1;
            a.bytes -= KEY_LEN + old;
        }
        a.records += 1;
        a.bytes += KEY_LEN + value.len() as u64;
        self.pending.insert(k, Some(value.len() as u64));
        self.batch.insert(&k, value);
        self.touched[area.index()] = true;
        Ok(())
    }

    /// Removes a record; returns the bytes freed (key + value) if it existed.
    fn remove(&mut self, area: Area, seq: u64) -> Result<Option<u64>, LogError> {
        let k = key(area, seq);
        let Some(old) = self.current_len(&k)? else { return Ok(None) };
        let a = &mut self.state.areas[area.index()];
        a.records -= 1;
        a.bytes -= KEY_LEN + old;
        self.pending.insert(k, None);
        self.batch.remove(&k);
        Ok(Some(KEY_LEN + old))
    }

    fn cursor(&self, name: &str) -> Result<u64, LogError> {
        if let Some(c) = self.cursor_overrides.get(name) {
            return Ok(*c);
        }
        Ok(self.inner.tree.get(cursor_key(name))?.as_deref().and_then(decode_u64).unwrap_or(0))
    }

    /// Deletes up to `limit` records of `area` below the slowest consumer.
    fn retain_area(&mut self, area: Area, limit: usize) -> Result<u64, LogError> {
        let mut low: Option<u64> = None;
        for (_, name) in self.inner.opts.retention.iter().filter(|(a, _)| *a == area) {
            let c = self.cursor(name)?;
            low = Some(low.map_or(c, |l| l.min(c)));
        }
        let Some(low) = low else { return Ok(0) };
        let mut seqs = Vec::new();
        for kv in self.inner.tree.range(key(area, 0).as_slice()..key(area, low).as_slice()) {
            let (k, _) = kv?;
            if let Some(s) = seq_of(&k) {
                seqs.push(s);
            }
            if seqs.len() >= limit {
                break;
            }
        }
        let mut n = 0;
        for s in seqs {
            if self.remove(area, s)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn gap(
        &mut self,
        area: Area,
        from: u64,
        to: u64,
        records: u64,
        bytes: u64,
        reason: GapReason,
    ) -> Result<GapRecord, LogError> {
        let g = GapRecord {
            id: self.state.next_gap,
            gateway_id: self.inner.opts.gateway_id.clone(),
            area,
            from_seq: from,
            to_seq: to,
            records,
            bytes,
            reason,
            at_ms: now_ms(),
        };
        self.state.next_gap += 1;
        self.dropped[reason.index()] += records;
        // Serialising a plain struct of numbers and strings cannot fail.
        let body = serde_json::to_vec(&g).unwrap_or_default();
        self.put(Area::Gaps, g.id, codec::encode(RecordKind::Gap, &body))?;
        Ok(g)
    }

    /// Frees at least `need` bytes if the policy allows: retention first,
    /// then sampled images, then (drop_oldest) undetected frames.
    fn make_room(&mut self, need: u64) -> Result<Vec<GapRecord>, LogError> {
        let max = self.inner.opts.max_bytes;
        for area in Area::ALL {
            self.retain_area(area, usize::MAX)?;
        }
        let mut gaps = Vec::new();
        let mut plan = vec![(Area::Images, GapReason::ImageDroppedForSpace)];
        if self.inner.opts.when_full == WhenFull::DropOldest {
            plan.push((Area::Frames, GapReason::FrameDroppedForSpace));
        }
        for (area, reason) in plan {
            // A gap record itself costs bytes; reserve room for one.
            let reserve = 512;
            if self.state.used() + need + reserve <= max {
                break;
            }
            let mut run: Option<(u64, u64, u64, u64)> = None; // from, to, records, bytes
            let end = [area.prefix() + 1];
            let keys: Vec<sled::IVec> = {
                let mut ks = Vec::new();
                let mut freed = 0u64;
                for kv in self.inner.tree.range(key(area, 0).as_slice()..end.as_slice()) {
                    if self.state.used().saturating_sub(freed) + need + reserve <= max {
                        break;
                    }
                    let (k, v) = kv?;
                    freed += KEY_LEN + v.len() as u64;
                    ks.push(k);
                }
                ks
            };
            for k in keys {
                let Some(seq) = seq_of(&k) else { continue };
                if let Some(b) = self.remove(area, seq)? {
                    run = Some(match run {
                        None => (seq, seq, 1, b),
                        Some((f, _, r, by)) => (f, seq, r + 1, by + b),
                    });
                }
            }
            if let Some((from, to, records, bytes)) = run {
                let g = self.gap(area, from, to, records, bytes, reason)?;
                tracing::warn!(area = area.name(), from, to, records, bytes, reason = ?reason, "log budget reached: records dropped");
                gaps.push(g);
            }
        }
        Ok(gaps)
    }

    fn commit(mut self, state: &mut MutexGuard<'_, State>) -> Result<(), LogError> {
        self.batch.insert(META_STATE, self.state.encode());
        self.inner.tree.apply_batch(self.batch)?;
        **state = self.state;
        for (i, n) in self.dropped.iter().enumerate() {
            self.inner.dropped[i].fetch_add(*n, Ordering::Relaxed);
        }
        let used = self.state.used();
        self.inner.used.send_replace(used);
        for area in Area::ALL {
            if self.touched[area.index()] {
                self.inner.generations[area.index()].send_modify(|g| *g = g.wrapping_add(1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(camera: &str, n: usize) -> FrameRecord {
        FrameRecord {
            camera: camera.into(),
            content_type: "image/jpeg".into(),
            received_at_ms: 1,
            captured_at_ms: None,
            camera_seq: None,
            payload: vec![7; n],
        }
    }

    fn open(dir: &Path, max: u64, when_full: WhenFull) -> DurableLog {
        let mut o = LogOptions::new(dir, "gw-test");
        o.max_bytes = max;
        o.when_full = when_full;
        DurableLog::open(o).unwrap()
    }

    #[test]
    fn seq_survives_reopen_and_frame_ids_are_prefixed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), 1 << 30, WhenFull::Block);
            assert_eq!(log.append_frame(&frame("a", 10)).unwrap().seq, 0);
            assert_eq!(log.append_frame(&frame("a", 10)).unwrap().frame_id, "gw-test:1");
        }
        let log = open(dir.path(), 1 << 30, WhenFull::Block);
        assert_eq!(log.append_frame(&frame("a", 10)).unwrap().seq, 2);
        assert_eq!(log.stats().unwrap().areas[&Area::Frames].records, 3);
    }

    #[test]
    fn other_gateway_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1 << 30, WhenFull::Block));
        let err = DurableLog::open(LogOptions::new(dir.path(), "other")).unwrap_err();
        assert!(matches!(err, LogError::GatewayIdMismatch { .. }), "{err}");
    }

    #[test]
    fn stage_batch_moves_cursor_and_retains_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1 << 30, WhenFull::Block);
        for _ in 0..5 {
            log.append_frame(&frame("a", 100)).unwrap();
        }
        let mut b = log.batch();
        b.put_blob(Area::Annotations, 0, b"{}").put_blob(Area::Annotations, 1, b"{}").set_cursor(cursors::DETECT, 2);
        log.apply(b).unwrap();
        let s = log.stats().unwrap();
        assert_eq!(s.areas[&Area::Frames].records, 3, "frames 0 and 1 released by the detect cursor");
        assert_eq!(s.areas[&Area::Annotations].records, 2);
        assert_eq!(s.cursors["detect"].position, 2);
        assert_eq!(s.cursors["detect"].backlog_records, 3);
        let mut back = log.batch();
        back.set_cursor(cursors::DETECT, 1);
        assert!(matches!(log.apply(back), Err(LogError::CursorRegression { .. })));
    }

    #[test]
    fn block_refuses_without_side_effects_and_frees_sampled_images_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 2_500, WhenFull::Block);
        let f = frame("a", 900);
        log.append_frame(&f).unwrap();
        log.append_frame(&f).unwrap();
        // Keep frame 0 as a sampled image, as the detect stage would.
        let mut b = log.batch();
        b.put_frame(Area::Images, 0, &f).set_cursor(cursors::DETECT, 1);
        log.apply(b).unwrap();
        let used = log.used_bytes();
        // Room is made by dropping the sampled image (a gap), not frame 1.
        let a = log.append_frame(&f).unwrap();
        assert_eq!(a.gaps.len(), 1);
        assert_eq!(a.gaps[0].reason, GapReason::ImageDroppedForSpace);
        assert!(log.used_bytes() <= 2_500);
        // Now only undetected frames remain: block.
        let before = log.stats().unwrap();
        let err = log.append_frame(&f).unwrap_err();
        assert!(matches!(err, LogError::Full { .. }) && err.is_transient(), "{err}");
        let after = log.stats().unwrap();
        assert_eq!(before.next_seq, after.next_seq);
        assert_eq!(before.areas, after.areas);
        assert!(used > 0);
    }

    #[test]
    fn drop_oldest_records_a_gap_for_dropped_frames() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 5_000, WhenFull::DropOldest);
        for _ in 0..20 {
            log.append_frame(&frame("a", 900)).unwrap();
            assert!(log.used_bytes() <= 5_000);
        }
        let gaps = log.read_gaps(0, 100).unwrap();
        let dropped: u64 = gaps.iter().map(|(_, g)| g.records).sum();
        let kept = log.stats().unwrap().areas[&Area::Frames].records;
        assert_eq!(dropped + kept, 20, "every frame is either kept or in a gap");
        assert!(gaps.iter().all(|(_, g)| g.reason == GapReason::FrameDroppedForSpace));
    }

    #[test]
    fn too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1_000, WhenFull::DropOldest);
        assert!(matches!(log.append_frame(&frame("a", 2_000)), Err(LogError::TooLarge { .. })));
    }

    #[test]
    fn corrupt_record_is_set_aside_and_reported_as_gap() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), 1 << 30, WhenFull::Block);
            for _ in 0..3 {
                log.append_frame(&frame("a", 50)).unwrap();
            }
            // Damage frame 1 behind the log's back.
            let k = key(Area::Frames, 1);
            let mut v = log.inner.tree.get(k).unwrap().unwrap().to_vec();
            let n = v.len();
            v[n - 1] ^= 0xff;
            log.inner.tree.insert(k, v).unwrap();
        }
        let log = open(dir.path(), 1 << 30, WhenFull::Block);
        let got: Vec<u64> = log.read_frames(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, vec![0, 2]);
        let s = log.stats().unwrap();
        assert_eq!(s.set_aside, 1);
        assert_eq!(s.areas[&Area::Frames].records, 2);
        let gaps = log.read_gaps(0, 10).unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].1.from_seq, gaps[0].1.reason), (1, GapReason::Unreadable));
    }

    #[test]
    fn damaged_accounting_is_recounted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), 1 << 30, WhenFull::Block);
            for _ in 0..4 {
                log.append_frame(&frame("a", 50)).unwrap();
            }
            log.inner.tree.insert(META_STATE, b"garbage".to_vec()).unwrap();
        }
        let log = open(dir.path(), 1 << 30, WhenFull::Block);
        let s = log.stats().unwrap();
        assert_eq!(s.areas[&Area::Frames].records, 4);
        assert_eq!(s.next_seq, 4);
        assert_eq!(log.append_frame(&frame("a", 1)).unwrap().seq, 4);
    }

    #[tokio::test]
    async fn reader_waits_for_the_next_append_without_polling() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 1 << 30, WhenFull::Block);
        let mut r = log.reader(Area::Frames, cursors::DETECT).unwrap();
        let w = log.clone();
        let task = tokio::spawn(async move { r.next_frames(10).await.unwrap() });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        w.append_frame(&frame("cam", 3)).unwrap();
        let got = task.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.camera, "cam");
    }

    #[tokio::test]
    async fn wait_for_space_wakes_when_a_cursor_frees_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), 2_000, WhenFull::Block);
        log.append_frame(&frame("a", 1_500)).unwrap();
        assert!(log.append_frame(&frame("a", 1_500)).is_err());
        let w = log.clone();
        let waiter = tokio::spawn(async move { w.wait_for_space(1_600).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut b = log.batch();
        b.set_cursor(cursors::DETECT, 1);
        log.apply(b).unwrap();
        waiter.await.unwrap();
        assert!(log.append_frame(&frame("a", 1_500)).is_ok());
    }
}
