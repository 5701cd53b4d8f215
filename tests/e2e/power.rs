//! Power-cut tests: the real `vision-gateway` binary with its log on LazyFS,
//! real mosquitto, and SIGSTOP + `lazyfs::clear-cache` + `kill -9` as the
//! power cut (the process stops where it is, every write that was not
//! fsynced is gone, as after a real one; a `kill -9` alone cannot show this
//! because the page cache survives it).
//!
//! Needs root and /dev/fuse; without them each test prints why and skips.
//! `POWER_SEED` replays a schedule of the random-cut test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{exe, noise_camera, Gateway, LazyFs, Mosquitto, Settings};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::replay::{load_cameras, replay, Camera};

fn skipped() -> bool {
    !LazyFs::available("SKIPPED (power-cut test)")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn settings(work: &Path, fs: &LazyFs, mq: &Mosquitto) -> Settings {
    let mut s = Settings::new(work, mq.port);
    s.log_dir = fs.mnt.join("log");
    s.max_bytes = "4GiB";
    s.max_frame_bytes = "16MiB";
    s
}

/// Every frame of `cameras`, by (camera, index), with its bytes.
fn expected(cameras: &[Camera]) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut m = BTreeMap::new();
    for c in cameras {
        for (i, p) in c.frames.iter().enumerate() {
            m.insert((c.id.clone(), i as u64), std::fs::read(p).unwrap());
        }
    }
    m
}

/// Opens the log as a restart would (recovery included) and returns how
/// many of `want` are missing or differ, and the records found.
fn missing(s: &Settings, want: &BTreeMap<(String, u64), Vec<u8>>, verbose: bool) -> (usize, usize) {
    let log = s.open_log();
    let mut found: BTreeMap<(String, u64), bool> = BTreeMap::new();
    let frames = crate::harness::frames(&log);
    for (_, f) in &frames {
        let k = (f.camera.clone(), f.camera_seq.unwrap_or(u64::MAX));
        if let Some(bytes) = want.get(&k) {
            let same = *bytes == f.payload;
            let e = found.entry(k).or_insert(false);
            *e |= same;
        }
    }
    let gone: Vec<_> = want.keys().filter(|k| !found.get(*k).copied().unwrap_or(false)).collect();
    if verbose && !gone.is_empty() {
        let c = log.counts();
        println!(
            "missing {gone:?}; gaps {:?}; dead letters {}; set aside {}",
            log.read_gaps(0, u64::MAX, 100).unwrap(),
            c.areas[3].1.records,
            c.set_aside
        );
    }
    (gone.len(), frames.len())
}

#[test]
fn power_cut_right_after_the_pubacks_loses_no_acknowledged_frame() {
    if skipped() {
        return;
    }
    let fs = LazyFs::mount();
    let mq = Mosquitto::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = settings(work.path(), &fs, &mq);
    let cfg = s.write(&work.path().join("g.toml"));
    let rt = rt();
    let mut want = BTreeMap::new();
    let mut rows = Vec::new();
    let t0 = Instant::now();
    for (bytes, per_cycle, cycles) in [(40_000usize, 16usize, 7usize), (600_000, 8, 7), (6_000_000, 2, 7)] {
        let mut lost_here = 0;
        let mut frame_bytes = 0;
        for k in 0..cycles {
            let cam = format!("cut{bytes}-{k}");
            let d = noise_camera(work.path(), &cam, per_cycle, bytes, (bytes + k) as u64);
            let cameras = load_cameras(&d).unwrap();
            frame_bytes =
                cameras[0].frames.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>() / per_cycle as u64;
            let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
            // What start-up wrote reaches the disk, as writeback would.
            fs.checkpoint();
            let r = rt.block_on(replay(&cameras, &mq.addr(), Some(0.0), false)).unwrap();
            assert_eq!(r.acked, per_cycle as u64);
            gw.wait_for("the gateway acknowledged every frame", Duration::from_secs(120), |m| {
                m.get("vision_gateway_frames_acked_total").copied().unwrap_or(0.0) >= per_cycle as f64
            })
            .unwrap();
            // The power cut, right after the last PUBACK.
            gw.freeze().unwrap();
            fs.clear_cache();
            gw.kill9().unwrap();
            want.extend(expected(&cameras));
            let (lost, _) = missing(&s, &want, true);
            lost_here += lost;
            assert_eq!(lost, 0, "{lost} acknowledged frames lost after power cut {k} ({bytes}-byte frames)");
        }
        rows.push((frame_bytes, cycles, cycles * per_cycle, lost_here));
    }
    // The real binary starts on the recovered log.
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "{log}");
    println!("power cut right after the PUBACKs (SIGSTOP, LazyFS clear-cache, kill -9), {:.0?} in all:", t0.elapsed());
    for (b, c, n, lost) in &rows {
        println!("  frames of {b:>8} bytes: {c} cuts, {n} acknowledged frames, lost {lost}");
    }
    let (_, total) = missing(&s, &want, true);
    println!("  log after the last restart: {total} frames, {} expected, byte-identical", want.len());
}

#[test]
fn power_cuts_at_random_moments_under_load_lose_nothing() {
    if skipped() {
        return;
    }
    let seed: u64 = std::env::var("POWER_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261122);
    println!("POWER_SEED={seed}");
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let fs = LazyFs::mount();
    let mq = Mosquitto::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = settings(work.path(), &fs, &mq);
    let cfg = s.write(&work.path().join("g.toml"));
    let mut dirs = Vec::new();
    for (cam, n, bytes, fps) in [("small", 150, 40_000, 10.0), ("mid", 60, 200_000, 4.0), ("big", 24, 1_500_000, 1.6)] {
        noise_camera(work.path(), cam, n, bytes, seed ^ bytes as u64);
        // The recorded rate of this camera.
        dirs.push(crate::harness::camera_folder(work.path(), cam, fps));
    }
    let cameras: Vec<Camera> = dirs.iter().flat_map(|d| load_cameras(d).unwrap()).collect();
    let want = expected(&cameras);
    let addr = mq.addr();
    // The gateway's session exists before the cameras start.
    let mut gw = Some(Gateway::start(exe(), &cfg, s.http_port).unwrap());
    let publisher = {
        let cameras = cameras.clone();
        std::thread::spawn(move || rt().block_on(replay(&cameras, &addr, None, false)).unwrap())
    };
    let mut cuts = 0;
    let mut opens = Vec::new();
    while !publisher.is_finished() {
        let gw = gw.take().unwrap_or_else(|| Gateway::start(exe(), &cfg, s.http_port).unwrap());
        std::thread::sleep(Duration::from_millis(200 + rand(2500)));
        gw.freeze().unwrap();
        fs.clear_cache();
        gw.kill9().unwrap();
        cuts += 1;
        // The log opens after every cut.
        let (_, records) = missing(&s, &want, false);
        opens.push(records);
    }
    drop(gw);
    let report = publisher.join().unwrap();
    assert_eq!(report.acked, want.len() as u64);
    // Frames the gateway had not acknowledged come back from the broker's
    // session; give them time to arrive.
    let mut lost = usize::MAX;
    for _ in 0..10 {
        let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let (ok, log) = gw.terminate().unwrap();
        assert!(ok, "{log}");
        let (m, _) = missing(&s, &want, false);
        lost = m;
        if lost == 0 {
            break;
        }
    }
    let (_, records) = missing(&s, &want, true);
    println!(
        "power cuts at random moments under load (seed {seed}): {cuts} cuts, {} frames published, {records} records in the log \
         ({} duplicates from redelivery), lost {lost}; frames in the log after each cut: {opens:?}",
        want.len(),
        records.saturating_sub(want.len())
    );
    assert!(cuts >= 3, "the schedule cut the power {cuts} times");
    assert_eq!(lost, 0, "frames lost (seed {seed})");
}
