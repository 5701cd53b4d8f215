//! One atomic change to the log, with retention and the byte budget.
//!
//! A [`Txn`] is built under the log's lock: puts (payloads go to segments
//! right away, their pointers into the batch), removals, cursor moves,
//! retention and room-making, with the accounting updated as it goes. It is
//! applied by one sled `apply_batch`: after a crash either all of it is in
//! the index or none, and a segment record nothing points to is garbage that
//! dies with its segment.
//!
//! # Payload before pointer (stage records)
//!
//! sled may write an index entry out at any moment after it is applied,
//! before any flush. For intake's records that is repaired on open (the
//! torn tail above the durable mark is trimmed and the broker delivers
//! again); a stage's record (a sampled image, a large annotation) has no
//! one to deliver it again, and its cursor moved in the same batch. So the
//! segments a stage batch wrote to are fdatasynced before the batch is
//! applied: an index entry of a stage record never points at bytes a power
//! cut can take (found by the claim check's power-cut test: every image
//! of a detect batch was lost as `unreadable`).
//!
//! # Budget
//!
//! The budget counts bytes on disk: every segment file whole (a dead record
//! inside a live segment still costs its bytes) plus sled's files as last
//! measured, plus a reserve for the index's growth between measurements.
//! Room is made, in this order, by retention (records every consumer has
//! passed), then by dropping sampled images not yet uploaded, then, under
//! `drop_oldest`, by dropping the oldest frames not yet detected. A record
//! is only dropped if that empties its segment, so no record is lost for
//! nothing: disk space only comes back a whole segment at a time.

use super::accounting::{SegLive, State};

use super::index::{self, encode_pointer, key, seq_of, Slot, META_STATE};
use super::segments::{Writer, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use super::{codec, Area, Core, Cursor, GapReason, GapRecord, Inner, LogError, WhenFull};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Upper bound of records deleted by retention inside one stage batch; the
/// rest goes on the next batch or [`super::DurableLog::retain`].
pub const RETAIN_PER_BATCH: usize = 4096;

/// Records given up in one run of sequence numbers (a gap record's body).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lost {
    /// Where they were.
    pub(super) area: Area,
    /// First sequence number of the run.
    pub(super) from: u64,
    /// Last sequence number of the run (inclusive).
    pub(super) to: u64,
    /// Records removed.
    pub(super) records: u64,
    /// Their logical bytes.
    pub(super) bytes: u64,
}

pub(super) struct Txn<'a> {
    inner: &'a Inner,
    core: &'a mut Core,
    pub batch: sled::Batch,
    pub state: State,
    pending: HashMap<[u8; 9], Option<Slot>>,
    cursor_overrides: HashMap<Cursor, u64>,
    touched_segs: BTreeSet<u64>,
    /// Stage-lane segments written by this batch: synced before it applies.
    stage_writes: BTreeSet<u64>,
    touched: bool,
    dropped: [u64; GapReason::COUNT],
    /// The log's `retained_below`, as this transaction leaves it (written
    /// back only when it commits).
    retained_below: super::RetainedBelow,
}

impl<'a> Txn<'a> {
    pub fn new(inner: &'a Inner, core: &'a mut Core) -> Self {
        let state = core.state.clone();
        let retained_below = core.retained_below;
        Self {
            inner,
            core,
            batch: sled::Batch::default(),
            state,
            pending: HashMap::new(),
            cursor_overrides: HashMap::new(),
            touched_segs: BTreeSet::new(),
            stage_writes: BTreeSet::new(),
            touched: false,
            dropped: [0; GapReason::COUNT],
            retained_below,
        }
    }

    /// True if the transaction changed anything.
    pub fn is_dirty(&self) -> bool {
        self.touched
    }

    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io { path: self.core.segs.dir().to_path_buf(), source }
    }

    /// True if `need` more bytes fit the budget, counting `freed` bytes as
    /// already gone.
    pub fn fits(&self, need: u64, freed: u64) -> bool {
        self.inner.fits(self.core, need, freed)
    }

    /// Bytes of segment files that are dead (in this transaction or waiting
    /// for the next flush to be deleted).
    pub fn projected_free(&self) -> u64 {
        let mut ids: BTreeSet<u64> = self.core.pending_delete.iter().copied().collect();
        ids.extend(self.touched_segs.iter().copied().filter(|id| self.is_dead(*id)));
        ids.iter().map(|id| self.core.segs.file_bytes(*id)).sum()
    }

    fn is_dead(&self, id: u64) -> bool {
        !self.core.segs.is_active(id) && self.state.segs.get(&id).is_none_or(|l| l.records == 0)
    }

    fn current(&self, k: &[u8; 9]) -> Result<Option<Slot>, LogError> {
        if let Some(p) = self.pending.get(k) {
            return Ok(*p);
        }
        Ok(self.inner.index.tree.get(k)?.as_deref().map(Slot::of))
    }

    fn account(&mut self, area: Area, slot: Slot, add: bool) {
        self.state.account(area, slot, add);
        if let Slot::Ptr(p) = slot {
            self.touched_segs.insert(p.segment);
        }
        self.touched = true;
    }

    /// Writes a record (a codec value) at `seq` in `area`.
    pub fn put(&mut self, area: Area, seq: u64, value: Vec<u8>) -> Result<(), LogError> {
        let k = key(area.prefix(), seq);
        if let Some(old) = self.current(&k)? {
            self.account(area, old, false);
        }
        self.retained_below.written(area, seq);
        let slot = if self.inner.in_segment(area, value.len() as u64) {
            let lane = area.lane();
            let before = self.core.segs.active_id(lane);
            let (p, created) = self.core.segs.append(lane, area.prefix(), seq, &[&value]).map_err(|e| self.io(e))?;
            if created {
                // The segment it rolled from may already be empty.
                self.touched_segs.extend(before);
                self.state.segs.insert(p.segment, SegLive { lane: lane as u8, records: 0, bytes: 0 });
            }
            if lane == Writer::Stage {
                self.stage_writes.insert(p.segment);
            }
            self.batch.insert(&k, encode_pointer(&p));
            Slot::Ptr(p)
        } else {
            let n = value.len() as u64;
            self.batch.insert(&k, value);
            Slot::Inline(n)
        };
        self.account(area, slot, true);
        self.pending.insert(k, Some(slot));
        Ok(())
    }

    /// Removes a record; returns its logical bytes if it existed.
    pub fn remove(&mut self, area: Area, seq: u64) -> Result<Option<u64>, LogError> {
        let k = key(area.prefix(), seq);
        let Some(old) = self.current(&k)? else { return Ok(None) };
        self.account(area, old, false);
        self.pending.insert(k, None);
        self.batch.remove(&k);
        Ok(Some(old.logical()))
    }

    /// Moves a cursor (checked by the caller).
    pub fn set_cursor(&mut self, c: Cursor, to: u64) {
        self.batch.insert(index::cursor_key(c.name()), &to.to_be_bytes());
        self.cursor_overrides.insert(c, to);
        self.touched = true;
    }

    pub fn cursor(&self, c: Cursor) -> Result<u64, LogError> {
        if let Some(v) = self.cursor_overrides.get(&c) {
            return Ok(*v);
        }
        Ok(self.inner.index.cursor(c.name())?.unwrap_or(0))
    }

    /// Deletes up to `limit` records of `area` below its slowest consumer.
    pub fn retain_area(&mut self, area: Area, limit: usize) -> Result<u64, LogError> {
        let mut low: Option<u64> = None;
        for c in self.inner.opts.consumers(area) {
            let at = self.cursor(c)?;
            low = Some(low.map_or(at, |l| l.min(at)));
        }
        let Some(low) = low else { return Ok(0) };
        let start = self.retained_below.get(area);
        if start >= low {
            return Ok(0);
        }
        // The scan's values are used as they are unless this transaction
        // changed the key: one index read per record, not two.
        let mut found = Vec::new();
        let (from, to) = (key(area.prefix(), start), key(area.prefix(), low));
        let mut complete = true;
        for kv in self.inner.index.tree.range(from.as_slice()..to.as_slice()) {
            let (k, v) = kv?;
            if let Some(s) = seq_of(&k) {
                found.push((s, Slot::of(&v)));
            }
            if found.len() >= limit {
                complete = false;
                break;
            }
        }
        // Records this transaction put below `low` are not in the tree yet.
        let scanned_to = if complete { low } else { found.last().map_or(start, |(s, _)| s + 1) };
        for (k, slot) in &self.pending {
            if let (Some(slot), Some(s)) = (slot, seq_of(k)) {
                if k[0] == area.prefix() && s >= start && s < scanned_to && !found.iter().any(|(f, _)| *f == s) {
                    found.push((s, *slot));
                }
            }
        }
        self.retained_below.set(area, scanned_to);
        let mut n = 0;
        for (s, slot) in found {
            let k = key(area.prefix(), s);
            let old = match self.pending.get(&k) {
                Some(p) => *p,
                None => Some(slot),
            };
            let Some(old) = old else { continue };
            self.account(area, old, false);
            self.pending.insert(k, None);
            self.batch.remove(&k);
            n += 1;
        }
        Ok(n)
    }

    /// Writes a gap record for `lost`.
    pub fn gap(&mut self, lost: Lost, reason: GapReason, detail: Option<String>) -> Result<GapRecord, LogError> {
        let Lost { area, from, to, records, bytes } = lost;
        let g = GapRecord {
            id: self.state.next_gap,
            gateway_id: self.inner.opts.gateway_id.clone(),
            area,
            from_seq: from,
            to_seq: to,
            records,
            bytes,
            reason,
            at_ms: super::now_ms(),
            detail,
        };
        self.state.next_gap += 1;
        self.dropped[reason.index()] += records;
        // Serialising a plain struct of numbers and strings cannot fail.
        let body = serde_json::to_vec(&g).unwrap_or_default();
        self.put(Area::Gaps, g.id, codec::encode(codec::RecordKind::Gap, &body))?;
        Ok(g)
    }

    /// Frees room for `need` bytes if the policy allows (see the module
    /// doc). Returns the gap records written for what was dropped.
    pub fn make_room(&mut self, need: u64) -> Result<Vec<GapRecord>, LogError> {
        for area in Area::ALL {
            self.retain_area(area, usize::MAX)?;
        }
        // An emptied active segment is closed so that its file can go.
        for lane in Writer::ALL {
            if let Some(id) = self.core.segs.active_id(lane) {
                if self.state.segs.get(&id).is_none_or(|l| l.records == 0) {
                    self.core.segs.seal(id);
                    self.touched_segs.insert(id);
                }
            }
        }
        let mut gaps = Vec::new();
        let mut plan = vec![(Area::Images, GapReason::ImageDroppedForSpace)];
        if self.inner.opts.when_full == WhenFull::DropOldest {
            plan.push((Area::Frames, GapReason::FrameDroppedForSpace));
        }
        for (area, reason) in plan {
            if self.fits(need, self.projected_free()) {
                break;
            }
            let victims = self.droppable_segments(area, need)?;
            if victims.is_empty() {
                continue;
            }
            let (mut from, mut to, mut records, mut bytes) = (u64::MAX, 0, 0, 0);
            for (id, seqs) in victims {
                for seq in seqs {
                    if let Some(b) = self.remove(area, seq)? {
                        from = from.min(seq);
                        to = to.max(seq);
                        records += 1;
                        bytes += b;
                    }
                }
                self.core.segs.seal(id);
                self.touched_segs.insert(id);
            }
            if records > 0 {
                let g = self.gap(Lost { area, from, to, records, bytes }, reason, None)?;
                tracing::warn!(
                    area = area.name(),
                    from,
                    to,
                    records,
                    bytes,
                    reason = reason.name(),
                    "log budget reached: records dropped"
                );
                gaps.push(g);
            }
        }
        Ok(gaps)
    }

    /// The oldest segments whose every live record is in `area` (so
    /// dropping those records empties them), until `need` fits.
    fn droppable_segments(&mut self, area: Area, need: u64) -> Result<Vec<(u64, Vec<u64>)>, LogError> {
        let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut victims = Vec::new();
        let mut freed = self.projected_free();
        let start = self.retained_below.get(area);
        let (from, to) = (key(area.prefix(), start), key(area.prefix().saturating_add(1), 0));
        for kv in self.inner.index.tree.range(from.as_slice()..to.as_slice()) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            let k9 = key(area.prefix(), seq);
            if matches!(self.pending.get(&k9), Some(None)) {
                continue;
            }
            let Slot::Ptr(p) = Slot::of(&v) else { continue };
            let list = seen.entry(p.segment).or_default();
            list.push(seq);
            let live = self.state.segs.get(&p.segment).map_or(0, |l| l.records);
            if list.len() as u64 == live {
                freed += self.core.segs.file_bytes(p.segment);
                victims.push((p.segment, std::mem::take(list)));
                if self.fits(need, freed) {
                    break;
                }
            }
        }
        Ok(victims)
    }

    /// Applies the batch with the accounting in it. Returns the records
    /// dropped per reason; emptied segments are queued for deletion after
    /// the next durable flush.
    pub fn commit(mut self) -> Result<[u64; GapReason::COUNT], LogError> {
        let mut dead = Vec::new();
        for id in std::mem::take(&mut self.touched_segs) {
            if self.is_dead(id) {
                self.state.segs.remove(&id);
                dead.push(id);
            }
        }
        for id in std::mem::take(&mut self.stage_writes) {
            self.core.segs.sync_now(id).map_err(|e| self.io(e))?;
        }
        self.batch.insert(META_STATE, self.state.encode());
        self.inner.index.tree.apply_batch(self.batch)?;
        self.core.state = self.state;
        self.core.state_dirty = false;
        self.core.retained_below = self.retained_below;
        for id in dead {
            self.core.segs.seal(id);
            if !self.core.pending_delete.contains(&id) {
                self.core.pending_delete.push(id);
            }
        }
        Ok(self.dropped)
    }
}

/// Bytes a record of `len` takes in a new segment, headers included.
pub fn worst_cost(len: u64) -> u64 {
    FILE_HEADER_LEN + RECORD_HEADER_LEN + len
}
