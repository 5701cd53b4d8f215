//! `bench codes`: what reading the codes on the label costs next to the
//! model, on `tests/fixtures/codes`: the model alone, then with
//! `[detect.codes]` in each region and effort, wall time per frame (model
//! and codes together, as a worker sees it), the code reader's own time,
//! codes read and misprints flagged; and Python zxing-cpp on the same
//! files for reference.

use gateway::config::Config;
use inference::codes::{CodeOptions, Region};
use inference::{LoadOptions, Model};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One configuration of the code reader.
#[derive(Debug, Clone, Serialize)]
pub struct CodesRow {
    /// `off`, or region and effort.
    pub mode: String,
    /// Wall time of the whole frame (model and codes), ms, mean.
    pub wall_ms: f64,
    /// The model's own time (decode to post-processing), ms, mean.
    pub model_ms: f64,
    /// The code reader's own time (on its thread), ms, mean.
    pub codes_ms: f64,
    /// The code reader's time on the frame full of symbols, ms.
    pub many_ms: f64,
    /// Codes read of the printed ones.
    pub codes_read: usize,
    /// Misprinted labels flagged with the right field.
    pub misprints_flagged: usize,
    /// Correct labels flagged (must be 0).
    pub false_flags: usize,
}

/// The table.
#[derive(Debug, Clone, Serialize)]
pub struct CodesBench {
    /// Frames (tests/fixtures/codes).
    pub frames: usize,
    /// Codes printed on them.
    pub codes_printed: usize,
    /// Misprinted labels.
    pub misprints: usize,
    /// Model threads.
    pub intra_threads: usize,
    /// One row per mode.
    pub rows: Vec<CodesRow>,
    /// Python zxing-cpp on the same files: ms per frame and codes read.
    pub zxing_cpp: Option<(f64, usize)>,
}

impl std::fmt::Display for CodesBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Codes on {} label frames ({} codes, {} misprints), model ppocr-v6 on {} thread(s), same run:",
            self.frames, self.codes_printed, self.misprints, self.intra_threads
        )?;
        writeln!(
            f,
            "{:<16} {:>9} {:>9} {:>9} {:>11} {:>8} {:>10} {:>7}",
            "codes", "wall ms", "model ms", "codes ms", "many ms", "read", "misprints", "false"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<16} {:>9.1} {:>9.1} {:>9.1} {:>11.1} {:>5}/{:<2} {:>7}/{:<2} {:>7}",
                r.mode,
                r.wall_ms,
                r.model_ms,
                r.codes_ms,
                r.many_ms,
                r.codes_read,
                self.codes_printed,
                r.misprints_flagged,
                self.misprints,
                r.false_flags
            )?;
        }
        if let Some((ms, read)) = self.zxing_cpp {
            writeln!(
                f,
                "{:<16} {:>9} {:>9} {:>9.1} {:>11} {:>5}/{:<2}",
                "zxing-cpp (C++)", "", "", ms, "", read, self.codes_printed
            )?;
        }
        writeln!(f, "(many ms: the 1600x1200 frame full of symbols, read whole; a budget caps it in service)")
    }
}

struct Fixture {
    bytes: Vec<u8>,
    printed: Vec<String>,
    misprint: Vec<String>,
}

fn fixtures(repo: &Path) -> anyhow::Result<(Vec<Fixture>, Vec<PathBuf>)> {
    let dir = repo.join("tests/fixtures/codes");
    let exp: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json"))?)?;
    let mut out = Vec::new();
    let mut files = Vec::new();
    for fr in exp["frames"].as_array().into_iter().flatten() {
        let file = dir.join(fr["file"].as_str().unwrap_or_default());
        let strings = |k: &str| -> Vec<String> {
            fr[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let printed =
            fr["codes"].as_array().into_iter().flatten().filter_map(|c| c["text"].as_str().map(str::to_owned));
        out.push(Fixture { bytes: std::fs::read(&file)?, printed: printed.collect(), misprint: strings("misprint") });
        files.push(file);
    }
    Ok((out, files))
}

/// Runs the table.
///
/// # Errors
/// The model failing to load; unreadable fixtures.
pub fn codes(repo: &Path, intra_threads: usize, python: Option<&Path>) -> anyhow::Result<CodesBench> {
    let (frames, files) = fixtures(repo)?;
    let many = std::fs::read(repo.join("tests/fixtures/codes/hostile/many.jpg"))?;
    let long = Duration::from_secs(60);
    let thorough = |region| CodeOptions { region, budget: long, ..CodeOptions::default() };
    let modes: [(&str, Option<CodeOptions>); 4] = [
        ("off", None),
        ("frame", Some(thorough(Region::Frame))),
        ("labels", Some(thorough(Region::Labels))),
        ("frame, fast", Some(CodeOptions { thorough: false, ..thorough(Region::Frame) })),
    ];
    // The fields (with their `verify` rules) as the fixtures declare them.
    let decls =
        Config::load_fields(&repo.join("tests/fixtures/codes/fields.toml")).map_err(|e| anyhow::anyhow!("{e}"))?.fields;
    let mut rows = Vec::new();
    for (name, codes) in modes {
        let load = LoadOptions {
            intra_threads,
            codes,
            ..LoadOptions::new(inference::runtime::default_library(None, Some(repo)), inference::engine::Backend::Auto)
        };
        let mut m = Model::load(&repo.join("models/ppocr-v6"), &load)?;
        let compiled = m.compile_fields(decls.iter().map(|d| &d.spec)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let refs: Vec<&inference::fields::Field> = compiled.iter().collect();
        let mut r = CodesRow {
            mode: name.to_owned(),
            wall_ms: 0.0,
            model_ms: 0.0,
            codes_ms: 0.0,
            many_ms: 0.0,
            codes_read: 0,
            misprints_flagged: 0,
            false_flags: 0,
        };
        m.annotate_with(&frames[0].bytes, &refs)?; // warm-up
        for fx in &frames {
            let t = Instant::now();
            let a = m.annotate_with(&fx.bytes, &refs)?;
            r.wall_ms += t.elapsed().as_secs_f64() * 1e3;
            r.model_ms += a.timings.total_ms();
            r.codes_ms += a.timings.codes_ms;
            r.codes_read += a.codes.iter().filter(|c| fx.printed.contains(&c.text)).count();
            let mut mism = a.mismatches.clone();
            mism.sort();
            if !fx.misprint.is_empty() && mism == fx.misprint {
                r.misprints_flagged += 1;
            }
            if fx.misprint.is_empty() && !mism.is_empty() {
                r.false_flags += 1;
            }
        }
        let n = frames.len() as f64;
        (r.wall_ms, r.model_ms, r.codes_ms) = (r.wall_ms / n, r.model_ms / n, r.codes_ms / n);
        r.many_ms = m.annotate_with(&many, &refs)?.timings.codes_ms;
        rows.push(r);
    }
    let zxing_cpp = python.filter(|p| p.exists()).map(|p| zxing_cpp(repo, p, &files, &frames)).transpose()?;
    Ok(CodesBench {
        frames: frames.len(),
        codes_printed: frames.iter().map(|f| f.printed.len()).sum(),
        misprints: frames.iter().filter(|f| !f.misprint.is_empty()).count(),
        intra_threads,
        rows,
        zxing_cpp,
    })
}

/// Python zxing-cpp on the same files: ms per frame, codes read.
fn zxing_cpp(repo: &Path, python: &Path, files: &[PathBuf], frames: &[Fixture]) -> anyhow::Result<(f64, usize)> {
    let out =
        std::process::Command::new(python).arg(repo.join("tests/reference/codes_reference.py")).args(files).output()?;
    anyhow::ensure!(out.status.success(), "codes_reference.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (mut ms, mut read) = (0.0, 0);
    for (file, fx) in files.iter().zip(frames) {
        let r = &v[file.display().to_string()];
        ms += r["ms"].as_f64().unwrap_or(0.0);
        read += r["codes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["text"].as_str().is_some_and(|t| fx.printed.iter().any(|p| p == t)))
            .count();
    }
    Ok((ms / frames.len().max(1) as f64, read))
}
