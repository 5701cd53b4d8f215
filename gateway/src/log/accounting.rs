//! Accounting of the log: sequence counters, records and bytes per area,
//! live records per segment.
//!
//! Owns the `Mstate` index value: counters and per-segment live records in
//! one value. It is written in the same atomic batch as every stage change
//! and at every flush. Appends between two flushes are plain sled inserts
//! (a sled batch costs two `sync_file_range` calls); sled recovers a prefix
//! of its log, so after a crash the appends that outlived the last `Mstate`
//! are exactly the keys at or above its `next_seq`, and opening the log
//! counts those ([`State::account`]) instead of scanning: O(segments + one
//! group commit), not O(records).

use super::codec::{self, RecordKind};
use super::index::Slot;
use super::segments::Writer;
use super::{Area, AreaStats};
use std::collections::BTreeMap;

/// Live records of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegLive {
    /// The segment's lane.
    pub lane: u8,
    /// Index entries pointing into it.
    pub records: u64,
    /// Their body bytes.
    pub bytes: u64,
}

impl SegLive {
    /// The lane, if valid.
    pub fn lane(&self) -> Option<Writer> {
        Writer::from_u8(self.lane)
    }
}

/// The log's counters. Cheap to copy apart from `segs`, which has one entry
/// per segment file (bounded by the budget over the segment size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Next sequence number to hand out.
    pub next_seq: u64,
    /// Next gap id.
    pub next_gap: u64,
    /// Records set aside so far.
    pub set_aside: u64,
    /// Per area, by [`Area::index`].
    pub areas: [AreaStats; 5],
    /// Live records per segment id (persisted under `S<id>`).
    pub segs: BTreeMap<u64, SegLive>,
}

impl State {
    const FIXED_LEN: usize = 8 * (3 + 2 * 5) + 8;
    const SEG_LEN: usize = 8 + 1 + 8 + 8;

    /// Adds (or removes) a record's bytes to its area and its segment.
    pub fn account(&mut self, area: Area, slot: Slot, add: bool) {
        let a = self.area(area);
        if add {
            a.records += 1;
            a.bytes += slot.logical();
        } else {
            a.records = a.records.saturating_sub(1);
            a.bytes = a.bytes.saturating_sub(slot.logical());
        }
        if let Slot::Ptr(p) = slot {
            let l = self.segs.entry(p.segment).or_insert(SegLive { lane: area.lane() as u8, records: 0, bytes: 0 });
            if add {
                l.records += 1;
                l.bytes += u64::from(p.len);
            } else {
                l.records = l.records.saturating_sub(1);
                l.bytes = l.bytes.saturating_sub(u64::from(p.len));
            }
        }
    }

    /// Logical bytes of all records.
    pub fn logical(&self) -> u64 {
        self.areas.iter().map(|a| a.bytes).sum()
    }

    /// Stats of one area.
    pub fn area(&mut self, area: Area) -> &mut AreaStats {
        &mut self.areas[area.index()]
    }

    /// Counters and segments as one checksummed blob (25 bytes a segment;
    /// the segment count is bounded by the budget over the segment size).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::FIXED_LEN + Self::SEG_LEN * self.segs.len());
        for v in [self.next_seq, self.next_gap, self.set_aside] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for a in &self.areas {
            b.extend_from_slice(&a.records.to_le_bytes());
            b.extend_from_slice(&a.bytes.to_le_bytes());
        }
        b.extend_from_slice(&(self.segs.len() as u64).to_le_bytes());
        for (id, l) in &self.segs {
            b.extend_from_slice(&id.to_le_bytes());
            b.push(l.lane);
            b.extend_from_slice(&l.records.to_le_bytes());
            b.extend_from_slice(&l.bytes.to_le_bytes());
        }
        codec::encode(RecordKind::Blob, &b)
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(v: &[u8]) -> Option<Self> {
        let (_, b) = codec::decode(v).ok()?;
        if b.len() < Self::FIXED_LEN {
            return None;
        }
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let mut s = State { next_seq: u64_at(0)?, next_gap: u64_at(8)?, set_aside: u64_at(16)?, ..State::default() };
        for (i, a) in s.areas.iter_mut().enumerate() {
            a.records = u64_at(24 + 16 * i)?;
            a.bytes = u64_at(32 + 16 * i)?;
        }
        let n = usize::try_from(u64_at(Self::FIXED_LEN - 8)?).ok()?;
        if b.len() != Self::FIXED_LEN + n.checked_mul(Self::SEG_LEN)? {
            return None;
        }
        for i in 0..n {
            let at = Self::FIXED_LEN + i * Self::SEG_LEN;
            let l = SegLive { lane: *b.get(at + 8)?, records: u64_at(at + 9)?, bytes: u64_at(at + 17)? };
            s.segs.insert(u64_at(at)?, l);
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_segments_round_trip() {
        let mut s = State { next_seq: 9, next_gap: 2, set_aside: 1, ..State::default() };
        s.areas[3] = AreaStats { records: 4, bytes: 400 };
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        s.segs.insert(7, SegLive { lane: 1, records: 3, bytes: 1_000_000 });
        s.segs.insert(9, SegLive { lane: 0, records: 1, bytes: 5 });
        let enc = s.encode();
        assert_eq!(State::decode(&enc).unwrap(), s);
        assert!(State::decode(&enc[..enc.len() - 1]).is_none());
        assert!(State::decode(b"garbage").is_none());
    }
}
