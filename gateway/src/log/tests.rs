//! Unit tests of the log facade (the power-cut, crash and model-based tests
//! are in `gateway/tests/integration/`).

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

fn opts(dir: &Path) -> LogOptions {
    let mut o = LogOptions::new(dir, "gw-test");
    o.index_reserve = 0;
    o
}

fn open(dir: &Path) -> DurableLog {
    DurableLog::open(opts(dir)).unwrap()
}

fn seg_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("segments")).unwrap().count()
}

#[test]
fn seq_survives_reopen_and_frame_ids_are_prefixed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        assert_eq!(log.append_frame(&frame("a", 10)).unwrap().seq, 0);
        assert_eq!(log.append_frame(&frame("a", 10)).unwrap().frame_id, "gw-test:1");
    }
    let log = open(dir.path());
    assert_eq!(log.append_frame(&frame("a", 10)).unwrap().seq, 2);
    assert_eq!(log.stats().unwrap().areas[&Area::Frames].records, 3);
    assert_eq!(log.read_frames(0, 10).unwrap().len(), 3);
}

#[test]
fn other_gateway_id_and_a_later_format_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let err = DurableLog::open(LogOptions::new(dir.path(), "other")).unwrap_err();
    assert!(matches!(err, LogError::GatewayIdMismatch { .. }), "{err}");
    let log = open(dir.path());
    log.append_frame(&frame("a", 10)).unwrap();
    log.inner.index.tree.insert(index::META_FORMAT, b"3").unwrap();
    drop(log);
    let err = DurableLog::open(opts(dir.path())).unwrap_err();
    assert!(matches!(err, LogError::NewerFormat { .. }), "{err}");
    assert!(err.to_string().contains("format 3, written by a later release"), "{err}");
}

#[test]
fn payloads_are_in_segments_not_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for _ in 0..20 {
        log.append_frame(&frame("a", 300_000)).unwrap();
    }
    log.flush_blocking().unwrap();
    let s = log.stats().unwrap();
    assert!(s.segment_bytes >= 20 * 300_000, "{s:?}");
    assert!(s.index_bytes < 2 << 20, "the index holds pointers only: {s:?}");
    assert_eq!(s.used_bytes, s.segment_bytes + s.index_bytes);
    assert_eq!(s.logical_bytes, s.areas[&Area::Frames].bytes);
    let got = log.read_frames(5, 1).unwrap();
    assert_eq!(got[0].0, 5);
    assert_eq!(got[0].1, frame("a", 300_000));
}

#[test]
fn stage_batch_moves_cursor_and_retains_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for _ in 0..5 {
        log.append_frame(&frame("a", 100)).unwrap();
    }
    let mut b = log.batch();
    b.put_blob(Area::Annotations, 0, b"{}").put_blob(Area::Annotations, 1, b"{}").set_cursor(Cursor::Detect, 2);
    log.apply(b).unwrap();
    let s = log.stats().unwrap();
    assert_eq!(s.areas[&Area::Frames].records, 3, "frames 0 and 1 released by the detect cursor");
    assert_eq!(s.areas[&Area::Annotations].records, 2);
    assert_eq!(s.cursors["detect"].position, 2);
    assert_eq!(s.cursors["detect"].backlog_records, 3);
    let mut back = log.batch();
    back.set_cursor(Cursor::Detect, 1);
    assert!(matches!(log.apply(back), Err(LogError::CursorRegression { .. })));
}

#[test]
fn segments_are_deleted_whole_once_nothing_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.segment_bytes = Some(250_000);
    let log = DurableLog::open(o).unwrap();
    for _ in 0..10 {
        log.append_frame(&frame("a", 100_000)).unwrap();
    }
    log.flush_blocking().unwrap();
    assert_eq!(seg_files(dir.path()), 5, "two frames per segment");
    // Frame 4 is sampled: its bytes are copied into the image lane.
    let mut b = log.batch();
    b.put_frame(Area::Images, 4, &frame("a", 100_000)).set_cursor(Cursor::Detect, 5);
    log.apply(b).unwrap();
    // Segments of frames 0-1 and 2-3 are gone; 4-5 holds frame 5 still.
    assert_eq!(seg_files(dir.path()), 4, "3 intake + 1 image segment");
    let mut b = log.batch();
    b.set_cursor(Cursor::Detect, 10);
    log.apply(b).unwrap();
    // The active intake segment stays (appends go on there); the image too.
    assert_eq!(seg_files(dir.path()), 2);
    assert_eq!(log.read_area_frame(Area::Images, 4).unwrap().unwrap().payload.len(), 100_000);
    let mut b = log.batch();
    b.set_cursor(Cursor::Replicate, 10);
    log.apply(b).unwrap();
    // The image lane (claim check) has not passed it yet.
    assert_eq!(log.read_area_frame(Area::Images, 4).unwrap().unwrap().payload.len(), 100_000);
    let mut b = log.batch();
    b.set_cursor(Cursor::ReplicateImages, 10);
    log.apply(b).unwrap();
    assert_eq!(log.stats().unwrap().logical_bytes, 0);
    assert_eq!(seg_files(dir.path()), 2, "active segments stay open for appends");
    drop(log);
    // On reopen the emptied active segments go too.
    let log = open(dir.path());
    assert_eq!(seg_files(dir.path()), 0);
    assert_eq!(log.append_frame(&frame("a", 1)).unwrap().seq, 10);
}

/// A budget just above what the empty log takes on disk.
fn budget_log(dir: &Path, extra: u64, when_full: WhenFull) -> DurableLog {
    drop(open(dir));
    // sled's file is one 512 KiB segment from the second open on.
    let base = open(dir).stats().unwrap().used_bytes;
    let mut o = opts(dir);
    o.max_bytes = base + extra;
    o.when_full = when_full;
    o.segment_bytes = Some(100_000);
    DurableLog::open(o).unwrap()
}

#[test]
fn block_refuses_without_side_effects_and_frees_sampled_images_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = budget_log(dir.path(), 250_000, WhenFull::Block);
    let f = frame("a", 90_000);
    log.append_frame(&f).unwrap();
    log.append_frame(&f).unwrap();
    // Keep frame 0 as a sampled image, as the detect stage would.
    let mut b = log.batch();
    b.put_frame(Area::Images, 0, &f).set_cursor(Cursor::Detect, 1);
    log.apply(b).unwrap();
    // Room is made by dropping the sampled image (a gap), not frame 1.
    let a = log.append_frame(&f).unwrap();
    assert_eq!(a.gaps.len(), 1, "{a:?}");
    assert_eq!(a.gaps[0].reason, GapReason::ImageDroppedForSpace);
    assert!(log.used_bytes() <= log.max_bytes());
    // Now only undetected frames remain: block.
    let before = log.stats().unwrap();
    let err = log.append_frame(&f).unwrap_err();
    assert!(matches!(err, LogError::Full { .. }) && err.is_transient(), "{err}");
    let after = log.stats().unwrap();
    assert_eq!(before.next_seq, after.next_seq);
    assert_eq!(before.areas, after.areas);
    assert!(after.used_bytes <= after.max_bytes, "{after:?}");
}

#[test]
fn drop_oldest_records_a_gap_for_dropped_frames_and_stays_on_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = budget_log(dir.path(), 500_000, WhenFull::DropOldest);
    for _ in 0..40 {
        log.append_frame(&frame("a", 45_000)).unwrap();
        log.flush_blocking().unwrap();
        let s = log.stats().unwrap();
        assert!(s.used_bytes <= s.max_bytes, "{s:?}");
        assert!(du(dir.path()) <= s.max_bytes, "files on disk over the budget");
    }
    let gaps = log.read_gaps(0, u64::MAX, 100).unwrap();
    let dropped: u64 = gaps.iter().map(|(_, g)| g.records).sum();
    let kept = log.stats().unwrap().areas[&Area::Frames].records;
    assert!(dropped > 0);
    assert_eq!(dropped + kept, 40, "every frame is either kept or in a gap");
    assert!(gaps.iter().all(|(_, g)| g.reason == GapReason::FrameDroppedForSpace));
}

/// Bytes of the log's files the budget covers (the space reserve file is
/// outside the budget by design, see `space.rs`).
fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name() == super::space::RESERVE_FILE {
            continue;
        }
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}

#[test]
fn too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = 1_000;
    let log = DurableLog::open(o).unwrap();
    assert!(matches!(log.append_frame(&frame("a", 2_000)), Err(LogError::TooLarge { .. })));
}

#[test]
fn damaged_segment_record_is_set_aside_and_reported_as_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for _ in 0..3 {
            log.append_frame(&frame("a", 50_000)).unwrap();
        }
        log.flush_blocking().unwrap();
    }
    // Damage frame 1's bytes behind the log's back.
    let seg = std::fs::read_dir(dir.path().join("segments")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 24 + (24 + 50_000 + 60) + 24 + 1_000;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let log = open(dir.path());
    let got: Vec<u64> = log.read_frames(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, vec![0, 2]);
    let s = log.stats().unwrap();
    assert_eq!(s.set_aside, 1);
    assert_eq!(s.areas[&Area::Frames].records, 2);
    let gaps = log.read_gaps(0, u64::MAX, 10).unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].1.from_seq, gaps[0].1.reason), (1, GapReason::Unreadable));
    assert!(gaps[0].1.detail.as_deref().unwrap_or("").contains("checksum"), "{:?}", gaps[0].1);
}

#[test]
fn missing_segment_and_damaged_index_value_become_gaps_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = opts(dir.path());
        o.segment_bytes = Some(100_000);
        let log = DurableLog::open(o).unwrap();
        for _ in 0..4 {
            log.append_frame(&frame("a", 60_000)).unwrap();
        }
        let mut b = log.batch();
        b.put_blob(Area::Annotations, 0, b"{\"x\":1}");
        log.apply(b).unwrap();
        log.flush_blocking().unwrap();
        // Damage the annotation's index value.
        let k = key(Area::Annotations.prefix(), 0);
        let mut v = log.inner.index.tree.get(k).unwrap().unwrap().to_vec();
        let n = v.len();
        v[n - 1] ^= 0xff;
        log.inner.index.tree.insert(k, v).unwrap();
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    std::fs::remove_file(&segs[1]).unwrap();
    let log = open(dir.path());
    let got: Vec<u64> = log.read_frames(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, vec![0, 2, 3]);
    assert!(log.read_blobs(Area::Annotations, 0, u64::MAX, 10).unwrap().is_empty());
    let gaps = log.read_gaps(0, u64::MAX, 10).unwrap();
    let what: Vec<(Area, u64)> = gaps.iter().map(|(_, g)| (g.area, g.from_seq)).collect();
    assert_eq!(what, vec![(Area::Frames, 1), (Area::Annotations, 0)]);
    assert!(gaps[0].1.detail.as_deref().unwrap_or("").contains("missing"));
}

#[test]
fn damaged_accounting_is_recounted_and_seq_never_reused_after_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for _ in 0..4 {
            log.append_frame(&frame("a", 50)).unwrap();
        }
        // Drain: every frame detected and released.
        let mut b = log.batch();
        b.set_cursor(Cursor::Detect, 4);
        log.apply(b).unwrap();
        log.inner.index.tree.insert(META_STATE, b"garbage".to_vec()).unwrap();
    }
    let log = open(dir.path());
    let s = log.stats().unwrap();
    assert_eq!(s.areas[&Area::Frames].records, 0);
    assert_eq!(s.next_seq, 4, "raised to the detect cursor, not to the keys left");
    assert_eq!(log.append_frame(&frame("a", 1)).unwrap().seq, 4);
}

#[tokio::test]
async fn reader_waits_for_durability_then_returns_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut r = log.frame_reader().unwrap();
    let w = log.clone();
    let task = tokio::spawn(async move { r.next_frames(10).await.unwrap() });
    tokio::task::yield_now().await;
    w.append_frame(&frame("cam", 3)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "a frame not yet flushed is not handed to a stage");
    w.flush().await.unwrap();
    let got = task.await.unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].1.camera, "cam");
    assert_eq!(got.upto, 1);
}

#[tokio::test]
async fn reader_reports_sequence_numbers_that_were_not_frames() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_frame(&frame("cam", 3)).unwrap();
    log.append_dead_letter(b"bad").unwrap();
    log.flush().await.unwrap();
    let mut r = log.frame_reader().unwrap();
    let b = r.next_frames(1).await.unwrap();
    assert_eq!((b.records.len(), b.upto), (1, 1));
    let b = r.next_frames(10).await.unwrap();
    assert_eq!((b.records.len(), b.upto), (0, 2), "the dead letter's seq is passed");
}

#[tokio::test]
async fn replicate_is_bounded_by_detect() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for _ in 0..3 {
        log.append_frame(&frame("cam", 3)).unwrap();
    }
    log.append_dead_letter(b"bad").unwrap();
    log.flush().await.unwrap();
    assert_eq!(log.bound(Cursor::Detect).unwrap(), 4);
    assert_eq!(log.bound(Cursor::Replicate).unwrap(), 0, "detect has not started");
    let mut b = log.batch();
    b.set_cursor(Cursor::Detect, 2);
    log.apply(b).unwrap();
    assert_eq!(log.bound(Cursor::Replicate).unwrap(), 2);
}

#[tokio::test]
async fn wait_for_space_wakes_when_a_cursor_frees_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = budget_log(dir.path(), 200_000, WhenFull::Block);
    log.append_frame(&frame("a", 90_000)).unwrap();
    log.append_frame(&frame("a", 90_000)).unwrap();
    let err = log.append_frame(&frame("a", 90_000)).unwrap_err();
    let LogError::Full { needed, .. } = err else { panic!("{err}") };
    let w = log.clone();
    let waiter = tokio::spawn(async move { w.wait_for_space(needed).await });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let mut b = log.batch();
    b.set_cursor(Cursor::Detect, 1);
    log.apply(b).unwrap();
    waiter.await.unwrap();
    assert!(log.append_frame(&frame("a", 90_000)).is_ok());
}

#[test]
fn a_fingerprinted_record_is_stored_once_across_reopen_and_forgotten_after_recent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let AppendOutcome::Stored(a) = log.append_frame_once(&frame("a", 10), 42, Dedup::Check).unwrap() else {
            panic!()
        };
        assert_eq!(log.append_frame_once(&frame("a", 10), 42, Dedup::Check).unwrap(), AppendOutcome::Duplicate(a.seq));
        // Not checked (a fresh publish without camera_seq): stored again.
        assert!(matches!(
            log.append_frame_once(&frame("a", 10), 42, Dedup::Remember).unwrap(),
            AppendOutcome::Stored(_)
        ));
        assert!(matches!(log.append_dead_letter_once(b"x", 43, Dedup::Check).unwrap(), AppendOutcome::Stored(_)));
        log.flush_blocking().unwrap();
    }
    let log = open(dir.path());
    // The newest record with that fingerprint (seq 1), after a restart.
    assert_eq!(log.append_frame_once(&frame("a", 10), 42, Dedup::Check).unwrap(), AppendOutcome::Duplicate(1));
    assert_eq!(log.append_dead_letter_once(b"x", 43, Dedup::Check).unwrap(), AppendOutcome::Duplicate(2));
    for i in 0..RECENT {
        log.append_frame_once(&frame("a", 1), 1000 + i, Dedup::Check).unwrap();
    }
    assert!(matches!(log.append_frame_once(&frame("a", 10), 42, Dedup::Check).unwrap(), AppendOutcome::Stored(_)));
    assert_eq!(log.inner.index.tree.scan_prefix([index::RECENT_PREFIX]).count() as u64, RECENT);
}

#[test]
fn a_torn_unacknowledged_tail_is_trimmed_at_open_with_its_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..2 {
            log.append_frame_once(&frame("a", 30_000), 100 + i, Dedup::Check).unwrap();
        }
        log.flush_blocking().unwrap();
        for i in 2..5 {
            log.append_frame_once(&frame("a", 30_000), 100 + i, Dedup::Check).unwrap();
        }
        log.append_dead_letter_once(b"bad", 105, Dedup::Check).unwrap();
    }
    // A power cut: the index kept the tail (sled wrote it in the
    // background) but the last flush covered seqs 0 and 1 only, and the
    // payload of seq 3 is cut short.
    {
        let index = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        index.tree.insert(META_DURABLE, &2u64.to_be_bytes()).unwrap();
        // And the fingerprint of a seq 6 whose record the crash did not
        // keep: removing it must not stop the torn tail from being trimmed.
        index.tree.insert(key(index::RECENT_PREFIX, 6), &106u64.to_be_bytes()).unwrap();
        index.flush_durable().unwrap();
    }
    let seg = std::fs::read_dir(dir.path().join("segments")).unwrap().next().unwrap().unwrap().path();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 30_000 - 100).unwrap();
    let log = open(dir.path());
    let got: Vec<u64> = log.read_frames(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, vec![0, 1, 2], "the readable prefix stays");
    assert_eq!(log.read_blobs(Area::DeadLetters, 0, u64::MAX, 10).unwrap().len(), 0);
    let gaps = log.read_gaps(0, u64::MAX, 10).unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].1.from_seq, gaps[0].1.to_seq, gaps[0].1.records), (3, 5, 3));
    assert_eq!(log.seen(102), Some(2));
    assert_eq!(log.seen(103), None, "a redelivery of seq 3 is stored again");
    assert_eq!(log.seen(105), None);
    assert_eq!(log.seen(106), None, "the orphan fingerprint is gone too");
    match log.append_frame_once(&frame("a", 10), 103, Dedup::Check).unwrap() {
        AppendOutcome::Stored(a) => assert_eq!(a.seq, 6),
        other => panic!("{other:?}"),
    }
}

/// kill -9 mid-append: sled kept a prefix of its writes that ends between
/// a frame's fingerprint and the frame itself. The broker redelivers the
/// frame (it was never acknowledged): it must be stored, not taken for a
/// duplicate of a record that does not exist. The frames before it keep
/// their fingerprints (their redeliveries stay duplicates).
#[test]
fn a_fingerprint_whose_record_a_crash_did_not_keep_is_forgotten_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.append_frame_once(&frame("a", 10), 200, Dedup::Check).unwrap();
        log.flush_blocking().unwrap();
        log.append_frame_once(&frame("a", 10), 201, Dedup::Check).unwrap();
    }
    {
        // The crash: seq 2's fingerprint reached the index, its record not.
        let index = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        assert!(index.tree.get(key(Area::Frames.prefix(), 2)).unwrap().is_none());
        index.tree.insert(key(index::RECENT_PREFIX, 2), &202u64.to_be_bytes()).unwrap();
        index.flush_durable().unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.seen(202), None, "the fingerprint without its record is gone");
    assert_eq!(log.seen(200), Some(0));
    assert_eq!(log.seen(201), Some(1), "an unflushed record the crash kept keeps its fingerprint");
    match log.append_frame_once(&frame("a", 10), 202, Dedup::Check).unwrap() {
        AppendOutcome::Stored(a) => assert_eq!(a.seq, 2),
        other => panic!("the redelivery was taken for a duplicate: {other:?}"),
    }
    assert_eq!(log.append_frame_once(&frame("a", 10), 201, Dedup::Check).unwrap(), AppendOutcome::Duplicate(1));
    // What the crash kept above the old mark is durable now, before any
    // reader could consume it: the mark on disk is past it.
    let mark = log.inner.index.tree.get(META_DURABLE).unwrap().as_deref().and_then(index::decode_u64);
    assert_eq!(mark, Some(2), "the mark moved past seq 1 at open");
    drop(log);
    // And across a clean reopen everything stays as it is.
    let log = open(dir.path());
    assert_eq!((log.seen(200), log.seen(201), log.seen(202)), (Some(0), Some(1), Some(2)));
}

/// A snapshot sled did not finish writing (ENOSPC, kill -9 or a power cut
/// while it wrote it) would stop sled from opening; the log removes it.
#[test]
fn an_unfinished_sled_snapshot_does_not_stop_the_log_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_frame(&frame("a", 10)).unwrap();
    log.flush_blocking().unwrap();
    drop(log);
    let torn = dir.path().join("index").join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&torn, b"").unwrap();
    // sled alone refuses it: the case is real.
    let refused = sled::Config::new().path(dir.path().join("index")).open();
    assert!(refused.is_err(), "sled opened a log with a torn snapshot");
    drop(refused);
    let log = open(dir.path());
    assert_eq!(log.read_frames(0, 10).unwrap().len(), 1);
    assert!(!torn.exists());
}

#[test]
fn retention_resumes_where_it_stopped_and_still_finds_a_record_written_below() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let n = RETAIN_PER_BATCH as u64 + 1000;
    let mut b = log.batch();
    for seq in 0..n {
        b.put_blob(Area::Annotations, seq, b"{}");
    }
    log.apply(b).unwrap();
    let annotations = |log: &DurableLog| log.stats().unwrap().areas[&Area::Annotations].records;
    // More than one batch may delete: the rest waits for the next one.
    let mut b = log.batch();
    b.set_cursor(Cursor::Replicate, n - 10);
    log.apply(b).unwrap();
    assert_eq!(annotations(&log), 10 + 990, "one batch deletes RETAIN_PER_BATCH records");
    assert_eq!(log.retain().unwrap(), 990, "retain() deletes the rest, from where the batch stopped");
    assert_eq!(annotations(&log), 10);
    // A record written below where retention has reached is still deleted
    // once its consumer is past it.
    let mut b = log.batch();
    b.put_blob(Area::Annotations, 3, b"{}");
    log.apply(b).unwrap();
    assert_eq!(annotations(&log), 11);
    let mut b = log.batch();
    b.set_cursor(Cursor::Replicate, n - 5);
    log.apply(b).unwrap();
    let left: Vec<u64> =
        log.read_blobs(Area::Annotations, 0, n, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, (n - 5..n).collect::<Vec<_>>());
    // After a reopen retention starts from the beginning again.
    drop(log);
    let log = open(dir.path());
    let mut b = log.batch();
    b.put_blob(Area::Annotations, 1, b"{}").set_cursor(Cursor::Replicate, n);
    log.apply(b).unwrap();
    assert_eq!(annotations(&log), 0);
}
