//! The model crate of the vision gateway: manifests, sessions,
//! pre- and post-processing. Synchronous, no tokio.
//!
//! Owns what a model folder is and what loading one promises. A model is a
//! folder under `models/` with a `model.toml` manifest that names the task,
//! its ONNX files with their sha256, the licence and the provenance.
//! [`Manifest::load`] refuses a folder whose files are missing or whose bytes
//! are not the bytes the manifest pins; nothing is ever downloaded.
//!
//! Running a model: [`Model::load`] verifies the manifest, loads ONNX
//! Runtime from an explicit library path ([`runtime`]) and opens one session
//! per ONNX file; [`Model::annotate`] decodes a frame and returns an
//! [`Annotation`] (items with scores and boxes in the frame's pixels, the
//! model's name, version and hash, and timings). A frame that cannot be
//! decoded gives an annotation with `error` set, never a panic.
//!
//! Tasks: `ocr` (PP-OCR detection + recognition), `detect` (YOLOv8/YOLO11
//! and YOLOv5 exports, letterbox, per-class NMS) and `classify` (softmax or
//! probabilities, top-k).

#[cfg(feature = "bench")]
mod bare;
pub mod codes;
pub mod engine;
pub mod fields;
pub mod imageops;
mod manifest;
pub mod ocr;
pub mod runtime;
pub mod vision;

#[cfg(feature = "bench")]
pub use bare::BareInputs;

pub use manifest::{
    sha256_file, Colour, Decoder, Fit, InputSpec, LabelsSpec, Layout, Manifest, ModelFile, OutputSpec, Task,
};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// What can go wrong when loading or running a model.
#[derive(Debug, Error)]
pub enum InferenceError {
    /// The manifest could not be read or parsed.
    #[error("model manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model file is missing or unreadable.
    #[error("model file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A model file's bytes are not what the manifest pins.
    #[error(
        "model file {path} has sha256 {found}, the manifest pins {expected}; re-run the asset setup (models/fetch)"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Expected hash.
        expected: String,
        /// Actual hash.
        found: String,
    },
    /// ONNX Runtime could not be loaded or a session failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The frame could not be decoded.
    #[error("cannot decode the image: {0}")]
    Decode(String),
    /// Annotating the frame would need more memory than allowed, even with
    /// the model's input scaled down as far as it goes.
    #[error("the frame needs about {needed_mib} MiB to annotate, over the budget of {budget_mib} MiB (detect.max_frame_memory)")]
    TooLarge {
        /// Estimated need, MiB.
        needed_mib: u64,
        /// The budget, MiB.
        budget_mib: u64,
    },
    /// The memory budget is below what the model needs for any frame (its
    /// runtime and a small frame): found when it is loaded, not on every
    /// frame.
    #[error(
        "detect.max_frame_memory ({budget_mib} MiB) is below what model {model} needs for even a small frame \
         (about {needed_mib} MiB: its runtime and a 320x320 frame); raise detect.max_frame_memory"
    )]
    BudgetBelowModel {
        /// The model's name.
        model: String,
        /// Estimated need, MiB.
        needed_mib: u64,
        /// The budget, MiB.
        budget_mib: u64,
    },
}

/// Default memory budget for annotating one frame: fits a 1 GB box with the
/// rest of the gateway.
pub const DEFAULT_MAX_FRAME_MEMORY: u64 = 512 << 20;

impl InferenceError {
    /// Nothing here gets better by retrying without a change.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Which model produced an annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// sha256 over the manifest's file roles and hashes.
    pub hash: String,
    /// The runtime that ran it: `onnxruntime` or `tract` (empty in records
    /// written before the field existed, and for the `none` model).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// The runtime's version, e.g. `1.31.1` or `0.23.9`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_version: String,
}

impl ModelInfo {
    /// Name, version and hash, no backend (tests, the `none` model).
    pub fn new(name: &str, version: &str, hash: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            hash: hash.to_owned(),
            backend: String::new(),
            backend_version: String::new(),
        }
    }
}

/// One thing found on a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Text read (task `ocr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Class label (tasks `detect`, `classify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Score in [0, 1].
    pub score: f32,
    /// Axis-aligned box `[x0, y0, x1, y1]` in frame pixels.
    pub bbox: [f32; 4],
    /// Corner points (top-left, top-right, bottom-right, bottom-left) of a
    /// rotated box, in frame pixels (task `ocr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quad: Option<[[f32; 2]; 4]>,
}

impl Item {
    /// A text item from its quad.
    pub fn text(text: String, score: f32, quad: [[f32; 2]; 4]) -> Self {
        let xs = quad.map(|p| p[0]);
        let ys = quad.map(|p| p[1]);
        let bbox = [
            xs.iter().copied().fold(f32::MAX, f32::min),
            ys.iter().copied().fold(f32::MAX, f32::min),
            xs.iter().copied().fold(f32::MIN, f32::max),
            ys.iter().copied().fold(f32::MIN, f32::max),
        ];
        Self { text: Some(text), label: None, score, bbox, quad: Some(quad) }
    }
}

/// Milliseconds spent per step on one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// JPEG/PNG decoding.
    pub decode_ms: f64,
    /// Resizing, normalising, cropping inputs.
    pub preprocess_ms: f64,
    /// Inside ONNX Runtime.
    pub run_ms: f64,
    /// Decoding outputs (boxes, NMS, CTC), label fields included.
    pub postprocess_ms: f64,
    /// Of `postprocess_ms`: reading the declared label fields (constrained
    /// decoding of every line against every format). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fields_ms: f64,
    /// Reading the codes (`[detect.codes]`), on the worker's code thread:
    /// beside the model in `region = "frame"`, after it in `"labels"`. Not
    /// part of [`total_ms`](Self::total_ms). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub codes_ms: f64,
}

impl Timings {
    /// The frame's whole time: decode, pre-processing, the runs and
    /// post-processing (`fields_ms` is part of the last).
    pub fn total_ms(&self) -> f64 {
        self.decode_ms + self.preprocess_ms + self.run_ms + self.postprocess_ms
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The result of running a model on one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// The model.
    pub model: ModelInfo,
    /// Frame width in pixels (0 if it could not be decoded).
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// What was found, in reading order for text.
    pub items: Vec<Item>,
    /// Where the time went.
    pub timings: Timings,
    /// Why the frame could not be annotated, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Declared label fields read on the frame, by name (OCR models with
    /// `[[fields]]` declared; absent when none was read).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, fields::FieldValue>,
    /// Required fields not read, on a frame where text was read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Codes read on the frame (`[detect.codes]`), top to bottom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<codes::Code>,
    /// The code reader ran out of its time budget on this frame: codes
    /// may be missing (and fields with a `verify` rule unverified).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub codes_timeout: bool,
    /// The code reader failed on this frame (its decoder panicked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes_error: Option<String>,
    /// Fields whose print disagrees with the code that carries the same
    /// value (each field has `verified = false` and both values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// Fields read with a `verify` rule whose value no code on the frame
    /// carries: not checked, not a mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified: Vec<String>,
}

impl Annotation {
    /// An annotation of a frame that could not be read.
    pub fn failed(model: ModelInfo, error: String) -> Self {
        Self {
            model,
            width: 0,
            height: 0,
            items: Vec::new(),
            timings: Timings::default(),
            error: Some(error),
            fields: std::collections::BTreeMap::new(),
            missing: Vec::new(),
            codes: Vec::new(),
            codes_timeout: false,
            codes_error: None,
            mismatches: Vec::new(),
            unverified: Vec::new(),
        }
    }

    /// Whether a declared field is missing or uncertain.
    pub fn needs_review(&self) -> bool {
        !self.missing.is_empty() || self.fields.values().any(|f| f.uncertain)
    }
}

/// Checks every read field with a `verify` rule against the frame's
/// codes: sets its `verified` (and `code` when they differ) and lists it
/// in `mismatches` or `unverified`.
fn cross_check(a: &mut Annotation, fields: &[&fields::Field]) {
    for f in fields {
        let Some(rule) = &f.spec.verify else { continue };
        let Some(v) = a.fields.get_mut(&f.spec.name) else { continue };
        match codes::verify::check(&v.value, rule, &a.codes) {
            codes::verify::Verdict::Agree => v.verified = Some(true),
            codes::verify::Verdict::Differ(code) => {
                v.verified = Some(false);
                v.code = Some(code);
                a.mismatches.push(f.spec.name.clone());
            }
            codes::verify::Verdict::Unverified => a.unverified.push(f.spec.name.clone()),
        }
    }
}

/// Which session an input tensor is for (see `bare::BareInputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The detector (or the only session of a detector/classifier).
    Det,
    /// The OCR recogniser.
    Rec,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `libonnxruntime.so.1.31.1`.
    pub library: PathBuf,
    /// Threads ONNX Runtime may use inside one run.
    pub intra_threads: usize,
    /// Frames with more pixels are refused before decoding.
    pub max_pixels: u64,
    /// Memory one frame's annotation may take (see
    /// [`ocr::DetPlan::within`]); the OCR detector input is scaled down to
    /// fit it.
    pub max_frame_memory: u64,
    /// OCR: the frame's shorter side is brought up to this many pixels for
    /// the detector ([`ocr::DET_MIN_SIDE`], 736, as the reference; smaller
    /// is faster and reads small print less well: `vision-gateway bench
    /// ocr-side` prints the trade-off).
    pub ocr_side: usize,
    /// The runtime (`detect.backend`). `auto` defers to the manifest's
    /// `backend`, and if that is `auto` too, runs ONNX Runtime where
    /// `library` exists and tract otherwise.
    pub backend: engine::Backend,
    /// OCR: which raw text lines are kept (junk rejection).
    pub text_filter: ocr::TextFilter,
    /// Read the codes on each frame too (`[detect.codes]`); `None`: not.
    pub codes: Option<codes::CodeOptions>,
}

impl LoadOptions {
    /// Defaults for tools (`annotate`, benches, tests): one thread, 50
    /// Mpx, [`DEFAULT_MAX_FRAME_MEMORY`], the reference's OCR side.
    pub fn new(library: PathBuf, backend: engine::Backend) -> Self {
        Self {
            library,
            intra_threads: 1,
            max_pixels: 50_000_000,
            max_frame_memory: DEFAULT_MAX_FRAME_MEMORY,
            ocr_side: ocr::DET_MIN_SIDE,
            backend,
            text_filter: ocr::TextFilter::default(),
            codes: None,
        }
    }

    /// The engine these options run `manifest` with.
    pub fn engine_for(&self, manifest: &Manifest) -> engine::EngineKind {
        self.backend.over(manifest.backend).resolve(&self.library)
    }
}

/// What runs a frame: the OCR pipeline (detector + recogniser + label
/// fields) or one vision graph (detector or classifier), by the manifest's task.
enum Pipeline {
    Ocr(ocr::Ocr),
    Vision(vision::Vision),
}

/// A loaded model, ready to run. Not shared between threads: each worker
/// loads its own (one session per worker).
pub struct Model {
    /// Its verified manifest.
    pub manifest: Manifest,
    /// Name, version, hash.
    pub info: ModelInfo,
    pipeline: Pipeline,
    max_pixels: u64,
    max_frame_memory: u64,
    text_filter: ocr::TextFilter,
    codes: Option<codes::CodeReader>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the model in folder `dir`.
    ///
    /// # Errors
    /// Every manifest and checksum error of [`Manifest::load`];
    /// [`InferenceError::Runtime`] if ONNX Runtime or a session cannot be
    /// loaded; [`InferenceError::Manifest`] if the manifest does not fit the
    /// model.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self, InferenceError> {
        let manifest = Manifest::load(dir)?;
        let kind = opts.engine_for(&manifest);
        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            hash: manifest.hash(),
            backend: kind.name().to_owned(),
            backend_version: kind.version().to_owned(),
        };
        let file = |role: &str| {
            manifest.file(role).ok_or_else(|| InferenceError::Manifest {
                path: dir.join("model.toml"),
                message: format!("task {:?} needs a file with role {role:?}", manifest.task),
            })
        };
        let pipeline = match manifest.task {
            Task::Ocr => {
                let (det, rec) = (file("det")?, file("rec")?);
                let d = engine::open(kind, &opts.library, &det, opts.intra_threads)?;
                let r = engine::open(kind, &opts.library, &rec, opts.intra_threads)?;
                let charset = manifest.file("charset").map(|p| manifest::read_charset(&p)).transpose()?;
                let memory = manifest.memory.as_ref().map_or_else(ocr::MemoryModel::default, |m| ocr::MemoryModel {
                    runtime_bytes: m.runtime_mib << 20,
                    det_bytes_per_px: m.det_bytes_per_pixel,
                });
                let limits = ocr::Limits { max_frame_memory: opts.max_frame_memory, det_side: opts.ocr_side, memory };
                let o = ocr::Ocr::load(d, r, &rec, charset.as_deref(), limits)?;
                if let Err(InferenceError::TooLarge { needed_mib, budget_mib }) = o.plan_for(320, 320) {
                    return Err(InferenceError::BudgetBelowModel {
                        model: manifest.name.clone(),
                        needed_mib,
                        budget_mib,
                    });
                }
                Pipeline::Ocr(o)
            }
            Task::Detect | Task::Classify => Pipeline::Vision(vision::Vision::load(
                kind,
                &opts.library,
                &manifest,
                opts.intra_threads,
                opts.max_frame_memory,
            )?),
        };
        Ok(Self {
            manifest,
            info,
            pipeline,
            max_pixels: opts.max_pixels,
            max_frame_memory: opts.max_frame_memory,
            text_filter: opts.text_filter,
            codes: opts.codes.clone().map(codes::CodeReader::new),
        })
    }

    /// Whether a `width` x `height` frame can be annotated within
    /// `detect.max_frame_memory`, known from its header before it is
    /// decoded. OCR scales its detector input down to fit; a detector or
    /// classifier has a fixed input, so only the frame itself can be too
    /// large.
    ///
    /// # Errors
    /// [`InferenceError::TooLarge`] with the estimate.
    pub fn fits(&self, width: usize, height: usize) -> Result<(), InferenceError> {
        match &self.pipeline {
            Pipeline::Ocr(o) => {
                ocr::DetPlan::within_side(width, height, self.max_frame_memory, o.det_side(), o.memory()).map(drop)
            }
            Pipeline::Vision(v) => {
                let need = v.estimate_bytes(width, height);
                if need > self.max_frame_memory {
                    return Err(InferenceError::TooLarge {
                        needed_mib: need >> 20,
                        budget_mib: self.max_frame_memory >> 20,
                    });
                }
                Ok(())
            }
        }
    }

    /// Runs the model on decoded frames.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails (the frames themselves
    /// cannot cause this).
    /// [`InferenceError::TooLarge`] if a frame does not fit
    /// `max_frame_memory` (see [`fits`](Self::fits)).
    pub fn run(&mut self, frames: &[imageops::Bgr]) -> Result<Vec<Annotation>, InferenceError> {
        frames
            .iter()
            .map(|f| {
                self.fits(f.width, f.height)?;
                self.run_one(f, 0.0, &[])
            })
            .collect()
    }

    /// Compiles field declarations for this model.
    ///
    /// # Errors
    /// Every problem, one per line: a bad format, a character the model
    /// cannot read, or a model that does not read text.
    pub fn compile_fields<'a>(
        &self,
        specs: impl IntoIterator<Item = &'a fields::FieldSpec>,
    ) -> Result<Vec<fields::Field>, String> {
        let mut specs = specs.into_iter().peekable();
        if specs.peek().is_none() {
            return Ok(Vec::new());
        }
        let Pipeline::Ocr(o) = &self.pipeline else {
            return Err(format!(
                "label fields need a text-reading (ocr) model; {} is a {:?} model",
                self.info.name, self.manifest.task
            ));
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for s in specs {
            match fields::Field::compile(s, o.charset()) {
                Ok(f) => out.push(f),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems.join("\n"))
        }
    }

    fn run_one(
        &mut self,
        frame: &imageops::Bgr,
        decode_ms: f64,
        fields: &[&fields::Field],
    ) -> Result<Annotation, InferenceError> {
        let whole = [0, 0, frame.width, frame.height];
        // In frame mode the codes are read beside the model.
        let mut ticket = match &mut self.codes {
            Some(r) if r.options().region == codes::Region::Frame => {
                Some(r.start(codes::luma(frame, whole), frame.width as u32, frame.height as u32, [0.0; 2]))
            }
            _ => None,
        };
        let (items, t, fields_read, missing) = match &mut self.pipeline {
            Pipeline::Ocr(o) => {
                let r = o.read(frame, fields, &self.text_filter)?;
                (r.items, r.times, r.fields, r.missing)
            }
            Pipeline::Vision(v) => {
                let (items, t) = v.run(frame)?;
                (items, t, std::collections::BTreeMap::new(), Vec::new())
            }
        };
        if let (Some(r), None) = (&mut self.codes, &ticket) {
            let text: Vec<[f32; 4]> = items.iter().filter(|i| i.text.is_some()).map(|i| i.bbox).collect();
            let rect = codes::label_region(&text, frame.width, frame.height);
            let (w, h) = ((rect[2] - rect[0]) as u32, (rect[3] - rect[1]) as u32);
            ticket = Some(r.start(codes::luma(frame, rect), w, h, [rect[0] as f32, rect[1] as f32]));
        }
        let mut a = Annotation {
            model: self.info.clone(),
            width: frame.width as u32,
            height: frame.height as u32,
            items,
            timings: Timings {
                decode_ms,
                preprocess_ms: t.preprocess_ms,
                run_ms: t.run_ms,
                postprocess_ms: t.postprocess_ms,
                fields_ms: t.fields_ms,
                codes_ms: 0.0,
            },
            error: None,
            fields: fields_read,
            missing,
            codes: Vec::new(),
            codes_timeout: false,
            codes_error: None,
            mismatches: Vec::new(),
            unverified: Vec::new(),
        };
        if let (Some(r), Some(ticket)) = (&mut self.codes, ticket) {
            let (outcome, ms) = r.finish(ticket);
            a.timings.codes_ms = ms;
            match outcome {
                codes::Outcome::Read(c) => a.codes = c,
                codes::Outcome::Timeout => a.codes_timeout = true,
                codes::Outcome::Failed(e) => a.codes_error = Some(e),
            }
        }
        cross_check(&mut a, fields);
        Ok(a)
    }

    /// Decodes JPEG/PNG bytes and runs the model. A frame that cannot be
    /// decoded, has more than `max_pixels` or does not fit
    /// `max_frame_memory` gives an annotation with `error` set; the last
    /// two are found from the header, before anything is decoded.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails.
    pub fn annotate(&mut self, bytes: &[u8]) -> Result<Annotation, InferenceError> {
        self.annotate_with(bytes, &[])
    }

    /// OCR models: the detector side for the next frames (`detect.ocr_side`,
    /// or a camera's own). Other models have a fixed input; no effect.
    pub fn set_ocr_side(&mut self, side: usize) {
        if let Pipeline::Ocr(o) = &mut self.pipeline {
            o.set_det_side(side);
        }
    }

    /// As [`annotate`](Self::annotate), reading `fields` (compiled by
    /// [`compile_fields`](Self::compile_fields)) off the frame's lines.
    ///
    /// # Errors
    /// As [`annotate`](Self::annotate).
    pub fn annotate_with(&mut self, bytes: &[u8], fields: &[&fields::Field]) -> Result<Annotation, InferenceError> {
        let t = Instant::now();
        let frame = imageops::dimensions(bytes)
            .and_then(|(w, h)| {
                if u64::from(w) * u64::from(h) > self.max_pixels {
                    return Err(InferenceError::Decode(format!("{w}x{h} is more than {} pixels", self.max_pixels)));
                }
                self.fits(w as usize, h as usize)
            })
            .and_then(|()| imageops::decode(bytes, self.max_pixels));
        match frame {
            Ok(frame) => self.run_one(&frame, t.elapsed().as_secs_f64() * 1e3, fields),
            Err(e) => {
                let mut a = Annotation::failed(self.info.clone(), e.to_string());
                a.timings.decode_ms = t.elapsed().as_secs_f64() * 1e3;
                Ok(a)
            }
        }
    }
}
