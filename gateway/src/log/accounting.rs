//! Accounting of the log: sequence counters, records and bytes per area,
//! live records per segment.
//!
//! Owns the `Mstate` and `S<id>` index values. Both are written in the same
//! atomic batch as the records they count, so they are exact after any
//! crash or power cut, and opening the log reads them instead of scanning:
//! O(segments), not O(records).

use super::codec::{self, RecordKind};
use super::segments::Lane;
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
    pub fn lane(&self) -> Option<Lane> {
        Lane::from_u8(self.lane)
    }

    /// Encoded as a checksummed blob.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17);
        b.push(self.lane);
        b.extend_from_slice(&self.records.to_le_bytes());
        b.extend_from_slice(&self.bytes.to_le_bytes());
        codec::encode(RecordKind::Blob, &b)
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(v: &[u8]) -> Option<Self> {
        let (_, b) = codec::decode(v).ok()?;
        if b.len() != 17 {
            return None;
        }
        Some(Self {
            lane: b[0],
            records: u64::from_le_bytes(b[1..9].try_into().ok()?),
            bytes: u64::from_le_bytes(b[9..17].try_into().ok()?),
        })
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
    const ENCODED_LEN: usize = 8 * (3 + 2 * 5);

    /// Logical bytes of all records.
    pub fn logical(&self) -> u64 {
        self.areas.iter().map(|a| a.bytes).sum()
    }

    /// Stats of one area.
    pub fn area(&mut self, area: Area) -> &mut AreaStats {
        &mut self.areas[area.index()]
    }

    /// The counters (not the segments) as a checksummed blob.
    pub fn encode(&self) -> Vec<u8> {
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

    /// Parses [`encode`](Self::encode)'s output (segments empty).
    pub fn decode(v: &[u8]) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_segments_round_trip() {
        let mut s = State { next_seq: 9, next_gap: 2, set_aside: 1, ..State::default() };
        s.areas[3] = AreaStats { records: 4, bytes: 400 };
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        let l = SegLive { lane: 1, records: 3, bytes: 1_000_000 };
        assert_eq!(SegLive::decode(&l.encode()), Some(l));
        assert!(SegLive::decode(b"garbage").is_none());
    }
}
