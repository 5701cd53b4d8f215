//! What the log reports on itself without scanning records: counters per
//! area, cursors and their backlog ([`LogStats`], `vision-gateway log
//! stats`, the metrics).

use super::{index, Cursor, DurableLog, LogError};
use crate::records::{Area, GapReason};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

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

impl DurableLog {
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
}
