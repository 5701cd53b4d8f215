//! End-to-end: the gateway as systemd runs it. The test plays the service
//! manager's side of the notify protocol (a datagram socket in
//! `NOTIFY_SOCKET`, a watchdog in `WATCHDOG_USEC`), streams frames through
//! the bundled model, stops the service with SIGTERM in the middle of the
//! stream, and restarts it: nothing is lost or annotated twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod harness;

use gateway::log::Area;
use gateway::replay::{load_cameras, replay};
use harness::{annotations, long_camera, repo, Gateway, Mosquitto, Settings};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    let cfg = s.write(&dir.path().join("g.toml"));
    let sock_path = dir.path().join("notify.sock");
    let got = listen(UnixDatagram::bind(&sock_path).unwrap());
    let env = [("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")];

    let gw = Gateway::start_env(&cfg, s.http_port, &env);
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
    });
    let pings_busy = count(&got, "WATCHDOG=1");
    std::thread::sleep(Duration::from_secs(2));
    assert!(count(&got, "WATCHDOG=1") > pings_busy, "pings go on while the model makes progress");
    let annotated_before = gw.metric("vision_gateway_frames_annotated_total") as usize;
    assert!(annotated_before < n, "the stop must land mid-stream");

    let (ok, log, took) = gw.terminate_timed();
    assert!(ok, "SIGTERM exits 0:\n{log}");
    let limit = unit_stop_timeout();
    assert!(took < limit, "stopped in {took:?}, beyond the unit's TimeoutStopSec {limit:?}:\n{log}");
    assert!(count(&got, "STOPPING=1") >= 1, "STOPPING=1 sent");
    assert!(log.contains("log flushed; stopped"), "{log}");
    println!("SIGTERM with {annotated_before}/{n} frames annotated: exit 0 in {:.2} s", took.as_secs_f64());

    // Restart: the rest is annotated; every frame exactly once, in order.
    let gw = Gateway::start(&cfg, s.http_port);
    gw.wait_for("every frame stored and annotated after the restart", Duration::from_secs(180), |m| {
        m.get("vision_gateway_log_next_seq").copied().unwrap_or(0.0) >= n as f64
            && m.get("vision_gateway_backlog_records{stage=\"detect\"}").copied() == Some(0.0)
    });
    let (ok, glog) = gw.terminate();
    assert!(ok, "{glog}");
    let log = s.open_log();
    let anns = annotations(&log);
    let seqs: Vec<u64> = anns.iter().map(|a| a.camera_seq.unwrap()).collect();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>(), "each frame annotated once, in order");
    assert_eq!(log.area_stats(Area::Frames).records, 0);
}

#[test]
fn a_replicate_stage_failing_for_good_stops_the_process_non_zero() {
    let mq = Mosquitto::start();
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
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    let gw = Gateway::start_env(
        &s.write(&dir.path().join("g.toml")),
        s.http_port,
        &[("VISION_GATEWAY_FAULTS", "panic_camera=camP")],
    );
    let pid = gw.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for (cam, n) in [("camA", 2), ("camP", 1), ("camB", 2)] {
        let cameras = load_cameras(&long_camera(dir.path(), cam, "line1-cam1", n, 100.0)).unwrap();
        rt.block_on(replay(&cameras, &mq.addr(), Some(0.0), false)).unwrap();
    }
    gw.wait_for("5 frames annotated", Duration::from_secs(120), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= 5.0
    });
    assert_eq!(gw.pid(), pid);
    let (ok, log) = gw.terminate();
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
