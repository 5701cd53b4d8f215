//! `model.toml`: what a model folder holds and pins.
//!
//! Promise: a [`Manifest`] returned by [`Manifest::load`] names files that
//! exist and whose sha256 matches the manifest.

use crate::InferenceError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the model does, which selects the output decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Text detection + recognition (PP-OCR).
    Ocr,
    /// Object detection (YOLO-style).
    Detect,
    /// Image classification.
    Classify,
}

/// One ONNX file of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Role in the model (`det`, `rec`, `model`).
    pub role: String,
    /// File name inside the model folder.
    pub path: PathBuf,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[N, C, H, W]` (default).
    #[default]
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// Channel order of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    /// Red, green, blue (default; YOLO exports).
    #[default]
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
}

/// How a frame is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Keep the aspect ratio, pad with grey 114, centred (YOLO; default).
    #[default]
    Letterbox,
    /// Stretch to the input size.
    Stretch,
}

/// Largest input side a manifest may declare (a 8192x8192 f32 input is
/// already 768 MiB).
pub const MAX_INPUT_SIDE: usize = 8192;

/// `[input]`: what the model expects (tasks `detect`, `classify`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input tensor name.
    pub name: String,
    /// Input width in pixels.
    pub width: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
    /// Channel order.
    #[serde(default)]
    pub colour: Colour,
    /// Fitting policy.
    #[serde(default)]
    pub fit: Fit,
    /// Each 0..255 sample is multiplied by this first. Default 1/255.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Then this is subtracted, per channel (in tensor channel order).
    #[serde(default)]
    pub mean: [f32; 3],
    /// Then divided by this, per channel. Default 1.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

fn default_std() -> [f32; 3] {
    [1.0, 1.0, 1.0]
}

/// How the output tensor is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    /// YOLOv8/YOLO11 detection: `[1, 4 + C, N]`, boxes as centre x, y,
    /// width, height in input pixels, then class scores.
    Yolov8,
    /// YOLOv5 detection: `[1, N, 5 + C]`: box, objectness, class scores
    /// (score = objectness x class score).
    Yolov5,
    /// Classification logits `[1, C]`: softmax, then top-k.
    Softmax,
    /// Classification probabilities `[1, C]`: top-k as they are.
    Probabilities,
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output tensor name (default: the model's first output).
    pub name: Option<String>,
    /// Decoder.
    pub decoder: Decoder,
    /// Detections scoring below this are dropped. Default 0.25.
    #[serde(default = "default_conf")]
    pub conf_threshold: f32,
    /// Same-class boxes overlapping more than this (IoU) are suppressed.
    /// Default 0.45.
    #[serde(default = "default_iou")]
    pub iou_threshold: f32,
    /// Detections kept per frame at most. Default 300.
    #[serde(default = "default_max_det")]
    pub max_detections: usize,
    /// Classes reported by a classifier. Default 5.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_conf() -> f32 {
    0.25
}
fn default_iou() -> f32 {
    0.45
}
fn default_max_det() -> usize {
    300
}
fn default_top_k() -> usize {
    5
}

/// `[labels]`: class names, from exactly one source.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// Names listed in the manifest.
    pub inline: Option<Vec<String>>,
    /// A file in the model folder, one name per line.
    pub file: Option<PathBuf>,
    /// An ONNX metadata key holding the names (YOLO exports: `names`, a
    /// Python dict literal like `{0: 'person', 1: 'bicycle'}`).
    pub metadata_key: Option<String>,
}

/// `[memory]` of an OCR model: measured with `/usr/bin/time -v vision-gateway
/// annotate` on two frame sizes (the line through the two peaks).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// MiB held before any frame (process, runtime, both models), 1..=16384.
    pub runtime_mib: u64,
    /// Runtime working memory per detector input pixel, 1..=100000 bytes.
    pub det_bytes_per_pixel: u64,
}

/// The manifest of a model folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name, carried by every annotation.
    pub name: String,
    /// Model version, carried by every annotation.
    pub version: String,
    /// Task.
    pub task: Task,
    /// SPDX licence of the weights.
    pub licence: String,
    /// Where the files come from (package, version, path inside).
    pub provenance: String,
    /// The ONNX files.
    pub files: Vec<ModelFile>,
    /// Input description (tasks `detect`, `classify`).
    pub input: Option<InputSpec>,
    /// Output description (tasks `detect`, `classify`).
    pub output: Option<OutputSpec>,
    /// Class names (tasks `detect`, `classify`).
    #[serde(default)]
    pub labels: LabelsSpec,
    /// The runtime this model prefers: `auto` (default), `onnxruntime` or
    /// `tract`. `detect.backend` in the gateway's config, unless `auto`,
    /// overrides it.
    #[serde(default)]
    pub backend: crate::engine::Backend,
    /// The memory model of an OCR pair (task `ocr`; PP-OCRv4's if absent).
    pub memory: Option<MemorySpec>,
    /// Folder the manifest was loaded from (set by `load`).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Manifest {
    /// Parses and checks the text of a `model.toml` found in `dir`, without
    /// reading the model files (`load` then verifies their sha256).
    ///
    /// # Errors
    /// [`InferenceError::Manifest`] with every problem found.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, InferenceError> {
        let path = dir.join("model.toml");
        let mut m: Manifest = toml::from_str(text)
            .map_err(|e| InferenceError::Manifest { path: path.clone(), message: e.to_string() })?;
        if m.files.is_empty() {
            return Err(InferenceError::Manifest { path, message: "lists no files".into() });
        }
        m.dir = dir.to_owned();
        if let Some(mem) = m.memory {
            let mut problems = Vec::new();
            if m.task != Task::Ocr {
                problems.push("[memory] applies to task \"ocr\" only");
            }
            if !(1..=16_384).contains(&mem.runtime_mib) {
                problems.push("memory.runtime_mib must be 1..=16384");
            }
            if !(1..=100_000).contains(&mem.det_bytes_per_pixel) {
                problems.push("memory.det_bytes_per_pixel must be 1..=100000");
            }
            if !problems.is_empty() {
                return Err(InferenceError::Manifest { path, message: problems.join("; ") });
            }
        }
        if matches!(m.task, Task::Detect | Task::Classify) {
            let mut problems = Vec::new();
            match &m.input {
                None => problems.push("[input] is required for this task"),
                Some(i) if !(1..=MAX_INPUT_SIDE).contains(&i.width) || !(1..=MAX_INPUT_SIDE).contains(&i.height) => {
                    problems.push("input.width and input.height must be 1..=8192")
                }
                Some(_) => {}
            }
            match &m.output {
                None => problems.push("[output] is required for this task"),
                Some(o) => {
                    let detect = matches!(o.decoder, Decoder::Yolov8 | Decoder::Yolov5);
                    if detect != (m.task == Task::Detect) {
                        problems.push("output.decoder does not fit the task (detect: yolov8/yolov5, classify: softmax/probabilities)");
                    }
                }
            }
            let sources = [m.labels.inline.is_some(), m.labels.file.is_some(), m.labels.metadata_key.is_some()];
            if sources.iter().filter(|x| **x).count() > 1 {
                problems.push("[labels] takes one of inline, file or metadata_key");
            }
            if !problems.is_empty() {
                return Err(InferenceError::Manifest { path, message: problems.join("; ") });
            }
        }
        Ok(m)
    }

    /// Reads `dir/model.toml` and verifies every file's sha256.
    ///
    /// # Errors
    /// [`InferenceError::Manifest`], [`InferenceError::File`] or
    /// [`InferenceError::Checksum`].
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| InferenceError::Manifest { path: path.clone(), message: e.to_string() })?;
        let m = Self::parse(&text, dir)?;
        for f in &m.files {
            let p = dir.join(&f.path);
            let found = sha256_file(&p)?;
            if found != f.sha256.to_ascii_lowercase() {
                return Err(InferenceError::Checksum { path: p, expected: f.sha256.clone(), found });
            }
        }
        Ok(m)
    }

    /// sha256 over `role:sha256\n` of every file, in manifest order: one
    /// hash that names this exact model.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(format!("{}:{}\n", f.role, f.sha256.to_ascii_lowercase()).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Path of the file with `role`.
    pub fn file(&self, role: &str) -> Option<PathBuf> {
        self.files.iter().find(|f| f.role == role).map(|f| self.dir.join(&f.path))
    }
}

/// Lower-case hex sha256 of a file, streamed.
///
/// # Errors
/// [`InferenceError::File`] if it cannot be read.
pub fn sha256_file(p: &Path) -> Result<String, InferenceError> {
    let err = |source| InferenceError::File { path: p.to_owned(), source };
    let mut f = std::fs::File::open(p).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|source| InferenceError::File { path: p.to_owned(), source })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Largest character set file read (PaddleOCR's largest dictionary is
/// about 74 KB).
pub const MAX_CHARSET_BYTES: u64 = 4 << 20;

/// The text of an OCR bundle's `charset` file (one character a line).
///
/// # Errors
/// [`InferenceError::File`] if it cannot be read, [`InferenceError::Manifest`]
/// if it is larger than [`MAX_CHARSET_BYTES`] or not UTF-8.
pub fn read_charset(p: &Path) -> Result<String, InferenceError> {
    let f = std::fs::File::open(p).map_err(|source| InferenceError::File { path: p.to_owned(), source })?;
    let mut bytes = Vec::new();
    f.take(MAX_CHARSET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| InferenceError::File { path: p.to_owned(), source })?;
    let bad = |message: String| InferenceError::Manifest { path: p.to_owned(), message };
    if bytes.len() as u64 > MAX_CHARSET_BYTES {
        return Err(bad(format!("a character set file over {} MiB", MAX_CHARSET_BYTES >> 20)));
    }
    String::from_utf8(bytes).map_err(|e| bad(format!("the character set is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, sha: &str) {
        std::fs::write(dir.join("m.onnx"), b"not really onnx").unwrap();
        std::fs::write(
            dir.join("model.toml"),
            format!(
                "name = \"t\"\nversion = \"1\"\ntask = \"ocr\"\nlicence = \"MIT\"\nprovenance = \"test\"\n\
                 [[files]]\nrole = \"model\"\npath = \"m.onnx\"\nsha256 = \"{sha}\"\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn pinned_hash_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let good = hex::encode(Sha256::digest(b"not really onnx"));
        write_model(d.path(), &good);
        let m = Manifest::load(d.path()).unwrap();
        assert_eq!(m.task, Task::Ocr);
        assert_eq!(m.file("model").unwrap(), d.path().join("m.onnx"));

        write_model(d.path(), &"0".repeat(64));
        assert!(matches!(Manifest::load(d.path()), Err(InferenceError::Checksum { .. })));

        // A detector or classifier must describe its input and output.
        let text = std::fs::read_to_string(d.path().join("model.toml")).unwrap();
        std::fs::write(d.path().join("model.toml"), text.replace("task = \"ocr\"", "task = \"classify\"")).unwrap();
        let e = Manifest::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("[input] is required") && e.to_string().contains("[output] is required"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        write_model(d.path(), "ab");
        std::fs::remove_file(d.path().join("m.onnx")).unwrap();
        let e = Manifest::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("m.onnx"), "{e}");
    }

    #[test]
    fn an_ocr_memory_model_is_checked() {
        let base = "name = \"m\"\nversion = \"1\"\ntask = \"ocr\"\nlicence = \"x\"\nprovenance = \"x\"\n\
                    [[files]]\nrole = \"det\"\npath = \"d.onnx\"\nsha256 = \"ab\"\n";
        let dir = Path::new("/m");
        let ok =
            Manifest::parse(&format!("{base}[memory]\nruntime_mib = 130\ndet_bytes_per_pixel = 340\n"), dir).unwrap();
        assert_eq!(ok.memory.map(|m| (m.runtime_mib, m.det_bytes_per_pixel)), Some((130, 340)));
        assert!(Manifest::parse(base, dir).unwrap().memory.is_none(), "optional");
        let e = Manifest::parse(&format!("{base}[memory]\nruntime_mib = 0\ndet_bytes_per_pixel = 200000\n"), dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime_mib must be 1..=16384") && e.contains("det_bytes_per_pixel must be"), "{e}");
        let e = Manifest::parse(&format!("{base}[memory]\nruntime_mib = 1\n"), dir).unwrap_err().to_string();
        assert!(e.contains("det_bytes_per_pixel"), "{e}");
        let detect = base.replace("\"ocr\"", "\"classify\"");
        let e = Manifest::parse(&format!("{detect}[memory]\nruntime_mib = 1\ndet_bytes_per_pixel = 1\n"), dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[memory] applies to task \"ocr\" only"), "{e}");
    }

    #[test]
    fn a_charset_file_is_read_within_its_bound_and_as_utf8() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dict.txt");
        std::fs::write(&p, "a\nb\n\u{e9}\n").unwrap();
        assert_eq!(read_charset(&p).unwrap(), "a\nb\n\u{e9}\n");
        std::fs::write(&p, [b'a', b'\n', 0xff, b'\n']).unwrap();
        let e = read_charset(&p).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        std::fs::write(&p, vec![b'a'; MAX_CHARSET_BYTES as usize + 1]).unwrap();
        let e = read_charset(&p).unwrap_err().to_string();
        assert!(e.contains("over 4 MiB"), "{e}");
        let e = read_charset(&d.path().join("absent.txt")).unwrap_err();
        assert!(matches!(e, InferenceError::File { .. }), "{e}");
    }

    /// The bundled models, once fetched by `models/fetch`, match
    /// their pins. The test suite's command runs the fetch first.
    #[test]
    fn bundled_ppocr_model_matches_its_pins() {
        for bundle in ["ppocr-v6", "ppocr-v4"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(bundle);
            let m = Manifest::load(&dir).unwrap_or_else(|e| panic!("{bundle}: {e} (run: bash models/fetch)"));
            assert_eq!(m.task, Task::Ocr);
            assert!(m.file("det").is_some() && m.file("rec").is_some());
        }
    }
}
