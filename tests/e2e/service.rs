//! End-to-end: the gateway as systemd runs it. The test plays the service
//! manager's side of the notify protocol (a datagram socket in
//! `NOTIFY_SOCKET`, a watchdog in `WATCHDOG_USEC`), streams frames through
//! the bundled model, stops the service with SIGTERM in the middle of the
//! stream, and restarts it: nothing is lost or annotated twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{annotations, exe, long_camera, repo, Gateway, Mosquitto, Settings, TOPICS};
use gateway::records::Area;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::replay::{load_cameras, replay};

/// `TimeoutStopSec=` of the shipped unit.
fn unit_stop_timeout() -> Duration {
    let unit = std::fs::read_to_string(repo().join("systemd/vision-gateway.service")).unwrap();
    let v = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).expect("the unit sets TimeoutStopSec");
    Duration::from_secs(v.trim().parse().unwrap())
}

/// Datagrams received on the notify socket, in order.
fn listen(sock: UnixDatagram) -> Arc<Mutex<Vec<String>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            g.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    got
}

fn count(got: &Arc<Mutex<Vec<String>>>, what: &str) -> usize {
    got.lock().unwrap().iter().filter(|m| m.lines().any(|l| l == what)).count()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn notify_watchdog_and_sigterm_mid_stream_lose_nothing() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    let cfg = s.write(&dir.path().join("g.toml"));
    let sock_path = dir.path().join("notify.sock");
    let got = listen(UnixDatagram::bind(&sock_path).unwrap());
    let env = [("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")];

    let gw = Gateway::start_env(exe(), &cfg, s.http_port, &env).unwrap();
    wait_until("READY=1", Duration::from_secs(10), || count(&got, "READY=1") == 1);
    let first_ready = got.lock().unwrap().iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        got.lock().unwrap()[..first_ready].iter().all(|m| !m.contains("WATCHDOG=1")),
        "no watchdog ping before ready"
    );
    // Idle and healthy: pings every half second or so.
    wait_until("watchdog pings while idle", Duration::from_secs(10), || count(&got, "WATCHDOG=1") >= 3);
    assert!(got.lock().unwrap().iter().any(|m| m.starts_with("STATUS=") && m.contains("mqtt up")));

    // A stream the model needs several seconds for; stop in its middle.
    let n = 60;
    let cams = load_cameras(&long_camera(dir.path(), "svc-cam", "line1-cam1", n, 30.0)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let r = rt.block_on(replay(&cams, &mq.addr(), None, false)).unwrap();
    assert_eq!(r.acked, n as u64);
    gw.wait_for("a few frames annotated", Duration::from_secs(120), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= 5.0
    })
    .unwrap();
    let pings_busy = count(&got, "WATCHDOG=1");
    std::thread::sleep(Duration::from_secs(2));
    assert!(count(&got, "WATCHDOG=1") > pings_busy, "pings go on while the model makes progress");
    let annotated_before = gw.metric("vision_gateway_frames_annotated_total") as usize;
    assert!(annotated_before < n, "the stop must land mid-stream");

    let (ok, log, took) = gw.terminate_timed().unwrap();
    assert!(ok, "SIGTERM exits 0:\n{log}");
    let limit = unit_stop_timeout();
    assert!(took < limit, "stopped in {took:?}, beyond the unit's TimeoutStopSec {limit:?}:\n{log}");
    assert!(count(&got, "STOPPING=1") >= 1, "STOPPING=1 sent");
    assert!(log.contains("log flushed; stopped"), "{log}");
    println!("SIGTERM with {annotated_before}/{n} frames annotated: exit 0 in {:.2} s", took.as_secs_f64());

    // Restart: the rest is annotated; every frame exactly once, in order.
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    gw.wait_for("every frame stored and annotated after the restart", Duration::from_secs(180), |m| {
        m.get("vision_gateway_log_next_seq").copied().unwrap_or(0.0) >= n as f64
            && m.get("vision_gateway_backlog_records{stage=\"detect\"}").copied() == Some(0.0)
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let log = s.open_log();
    let anns = annotations(&log);
    let seqs: Vec<u64> = anns.iter().map(|a| a.camera_seq.unwrap()).collect();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>(), "each frame annotated once, in order");
    assert_eq!(log.area_stats(Area::Frames).records, 0);
}

#[test]
fn a_replicate_stage_failing_for_good_stops_the_process_non_zero() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::new(dir.path(), mq.port);
    let cfg = s.write(&dir.path().join("g.toml"));
    let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("VISION_GATEWAY_FAULTS", "replicate_fail")
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the gateway kept running with a dead replicate stage");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!status.success(), "exit status {status}: systemd must see a failure to restart the service\n{log}");
    assert!(log.contains("replicate stage failed for good"), "{log}");
    println!("replicate failing for good: exit {status} after {:.1?}", t0.elapsed());
}

#[test]
fn a_panicking_model_run_becomes_an_error_annotation_and_the_rest_goes_on() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    let gw = Gateway::start_env(
        exe(),
        &s.write(&dir.path().join("g.toml")),
        s.http_port,
        &[("VISION_GATEWAY_FAULTS", "panic_camera=camP")],
    )
    .unwrap();
    let pid = gw.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for (cam, n) in [("camA", 2), ("camP", 1), ("camB", 2)] {
        let cameras = load_cameras(&long_camera(dir.path(), cam, "line1-cam1", n, 100.0)).unwrap();
        rt.block_on(replay(&cameras, &mq.addr(), Some(0.0), false)).unwrap();
    }
    gw.wait_for("5 frames annotated", Duration::from_secs(120), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= 5.0
    })
    .unwrap();
    assert_eq!(gw.pid(), pid);
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "the process survived the panic and stops cleanly:\n{log}");
    assert!(log.contains("model run panicked"), "{log}");
    let anns = annotations(&s.open_log());
    assert_eq!(anns.len(), 5);
    for a in &anns {
        if a.camera == "camP" {
            let e = a.annotation.error.as_deref().unwrap_or("");
            assert!(e.contains("model run panicked"), "{e}");
        } else {
            assert_eq!(a.annotation.error, None, "{}: frames after the panic are read by the reloaded model", a.camera);
            assert!(!a.annotation.items.is_empty(), "{} read nothing", a.camera);
        }
    }
    println!("panicking model run: 1 error annotation, 4 frames read before and after it by the same process");
}

/// The disk-full tests need a small file system of their own (a tmpfs,
/// mounted as root); elsewhere they say why and do not run.
fn small_fs(mib: u64) -> Option<crate::harness::TmpFs> {
    match crate::harness::TmpFs::mount(mib) {
        Ok(fs) => Some(fs),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("CI must run the disk-full tests: {why}"),
    }
}

fn numbered(camera: &str, range: std::ops::Range<u64>, side: u32) -> Vec<(String, u64, Vec<u8>)> {
    range.map(|i| (camera.to_owned(), i, crate::harness::small_jpeg(side, side, i))).collect()
}

/// Every `(camera, camera_seq)` in Kafka's annotations, with how many
/// frame ids each got.
fn upstream_ids(
    t: &crate::harness::Tansu,
) -> std::collections::BTreeMap<(String, u64), std::collections::BTreeSet<String>> {
    use rdkafka::Message;
    let mut ids: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> = Default::default();
    for m in t.consume_to_end("vision.annotations") {
        let a: gateway::records::FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
        ids.entry((a.camera.clone(), a.camera_seq.unwrap())).or_default().insert(a.frame_id);
    }
    ids
}

/// Another file fills the log's file system while frames arrive, then goes
/// away: same process throughout, `/healthz` answering and `/readyz` saying
/// why, and every acknowledged frame upstream exactly once.
#[test]
fn a_disk_filled_by_another_file_pauses_intake_and_it_resumes_when_freed() {
    let Some(fs) = small_fs(48) else { return };
    let mq = Mosquitto::start().unwrap();
    let tansu = crate::harness::Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.log_dir = fs.path().join("log");
    s.max_bytes = "40MiB";
    s.when_disabled = "forward";
    s.kafka = tansu.brokers();
    s.extra = "[sample]\nevery_nth = 0\nerrors = false\n".into();
    let cfg = s.write(&dir.path().join("g.toml"));
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("[log]\n", "[log]\nreserve = \"4MiB\"\n"))
        .unwrap();
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let pid = gw.pid();
    assert_eq!(crate::harness::publish_numbered(mq.port, numbered("full-cam", 0..100, 96)), 100);
    gw.wait_for("the first frames upstream", Duration::from_secs(120), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 100.0
    })
    .unwrap();

    let filler = fs.fill("other-program.dat");
    assert_eq!(crate::harness::publish_numbered(mq.port, numbered("full-cam", 100..200, 96)), 100);
    wait_until("/readyz says the disk is full", Duration::from_secs(60), || {
        let (code, body) = gw.get("/readyz");
        code == 503 && body.contains("disk full at")
    });
    let (_, why) = gw.get("/readyz");
    assert!(why.contains(&s.log_dir.display().to_string()) && why.contains("bytes free"), "{why}");
    assert_eq!(gw.get("/healthz").0, 200);
    let (_, page) = gw.get("/?refresh=0");
    assert!(page.contains("disk full at"), "the status page says why");
    std::thread::sleep(Duration::from_secs(3));
    assert!(gw.running(), "the service rides out a full disk:\n{}", gw.log());
    assert_eq!(gw.get("/healthz").0, 200);
    let stored_while_full = gw.metric("vision_gateway_frames_stored_total");

    std::fs::remove_file(&filler).unwrap();
    gw.wait_for("every frame upstream after space returned", Duration::from_secs(180), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 200.0
            && m.get("vision_gateway_disk_full").copied() == Some(0.0)
    })
    .unwrap();
    assert_eq!(gw.get("/readyz").0, 200);
    assert_eq!(gw.pid(), pid);
    let glog = gw.log();
    let (ok, _) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let ids = upstream_ids(&tansu);
    assert_eq!(ids.len(), 200, "every acknowledged frame upstream");
    assert!(ids.values().all(|v| v.len() == 1), "each under one frame id");
    println!(
        "disk full while frames arrive: pid {pid} throughout, {stored_while_full} frames stored by the time the disk \
         was full for 3 s, 200/200 upstream once after it was freed; restarts of the pipeline in the process: {}",
        glog.matches("the pipeline stopped; the log is opened again").count()
    );
}

/// The service starts on a full disk (a backlog of its own waiting for
/// Kafka, the rest taken by another file): it comes up, says why, drains
/// the backlog once Kafka is back and so frees space.
#[test]
fn the_service_starts_on_a_full_disk_and_drains_its_backlog() {
    let Some(fs) = small_fs(48) else { return };
    let mq = Mosquitto::start().unwrap();
    let mut tansu = crate::harness::Tansu::start();
    tansu.create_topics(&TOPICS);
    tansu.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.log_dir = fs.path().join("log");
    s.max_bytes = "40MiB";
    s.when_disabled = "forward";
    s.kafka = tansu.brokers();
    // Every image sampled: the backlog is images on disk waiting for Kafka.
    s.extra = "[sample]\nevery_nth = 1\nerrors = false\n".into();
    let cfg = s.write(&dir.path().join("g.toml"));
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("[log]\n", "[log]\nreserve = \"4MiB\"\n"))
        .unwrap();
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    assert_eq!(crate::harness::publish_numbered(mq.port, numbered("boot-cam", 0..120, 160)), 120);
    gw.wait_for("the backlog stored", Duration::from_secs(60), |m| {
        m.get("vision_gateway_frames_stored_total").copied().unwrap_or(0.0) >= 120.0
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let _filler = fs.fill("other-program.dat");
    let free_full = fs.free();

    let gw = Gateway::start_alive(exe(), &cfg, s.http_port).unwrap();
    wait_until("/readyz says why", Duration::from_secs(60), || {
        let (code, body) = gw.get("/readyz");
        code == 503 && body.contains("disk full at")
    });
    assert!(gw.running());
    tansu.restart();
    gw.wait_for("the backlog drained upstream", Duration::from_secs(180), |m| {
        m.get("vision_gateway_log_records{area=\"annotations\"}").copied() == Some(0.0)
            && m.get("vision_gateway_log_records{area=\"images\"}").copied() == Some(0.0)
            && m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 120.0
    })
    .unwrap();
    wait_until("draining freed space", Duration::from_secs(60), || fs.free() > free_full + (3 << 20));
    let free_after = fs.free();
    assert!(gw.running(), "{}", gw.log());
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let ids = upstream_ids(&tansu);
    assert_eq!(ids.len(), 120, "the whole backlog upstream");
    assert!(ids.values().all(|v| v.len() == 1), "each under one frame id");
    println!(
        "start on a full disk: {free_full} bytes free at start, {free_after} after the drain; 120/120 upstream once"
    );
}

/// An upgrade keeps the backlog: a log written by the last release of
/// format 1 (`tests/fixtures/log-format1`, made by its `make` script with
/// that release's binary: annotations and sampled images waiting for
/// Kafka, frames not yet annotated, a dead letter) opens with this release
/// and drains to Kafka, every record under the frame id it had.
#[test]
fn a_log_of_the_previous_format_opens_and_drains_after_the_upgrade() {
    use rdkafka::Message;
    let fixture = repo().join("tests/fixtures/log-format1");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let count = |area: &str| expected["areas"][area]["records"].as_u64().unwrap_or(0);
    let (frames, anns, dead) = (count("frames"), count("annotations"), count("dead_letters"));
    let next_seq = expected["next_seq"].as_u64().unwrap();
    assert!(frames > 0 && anns > 0 && dead > 0, "the fixture holds a backlog in every area: {expected}");
    let mq = Mosquitto::start().unwrap();
    let tansu = crate::harness::Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture.join("log.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let mut s = Settings::new(dir.path(), mq.port);
    s.gateway_id = expected["gateway_id"].as_str().unwrap().into();
    s.detect = true;
    s.kafka = tansu.brokers();
    s.max_bytes = "64MiB";
    let cfg = s.write(&dir.path().join("g.toml"));
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    gw.wait_for("the upgraded backlog upstream", Duration::from_secs(300), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= (frames + anns) as f64
            && m.get("vision_gateway_replicated_total{kind=\"dead_letter\"}").copied().unwrap_or(0.0) >= dead as f64
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    assert!(glog.contains("log upgraded from format 1"), "{glog}");
    assert!(!s.log_dir.join("conf").exists() && s.log_dir.join("index").is_dir(), "the log is of the new format");
    let prefix = format!("{}:", s.gateway_id);
    let mut seqs = std::collections::BTreeSet::new();
    let mut cameras = std::collections::BTreeSet::new();
    for m in tansu.consume_to_end("vision.annotations") {
        let a: gateway::records::FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let seq: u64 = a.frame_id.strip_prefix(&prefix).and_then(|s| s.parse().ok()).unwrap();
        assert!(seq < next_seq, "{} was not in the old log (next seq {next_seq})", a.frame_id);
        assert!(!a.camera.is_empty() && m.key() == Some(a.camera.as_bytes()), "keyed by camera");
        cameras.insert(a.camera);
        seqs.insert(seq);
    }
    assert_eq!(seqs.len() as u64, frames + anns, "every annotation and every frame of the old log, once");
    let dead_ids: std::collections::BTreeSet<String> = tansu
        .consume_to_end("vision.dead-letters")
        .iter()
        .filter_map(|m| crate::harness::header(m, "frame_id"))
        .collect();
    assert_eq!(dead_ids.len() as u64, dead);
    println!(
        "upgrade from format 1: {anns} annotations + {frames} frames not yet annotated + {dead} dead letters in the old log; \
         upstream {} frame ids below {next_seq} from {} cameras, {} dead letters",
        seqs.len(),
        cameras.len(),
        dead_ids.len()
    );
}

/// A write cut short by a full disk leaves nothing that a later open takes
/// for data: frames are appended to a small tmpfs (no free-space floor, so
/// the writes really hit ENOSPC) until an append or a flush fails for lack
/// of space; after a reopen the log holds every frame whose flush returned,
/// byte for byte and in order, then at most frames that were written whole
/// but never flushed, and nothing else: no torn record, no gap, nothing set
/// aside; and the sequence goes on.
#[test]
fn a_write_cut_short_by_a_full_disk_leaves_nothing_a_later_open_takes_for_data() {
    // Frame sizes that meet the end of the disk at different points of a
    // write (segment header, record header, payload, the index's flush).
    for base in [300_000, 90_001, 1_000_003, 4_500] {
        cut_short_at(base);
    }
}

fn cut_short_at(base: usize) {
    use gateway::log::{DurableLog, LogOptions};
    use gateway::records::FrameRecord;
    let Some(fs) = small_fs(12) else { return };
    let room = fs.path().join("room-for-the-reopen");
    std::fs::write(&room, vec![0u8; 1 << 20]).unwrap();
    let mut o = LogOptions::new(fs.path().join("log"), "enospc");
    o.reserve_bytes = 0;
    o.max_bytes = 1 << 30;
    o.segment_bytes = Some(4 << 20);
    let frame = |i: u64| FrameRecord {
        camera: "cam".into(),
        content_type: "image/jpeg".into(),
        received_at_ms: i,
        captured_at_ms: None,
        camera_seq: Some(i),
        payload: testkit::frames::noise(base + i as usize * 7, i),
    };
    let log = DurableLog::open(o.clone()).unwrap();
    let (mut durable, mut written) = (Vec::new(), Vec::new());
    let failure = loop {
        let i = written.len() as u64;
        let f = frame(i);
        match log.append_frame(&f) {
            Ok(a) => written.push((a.seq, f)),
            Err(e) => break e,
        }
        match log.flush_blocking() {
            Ok(()) => durable = written.clone(),
            Err(e) => break e,
        }
        assert!(i < 5000, "the disk never filled");
    };
    assert!(failure.is_no_space(), "{failure}");
    drop(log);
    std::fs::remove_file(&room).unwrap();
    let log = DurableLog::open(o).unwrap();
    let back = log.read_frames(0, 10_000).unwrap();
    assert!(
        back.len() >= durable.len() && back.len() <= written.len(),
        "{} read, {} durable",
        back.len(),
        durable.len()
    );
    for ((seq, got), (want_seq, want)) in back.iter().zip(&written) {
        assert_eq!((seq, got), (want_seq, want), "frame {seq} reads back as written");
    }
    let stats = log.stats().unwrap();
    assert_eq!((stats.set_aside, stats.gaps_written), (0, 0), "nothing torn, nothing set aside");
    let mut small = frame(9999);
    small.payload.truncate(1000);
    let next = log.append_frame(&small).unwrap().seq;
    assert!(next >= back.last().map_or(0, |(s, _)| s + 1));
    println!(
        "ENOSPC with frames of {base} B: {} frames durable, {} written when the disk filled ({failure}); after reopen {} read back identical, 0 torn",
        durable.len(),
        written.len(),
        back.len()
    );
}
