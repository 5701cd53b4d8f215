//! Appending: a record gets the next sequence number, its bytes go to a
//! segment (large ones) or the index, in one transaction with its
//! accounting and any gap that made room for it; an idempotent append
//! first looks the publish up among the recent fingerprints.

use super::*;

/// What an idempotent append ([`DurableLog::append_frame_once`] and its
/// siblings) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under a new seq.
    Stored(Appended),
    /// A recent record had the same fingerprint (its seq); nothing stored.
    Duplicate(u64),
}

/// Whether an idempotent append may be matched against the fingerprints
/// of recent appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// It may be a redelivery: a recent record with the same fingerprint
    /// makes it a duplicate, and nothing is stored.
    Check,
    /// It cannot be told from a new record by its fingerprint (a still
    /// scene without `camera_seq`): stored, its fingerprint remembered.
    Remember,
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

impl DurableLog {
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
    /// appends (and `dedup` is [`Dedup::Check`]): then returns [`AppendOutcome::Duplicate`] with
    /// its seq and stores nothing. The fingerprint is remembered either way. Intake uses it so that a frame the broker delivers again
    /// (it was stored, but the gateway died before its PUBACK) is not
    /// stored twice under two frame ids. The fingerprint is written right
    /// before the record (sled keeps a prefix of its writes across a
    /// crash), so a crash can keep a fingerprint without its record, never
    /// a record without its fingerprint (which would store its redelivery
    /// again, under a second frame id); opening the log removes the
    /// fingerprints whose records never made it (a redelivery is then
    /// stored, not taken for a duplicate of nothing).
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_frame_once(
        &self,
        frame: &FrameRecord,
        fingerprint: u64,
        dedup: Dedup,
    ) -> Result<AppendOutcome, LogError> {
        self.append_payload_once(frame.head(), &frame.payload, fingerprint, dedup)
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
        dedup: Dedup,
    ) -> Result<AppendOutcome, LogError> {
        self.append_once(Area::Frames, &[&head.encode(payload), payload], fingerprint, dedup)
    }

    /// [`append_dead_letter`](Self::append_dead_letter) with the
    /// de-duplication of [`append_frame_once`](Self::append_frame_once).
    ///
    /// # Errors
    /// As [`append_frame`](Self::append_frame).
    pub fn append_dead_letter_once(
        &self,
        body: &[u8],
        fingerprint: u64,
        dedup: Dedup,
    ) -> Result<AppendOutcome, LogError> {
        self.append_once(Area::DeadLetters, &[&codec::encode(RecordKind::Blob, body)], fingerprint, dedup)
    }

    fn append_once(
        &self,
        area: Area,
        value: &[&[u8]],
        fingerprint: u64,
        dedup: Dedup,
    ) -> Result<AppendOutcome, LogError> {
        if let Some(seq) = self.seen(fingerprint).filter(|_| dedup == Dedup::Check) {
            return Ok(AppendOutcome::Duplicate(seq));
        }
        self.append(area, value, Some(fingerprint)).map(AppendOutcome::Stored)
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
        let tree = &self.inner.index.tree;
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
            Self::insert_fingerprinted(tree, k, &index::encode_pointer(&p), seq, fingerprint)?;
            Slot::Ptr(p)
        } else {
            Self::insert_fingerprinted(tree, k, &value.concat(), seq, fingerprint)?;
            Slot::Inline(len)
        };
        if let Some(fp) = fingerprint {
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
        core.retained_below.written(area, seq);
        core.state.account(area, slot, true);
        core.state_dirty = true;
        self.inner.bump();
        self.inner.publish_used(core);
        Ok(seq)
    }

    /// The record's index entry, its fingerprint (if any) first: see
    /// [`append_frame_once`](Self::append_frame_once). A record that could
    /// not be written takes its fingerprint back with it.
    fn insert_fingerprinted(
        tree: &sled::Tree,
        k: [u8; 9],
        v: &[u8],
        seq: u64,
        fingerprint: Option<u64>,
    ) -> Result<(), LogError> {
        let fp_key = key(index::RECENT_PREFIX, seq);
        if let Some(fp) = fingerprint {
            tree.insert(fp_key, &fp.to_be_bytes())?;
        }
        match tree.insert(k, v) {
            Ok(_) => Ok(()),
            Err(e) => {
                if fingerprint.is_some() {
                    // Best effort; the next open removes it otherwise.
                    let _ = tree.remove(fp_key);
                }
                Err(e.into())
            }
        }
    }

    pub(super) fn finish(&self, txn: Txn<'_>) -> Result<(), LogError> {
        let dropped = txn.commit()?;
        for (i, n) in dropped.iter().enumerate() {
            self.inner.dropped[i].fetch_add(*n, Ordering::Relaxed);
        }
        self.inner.bump();
        Ok(())
    }
}
