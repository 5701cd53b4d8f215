//! A stage's atomic change ([`StageBatch`]): its outputs, removals and
//! cursor moves applied in one transaction; and retention, which deletes
//! what every consumer has passed.

use super::*;

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

impl DurableLog {
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
                        txn.gap(
                            Lost { area, from: seq, to: seq, records: 1, bytes },
                            GapReason::Undeliverable,
                            Some(detail),
                        )?;
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
}
