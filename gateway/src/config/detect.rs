//! `[detect]`: the model, its runtime and threads, the memory budget of a
//! frame, the raw-text filter (`[detect.text]`) and the code reader
//! (`[detect.codes]`, in `codes.rs`).

use super::Validator;
use crate::util::units::format_size;
use inference::engine::Backend;
use serde::Deserialize;
use std::path::PathBuf;

/// `[detect]`: the inference stage.
#[derive(Debug, Default, Deserialize)]
pub struct RawDetect {
    /// Run the model on every frame. `false` (boxes without inference,
    /// e.g. armv7): see `when_disabled`. Default `true`.
    pub enabled: Option<bool>,
    /// With `enabled = false`: `"forward"` (default) sends every frame's
    /// record upstream with an empty annotation (model `"none"`) and samples
    /// images by `[sample]`, freeing the log; `"hold"` keeps frames in the
    /// log unannotated until a model is enabled (the log fills up).
    pub when_disabled: Option<String>,
    /// Model folder (with `model.toml`). Default
    /// `/usr/share/vision-gateway/models/ppocr-v6`.
    pub model: Option<PathBuf>,
    /// Path of `libonnxruntime.so.1.31.1`. Default: `$ORT_DYLIB_PATH`, else
    /// `/usr/lib/vision-gateway/libonnxruntime.so.1.31.1`.
    pub onnxruntime: Option<PathBuf>,
    /// Inference worker threads, each with its own session. Default 1.
    pub workers: Option<u32>,
    /// Threads ONNX Runtime may use inside one inference. Default 1.
    pub intra_threads: Option<u32>,
    /// Removed: it was validated but never used (each worker runs one frame
    /// at a time). Still accepted, and ignored, so that older config files
    /// load.
    pub batch: Option<u32>,
    /// Frames waiting for a worker (bounded queue). Default 8.
    pub queue: Option<u32>,
    /// Memory one frame's annotation may take; the OCR detector input is
    /// scaled down to fit, a frame that cannot fit gets an error
    /// annotation. Default `"512MiB"` (a 1 GB box).
    pub max_frame_memory: Option<toml::Value>,
    /// OCR: the frame's shorter side is brought up to this for the text
    /// detector, 32..=2016 in steps of 32. Default 736 (the reference's);
    /// smaller is faster and reads small print less well (`vision-gateway
    /// bench ocr-side` prints the trade-off on your frames).
    pub ocr_side: Option<u32>,
    /// The runtime: `"auto"` (default: ONNX Runtime where its library is,
    /// tract otherwise; a manifest's `backend` is followed), `"onnxruntime"`
    /// or `"tract"` (compiled in, no library).
    pub backend: Option<String>,
    /// OCR: which raw text lines are kept (junk rejection).
    #[serde(default)]
    pub text: RawText,
    /// `[detect.codes]`: read the codes on the label too (off when
    /// absent).
    pub codes: Option<super::codes::RawCodes>,
    /// `[[detect.camera]]`: settings of one camera that differ from the
    /// stage's (its OCR detector side).
    #[serde(default)]
    pub camera: Vec<RawCamera>,
}

/// `[[detect.camera]]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawCamera {
    /// The camera id (the topic's camera part).
    pub id: Option<String>,
    /// Its OCR detector side, as `detect.ocr_side`: a camera whose labels
    /// fill the frame reads as well at its native size, faster.
    pub ocr_side: Option<u32>,
}

/// `[detect.text]`: which raw text lines are kept (junk rejection).
#[derive(Debug, Default, Deserialize)]
pub struct RawText {
    /// Lines scoring below this are dropped. Default 0.85 (the reference
    /// keeps down to 0.5; junk read off marks on frames without a label
    /// scored 0.50-0.94, real label lines 0.91 and up).
    pub min_score: Option<f32>,
    /// Lines whose box is less tall than this many pixels are dropped.
    /// Default 8.
    pub min_height: Option<f32>,
    /// Lines wider than this many box heights per character are dropped
    /// (0 turns the rule off). Default 1.5.
    pub max_aspect_per_char: Option<f32>,
    /// Lines with fewer characters than this (spaces aside) are dropped.
    /// Default 2.
    pub min_chars: Option<u32>,
    /// Lines with fewer distinct characters than this (spaces aside) are
    /// dropped (`1111` read off tick marks). Default 2; 0 turns it off.
    pub min_distinct_chars: Option<u32>,
}

/// Validated `[detect]`.
#[derive(Debug, Clone)]
pub struct DetectConfig {
    /// Whether the model runs.
    pub enabled: bool,
    /// With the model off: hold frames in the log instead of forwarding.
    pub hold_when_disabled: bool,
    /// Model folder.
    pub model: PathBuf,
    /// ONNX Runtime library.
    pub onnxruntime: PathBuf,
    /// Worker threads.
    pub workers: u32,
    /// Intra-op threads.
    pub intra_threads: u32,
    /// Queue length.
    pub queue: u32,
    /// Memory budget of one frame's annotation.
    pub max_frame_memory: u64,
    /// OCR detector side.
    pub ocr_side: usize,
    /// OCR detector side per camera id, where it differs.
    pub camera_sides: std::collections::BTreeMap<String, usize>,
    /// Runtime.
    pub backend: inference::engine::Backend,
    /// Raw text filter (`[detect.text]`).
    pub text: inference::ocr::TextFilter,
    /// The code reader (`[detect.codes]`); `None`: codes are not read.
    pub codes: Option<inference::codes::CodeOptions>,
}

/// Checks `[detect]`; ONNX Runtime's library is looked for only when the
/// backend asks for it by name.
pub(super) fn validate(v: &mut Validator<'_>, d: RawDetect) -> DetectConfig {
    let detect = DetectConfig {
        enabled: d.enabled.unwrap_or(true),
        hold_when_disabled: match d.when_disabled.as_deref() {
            None | Some("forward") => false,
            Some("hold") => true,
            Some(o) => {
                v.problem("detect.when_disabled", format!("{o:?} is not \"forward\" or \"hold\""));
                false
            }
        },
        model: d.model.unwrap_or_else(|| PathBuf::from("/usr/share/vision-gateway/models/ppocr-v6")),
        onnxruntime: d
            .onnxruntime
            .or_else(|| v.env.var("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/usr/lib/vision-gateway/libonnxruntime.so.1.31.1")),
        workers: v.range("detect.workers", d.workers, 1, 1..=64),
        intra_threads: v.range("detect.intra_threads", d.intra_threads, 1, 1..=64),
        queue: v.range("detect.queue", d.queue, 8, 1..=4096),
        max_frame_memory: max_frame_memory(v, d.max_frame_memory.as_ref()),
        ocr_side: ocr_side(v, "detect.ocr_side", d.ocr_side),
        camera_sides: camera_sides(v, &d.camera),
        backend: backend(v, d.backend.as_deref()),
        text: text_filter(v, &d.text),
        codes: super::codes::validate(v, d.codes),
    };
    if detect.enabled && detect.backend == Backend::Onnxruntime && !detect.onnxruntime.is_file() {
        v.problem(
            "detect.backend",
            format!(
                "\"onnxruntime\" needs its library, and there is no file at {} (detect.onnxruntime); \
                 use \"tract\" or \"auto\" on a box without ONNX Runtime",
                detect.onnxruntime.display()
            ),
        );
    }
    detect
}

fn max_frame_memory(v: &mut Validator<'_>, raw: Option<&toml::Value>) -> u64 {
    let m = v.size("detect.max_frame_memory", raw, inference::DEFAULT_MAX_FRAME_MEMORY);
    if m < 128 << 20 {
        v.problem(
            "detect.max_frame_memory",
            format!(
                "{} is too small: the runtime and models alone take about 100MiB (at least 128MiB)",
                format_size(m)
            ),
        );
    }
    m
}

fn ocr_side(v: &mut Validator<'_>, key: &str, raw: Option<u32>) -> usize {
    let side = v.range(key, raw, inference::ocr::DET_MIN_SIDE as u32, 32..=2016);
    if side % 32 != 0 {
        v.problem(key, format!("{side} is not a multiple of 32 (the detector works in steps of 32)"));
    }
    side as usize
}

/// `[[detect.camera]]`: each needs an id, once, and something to set.
fn camera_sides(v: &mut Validator<'_>, raw: &[RawCamera]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (i, c) in raw.iter().enumerate() {
        let key = format!("detect.camera[{i}]");
        let Some(id) = c.id.as_deref().filter(|id| !id.is_empty()) else {
            v.problem(&format!("{key}.id"), "is required (the camera id, as in the topic)".to_owned());
            continue;
        };
        let Some(raw_side) = c.ocr_side else {
            v.problem(&key, format!("camera {id:?} sets nothing (ocr_side)"));
            continue;
        };
        let side = ocr_side(v, &format!("{key}.ocr_side"), Some(raw_side));
        if out.insert(id.to_owned(), side).is_some() {
            v.problem(&format!("{key}.id"), format!("camera {id:?} is listed twice"));
        }
    }
    out
}

fn backend(v: &mut Validator<'_>, raw: Option<&str>) -> Backend {
    match raw.map(|b| (b, Backend::parse(b))) {
        None => Backend::Auto,
        Some((_, Some(b))) => b,
        Some((b, None)) => {
            v.problem("detect.backend", format!("{b:?} is not \"auto\", \"onnxruntime\" or \"tract\""));
            Backend::Auto
        }
    }
}

/// `[detect.text]` over [`inference::ocr::TextFilter::default`].
pub(super) fn text_filter(v: &mut Validator<'_>, t: &RawText) -> inference::ocr::TextFilter {
    let def = inference::ocr::TextFilter::default();
    let mut num = |key: &str, x: Option<f32>, default: f32, hi: f32| match x {
        Some(x) if !(0.0..=hi).contains(&x) => {
            v.problem(key, format!("{x} is out of range 0..={hi}"));
            default
        }
        Some(x) => x,
        None => default,
    };
    inference::ocr::TextFilter {
        min_score: num("detect.text.min_score", t.min_score, def.min_score, 1.0),
        min_height: num("detect.text.min_height", t.min_height, def.min_height, 10_000.0),
        // 0 turns the rule off.
        max_aspect_per_char: match num(
            "detect.text.max_aspect_per_char",
            t.max_aspect_per_char,
            def.max_aspect_per_char,
            1000.0,
        ) {
            0.0 => f32::INFINITY,
            x => x,
        },
        min_chars: t.min_chars.map_or(def.min_chars, |n| n as usize),
        min_distinct_chars: t.min_distinct_chars.map_or(def.min_distinct_chars, |n| n as usize),
    }
}
