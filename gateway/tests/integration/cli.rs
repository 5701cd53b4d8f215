//! The `vision-gateway` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway::log::{DurableLog, LogOptions};
use gateway::records::FrameRecord;
use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vision-gateway")).args(args).output().unwrap()
}

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p).display().to_string()
}

#[test]
fn shipped_config_checks_ok() {
    let out = bin(&["check-config", "--config", &repo("systemd/gateway.toml")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK") && stdout.contains("edge-box-1"), "{stdout}");
}

#[test]
fn three_mistakes_are_listed_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "gateway_id = \"x\"\n[log]\nmax_bytes = \"lots\"\nmax_bites = \"1GiB\"\n[replicate]\nbrokers = \"k:9092\"\n",
    )
    .unwrap();
    let out = bin(&["check-config", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 problems"), "{err}");
    for key in ["log.max_bites", "log.max_bytes", "mqtt.broker"] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = bin(&["check-config", "--config", "/nonexistent/gateway.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn log_stats_json_reports_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    {
        let log = DurableLog::open(LogOptions::new(&log_dir, "stats-gw")).unwrap();
        for i in 0..5u64 {
            let f = FrameRecord {
                camera: "cam-1".into(),
                content_type: "image/jpeg".into(),
                received_at_ms: i,
                captured_at_ms: None,
                camera_seq: None,
                payload: vec![0; 1000],
            };
            log.append_frame(&f).unwrap();
        }
    }
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "gateway_id = \"stats-gw\"\n[log]\npath = \"{}\"\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n[replicate]\nbrokers = \"127.0.0.1:9092\"\n",
            log_dir.display()
        ),
    )
    .unwrap();
    let out = bin(&["log", "stats", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        // While another process holds the log, stats say so instead of failing obscurely.
        let _held = DurableLog::open(LogOptions::new(&log_dir, "stats-gw")).unwrap();
        let busy = bin(&["log", "stats", "--config", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&busy.stderr);
        assert!(!busy.status.success());
        assert!(err.contains("could not acquire lock") && err.contains("stop it first"), "{err}");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gateway_id"], "stats-gw");
    assert_eq!(v["next_seq"], 5);
    assert_eq!(v["areas"]["frames"]["records"], 5);
    assert_eq!(v["cursors"]["detect"]["backlog_records"], 5);
    assert!(v["used_bytes"].as_u64().unwrap() > 5000);
}

#[test]
fn replay_reports_bad_fixtures_and_unreachable_brokers_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let out = bin(&["replay", empty.path().to_str().unwrap(), "--broker", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no camera.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = bin(&["replay", &repo("tests/fixtures/bad"), "--broker", &format!("127.0.0.1:{port}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("MQTT connection to 127.0.0.1:") && err.contains("failed"), "{err}");
}

#[test]
fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(&["demo", "--log-only", "--frames", "30", "--out", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("frames processed by stage   : 90"), "{stdout}");
    assert!(stdout.contains("no brokers, no model"), "the log tour says what it leaves out:\n{stdout}");
}

#[test]
fn bench_intake_runs_against_a_private_mosquitto_and_prints_a_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        bin(&["bench", "intake", "--frames", "30", "--size", "20000", "--json", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gateway"]["records"], 30);
    assert_eq!(v["mosquitto_sub"]["records"], 30);
    assert!(v["gateway"]["seconds"].as_f64().unwrap() > 0.0);
}

/// `bench detect`: both sides ran every frame (the stage row counts the
/// annotations it committed) and the timing shares come from them.
#[test]
fn bench_detect_measures_the_stage_and_the_bare_loop_on_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
        .args(["bench", "detect", "--frames", "4", "--workers", "1", "--json", "--dir", dir.path().to_str().unwrap()])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stage"]["records"], 4);
    assert_eq!(v["bare"]["records"], 4);
    assert!(v["session_runs"].as_u64().unwrap() >= 4, "one detector run per frame at least: {v}");
    assert!(v["run_ms"].as_f64().unwrap() > 0.0 && v["decode_ms"].as_f64().unwrap() > 0.0, "{v}");
}

/// `bench drain`: every backlog frame and every live frame reached Kafka
/// (the command fails otherwise), the live latencies were measured, and
/// the backlog went behind the live lane (more of it waited than
/// `--live-lane-after` once the 8 batches in flight during the outage were
/// delivered).
#[test]
fn bench_drain_delivers_the_backlog_and_the_live_frames() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(&[
        "bench",
        "drain",
        "--backlog",
        "2000",
        "--live-fps",
        "20",
        "--seconds",
        "3",
        "--live-lane-after",
        "100",
        "--runs",
        "2",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = all["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{all}");
    for v in runs {
        assert_eq!(v["backlog"], 2000);
        assert_eq!(v["live_frames"], 60);
        let backfilled = v["backfilled"].as_u64().unwrap();
        assert!(backfilled > 0 && backfilled <= 2000, "{v}");
        assert!(v["drain_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["found_back_s"].as_f64().unwrap() >= 0.0, "{v}");
        assert!(v["idle_p99_ms"].as_f64().unwrap() >= v["idle_p50_ms"].as_f64().unwrap(), "{v}");
        assert!(v["during_produce_p99_ms"].as_f64().unwrap() <= v["during_p99_ms"].as_f64().unwrap() + 1.0, "{v}");
    }
}

#[test]
fn the_demo_runs_the_whole_pipeline_on_stand_in_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
        .args(["demo", "--rate", "20", "--out", dir.path().to_str().unwrap()])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("demo stand-ins"), "the demo says its brokers are stand-ins:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["frames_in"], 46);
    assert_eq!(report["annotations_out"], 46, "every fixture frame annotated and replicated");
    assert!(report["images_sampled"].as_u64().unwrap() > 0);
    assert_eq!(report["images_reassembled"], report["images_sampled"]);
    let texts = report["cameras"]["line1-cam1"]["texts"].as_array().unwrap();
    assert!(texts.iter().any(|t| t.as_str().unwrap().starts_with("PN")), "{texts:?}");
    // The fixture cameras' label fields are declared in the demo: 14 labels
    // of 4 fields on line1-cam1, every one read.
    assert_eq!(report["cameras"]["line1-cam1"]["fields"], 56, "{}", report["cameras"]["line1-cam1"]);
    assert!(stdout.contains("label fields read, e.g. "), "{stdout}");
    // One self-contained annotated SVG per frame, and the HTML report
    // showing every frame with what was read on it.
    let svgs: Vec<_> = std::fs::read_dir(dir.path().join("annotated")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(svgs.len(), 46);
    let one = std::fs::read_to_string(dir.path().join("annotated/line1-cam1-0001.svg")).unwrap();
    assert!(one.contains("data:image/jpeg;base64,") && one.contains("<polygon"), "{}", &one[..200.min(one.len())]);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<section class=\"cam\">").count(), 46);
    assert!(html.contains(&format!(">{} ", texts[0].as_str().unwrap())), "first text drawn on its frame");
    for (cam, n) in [("line1-cam1", 16), ("line1-cam2", 16), ("line2-cam1", 14)] {
        assert_eq!(std::fs::read_dir(dir.path().join("frames").join(cam)).unwrap().count(), n);
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &cfg,
        format!(
            "gateway_id = \"j\"\n[log]\npath = \"{}\"\n[mqtt]\nbroker = \"127.0.0.1:9\"\n[detect]\nenabled = false\n\
             [replicate]\nbrokers = \"127.0.0.1:9\"\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\nlog_format = \"json\"\n",
            dir.path().join("log").display()
        ),
    )
    .unwrap();
    let err = std::fs::File::create(dir.path().join("err.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(err)
        .spawn()
        .unwrap();
    // Until it has logged the log opening and a failed MQTT connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let t = std::fs::read_to_string(dir.path().join("err.log")).unwrap();
        if (t.contains("log opened") && t.contains("MQTT")) || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object() && v["timestamp"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("\"log opened\"")), "{text}");
}
