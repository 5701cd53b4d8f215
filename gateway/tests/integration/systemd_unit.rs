//! The shipped systemd unit: its exposure score, `systemd-analyze verify`,
//! and ONNX Runtime under `MemoryDenyWriteExecute=` (the kernel's
//! equivalent, `PR_SET_MDWE`, which is inherited across exec; Linux 6.3 or
//! newer).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn unit() -> String {
    std::fs::read_to_string(repo("systemd/vision-gateway.service")).unwrap()
}

fn settings(key: &str) -> Vec<String> {
    unit().lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
}

#[test]
fn exposure_is_at_most_1_5() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(repo("systemd/vision-gateway.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let score: f64 = line.split(": ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    println!("{line}");
    assert!(score <= 1.5, "{text}");
}

#[test]
fn verify_prints_nothing() {
    // verify needs ExecStart's binary to exist: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let u = unit().replace("/usr/bin/vision-gateway", env!("CARGO_BIN_EXE_vision-gateway"));
    let p = dir.path().join("vision-gateway.service");
    std::fs::write(&p, u).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&p).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && all.trim().is_empty(), "systemd-analyze verify:\n{all}");
}

#[test]
fn unit_shape() {
    for (k, v) in [
        ("Type", "notify"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "vision-gateway"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictNamespaces", "yes"),
        ("Environment", "ORT_DISABLE_TELEMETRY=1"),
    ] {
        assert!(settings(k).iter().any(|x| x == v), "{k}={v} missing");
    }
    assert!(!settings("WatchdogSec").is_empty());
    // ONNX Runtime reads /proc/cpuinfo to choose its CPU kernels.
    assert!(settings("ProcSubset").is_empty(), "ProcSubset=pid hides /proc/cpuinfo from ONNX Runtime");
    assert_eq!(settings("LoadCredential"), ["credentials:/etc/vision-gateway/credentials"]);
    // The only port the service may bind is the shipped config's telemetry port.
    let cfg = gateway::config::Config::load(&repo("systemd/gateway.toml")).unwrap();
    assert_eq!(settings("SocketBindAllow"), [format!("tcp:{}", cfg.telemetry.listen.port())]);
    // Its ExecStartPre checks the config that ExecStart runs.
    assert!(settings("ExecStartPre")[0].contains("check-config --config /etc/vision-gateway/gateway.toml"));
    assert!(settings("ExecStart")[0].contains("run --config /etc/vision-gateway/gateway.toml"));
}

/// The model runs with write+execute mappings refused, as under the unit.
#[test]
fn onnx_runtime_runs_without_writable_executable_memory() {
    let lib = repo("models/runtime").join(std::env::consts::ARCH).join("libonnxruntime.so.1.31.1");
    let frame = repo("tests/fixtures/cameras/line1-cam1/0001.jpg");
    // python3 sets PR_SET_MDWE (65) = PR_MDWE_REFUSE_EXEC_GAIN (1), then
    // execs the gateway, which inherits it.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import ctypes,os,sys\nassert ctypes.CDLL(None).prctl(65,1,0,0,0)==0\nos.execv(sys.argv[1],sys.argv[1:])",
        env!("CARGO_BIN_EXE_vision-gateway"),
        "annotate",
        "--json",
        "--model",
    ])
    .arg(repo("models/ppocr-v6"))
    .arg("--onnxruntime")
    .arg(&lib)
    .arg(&frame);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let a: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert!(!a["items"].as_array().unwrap().is_empty(), "{stdout}");

    // The same refusal does stop a write+execute mapping (the check works).
    let probe = Command::new("python3")
        .args([
            "-c",
            "import ctypes,mmap,sys\nlibc=ctypes.CDLL(None)\nassert libc.prctl(65,1,0,0,0)==0\ntry:\n  mmap.mmap(-1,4096,prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)\n  sys.exit(1)\nexcept OSError:\n  sys.exit(0)",
        ])
        .status()
        .unwrap();
    assert!(probe.success(), "PR_SET_MDWE did not refuse a W+X mapping");
}
