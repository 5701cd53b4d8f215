//! `vision-gateway bench models`: each OCR model set on the label fixtures
//! next to the Python RapidOCR release that ships its files, in the same
//! run, the two engines interleaved frame by frame.
//!
//! Owns the model table of the README: label lines read exactly (camera
//! fixtures and `tests/fixtures/labels2`), declared fields read exactly,
//! junk lines on blank frames, milliseconds per frame (decode included, on
//! both sides) and the gateway's whole-frame speed over Python's. The
//! gateway runs as deployed (default junk filter, the fixtures'
//! `[[fields]]`); Python RapidOCR at its defaults without the angle
//! classifier (tests/reference/ppocr_reference.py).

use super::detect::norm;
use anyhow::Context;
use gateway::config::Config;
use inference::fields::Field;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Which fixture set a frame is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Cameras,
    Labels2,
    Blank,
}

/// One fixture frame and what is printed on it.
struct Frame {
    path: PathBuf,
    bytes: Vec<u8>,
    set: Set,
    /// Printed lines as printed; empty on a frame without a label.
    printed: Vec<String>,
    /// Declared field -> printed value.
    fields: BTreeMap<String, String>,
}

/// Counts for one engine on one model set and thread count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Label lines read exactly (spaces ignored) on the camera fixtures.
    pub lines_cameras: u64,
    /// The same on labels2.
    pub lines_labels2: u64,
    /// Lines read exactly with their spaces, both sets (PP-OCRv4 often
    /// drops the space between words).
    pub lines_with_spaces: u64,
    /// Declared fields read exactly on the camera fixtures (gateway only).
    pub fields_cameras: Option<u64>,
    /// The same on labels2.
    pub fields_labels2: Option<u64>,
    /// Lines read on frames without a label.
    pub junk: u64,
    /// Milliseconds per frame (decode included).
    pub ms_per_frame: f64,
}

/// One model set at one thread count, both engines.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    /// Model folder name.
    pub model: String,
    /// Runtime threads of both engines.
    pub threads: usize,
    /// The gateway at each detector side measured (`detect.ocr_side`).
    pub gateway: Vec<(usize, Counts)>,
    /// Python RapidOCR on the same files.
    pub python: Counts,
    /// Which Python release that is.
    pub python_engine: String,
}

impl ModelRow {
    /// Whole-frame frames/s of the gateway at `c` over Python's.
    pub fn speed_ratio(&self, c: &Counts) -> f64 {
        self.python.ms_per_frame / c.ms_per_frame
    }
}

/// The table.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsBench {
    /// Frames per set: cameras, labels2, blank (and camera frames without a
    /// part, counted as blank).
    pub frames: [usize; 3],
    /// Printed lines: cameras, labels2.
    pub lines: [u64; 2],
    /// Declared fields: cameras, labels2.
    pub fields: [u64; 2],
    /// Frames without a label (junk is counted on them).
    pub blank_frames: usize,
    /// One row per model set and thread count.
    pub rows: Vec<ModelRow>,
}

impl std::fmt::Display for ModelsBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, l, b] = self.frames;
        writeln!(
            f,
            "OCR model sets on the fixtures ({c} camera frames, {l} labels2 frames, {b} blank frames; \
             {} frames without a label), gateway and Python interleaved frame by frame;\n\
             lines: read exactly, spaces ignored (+spaces: with them); fields: the declared ones, exactly; \
             junk: lines on frames without a label; ms/frame: decode to result",
            self.blank_frames
        )?;
        let w = self.rows.iter().map(|r| r.model.len()).max().unwrap_or(0).max(5);
        writeln!(
            f,
            "{:<w$} {:<34} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9} {:>10}",
            "model", "engine", "thr", "lines", "lines", "+spaces", "fields", "fields", "junk", "ms/frame", "gateway"
        )?;
        writeln!(
            f,
            "{:<w$} {:<34} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9} {:>10}",
            "",
            "",
            "",
            format!("cams/{}", self.lines[0]),
            format!("lab2/{}", self.lines[1]),
            format!("both/{}", self.lines[0] + self.lines[1]),
            format!("cams/{}", self.fields[0]),
            format!("lab2/{}", self.fields[1]),
            "",
            "",
            "vs Python"
        )?;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for r in &self.rows {
            let mut engines: Vec<(String, &Counts, String)> = r
                .gateway
                .iter()
                .map(|(side, k)| (format!("gateway, side {side}"), k, format!("{:.2}x", r.speed_ratio(k))))
                .collect();
            engines.push((format!("{}, side 736", r.python_engine), &r.python, String::new()));
            for (engine, k, ratio) in engines {
                writeln!(
                    f,
                    "{:<w$} {:<34} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>9.0} {:>10}",
                    r.model,
                    engine,
                    r.threads,
                    k.lines_cameras,
                    k.lines_labels2,
                    k.lines_with_spaces,
                    opt(k.fields_cameras),
                    opt(k.fields_labels2),
                    k.junk,
                    k.ms_per_frame,
                    ratio
                )?;
            }
        }
        Ok(())
    }
}

/// The camera fixtures' fields, from their printed lines (`PN 8402-620-K`
/// -> `part_number = 8402-620-K`, as tests/fixtures/fields.toml reads them).
fn camera_fields(texts: &[String]) -> BTreeMap<String, String> {
    let names = [("PN", "part_number"), ("LOT", "lot"), ("DATE", "date"), ("SN", "serial")];
    texts
        .iter()
        .filter_map(|t| {
            let (prefix, value) = t.split_once(' ')?;
            let (_, name) = names.iter().find(|(p, _)| *p == prefix)?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

fn load_frames(repo: &Path, every: usize) -> anyhow::Result<Vec<Frame>> {
    let mut out = Vec::new();
    let fixtures = repo.join("tests/fixtures");
    let mut sets: Vec<(PathBuf, Set)> = Vec::new();
    for cam in testkit::replay::load_cameras(&fixtures.join("cameras"))? {
        sets.push((fixtures.join("cameras").join(&cam.id), Set::Cameras));
    }
    sets.push((fixtures.join("labels2"), Set::Labels2));
    for (dir, set) in sets {
        let exp: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json"))?)
            .with_context(|| format!("{}/expected.json", dir.display()))?;
        for fr in exp["frames"].as_array().into_iter().flatten() {
            let path = dir.join(fr["file"].as_str().unwrap_or_default());
            let printed: Vec<String> =
                fr["texts"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
            let fields = match set {
                Set::Cameras => camera_fields(&printed),
                _ => fr["fields"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect(),
            };
            out.push(Frame { bytes: std::fs::read(&path)?, path, set, printed, fields });
        }
    }
    let mut blank: Vec<PathBuf> = std::fs::read_dir(fixtures.join("blank"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    blank.sort();
    for path in blank {
        out.push(Frame {
            bytes: std::fs::read(&path)?,
            path,
            set: Set::Blank,
            printed: Vec::new(),
            fields: BTreeMap::new(),
        });
    }
    Ok(out.into_iter().step_by(every.max(1)).collect())
}

/// Python RapidOCR answering one path per line (ppocr_reference.py --stdin).
struct Python {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    stdin: std::process::ChildStdin,
}

impl Python {
    fn start(python: &Path, repo: &Path, bundle: &Path, threads: usize, log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(python)
            .arg(repo.join("tests/reference/ppocr_reference.py"))
            .arg("--bundle")
            .arg(bundle)
            .args(["--threads", &threads.to_string(), "--stdin"])
            .env("ORT_DISABLE_TELEMETRY", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| {
                format!("cannot start {} (bash tests/run creates the reference venv)", python.display())
            })?;
        let stdin = child.stdin.take().context("python stdin")?;
        let lines = BufReader::new(child.stdout.take().context("python stdout")?).lines();
        Ok(Self { child, lines, stdin })
    }

    /// Texts read (as read) and milliseconds taken on one file.
    fn read(&mut self, path: &Path, log: &Path) -> anyhow::Result<(Vec<String>, f64)> {
        writeln!(self.stdin, "{}", path.display())?;
        self.stdin.flush()?;
        let Some(line) = self.lines.next() else {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("Python RapidOCR stopped on {}: {}", path.display(), tail.lines().last().unwrap_or(""));
        };
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let texts =
            v["items"].as_array().into_iter().flatten().filter_map(|i| i["text"].as_str().map(str::to_owned)).collect();
        Ok((texts, v["ms"].as_f64().unwrap_or(f64::NAN)))
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds one frame's reading (`read`: the texts as read) to `c`.
fn count(c: &mut Counts, frame: &Frame, read: &[String], fields: Option<&BTreeMap<String, String>>) {
    if frame.printed.is_empty() {
        c.junk += read.len() as u64;
        return;
    }
    c.lines_with_spaces += frame.printed.iter().filter(|w| read.contains(w)).count() as u64;
    let got: Vec<String> = read.iter().map(|t| norm(t)).collect();
    let lines = frame.printed.iter().filter(|w| got.contains(&norm(w))).count() as u64;
    let exact = fields.map(|f| frame.fields.iter().filter(|(k, v)| f.get(*k) == Some(*v)).count() as u64);
    if frame.set == Set::Cameras {
        c.lines_cameras += lines;
        c.fields_cameras = exact.map(|e| c.fields_cameras.unwrap_or(0) + e);
    } else {
        c.lines_labels2 += lines;
        c.fields_labels2 = exact.map(|e| c.fields_labels2.unwrap_or(0) + e);
    }
}

/// What `bench models` runs.
#[derive(Debug, Clone)]
pub struct ModelsRun {
    /// Model folders.
    pub models: Vec<PathBuf>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Every Nth fixture frame.
    pub every: usize,
    /// The gateway's detector sides (Python runs at its default, 736).
    pub sides: Vec<usize>,
    /// The reference venv's python.
    pub python: PathBuf,
}

/// The Python release that ships a bundle's files (for the mixed set, the
/// one that ships its recogniser, given the PP-OCRv4 detector by path).
fn python_engine(model: &str) -> anyhow::Result<&'static str> {
    match model {
        "ppocr-v4" => Ok("RapidOCR 1.4.4 (Python)"),
        "ppocr-v6" | MIXED | MEASURED_ONLY => Ok("RapidOCR 3.10.0 (Python)"),
        other => {
            anyhow::bail!(
                "no Python reference for model set {other:?} (ppocr-v4, ppocr-v6, ppocr-v5-mobile or {MIXED})"
            )
        }
    }
}

/// The model set fetched only on request (`bash models/fetch measured`).
const MEASURED_ONLY: &str = "ppocr-v5-mobile";

/// The model set measured but not shipped: PP-OCRv4's detector with
/// PP-OCRv6 small's recogniser.
pub const MIXED: &str = "ppocr-v4det-v6rec";

/// The folder of model set `path`: the folder itself, or for
/// `models/ppocr-v4det-v6rec` (not shipped) one made in `dir` from the two
/// shipped bundles' files (links, and a manifest with their hashes).
///
/// # Errors
/// A bundle or its manifest missing (`bash models/fetch`).
fn model_folder(repo: &Path, path: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    if path.file_name().and_then(|n| n.to_str()) != Some(MIXED) || repo.join(path).join("model.toml").is_file() {
        return Ok(repo.join(path));
    }
    let v4 = inference::Manifest::load(&repo.join("models/ppocr-v4"))?;
    let v6 = inference::Manifest::load(&repo.join("models/ppocr-v6"))?;
    let out = dir.join(MIXED);
    std::fs::create_dir_all(&out)?;
    let mut toml = format!(
        "name = \"{MIXED}\"\nversion = \"4det-6rec\"\ntask = \"ocr\"\nlicence = \"Apache-2.0\"\n\
         provenance = \"bench models: ppocr-v4's det, ppocr-v6's rec\"\n\
         [memory]\nruntime_mib = 130\ndet_bytes_per_pixel = 200\n"
    );
    for (m, role) in [(&v4, "det"), (&v6, "rec")] {
        let f = m.files.iter().find(|f| f.role == role).context("a bundle without its det or rec")?;
        let link = out.join(&f.path);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(m.dir.join(&f.path), &link)?;
        toml.push_str(&format!(
            "[[files]]\nrole = \"{role}\"\npath = {:?}\nsha256 = \"{}\"\n",
            f.path.display(),
            f.sha256
        ));
    }
    std::fs::write(out.join("model.toml"), toml)?;
    Ok(out)
}

/// Runs the table.
///
/// # Errors
/// A model, the reference Python or a fixture failing.
pub fn models(repo: &Path, run: &ModelsRun, dir: &Path) -> anyhow::Result<ModelsBench> {
    let frames = load_frames(repo, run.every)?;
    let cam_decls =
        Config::load_fields(&repo.join("tests/fixtures/fields.toml")).map_err(|e| anyhow::anyhow!("{e}"))?.fields;
    let lab_decls = Config::load_fields(&repo.join("tests/fixtures/labels2/fields.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .fields;
    let per = |s: Set| frames.iter().filter(|f| f.set == s).count();
    let lines = |s: Set| frames.iter().filter(|f| f.set == s).map(|f| f.printed.len() as u64).sum::<u64>();
    let fields = |s: Set| frames.iter().filter(|f| f.set == s).map(|f| f.fields.len() as u64).sum::<u64>();
    let mut out = ModelsBench {
        frames: [per(Set::Cameras), per(Set::Labels2), per(Set::Blank)],
        lines: [lines(Set::Cameras), lines(Set::Labels2)],
        fields: [fields(Set::Cameras), fields(Set::Labels2)],
        blank_frames: frames.iter().filter(|f| f.printed.is_empty()).count(),
        rows: Vec::new(),
    };
    for model_dir in &run.models {
        let model_dir = &model_folder(repo, model_dir, dir)?;
        let model = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if model == MEASURED_ONLY {
            if let Err(e) = inference::Manifest::load(model_dir) {
                eprintln!("bench models: {MEASURED_ONLY} left out ({e}); `bash models/fetch measured` fetches it");
                continue;
            }
        }
        let python_engine = python_engine(&model)?;
        for &threads in &run.threads {
            let opts = inference::LoadOptions {
                intra_threads: threads,
                backend: inference::engine::Backend::Onnxruntime,
                ..inference::LoadOptions::new(inference::runtime::default_library(None, Some(repo)), Default::default())
            };
            let mut m = inference::Model::load(model_dir, &opts)
                .with_context(|| format!("cannot load {}", model_dir.display()))?;
            let cam = m.compile_fields(cam_decls.iter().map(|d| &d.spec)).map_err(anyhow::Error::msg)?;
            let lab = m.compile_fields(lab_decls.iter().map(|d| &d.spec)).map_err(anyhow::Error::msg)?;
            let (cam, lab): (Vec<&Field>, Vec<&Field>) = (cam.iter().collect(), lab.iter().collect());
            let log = dir.join(format!("python-{model}-{threads}.log"));
            let mut py = Python::start(&run.python, repo, model_dir, threads, &log)?;
            // Warm-up on both sides (sessions, first allocations).
            if let Some(f) = frames.first() {
                m.annotate(&f.bytes)?;
                py.read(&f.path, &log)?;
            }
            let mut g: Vec<(usize, Counts)> = run.sides.iter().map(|&s| (s, Counts::default())).collect();
            let mut p = Counts::default();
            for f in &frames {
                let fields = if f.set == Set::Labels2 { &lab } else { &cam };
                for (side, c) in &mut g {
                    m.set_ocr_side(*side);
                    let t = Instant::now();
                    let a = m.annotate_with(&f.bytes, fields)?;
                    c.ms_per_frame += t.elapsed().as_secs_f64() * 1000.0;
                    let got: Vec<String> = a.items.iter().filter_map(|i| i.text.clone()).collect();
                    let read: BTreeMap<String, String> =
                        a.fields.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
                    count(c, f, &got, Some(&read));
                }
                let (texts, ms) = py.read(&f.path, &log)?;
                p.ms_per_frame += ms;
                count(&mut p, f, &texts, None);
            }
            let n = frames.len().max(1) as f64;
            for (_, c) in &mut g {
                c.ms_per_frame /= n;
            }
            p.ms_per_frame /= n;
            out.rows.push(ModelRow {
                model: model.clone(),
                threads,
                gateway: g,
                python: p,
                python_engine: python_engine.into(),
            });
        }
    }
    Ok(out)
}
