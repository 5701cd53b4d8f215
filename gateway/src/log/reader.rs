//! Typed, bounded readers.
//!
//! A [`LogReader`] reads one area for one [`Cursor`] and never passes that
//! cursor's bound ([`DurableLog::bound`]): the detect reader stops at the
//! durable watermark, so nothing unsynced is processed or sent upstream.
//! Each batch says how far it looked (`upto`), so a stage can move its
//! cursor past sequence numbers that were not its records (dead letters)
//! without guessing.

use super::{Area, Cursor, DurableLog, FrameRecord, LogError};

/// Records read, and the exclusive bound the read covered: every record of
/// the area below `upto` was either returned now or earlier.
#[derive(Debug)]
pub struct ReadBatch<T> {
    /// The records, in sequence order.
    pub records: Vec<(u64, T)>,
    /// Everything below this was looked at.
    pub upto: u64,
}

/// Reads one area in order for one cursor, waiting when caught up. The
/// position is in memory; stages persist progress with their cursor.
#[derive(Debug)]
pub struct LogReader {
    log: DurableLog,
    area: Area,
    cursor: Cursor,
    pos: u64,
}

impl LogReader {
    /// A reader starting at `cursor`'s stored position.
    ///
    /// # Errors
    /// [`LogError::Storage`].
    pub fn new(log: DurableLog, area: Area, cursor: Cursor) -> Result<Self, LogError> {
        let pos = log.cursor(cursor)?;
        Ok(Self { log, area, cursor, pos })
    }

    /// Next sequence number this reader will look at.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Returns the next 1..=`max` frames, or an empty batch whose `upto`
    /// moved (sequence numbers that were not frames), waiting while there is
    /// nothing new below the bound. Cancel-safe: dropping the future loses
    /// nothing.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub async fn next_frames(&mut self, max: usize) -> Result<ReadBatch<FrameRecord>, LogError> {
        let max = max.max(1);
        loop {
            let seen = self.log.generation();
            let bound = self.log.bound(self.cursor)?;
            if bound > self.pos {
                let records = match self.area {
                    Area::Frames | Area::Images => {
                        self.log.read(self.area, self.pos..bound, max, FrameRecord::decode)?
                    }
                    _ => Vec::new(),
                };
                let upto = match records.last() {
                    Some((last, _)) if records.len() >= max => last + 1,
                    _ => bound,
                };
                self.pos = upto;
                return Ok(ReadBatch { records, upto });
            }
            self.log.changed_since(seen).await;
        }
    }
}
