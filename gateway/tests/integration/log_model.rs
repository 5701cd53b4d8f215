//! Property tests of the durable log against a simple in-memory model:
//! appends, stage batches (cursor + outputs + retention), reads, reopens
//! and the byte budget, in random interleavings.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway::log::{Cursor, DurableLog, LogError, LogOptions, WhenFull};
use gateway::records::{Area, FrameRecord, GapReason};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The codec header in front of a blob body.
const BLOB_HEADER: u64 = 6;

#[derive(Debug, Clone)]
enum Op {
    Append { camera: u8, len: u16 },
    DeadLetter { len: u8 },
    Detect { max: u8 },
    Replicate { max: u8 },
    Read { from: u8, max: u8 },
    Retain,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u16..3000).prop_map(|(camera, len)| Op::Append { camera, len }),
        1 => (0u8..100).prop_map(|len| Op::DeadLetter { len }),
        2 => (1u8..10).prop_map(|max| Op::Detect { max }),
        2 => (1u8..10).prop_map(|max| Op::Replicate { max }),
        1 => (0u8..60, 1u8..20).prop_map(|(from, max)| Op::Read { from, max }),
        1 => Just(Op::Retain),
        1 => Just(Op::Reopen),
    ]
}

fn frame(seq: u64, camera: u8, len: u16) -> FrameRecord {
    FrameRecord {
        camera: format!("cam-{camera}"),
        content_type: "image/png".into(),
        received_at_ms: seq,
        captured_at_ms: None,
        camera_seq: Some(seq),
        payload: vec![(seq % 256) as u8; len as usize],
    }
}

#[derive(Default)]
struct Model {
    next_seq: u64,
    frames: BTreeMap<u64, FrameRecord>,
    annotations: BTreeMap<u64, Vec<u8>>,
    dead: BTreeMap<u64, Vec<u8>>,
    detect: u64,
    replicate: u64,
}

impl Model {
    /// Logical bytes: what was written, without keys, headers or dead space.
    fn bytes(&self) -> u64 {
        self.frames.values().map(|f| f.encode().len() as u64).sum::<u64>()
            + self.annotations.values().chain(self.dead.values()).map(|b| BLOB_HEADER + b.len() as u64).sum::<u64>()
    }
}

/// Small segments (8 KiB), so that they roll, empty and are deleted all
/// the time.
fn open(dir: &Path, max: u64, when_full: WhenFull) -> DurableLog {
    let mut o = LogOptions::new(dir, "prop");
    o.max_bytes = max;
    o.when_full = when_full;
    o.segment_bytes = Some(8 << 10);
    o.index_reserve = 0;
    DurableLog::open(o).unwrap()
}

fn segment_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments")).map_or(0, |d| d.count() as u64)
}

fn check(log: &DurableLog, m: &Model) -> Result<(), TestCaseError> {
    let s = log.stats().unwrap();
    prop_assert_eq!(s.next_seq, m.next_seq);
    prop_assert_eq!(s.areas[&Area::Frames].records, m.frames.len() as u64);
    prop_assert_eq!(s.areas[&Area::Annotations].records, m.annotations.len() as u64);
    prop_assert_eq!(s.areas[&Area::DeadLetters].records, m.dead.len() as u64);
    prop_assert_eq!(s.logical_bytes, m.bytes());
    prop_assert_eq!(s.used_bytes, s.segment_bytes + s.index_bytes);
    prop_assert_eq!(s.cursors["detect"].position, m.detect);
    prop_assert_eq!(s.cursors["replicate"].position, m.replicate);
    prop_assert_eq!(s.cursors["detect"].backlog_records, m.frames.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With an ample budget the log behaves exactly like the model.
    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 30, WhenFull::Block);
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Append { camera, len } => {
                    let f = frame(m.next_seq, camera, len);
                    let a = log.append_frame(&f).unwrap();
                    prop_assert_eq!(a.seq, m.next_seq);
                    prop_assert_eq!(a.frame_id, format!("prop:{}", m.next_seq));
                    m.frames.insert(m.next_seq, f);
                    m.next_seq += 1;
                }
                Op::DeadLetter { len } => {
                    let body = vec![b'd'; len as usize];
                    prop_assert_eq!(log.append_dead_letter(&body).unwrap().seq, m.next_seq);
                    m.dead.insert(m.next_seq, body);
                    m.next_seq += 1;
                }
                Op::Detect { max } => {
                    let got = log.read_frames(m.detect, max as usize).unwrap();
                    let want: Vec<_> = m.frames.range(m.detect..).take(max as usize).map(|(s, f)| (*s, f.clone())).collect();
                    prop_assert_eq!(&got, &want);
                    if let Some((last, _)) = got.last() {
                        let mut b = log.batch();
                        for (seq, f) in &got {
                            let body = format!("{}:{}", f.camera, seq).into_bytes();
                            b.put_blob(Area::Annotations, *seq, &body);
                            m.annotations.insert(*seq, body);
                        }
                        b.set_cursor(Cursor::Detect, last + 1);
                        log.apply(b).unwrap();
                        m.detect = last + 1;
                        m.frames.retain(|s, _| *s >= m.detect);
                    }
                }
                Op::Replicate { max } => {
                    let got = log.read_blobs(Area::Annotations, m.replicate, u64::MAX, max as usize).unwrap();
                    let want: Vec<_> = m.annotations.range(m.replicate..).take(max as usize).map(|(s, b)| (*s, b.clone())).collect();
                    prop_assert_eq!(&got, &want);
                    if let Some((last, _)) = got.last() {
                        let mut b = log.batch();
                        b.set_cursor(Cursor::Replicate, last + 1);
                        log.apply(b).unwrap();
                        m.replicate = last + 1;
                        m.annotations.retain(|s, _| *s >= m.replicate);
                        m.dead.retain(|s, _| *s >= m.replicate);
                    }
                }
                Op::Read { from, max } => {
                    let got = log.read_frames(u64::from(from), max as usize).unwrap();
                    let want: Vec<_> = m.frames.range(u64::from(from)..).take(max as usize).map(|(s, f)| (*s, f.clone())).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Retain => {
                    prop_assert_eq!(log.retain().unwrap(), 0, "stage batches already retained everything");
                }
                Op::Reopen => {
                    drop(log);
                    log = open(dir.path(), 1 << 30, WhenFull::Block);
                    // Segment deletion: after a reopen only segments with a
                    // live frame are left (dead letters and annotations are
                    // small and live in the index).
                    if m.frames.is_empty() {
                        prop_assert_eq!(segment_files(dir.path()), 0);
                    }
                    prop_assert!(segment_files(dir.path()) <= m.frames.len() as u64);
                }
            }
            check(&log, &m)?;
        }
    }

    /// Under a small budget: `drop_oldest` never exceeds it and accounts for
    /// every frame (kept, processed, or in a gap); `block` never drops a
    /// frame and refuses only with `Full`.
    #[test]
    fn budget_never_exceeded_and_nothing_disappears(
        lens in prop::collection::vec(0u16..3000, 1..80),
        detect_every in 1usize..10,
        drop_oldest in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1 << 30, WhenFull::Block));
        // The index (one 512 KiB sled segment from the second open on) plus
        // 48 KiB for segments.
        let base = open(dir.path(), 1 << 30, WhenFull::Block).stats().unwrap().used_bytes;
        let max = base + (48 << 10);
        let policy = if drop_oldest { WhenFull::DropOldest } else { WhenFull::Block };
        let log = open(dir.path(), max, policy);
        let mut appended = Vec::new();
        let mut processed = 0u64;
        for (i, len) in lens.iter().enumerate() {
            match log.append_frame(&frame(i as u64, 0, *len)) {
                Ok(a) => appended.push(a.seq),
                Err(LogError::Full { .. }) => prop_assert!(!drop_oldest, "drop_oldest never refuses"),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
            prop_assert!(log.used_bytes() <= max);
            prop_assert!(log.stats().unwrap().used_bytes <= max);
            if i % detect_every == 0 {
                let c = log.cursor(Cursor::Detect).unwrap();
                let got = log.read_frames(c, 3).unwrap();
                if let Some((last, _)) = got.last() {
                    processed += got.len() as u64;
                    let mut b = log.batch();
                    b.set_cursor(Cursor::Detect, last + 1);
                    log.apply(b).unwrap();
                }
            }
        }
        let gaps = log.read_gaps(0, u64::MAX, usize::MAX).unwrap();
        let dropped: u64 = gaps.iter().filter(|(_, g)| g.reason == GapReason::FrameDroppedForSpace).map(|(_, g)| g.records).sum();
        if !drop_oldest {
            prop_assert_eq!(dropped, 0);
        }
        let kept = log.stats().unwrap().areas[&Area::Frames].records;
        prop_assert_eq!(kept + processed + dropped, appended.len() as u64);
    }
}
