//! PP-OCR text reading: detection (DB) then recognition (CTC), following
//! RapidOCR's reference pipeline without the angle classifier (1.4.4 for
//! PP-OCRv4, 3.10.0 for PP-OCRv6: the same steps and parameters).
//!
//! Promise: on the same pixels, the texts are those the reference reads,
//! the boxes within 2 px and the scores within 1e-3 (checked by the golden
//! test against Python onnxruntime 1.31.1 running the reference, for each
//! bundled model).

pub mod ctc;
pub mod db;
mod filter;

pub use filter::TextFilter;

use crate::engine::Engine;
use crate::fields::Field;
use crate::imageops::{self, Bgr};
use crate::{InferenceError, Item};
use ndarray::Array4;
use std::time::Instant;

/// Largest side before detection (reference `max_side_len`).
const MAX_SIDE: usize = 2000;
/// Detector input: the shorter side is brought up to this (reference
/// `limit_side_len`, `limit_type = min`); `detect.ocr_side` changes it.
pub const DET_MIN_SIDE: usize = 736;
/// Largest side of the detector's input. The reference brings the shorter
/// side up to 736 with no bound on the longer one, so a 2000x1 frame asked
/// for a 1472000x736 tensor (13 GB); the scale is capped so that neither
/// side passes this, which leaves ordinary frames (640x480 -> 992x736)
/// exactly as the reference has them.
const DET_MAX_SIDE: f64 = 2016.0;
/// ONNX Runtime's working memory per detector input pixel for PP-OCRv4,
/// measured with `vision-gateway annotate` (peak RSS 224 MiB for a 992x736
/// input, 788 MiB for 1984x1984: 184 bytes per pixel), rounded up. A
/// manifest's `[memory]` gives its own model's figure.
pub const DET_BYTES_PER_PX: usize = 200;
/// The process, the runtime and both models before any frame (the same
/// measurement's intercept), rounded up.
pub const RUNTIME_BYTES: usize = 100 << 20;
/// The resized frame (3), its f32 tensor (12) and the f32 probability map
/// (4), per detector input pixel, on top of the runtime's own.
const PREPROCESS_PX_BYTES: u64 = 3 + 12 + 4;

/// The memory model of an OCR model pair: what the runtime holds before any
/// frame, and its working memory per detector input pixel (a manifest's
/// `[memory]`, measured per model; PP-OCRv4's by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryModel {
    /// Bytes before any frame: process, runtime, both models.
    pub runtime_bytes: u64,
    /// Runtime working memory per detector input pixel.
    pub det_bytes_per_px: u64,
}

/// What bounds a reader: its frame memory budget (bytes), its detector
/// side, and the memory model of its files (a manifest's `[memory]`,
/// PP-OCRv4's figures by default), all decided where it loads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `detect.max_frame_memory`, bytes.
    pub max_frame_memory: u64,
    /// `detect.ocr_side` (a camera's own side is set per frame).
    pub det_side: usize,
    /// What the runtime and the detector take.
    pub memory: MemoryModel,
}

impl Default for MemoryModel {
    fn default() -> Self {
        Self { runtime_bytes: RUNTIME_BYTES as u64, det_bytes_per_px: DET_BYTES_PER_PX as u64 }
    }
}

impl MemoryModel {
    /// Bytes per detector input pixel in all.
    fn px_bytes(self) -> u64 {
        self.det_bytes_per_px + PREPROCESS_PX_BYTES
    }
}
/// Recogniser input height and minimum width.
const REC_H: usize = 48;
const REC_W: usize = 320;
/// Largest width-to-height ratio of a recogniser input (a crop thinner than
/// 1:100 is squeezed): bounds its tensor at 48 x 4800.
const REC_MAX_RATIO: f64 = 100.0;
/// Crops per recogniser batch (the reference batches by 6; batching
/// changes padding and so, slightly, the scores).
const REC_BATCH: usize = 6;
/// Texts scoring below this are dropped (reference `text_score`).
const TEXT_SCORE: f32 = 0.5;

/// Time spent in each part, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    /// Resizing and normalising.
    pub preprocess_ms: f64,
    /// Inside ONNX Runtime.
    pub run_ms: f64,
    /// Box finding, cropping, decoding.
    pub postprocess_ms: f64,
    /// Of `postprocess_ms`: label fields.
    pub fields_ms: f64,
}

/// A loaded PP-OCR detector + recogniser pair.
pub struct Ocr {
    det: Box<dyn Engine>,
    rec: Box<dyn Engine>,
    charset: Vec<String>,
    params: db::DbParams,
    max_frame_memory: u64,
    det_side: usize,
    memory: MemoryModel,
    /// When set, every session input is also kept here (for the bare
    /// `session.run` baseline of `vision-gateway bench detect`).
    pub(crate) capture: Option<Vec<(crate::Stage, Array4<f32>)>>,
}

impl std::fmt::Debug for Ocr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ocr").field("classes", &self.charset.len()).finish_non_exhaustive()
    }
}

/// Python's `round(x / 32) * 32` (ties to even), at least 32.
/// The sizes the detector path allocates for a frame of `width` x
/// `height`, computed before anything is allocated (the resource model of
/// PP-OCR): whatever the frame's shape, the detector input stays within
/// 2016 x 2016 (rounded to 32) and at least 32 x 32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetPlan {
    /// Frame size after the first bring-down (`MAX_SIDE`).
    pub width: usize,
    /// See `width`.
    pub height: usize,
    /// Detector input size.
    pub det_width: usize,
    /// See `det_width`.
    pub det_height: usize,
    /// Original height over `height` (to map boxes back).
    pub ratio_h: f64,
    /// Original width over `width`.
    pub ratio_w: f64,
}

impl DetPlan {
    /// The plan for a frame (sides of 0 are taken as 1), with the
    /// reference's detector side ([`DET_MIN_SIDE`]).
    pub fn of(width: usize, height: usize) -> Self {
        Self::with_side(width, height, DET_MIN_SIDE)
    }

    /// As [`of`](Self::of), with the frame's shorter side brought up to
    /// `side` (taken within 32..=2016).
    pub fn with_side(width: usize, height: usize, side: usize) -> Self {
        let side = side.clamp(32, DET_MAX_SIDE as usize) as f64;
        let (width, height) = (width.max(1), height.max(1));
        let (w, h, ratio_h, ratio_w) = if width.max(height) > MAX_SIDE {
            let r = MAX_SIDE as f64 / width.max(height) as f64;
            let (h, w) = (round32((height as f64 * r).trunc()), round32((width as f64 * r).trunc()));
            (w, h, height as f64 / h as f64, width as f64 / w as f64)
        } else {
            (width, height, 1.0, 1.0)
        };
        let ratio = if (h.min(w) as f64) < side { side / h.min(w) as f64 } else { 1.0 };
        let ratio = ratio.min(DET_MAX_SIDE / h.max(w) as f64);
        let (det_height, det_width) = (round32((h as f64 * ratio).trunc()), round32((w as f64 * ratio).trunc()));
        Self { width: w, height: h, det_width, det_height, ratio_h, ratio_w }
    }

    /// The plan for a frame within `budget` bytes of memory: as
    /// [`of`](Self::of), with the detector input scaled down (keeping its
    /// aspect, in steps of 32) until the estimate fits. The estimate is
    /// [`RUNTIME_BYTES`] + the decoded frame twice (RGB, BGR) + the
    /// pre-processing buffers + [`DET_BYTES_PER_PX`] per detector input
    /// pixel (ONNX Runtime's working memory, measured). Frames of the usual
    /// sizes are not changed by the default budget (640x480 needs about
    /// 250 MiB).
    ///
    /// # Errors
    /// [`InferenceError::TooLarge`] if even a 32x32 detector input does not
    /// fit.
    pub fn within(width: usize, height: usize, budget: u64) -> Result<Self, InferenceError> {
        Self::within_side(width, height, budget, DET_MIN_SIDE, MemoryModel::default())
    }

    /// As [`within`](Self::within) with the detector side `side` (see
    /// [`with_side`](Self::with_side)).
    ///
    /// # Errors
    /// As [`within`](Self::within).
    pub fn within_side(
        width: usize,
        height: usize,
        budget: u64,
        side: usize,
        mem: MemoryModel,
    ) -> Result<Self, InferenceError> {
        let mut p = Self::with_side(width, height, side);
        let need = p.estimate_with(width, height, mem);
        if need <= budget {
            return Ok(p);
        }
        let fixed = p.fixed_bytes(width, height, mem);
        let too_large = |n: u64| InferenceError::TooLarge { needed_mib: n >> 20, budget_mib: budget >> 20 };
        // What it needs scaled down as far as it goes: the least that would do.
        let least = fixed + 32 * 32 * mem.px_bytes();
        let room = budget.checked_sub(fixed).ok_or_else(|| too_large(least))? / mem.px_bytes();
        if room < 32 * 32 {
            return Err(too_large(least));
        }
        let s = (room as f64 / (p.det_width * p.det_height) as f64).sqrt();
        let down = |v: usize| (((v as f64 * s) as usize) / 32).max(1) * 32;
        p.det_width = down(p.det_width);
        p.det_height = down(p.det_height);
        Ok(p)
    }

    /// Estimated bytes to annotate a `width` x `height` frame with this
    /// plan, for PP-OCRv4's memory model.
    pub fn estimate_bytes(&self, width: usize, height: usize) -> u64 {
        self.estimate_with(width, height, MemoryModel::default())
    }

    /// As [`estimate_bytes`](Self::estimate_bytes) for `mem`.
    pub fn estimate_with(&self, width: usize, height: usize, mem: MemoryModel) -> u64 {
        self.fixed_bytes(width, height, mem) + (self.det_width * self.det_height) as u64 * mem.px_bytes()
    }

    /// The part of the estimate that does not depend on the detector input:
    /// runtime, the decoded frame (RGB and BGR) and the brought-down frame.
    fn fixed_bytes(&self, width: usize, height: usize, mem: MemoryModel) -> u64 {
        mem.runtime_bytes + (width.max(1) * height.max(1) * 6) as u64 + (self.width * self.height * 3) as u64
    }

    /// Bytes the pre-processing allocates at most: the brought-down frame,
    /// the resized frame (BGR u8) and the f32 input tensor, plus the f32
    /// probability map.
    pub fn preprocess_bytes(&self) -> usize {
        let det = self.det_width * self.det_height;
        self.width * self.height * 3 + det * 3 + det * 3 * 4 + det * 4
    }
}

fn round32(v: f64) -> usize {
    ((v / 32.0).round_ties_even() as usize * 32).max(32)
}

/// BGR u8 -> NCHW f32 with `(x / 255 - 0.5) / 0.5`, into batch slot `n`,
/// left-aligned (the rest stays zero).
fn normalize_into(img: &Bgr, t: &mut Array4<f32>, n: usize) {
    for y in 0..img.height {
        for x in 0..img.width {
            for c in 0..3 {
                t[[n, c, y, x]] = (f32::from(img.at(x, y, c)) / 255.0 - 0.5) / 0.5;
            }
        }
    }
}

impl Ocr {
    /// Loads the two sessions and the character set: `charset` (the text
    /// of a manifest's `charset` file, one character a line, as PaddleOCR's
    /// dictionaries) if given, else the recogniser's `character` metadata.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] or [`InferenceError::Manifest`].
    pub fn load(
        det: Box<dyn Engine>,
        rec: Box<dyn Engine>,
        rec_path: &std::path::Path,
        charset: Option<&str>,
        limits: Limits,
    ) -> Result<Self, InferenceError> {
        let Limits { max_frame_memory, det_side, memory } = limits;
        let chars = match charset {
            Some(text) => text.strip_suffix('\n').unwrap_or(text).to_owned(),
            None => rec.metadata("character").ok_or_else(|| {
                InferenceError::Runtime(format!(
                    "{}: no `character` metadata (a manifest may give the character set as a file with role \"charset\")",
                    rec_path.display()
                ))
            })?,
        };
        Ok(Self {
            det,
            rec,
            charset: ctc::charset(&chars),
            params: db::DbParams::default(),
            max_frame_memory,
            det_side,
            memory,
            capture: None,
        })
    }

    /// Reads the text on one image, keeps the raw lines that pass `filter`
    /// and reads `fields` off every line (see [`crate::fields::assign`]).
    /// Items are in reading order (top to bottom, left to right), boxes in
    /// the image's pixel coordinates.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails.
    pub fn read(&mut self, raw: &Bgr, fields: &[&Field], filter: &TextFilter) -> Result<Read, InferenceError> {
        let mut times = Times::default();
        let t0 = Instant::now();
        let plan = self.plan_for(raw.width, raw.height)?;
        let (ratio_h, ratio_w) = (plan.ratio_h, plan.ratio_w);
        // Very large frames are brought down first, as the reference does.
        let img = if (plan.width, plan.height) != (raw.width, raw.height) {
            imageops::resize_linear(raw, plan.width, plan.height)
        } else {
            raw.clone()
        };
        let (h, w) = (img.height, img.width);
        let (dh, dw) = (plan.det_height, plan.det_width);
        let resized = imageops::resize_linear(&img, dw, dh);
        let mut input = Array4::<f32>::zeros((1, 3, dh, dw));
        normalize_into(&resized, &mut input, 0);
        times.preprocess_ms += t0.elapsed().as_secs_f64() * 1e3;

        if let Some(c) = &mut self.capture {
            c.push((crate::Stage::Det, input.clone()));
        }
        let t1 = Instant::now();
        let pred = self.det.run(input.view())?;
        let shape = pred.shape().to_vec();
        if shape.len() != 4 || shape[1] != 1 {
            return Err(InferenceError::Runtime(format!("detector output shape {shape:?}, expected [1, 1, H, W]")));
        }
        let (ph, pw) = (shape[2], shape[3]);
        let map: Vec<f32> = pred.iter().copied().collect();
        drop(pred);
        times.run_ms += t1.elapsed().as_secs_f64() * 1e3;

        let t2 = Instant::now();
        let mut quads: Vec<[[f32; 2]; 4]> = Vec::new();
        for (q, _) in db::boxes_from_map(&map, (pw, ph), (w, h), self.params) {
            let q = order_clockwise(q.map(|p| [p[0] as f32, p[1] as f32]));
            let q = q.map(|p| [p[0].clamp(0.0, w as f32 - 1.0).trunc(), p[1].clamp(0.0, h as f32 - 1.0).trunc()]);
            if dist(q[0], q[1]) as i64 <= 3 || dist(q[0], q[3]) as i64 <= 3 {
                continue;
            }
            quads.push(q);
        }
        sort_reading_order(&mut quads);
        let crops: Vec<Bgr> = quads.iter().filter_map(|q| crop(&img, q)).collect();
        times.postprocess_ms += t2.elapsed().as_secs_f64() * 1e3;
        if crops.len() != quads.len() {
            return Err(InferenceError::Runtime("a text box could not be cropped".into()));
        }

        let texts = self.recognise(&crops, &mut times, fields)?;
        let t3 = Instant::now();
        let mut items = Vec::new();
        let mut lines = Vec::new();
        for (q, r) in quads.iter().zip(texts) {
            let quad = q.map(|p| {
                [
                    (f64::from(p[0]) * ratio_w).clamp(0.0, raw.width as f64) as f32,
                    (f64::from(p[1]) * ratio_h).clamp(0.0, raw.height as f64) as f32,
                ]
            });
            let item = Item::text(r.text.clone(), r.score, quad);
            if !fields.is_empty() && filter.keeps_shape(&item) {
                lines.push(crate::fields::Line { raw: r.text, bbox: item.bbox, decoded: r.decoded });
            }
            if r.score < TEXT_SCORE || !filter.keeps(&item) {
                continue;
            }
            items.push(item);
        }
        // Fields are read off every line of a plausible shape, whatever its
        // raw score.
        let t4 = Instant::now();
        let (fields_read, missing) = crate::fields::assign(fields, &lines, !items.is_empty());
        times.fields_ms += t4.elapsed().as_secs_f64() * 1e3;
        times.postprocess_ms += t3.elapsed().as_secs_f64() * 1e3;
        Ok(Read { items, times, fields: fields_read, missing })
    }

    fn recognise(
        &mut self,
        crops: &[Bgr],
        times: &mut Times,
        fields: &[&Field],
    ) -> Result<Vec<Recognised>, InferenceError> {
        let ratios: Vec<f64> =
            crops.iter().map(|c| (c.width as f64 / c.height.max(1) as f64).min(REC_MAX_RATIO)).collect();
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
        let mut out: Vec<Recognised> = (0..crops.len()).map(|_| Recognised::default()).collect();
        for chunk in order.chunks(REC_BATCH) {
            let t = Instant::now();
            let max_ratio = chunk.iter().map(|&i| ratios[i]).fold(REC_W as f64 / REC_H as f64, f64::max);
            let width = (REC_H as f64 * max_ratio) as usize;
            let mut input = Array4::<f32>::zeros((chunk.len(), 3, REC_H, width));
            for (n, &i) in chunk.iter().enumerate() {
                let c = &crops[i];
                let rw = ((REC_H as f64 * ratios[i]).ceil() as usize).min(width).max(1);
                let resized = imageops::resize_linear(c, rw, REC_H);
                normalize_into(&resized, &mut input, n);
            }
            times.preprocess_ms += t.elapsed().as_secs_f64() * 1e3;
            if let Some(c) = &mut self.capture {
                c.push((crate::Stage::Rec, input.clone()));
            }
            let t = Instant::now();
            let probs = self.rec.run(input.view())?;
            let shape = probs.shape().to_vec();
            if shape.len() != 3 || shape[0] != chunk.len() {
                return Err(InferenceError::Runtime(format!("recogniser output shape {shape:?}, expected [N, T, C]")));
            }
            let flat: Vec<f32> = probs.iter().copied().collect();
            drop(probs);
            times.run_ms += t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let (steps, classes) = (shape[1], shape[2]);
            for (n, &i) in chunk.iter().enumerate() {
                let probs = &flat[n * steps * classes..(n + 1) * steps * classes];
                let (text, score) = ctc::decode(probs, steps, classes, &self.charset);
                out[i] = Recognised {
                    text,
                    score,
                    decoded: {
                        let tf = Instant::now();
                        let d = crate::fields::decode_line(fields, probs, steps, classes);
                        times.fields_ms += tf.elapsed().as_secs_f64() * 1e3;
                        d
                    },
                };
            }
            times.postprocess_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        Ok(out)
    }
}

/// One crop's reading.
#[derive(Debug, Default)]
struct Recognised {
    text: String,
    score: f32,
    /// The crop decoded against each field (see [`crate::fields::decode_line`]).
    decoded: Vec<Option<crate::fields::Decoded>>,
}

/// What [`Ocr::read`] found on a frame.
#[derive(Debug)]
pub struct Read {
    /// Raw text lines that passed the filter, in reading order.
    pub items: Vec<Item>,
    /// Where the time went.
    pub times: Times,
    /// Fields read.
    pub fields: std::collections::BTreeMap<String, crate::fields::FieldValue>,
    /// Required fields not read (see [`crate::fields`]).
    pub missing: Vec<String>,
}

impl Ocr {
    /// The model's character set (index 0 the blank).
    pub fn charset(&self) -> &[String] {
        &self.charset
    }

    /// The detector side in use.
    pub fn det_side(&self) -> usize {
        self.det_side
    }

    /// Reads the next frames with the detector side `side` (see
    /// [`DetPlan::with_side`]; taken within 32..=2016).
    pub fn set_det_side(&mut self, side: usize) {
        self.det_side = side;
    }

    /// The memory model frames are planned with.
    pub fn memory(&self) -> MemoryModel {
        self.memory
    }

    /// The detector plan a `width` x `height` frame would get under the
    /// budget (or why none fits).
    ///
    /// # Errors
    /// [`InferenceError::TooLarge`].
    pub fn plan_for(&self, width: usize, height: usize) -> Result<DetPlan, InferenceError> {
        DetPlan::within_side(width, height, self.max_frame_memory, self.det_side, self.memory)
    }

    /// Runs the sessions alone on inputs captured before, reading each
    /// output as the pipeline does (the bare baseline).
    #[cfg(feature = "bench")]
    pub(crate) fn run_bare(
        &mut self,
        inputs: &[(crate::Stage, Array4<f32>)],
        mut keep: Option<&mut Vec<ndarray::ArrayD<f32>>>,
    ) -> Result<(), InferenceError> {
        for (stage, input) in inputs {
            let s = if *stage == crate::Stage::Det { &mut self.det } else { &mut self.rec };
            let out = s.run(input.view())?;
            match keep.as_deref_mut() {
                Some(k) => k.push(out),
                None => {
                    std::hint::black_box(out.iter().copied().collect::<Vec<f32>>());
                }
            }
        }
        Ok(())
    }
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Top-left, top-right, bottom-right, bottom-left (the reference's
/// `order_points_clockwise`: split by x, then each pair by y).
fn order_clockwise(p: [[f32; 2]; 4]) -> [[f32; 2]; 4] {
    let mut xs = p;
    xs.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut left = [xs[0], xs[1]];
    let mut right = [xs[2], xs[3]];
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Top to bottom, then left to right for boxes whose tops are within 10 px.
fn sort_reading_order(q: &mut [[[f32; 2]; 4]]) {
    q.sort_by(|a, b| a[0][1].total_cmp(&b[0][1]).then(a[0][0].total_cmp(&b[0][0])));
    for i in 0..q.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (q[j + 1][0][1] - q[j][0][1]).abs() < 10.0 && q[j + 1][0][0] < q[j][0][0] {
                q.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// The upright crop of a text box (perspective warp, bicubic, replicated
/// border), turned if it is much taller than wide.
fn crop(img: &Bgr, q: &[[f32; 2]; 4]) -> Option<Bgr> {
    let w = dist(q[0], q[1]).max(dist(q[2], q[3])) as usize;
    let h = dist(q[0], q[3]).max(dist(q[1], q[2])) as usize;
    if w == 0 || h == 0 {
        return None;
    }
    let src = q.map(|p| [f64::from(p[0]), f64::from(p[1])]);
    let dst = [[0.0, 0.0], [w as f64, 0.0], [w as f64, h as f64], [0.0, h as f64]];
    // The reference computes the transform in float32.
    let src = src.map(|p| [p[0] as f32 as f64, p[1] as f32 as f64]);
    let m = imageops::perspective_transform(&src, &dst)?;
    let out = imageops::warp_perspective_cubic(img, &m, w, h)?;
    if out.height as f64 / out.width as f64 >= 1.5 {
        Some(imageops::rot90(&out))
    } else {
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detector_input_is_bounded_for_every_shape() {
        let p = DetPlan::of(640, 480);
        assert_eq!((p.det_width, p.det_height), (992, 736), "ordinary frames as the reference has them");
        for (w, h) in [(2000, 1), (1, 3000), (4096, 48), (48, 4096), (8000, 8), (1, 1), (0, 0), (100_000, 100_000)] {
            let p = DetPlan::of(w, h);
            assert!((32..=2016).contains(&p.det_width) && (32..=2016).contains(&p.det_height), "{w}x{h}: {p:?}");
            assert!(p.width <= 2016 && p.height <= 2016, "{w}x{h}: {p:?}");
            assert!(p.preprocess_bytes() < 100 << 20, "{w}x{h}: {} bytes", p.preprocess_bytes());
        }
    }

    #[test]
    fn the_detector_input_shrinks_to_the_memory_budget() {
        let budget = crate::DEFAULT_MAX_FRAME_MEMORY;
        assert_eq!(DetPlan::within(640, 480, budget).unwrap(), DetPlan::of(640, 480), "usual frames unchanged");
        let big = DetPlan::within(2000, 2000, budget).unwrap();
        assert!(big.det_width < 1984 && big.det_width % 32 == 0 && big.det_width == big.det_height, "{big:?}");
        assert!(big.estimate_bytes(2000, 2000) <= budget, "{}", big.estimate_bytes(2000, 2000));
        for (w, h) in [(4096, 48), (8000, 8), (1, 3000), (7000, 7000)] {
            let p = DetPlan::within(w, h, budget).unwrap();
            assert!(p.estimate_bytes(w, h) <= budget, "{w}x{h}: {p:?}");
        }
        assert!(matches!(DetPlan::within(640, 480, 64 << 20), Err(InferenceError::TooLarge { .. })));
    }

    #[test]
    fn python_rounding_to_multiples_of_32() {
        assert_eq!(round32(981.0), 992);
        assert_eq!(round32(736.0), 736);
        assert_eq!(round32(16.0), 32, "ties to even, at least 32");
        assert_eq!(round32(48.0), 64);
        assert_eq!(round32(80.0), 64, "80/32 = 2.5 rounds to 2");
    }

    #[test]
    fn clockwise_order_and_reading_order() {
        let q = order_clockwise([[10.0, 20.0], [10.0, 5.0], [40.0, 5.0], [40.0, 20.0]]);
        assert_eq!(q, [[10.0, 5.0], [40.0, 5.0], [40.0, 20.0], [10.0, 20.0]]);
        let mut boxes = vec![
            [[100.0, 52.0], [0.0; 2], [0.0; 2], [0.0; 2]],
            [[10.0, 50.0], [0.0; 2], [0.0; 2], [0.0; 2]],
            [[50.0, 10.0], [0.0; 2], [0.0; 2], [0.0; 2]],
        ];
        sort_reading_order(&mut boxes);
        let firsts: Vec<[f32; 2]> = boxes.iter().map(|b| b[0]).collect();
        assert_eq!(firsts, vec![[50.0, 10.0], [10.0, 50.0], [100.0, 52.0]]);
    }
}
