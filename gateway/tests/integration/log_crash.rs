//! Crash test of the durable log: a child process appends and flushes in a
//! loop and reports every flushed sequence number on stdout; the parent
//! `kill -9`s it at a random moment, reopens the log and checks that every
//! record reported flushed is there, in order and intact. Repeated over
//! many rounds on the same log, so recovery after recovery is tested too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway::log::{DurableLog, LogOptions};
use gateway::records::FrameRecord;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ROUNDS: u64 = 15;

fn opts(dir: &Path) -> LogOptions {
    let mut o = LogOptions::new(dir, "crash-test");
    o.max_bytes = 8 << 30;
    o
}

/// The record every seq must hold: derived from the seq alone, so the
/// parent can check content without any shared state.
fn expected(seq: u64) -> FrameRecord {
    let len = 100 + (seq.wrapping_mul(7919) % 20_000) as usize;
    FrameRecord {
        camera: format!("cam-{}", seq % 3),
        content_type: "image/jpeg".into(),
        received_at_ms: seq,
        captured_at_ms: (seq % 2 == 0).then_some(seq * 10),
        camera_seq: Some(seq / 3),
        payload: (0..len).map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64)) as u8).collect(),
    }
}

/// The child: runs only when the parent starts this binary with CRASH_DIR.
#[test]
#[ignore = "child process of kill_9_loses_no_flushed_record"]
fn crash_child() {
    let dir = std::env::var("CRASH_DIR").expect("run by kill_9_loses_no_flushed_record");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let log = DurableLog::open(opts(Path::new(&dir))).unwrap();
        let mut seq = log.stats().unwrap().next_seq;
        loop {
            let n = 1 + seq % 7;
            let mut last = seq;
            for _ in 0..n {
                let a = log.append_frame(&expected(seq)).unwrap();
                assert_eq!(a.seq, seq);
                last = seq;
                seq += 1;
            }
            log.flush().await.unwrap();
            println!("FLUSHED {last}");
        }
    });
}

#[test]
fn kill_9_loses_no_flushed_record() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut max_reported: Option<u64> = None;
    let mut checked_total = 0u64;
    let mut unreported_found = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "log_crash::crash_child", "--nocapture", "--test-threads=1"])
            .env("CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("FLUSHED ") {
                    let _ = tx.send(n.trim().parse::<u64>().unwrap());
                }
            }
        });
        // Wait for the first flush of this round, then kill at a pseudo-random moment.
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("child never flushed");
        max_reported = Some(max_reported.map_or(first, |m| m.max(first)));
        let delay = 20 + (round * 7_919 % 400);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for n in rx.try_iter() {
            max_reported = Some(max_reported.map_or(n, |m| m.max(n)));
        }
        let max = max_reported.unwrap();

        let log = DurableLog::open(opts(dir.path())).unwrap();
        let frames = log.read_frames(0, usize::MAX).unwrap();
        assert!(frames.len() as u64 > max, "round {round}: {} records on disk, {max} reported flushed", frames.len());
        for (i, (seq, f)) in frames.iter().enumerate() {
            assert_eq!(*seq, i as u64, "round {round}: records out of order or missing");
            assert_eq!(*f, expected(*seq), "round {round}: record {seq} damaged");
        }
        let stats = log.stats().unwrap();
        assert_eq!(stats.set_aside, 0, "round {round}: unreadable records after a crash");
        assert_eq!(
            stats.areas[&gateway::records::Area::Frames].records,
            frames.len() as u64,
            "accounting exact after crash"
        );
        assert_eq!(stats.next_seq, frames.len() as u64, "sequence continues after the last record");
        let logical: u64 = frames.iter().map(|(_, f)| f.encode().len() as u64).sum();
        assert_eq!(stats.areas[&gateway::records::Area::Frames].bytes, logical, "byte accounting exact after crash");
        checked_total += max + 1;
        unreported_found = frames.len() as u64 - (max + 1);
    }
    println!(
        "crash test: {ROUNDS} kills, {} records reported flushed, {checked_total} record checks, \
         lost 0, {unreported_found} unreported records also intact in the last round",
        max_reported.unwrap() + 1
    );
}
