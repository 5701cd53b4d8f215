//! End-to-end tests of MQTT intake against a real mosquitto (Debian's),
//! started on a free loopback port with its own config, and the real
//! `vision-gateway` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{exe, fixtures, frames, long_camera, Gateway, Mosquitto, Settings};
use gateway::log::Cursor;
use gateway::records::DeadLetter;
use gateway::records::{Area, FrameRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use testkit::replay::{load_cameras, replay};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Camera sequence numbers in log order, per camera.
fn per_camera(frames: &[(u64, FrameRecord)]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, f) in frames {
        m.entry(f.camera.clone()).or_default().push(f.camera_seq.expect("replay sends camera_seq"));
    }
    m
}

#[test]
fn replay_stores_every_frame_in_order_per_camera() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::new(dir.path(), mq.port);
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();

    let cameras = load_cameras(&fixtures().join("cameras")).unwrap();
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();
    let r = rt().block_on(replay(&cameras, &mq.addr(), Some(50.0), false)).unwrap();
    assert_eq!(r.acked, total as u64);
    gw.wait_for("every frame stored", Duration::from_secs(60), |m| {
        m.get("vision_gateway_frames_stored_total").copied().unwrap_or(0.0) >= total as f64
    })
    .unwrap();
    assert_eq!(gw.metric("vision_gateway_frames_acked_total"), total as f64);
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "SIGTERM exits 0:\n{log}");

    let log = s.open_log();
    let stored = frames(&log);
    assert_eq!(stored.len(), total, "exactly one record per frame, no duplicates without a crash");
    for cam in &cameras {
        let mine: Vec<&FrameRecord> = stored.iter().map(|(_, f)| f).filter(|f| f.camera == cam.id).collect();
        assert_eq!(mine.len(), cam.frames.len(), "camera {}", cam.id);
        for (i, f) in mine.iter().enumerate() {
            assert_eq!(f.camera_seq, Some(i as u64), "camera {} out of order", cam.id);
            assert_eq!(f.payload, file_bytes(&cam.frames[i]), "camera {} frame {i} bytes differ", cam.id);
            let png = cam.frames[i].extension().unwrap() == "png";
            assert_eq!(f.content_type, if png { "image/png" } else { "image/jpeg" });
            assert!(f.captured_at_ms.is_some());
        }
    }
    assert_eq!(log.area_stats(Area::DeadLetters).records, 0);
}

#[test]
fn kill_9_loses_nothing_and_the_session_keeps_frames_while_down() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::new(dir.path(), mq.port);
    let cfg = s.write(&dir.path().join("g.toml"));
    let n = 150;
    let cam_dir = long_camera(dir.path(), "kill-cam", "line1-cam1", n, 60.0);
    let cameras = load_cameras(&cam_dir).unwrap();

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let rt = rt();
    let publisher = {
        let addr = mq.addr();
        let cameras = cameras.clone();
        rt.spawn(async move { replay(&cameras, &addr, None, false).await })
    };
    gw.wait_for("some frames stored", Duration::from_secs(30), |m| {
        m.get("vision_gateway_frames_stored_total").copied().unwrap_or(0.0) >= 25.0
    })
    .unwrap();
    gw.kill9().unwrap();

    // What the killed gateway left: intact, in order, and not everything.
    let before: BTreeSet<u64> = {
        let log = s.open_log();
        let f = frames(&log);
        let seqs = &per_camera(&f)["kill-cam"];
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept before the kill: {seqs:?}");
        for (_, fr) in &f {
            assert_eq!(fr.payload, file_bytes(&cameras[0].frames[fr.camera_seq.unwrap() as usize]));
        }
        seqs.iter().copied().collect()
    };
    assert!(before.len() < n, "the kill came mid-stream ({} of {n} stored)", before.len());

    // The camera keeps publishing while the gateway is down; the broker
    // holds the frames in the gateway's persistent session.
    let r = rt.block_on(publisher).unwrap().unwrap();
    assert_eq!(r.acked, n as u64);

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    gw.wait_for("every frame in the log", Duration::from_secs(60), |m| {
        m.get("vision_gateway_log_records{area=\"frames\"}").copied().unwrap_or(0.0) >= n as f64
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");

    let log = s.open_log();
    let f = frames(&log);
    let seqs = &per_camera(&f)["kill-cam"];
    let all: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(all, (0..n as u64).collect::<BTreeSet<_>>(), "every published frame is in the log");
    let after: BTreeSet<u64> = all.difference(&before).copied().collect();
    assert!(!after.is_empty(), "frames sent while the gateway was down arrived after the restart");
    // Camera order is kept.
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "order per camera: {firsts:?}");
    // Redeliveries of frames stored but not acknowledged at the kill are
    // recognised (replay sends camera_seq) and not stored twice.
    let dups = seqs.len() - all.len();
    assert_eq!(dups, 0, "a redelivered frame stored twice");
    println!(
        "kill -9 test: {} frames before the kill, {} after restart, {dups} stored twice",
        before.len(),
        after.len()
    );
}

#[test]
fn bad_frames_are_quarantined_by_reason_and_good_ones_stored() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::new(dir.path(), mq.port);
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();

    let bad = fixtures().join("bad");
    let expected: serde_json::Value = serde_json::from_slice(&file_bytes(&bad.join("expected.json"))).unwrap();
    assert_eq!(expected["max_frame_bytes"], "1MiB", "the harness config matches the fixture");
    // Camera ids that are not valid ids: the topic matches the filter but
    // names no camera (`..` would become a folder name downstream).
    let rt = rt();
    rt.block_on(replay(&load_cameras(&bad).unwrap(), &mq.addr(), None, false)).unwrap();
    for (i, id) in ["not a camera", "..", "."].iter().enumerate() {
        let odd = dir.path().join(format!("odd{i}"));
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join("camera.toml"), format!("topic = \"cameras/{id}/frames\"\nfps = 10.0\n")).unwrap();
        std::fs::copy(bad.join("00-good.jpg"), odd.join("0.jpg")).unwrap();
        rt.block_on(replay(&load_cameras(&odd).unwrap(), &mq.addr(), None, false)).unwrap();
    }

    let quarantined = expected["quarantined"].as_object().unwrap();
    let good = expected["good"].as_array().unwrap();
    gw.wait_for("all frames handled", Duration::from_secs(30), |m| {
        m.get("vision_gateway_frames_acked_total").copied().unwrap_or(0.0)
            >= (quarantined.len() + good.len() + 3) as f64
    })
    .unwrap();
    let m = gw.metrics();
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for reason in quarantined.values() {
        *want.entry(reason.as_str().unwrap()).or_default() += 1.0;
    }
    *want.entry("bad_camera_id").or_default() += 3.0;
    for (reason, n) in &want {
        assert_eq!(m[&format!("vision_gateway_frames_quarantined_total{{reason=\"{reason}\"}}")], *n, "{reason}");
    }
    assert_eq!(m["vision_gateway_frames_stored_total"], good.len() as f64);
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    assert!(glog.contains("frame quarantined"), "quarantine is logged");

    let log = s.open_log();
    let stored = frames(&log);
    let names: Vec<&str> = good.iter().map(|g| g.as_str().unwrap()).collect();
    assert_eq!(stored.len(), names.len());
    for ((_, f), name) in stored.iter().zip(&names) {
        assert_eq!(f.payload, file_bytes(&bad.join(name)), "{name}");
        assert_eq!(f.camera, "bad-cam");
    }
    let dead = log.read_blobs(Area::DeadLetters, 0, u64::MAX, 100).unwrap();
    let mut reasons: Vec<String> = Vec::new();
    for (_, b) in &dead {
        let (d, payload) = DeadLetter::decode(b).unwrap();
        if d.payload_kept {
            assert_eq!(d.size as usize, payload.len(), "kept payloads are whole");
        } else {
            assert!(payload.is_empty());
        }
        reasons.push(d.reason.name().to_owned());
    }
    let want_order: Vec<String> = {
        let mut v: Vec<(&String, &serde_json::Value)> = quarantined.iter().collect();
        v.sort_by_key(|(k, _)| k.as_str());
        let mut v: Vec<String> = v.into_iter().map(|(_, r)| r.as_str().unwrap().to_owned()).collect();
        v.extend(["bad_camera_id".to_owned(), "bad_camera_id".to_owned(), "bad_camera_id".to_owned()]);
        v
    };
    assert_eq!(reasons, want_order, "dead letters in arrival order, with their reasons");
    // Frames and dead letters share the sequence: every number is accounted for.
    let mut all: Vec<u64> = stored.iter().map(|(s, _)| *s).chain(dead.iter().map(|(s, _)| *s)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..all.len() as u64).collect::<Vec<_>>());
}

/// In-process: the intake stage against real mosquitto with a log whose
/// budget is tiny. Intake must stall (no acks, nothing lost) and resume by
/// itself when a consumer frees space.
#[test]
fn full_log_blocks_intake_without_loss_and_it_resumes_when_space_frees() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    // The smallest budget: about 2.5 MiB for frames once the index (512 KiB)
    // and its reserve (1 MiB) are counted; the fixtures and a camera of
    // large frames are twice that.
    s.max_bytes = "4MiB";
    s.max_frame_bytes = "256KiB";
    let config =
        gateway::config::Config::parse(Path::new("test.toml"), &s.toml(), &gateway::config::ProcessEnv).unwrap();
    let log = gateway::open_log(&config).unwrap();
    let mut cameras = load_cameras(&fixtures().join("cameras")).unwrap();
    cameras.extend(load_cameras(&crate::harness::noise_camera(dir.path(), "big-cam", 4, 200_000, 5)).unwrap());
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();

    rt().block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let intake = gateway::intake::Intake::new(config.mqtt.clone(), log.clone());
        let stats = intake.stats();
        let task = tokio::spawn(intake.run(stop.clone()));
        while !stats.subscribed.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replay(&cameras, &mq.addr(), Some(0.0), false).await.unwrap();

        // Stalled: blocked, under budget, fewer stored than sent, and no
        // frame acknowledged that is not stored.
        while !stats.blocked.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored_while_blocked = stats.stored.load(std::sync::atomic::Ordering::Relaxed);
        assert!(stored_while_blocked < total as u64, "{stored_while_blocked} of {total}");
        assert!(log.used_bytes() <= log.max_bytes());
        assert!(stats.acked.load(std::sync::atomic::Ordering::Relaxed) <= stored_while_blocked);

        // A consumer frees space by moving the detect cursor; intake
        // resumes by itself and everything arrives.
        let mut reader = log.frame_reader().unwrap();
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut unique = BTreeSet::new();
        while unique.len() < total {
            let batch = tokio::time::timeout(Duration::from_secs(60), reader.next_frames(8))
                .await
                .expect("intake resumed and delivered the rest")
                .unwrap();
            for (_, f) in &batch.records {
                got.entry(f.camera.clone()).or_default().push(f.camera_seq.unwrap());
                unique.insert((f.camera.clone(), f.camera_seq.unwrap()));
            }
            let mut b = log.batch();
            b.set_cursor(Cursor::Detect, batch.upto);
            log.apply(b).unwrap();
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        for cam in &cameras {
            let seqs = &got[&cam.id];
            assert_eq!(seqs, &(0..cam.frames.len() as u64).collect::<Vec<_>>(), "camera {}: all, once, in order", cam.id);
        }
        assert_eq!(log.counts().gaps_written, 0, "block never drops");
        println!("budget test: {stored_while_blocked} of {total} frames stored before intake blocked; all {total} after space freed");
    });
}
