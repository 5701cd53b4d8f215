//! `vision-gateway bench backends`: the two runtimes side by side on the
//! same frames, model and threads: detector and recogniser time per run
//! (each session input run alone) and whole-frame time (decode to
//! post-processing), for each thread count.
//!
//! Under qemu-user (an ARM build on an x86 host) the times are emulated and
//! say nothing about an ARM box; the table says so.

use inference::engine::{Backend, EngineKind};
use inference::{LoadOptions, Model};
use serde::Serialize;
use std::path::Path;

/// One backend at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    /// `onnxruntime` or `tract`.
    pub backend: String,
    /// Its version.
    pub version: String,
    /// Threads inside one run.
    pub threads: usize,
    /// Mean detector run, ms.
    pub det_ms: f64,
    /// Detector runs timed.
    pub det_runs: usize,
    /// Mean recogniser run, ms (OCR).
    pub rec_ms: f64,
    /// Recogniser runs timed.
    pub rec_runs: usize,
    /// Mean whole frame (decode, pre, runs, post), ms, second pass.
    pub frame_ms: f64,
    /// Mean whole frame on the first pass (tract optimises a plan per new
    /// input shape there), ms.
    pub first_pass_frame_ms: f64,
}

/// The table.
#[derive(Debug, Clone, Serialize)]
pub struct BackendsBench {
    /// Architecture of this build.
    pub arch: String,
    /// Running under qemu-user: times are not performance.
    pub emulated: bool,
    /// Frames used (every fixture frame, or a spread subset).
    pub frames: usize,
    /// Rows, ONNX Runtime first where it is present.
    pub rows: Vec<BackendRow>,
    /// Why ONNX Runtime is missing from the table, if it is.
    pub onnxruntime_missing: Option<String>,
}

impl std::fmt::Display for BackendsBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Runtimes on {} fixture frames ({}{}), same model, same inputs, one run:",
            self.frames,
            self.arch,
            if self.emulated { ", EMULATED under qemu-user: these times are not performance" } else { "" }
        )?;
        writeln!(
            f,
            "{:<20} {:>7} {:>12} {:>12} {:>12} {:>14} {:>14}",
            "backend", "threads", "det ms/run", "rec ms/run", "frame ms", "1st pass ms", "frame vs ort"
        )?;
        for r in &self.rows {
            let ort = self.rows.iter().find(|o| o.backend == "onnxruntime" && o.threads == r.threads);
            writeln!(
                f,
                "{:<20} {:>7} {:>12.1} {:>12.1} {:>12.1} {:>14.1} {:>13.2}x",
                format!("{} {}", r.backend, r.version),
                r.threads,
                r.det_ms,
                r.rec_ms,
                r.frame_ms,
                r.first_pass_frame_ms,
                ort.map_or(f64::NAN, |o| r.frame_ms / o.frame_ms)
            )?;
        }
        if let Some(why) = &self.onnxruntime_missing {
            writeln!(f, "(no ONNX Runtime row: {why})")?;
        }
        Ok(())
    }
}

/// qemu-user shows the host's /proc/cpuinfo to an emulated ARM program
/// (images/check also says so with `VISION_GATEWAY_EMULATED=1`, since it
/// binds an ARM cpuinfo over it for ONNX Runtime).
fn emulated() -> bool {
    if std::env::var_os("VISION_GATEWAY_EMULATED").is_some_and(|v| v == "1") {
        return true;
    }
    let arm = matches!(std::env::consts::ARCH, "arm" | "aarch64");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    arm && (cpuinfo.contains("GenuineIntel") || cpuinfo.contains("AuthenticAMD"))
}

/// Runs the table: every `every`th fixture frame, each backend available
/// (ONNX Runtime where its library is), each of `threads`.
///
/// # Errors
/// The model failing to load; unreadable fixtures.
pub fn backends(repo: &Path, model: &Path, threads: &[usize], every: usize) -> anyhow::Result<BackendsBench> {
    let frames: Vec<Vec<u8>> =
        super::fixture_frames(repo)?.into_iter().step_by(every.max(1)).map(|(bytes, _)| bytes).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let library = inference::runtime::default_library(None, Some(repo));
    let mut kinds = Vec::new();
    let mut onnxruntime_missing = None;
    if library.is_file() {
        kinds.push(EngineKind::OnnxRuntime);
    } else {
        onnxruntime_missing = Some(format!("no library at {}", library.display()));
    }
    kinds.push(EngineKind::Tract);
    let mut rows = Vec::new();
    for kind in kinds {
        let backend = if kind == EngineKind::Tract { Backend::Tract } else { Backend::Onnxruntime };
        for &n in threads {
            let load = LoadOptions { intra_threads: n.max(1), ..LoadOptions::new(library.clone(), backend) };
            let mut m = Model::load(model, &load)?;
            let pass = |m: &mut Model| -> anyhow::Result<f64> {
                let mut ms = 0.0;
                for f in &refs {
                    let t = m.annotate(f)?.timings;
                    ms += t.total_ms();
                }
                Ok(ms / refs.len().max(1) as f64)
            };
            let first = pass(&mut m)?;
            let frame = pass(&mut m)?;
            let inputs = m.capture_inputs(&refs)?;
            let [(det, det_runs), (rec, rec_runs)] = m.time_bare(&inputs)?;
            rows.push(BackendRow {
                backend: kind.name().to_owned(),
                version: kind.version().to_owned(),
                threads: n.max(1),
                det_ms: det / det_runs.max(1) as f64,
                det_runs,
                rec_ms: rec / rec_runs.max(1) as f64,
                rec_runs,
                frame_ms: frame,
                first_pass_frame_ms: first,
            });
        }
    }
    Ok(BackendsBench {
        arch: std::env::consts::ARCH.to_owned(),
        emulated: emulated(),
        frames: refs.len(),
        rows,
        onnxruntime_missing,
    })
}
