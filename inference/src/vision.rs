//! YOLO-style detection and image classification from a manifest.
//!
//! Owns preprocessing (letterbox or stretch, colour order, normalisation,
//! layout) and the output decoders: YOLOv8/YOLO11 `[1, 4+C, N]`, YOLOv5
//! `[1, N, 5+C]` with per-class non-maximum suppression, and softmax or
//! probability top-k. Boxes are mapped back to the frame's pixels.
//!
//! Promise: `Vision::load` checks the manifest against the model (input and
//! output names, static dimensions, label count) and refuses a mismatch
//! with a message that names both sides. The memory a frame needs is known
//! before it is decoded ([`Vision::estimate_bytes`]): the input size is
//! fixed by the manifest, so only the decoded frame grows with the frame.

use crate::engine::{Engine, EngineKind};
use crate::imageops::{self, Bgr};
use crate::manifest::{Colour, Decoder, Fit, InputSpec, Layout, Manifest, OutputSpec};
use crate::ocr::Times;
use crate::{InferenceError, Item};
use ndarray::Array4;
use std::path::Path;
use std::time::Instant;

fn rt(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Runtime(e.to_string())
}

/// The process before any frame, besides the model's weights.
pub const PROCESS_BYTES: u64 = 64 << 20;
/// ONNX Runtime's working memory per input pixel, taken from the PP-OCR
/// detector's measurement ([`crate::ocr::DET_BYTES_PER_PX`]) as the figure
/// for convolutional detectors and classifiers.
pub const RUNTIME_BYTES_PER_PX: u64 = crate::ocr::DET_BYTES_PER_PX as u64;

/// What annotating a `frame_w` x `frame_h` frame takes with a model whose
/// input is `input` and whose weights file has `weights` bytes and whose
/// output has `output_elems` values: the process and the weights (twice:
/// as read and as optimised), the decoded frame (RGB and BGR, 6 bytes per
/// pixel), the fitted frame and canvas (3 + 3 bytes per input pixel), the
/// f32 input (12), the runtime's working memory per input pixel, and the
/// output (read out and copied, 8 bytes per value).
pub fn estimate_bytes(input: &InputSpec, weights: u64, output_elems: u64, frame_w: usize, frame_h: usize) -> u64 {
    let frame = (frame_w.max(1) as u64).saturating_mul(frame_h.max(1) as u64);
    let px = (input.width * input.height) as u64;
    PROCESS_BYTES
        .saturating_add(weights.saturating_mul(2))
        .saturating_add(frame.saturating_mul(6))
        .saturating_add(px.saturating_mul(3 + 3 + 12 + RUNTIME_BYTES_PER_PX))
        .saturating_add(output_elems.saturating_mul(8))
}

/// A loaded detector or classifier.
pub struct Vision {
    session: Box<dyn Engine>,
    weights: u64,
    output_elems: u64,
    input: InputSpec,
    output: OutputSpec,
    out_index: usize,
    labels: Vec<String>,
    /// When set, every session input is also kept here (bare baseline).
    pub(crate) capture: Option<Vec<(crate::Stage, Array4<f32>)>>,
}

impl std::fmt::Debug for Vision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vision").field("labels", &self.labels.len()).finish_non_exhaustive()
    }
}

/// Parses YOLO's `names` metadata (`{0: 'person', 1: 'bicycle'}`).
pub fn parse_names(s: &str) -> Vec<String> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let body = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut rest = body;
    while let Some(colon) = rest.find(':') {
        let idx = rest[..colon].trim().trim_matches(|c| c == ',' || c == ' ').parse::<usize>().ok();
        let after = rest[colon + 1..].trim_start();
        let Some(q) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else { break };
        let Some(end) = after[1..].find(q) else { break };
        if let Some(i) = idx {
            out.push((i, after[1..1 + end].to_owned()));
        }
        rest = &after[1 + end + 1..];
    }
    out.sort();
    out.into_iter().map(|(_, n)| n).collect()
}

impl Vision {
    /// Loads the `model` file of a detect/classify manifest.
    ///
    /// # Errors
    /// [`InferenceError::Manifest`] on any mismatch between manifest and
    /// model; [`InferenceError::Runtime`] if the session cannot be made.
    pub fn load(
        kind: EngineKind,
        library: &Path,
        m: &Manifest,
        threads: usize,
        max_frame_memory: u64,
    ) -> Result<Self, InferenceError> {
        let path = m.dir.join("model.toml");
        let bad = |message: String| InferenceError::Manifest { path: path.clone(), message };
        let file = m.file("model").ok_or_else(|| bad("needs a file with role \"model\"".into()))?;
        let (Some(input), Some(output)) = (m.input.clone(), m.output.clone()) else {
            return Err(bad("[input] and [output] are required".into()));
        };
        let weights = std::fs::metadata(&file).map(|md| md.len()).unwrap_or(0);
        let idle = estimate_bytes(&input, weights, 0, 1, 1);
        if idle > max_frame_memory {
            return Err(bad(format!(
                "an input of {}x{} with {} MiB of weights needs about {} MiB for the smallest frame, \
                 over detect.max_frame_memory ({} MiB)",
                input.width,
                input.height,
                weights >> 20,
                idle >> 20,
                max_frame_memory >> 20
            )));
        }
        let mut session = crate::engine::open(kind, library, &file, threads)?;
        let inputs = session.inputs();
        let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
        let inp = inputs.iter().find(|i| i.name == input.name).ok_or_else(|| {
            bad(format!("input.name {:?} is not an input of the model (it has {names:?})", input.name))
        })?;
        if inputs.len() != 1 {
            return Err(bad(format!(
                "the model has {} inputs ({names:?}); the gateway feeds exactly one",
                inputs.len()
            )));
        }
        let want: [i64; 4] = match input.layout {
            Layout::Nchw => [1, 3, input.height as i64, input.width as i64],
            Layout::Nhwc => [1, input.height as i64, input.width as i64, 3],
        };
        if let Some(dims) = &inp.shape {
            if dims.len() != 4 || dims.iter().zip(want.iter()).skip(1).any(|(d, w)| *d > 0 && d != w) {
                return Err(bad(format!(
                    "the model's input {:?} has shape {dims:?}; the manifest describes {want:?}",
                    input.name
                )));
            }
        }
        // The input shape is fixed: tract optimises its one plan now.
        session.prepare(&want.map(|d| d as usize))?;
        let outputs = session.outputs();
        let out_names: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
        let out_index = match &output.name {
            None => 0,
            Some(n) => out_names.iter().position(|o| o == n).ok_or_else(|| {
                bad(format!("output.name {n:?} is not an output of the model (it has {out_names:?})"))
            })?,
        };
        let labels = labels(m, session.as_ref()).map_err(bad)?;
        let out_shape = outputs.get(out_index).and_then(|o| o.shape.clone());
        // Dynamic output dimensions count as 1: the output is small next to
        // the input for every decoder here.
        let output_elems = out_shape.as_ref().map_or(0, |shape| shape.iter().map(|d| (*d).max(1) as u64).product());
        if let Some(shape) = &out_shape {
            let classes = match (output.decoder, shape.len()) {
                (Decoder::Yolov8, 3) => shape[1] - 4,
                (Decoder::Yolov5, 3) => shape[2] - 5,
                (Decoder::Softmax | Decoder::Probabilities, 2) => shape[1],
                (d, n) => {
                    return Err(bad(format!(
                        "decoder {d:?} needs a rank-{} output; the model's has rank {n}",
                        if matches!(d, Decoder::Yolov8 | Decoder::Yolov5) { 3 } else { 2 }
                    )))
                }
            };
            if classes > 0 && !labels.is_empty() && classes as usize != labels.len() {
                return Err(bad(format!("the model has {classes} classes; the manifest names {}", labels.len())));
            }
        }
        Ok(Self { session, weights, output_elems, input, output, out_index, labels, capture: None })
    }

    /// Bytes annotating a `frame_w` x `frame_h` frame takes (see
    /// [`estimate_bytes`]).
    pub fn estimate_bytes(&self, frame_w: usize, frame_h: usize) -> u64 {
        estimate_bytes(&self.input, self.weights, self.output_elems, frame_w, frame_h)
    }

    fn label(&self, c: usize) -> String {
        self.labels.get(c).cloned().unwrap_or_else(|| c.to_string())
    }

    /// Runs on one frame.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the session fails or the output is not
    /// what the decoder expects.
    pub fn run(&mut self, img: &Bgr) -> Result<(Vec<Item>, Times), InferenceError> {
        let mut times = Times::default();
        let t = Instant::now();
        let fitted = self.fit(img);
        let t4 = self.tensor(&fitted.image);
        times.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(c) = &mut self.capture {
            c.push((crate::Stage::Det, t4.clone()));
        }
        let t = Instant::now();
        let out = self.session.run_output(t4.view(), self.out_index)?;
        let shape = out.shape().to_vec();
        let flat: Vec<f32> = match out.as_slice() {
            Some(_) => out.into_raw_vec_and_offset().0,
            None => out.iter().copied().collect(),
        };
        times.run_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let items = self.items(flat, &shape, img, &fitted)?;
        times.postprocess_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok((items, times))
    }

    /// The frame brought to the input size: stretched, or letterboxed (grey
    /// 114 borders) with the scale and padding to map boxes back.
    fn fit(&self, img: &Bgr) -> Fitted {
        let (w, h) = (self.input.width, self.input.height);
        match self.input.fit {
            Fit::Stretch => Fitted {
                r_x: w as f32 / img.width as f32,
                r_y: h as f32 / img.height as f32,
                pad_x: 0.0,
                pad_y: 0.0,
                image: imageops::resize_linear(img, w, h),
            },
            Fit::Letterbox => {
                let r = (w as f32 / img.width as f32).min(h as f32 / img.height as f32);
                let (nw, nh) = (
                    ((img.width as f32 * r).round() as usize).max(1),
                    ((img.height as f32 * r).round() as usize).max(1),
                );
                let resized = imageops::resize_linear(img, nw.min(w), nh.min(h));
                let (dw, dh) = ((w - resized.width) as f32 / 2.0, (h - resized.height) as f32 / 2.0);
                let (left, top) = ((dw - 0.1).round().max(0.0) as usize, (dh - 0.1).round().max(0.0) as usize);
                let mut canvas = Bgr { width: w, height: h, data: vec![114; w * h * 3] };
                for y in 0..resized.height {
                    let src = &resized.data[y * resized.width * 3..(y + 1) * resized.width * 3];
                    let at = ((y + top) * w + left) * 3;
                    canvas.data[at..at + src.len()].copy_from_slice(src);
                }
                Fitted { r_x: r, r_y: r, pad_x: left as f32, pad_y: top as f32, image: canvas }
            }
        }
    }

    /// The input tensor of a fitted frame: layout, channel order and
    /// normalisation as the manifest says.
    fn tensor(&self, fitted: &Bgr) -> Array4<f32> {
        let (w, h) = (self.input.width, self.input.height);
        let shape = match self.input.layout {
            Layout::Nchw => (1, 3, h, w),
            Layout::Nhwc => (1, h, w, 3),
        };
        let mut t4 = Array4::<f32>::zeros(shape);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    // Tensor channel c comes from BGR channel src.
                    let src = match self.input.colour {
                        Colour::Bgr => c,
                        Colour::Rgb => 2 - c,
                    };
                    let v =
                        (f32::from(fitted.at(x, y, src)) * self.input.scale - self.input.mean[c]) / self.input.std[c];
                    match self.input.layout {
                        Layout::Nchw => t4[[0, c, y, x]] = v,
                        Layout::Nhwc => t4[[0, y, x, c]] = v,
                    }
                }
            }
        }
        t4
    }

    /// The decoded output: boxes mapped back to the frame's pixels (after
    /// NMS), or the top classes.
    fn items(&self, flat: Vec<f32>, shape: &[usize], img: &Bgr, f: &Fitted) -> Result<Vec<Item>, InferenceError> {
        let back = |bx: [f32; 4]| {
            [
                ((bx[0] - f.pad_x) / f.r_x).clamp(0.0, img.width as f32),
                ((bx[1] - f.pad_y) / f.r_y).clamp(0.0, img.height as f32),
                ((bx[2] - f.pad_x) / f.r_x).clamp(0.0, img.width as f32),
                ((bx[3] - f.pad_y) / f.r_y).clamp(0.0, img.height as f32),
            ]
        };
        let item = |label: usize, score: f32, bbox: [f32; 4]| Item {
            text: None,
            label: Some(self.label(label)),
            score,
            bbox,
            quad: None,
        };
        Ok(match self.output.decoder {
            Decoder::Yolov8 | Decoder::Yolov5 => {
                let cands = decode_yolo(self.output.decoder, &flat, shape, self.output.conf_threshold)?;
                nms(cands, self.output.iou_threshold, self.output.max_detections)
                    .into_iter()
                    .map(|(bx, c, s)| item(c, s, back(bx)))
                    .collect()
            }
            Decoder::Softmax | Decoder::Probabilities => {
                if shape.len() != 2 || shape[0] != 1 {
                    return Err(rt(format!("classifier output shape {shape:?}, expected [1, C]")));
                }
                let probs = if self.output.decoder == Decoder::Softmax { softmax(&flat) } else { flat };
                let whole = [0.0, 0.0, img.width as f32, img.height as f32];
                top_k(&probs, self.output.top_k).into_iter().map(|(c, s)| item(c, s, whole)).collect()
            }
        })
    }
}

/// The class names the manifest gives: inline, from a file beside it, or
/// from a metadata key of the model (YOLO exports carry `names`).
fn labels(m: &Manifest, session: &dyn crate::engine::Engine) -> Result<Vec<String>, String> {
    Ok(if let Some(l) = &m.labels.inline {
        l.clone()
    } else if let Some(f) = &m.labels.file {
        let p = m.dir.join(f);
        std::fs::read_to_string(&p)
            .map_err(|e| format!("labels file {}: {e}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    } else if let Some(k) = &m.labels.metadata_key {
        let v = session.metadata(k).ok_or_else(|| format!("the model has no metadata key {k:?}"))?;
        parse_names(&v)
    } else {
        Vec::new()
    })
}

/// A frame fitted to the model's input, and how to map boxes back.
struct Fitted {
    r_x: f32,
    r_y: f32,
    pad_x: f32,
    pad_y: f32,
    image: Bgr,
}

impl Vision {
    /// Runs the session alone on inputs captured before (bare baseline).
    #[cfg(feature = "bench")]
    pub(crate) fn run_bare(&mut self, inputs: &[(crate::Stage, Array4<f32>)]) -> Result<(), InferenceError> {
        for (_, t4) in inputs {
            std::hint::black_box(self.session.run_output(t4.view(), self.out_index)?);
        }
        Ok(())
    }
}

/// Candidates `(xyxy box in input pixels, class, score)` above `conf`.
///
/// # Errors
/// If the output's shape does not fit the decoder.
pub fn decode_yolo(
    d: Decoder,
    out: &[f32],
    shape: &[usize],
    conf: f32,
) -> Result<Vec<([f32; 4], usize, f32)>, InferenceError> {
    if shape.len() != 3 || shape[0] != 1 {
        return Err(rt(format!("detector output shape {shape:?}, expected [1, A, B]")));
    }
    let mut v = Vec::new();
    let xyxy = |cx: f32, cy: f32, w: f32, h: f32| [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
    match d {
        Decoder::Yolov8 => {
            let (f, n) = (shape[1], shape[2]);
            if f < 5 {
                return Err(rt(format!("YOLOv8 output {shape:?} has no classes")));
            }
            let at = |r: usize, i: usize| out[r * n + i];
            for i in 0..n {
                let (c, s) =
                    (4..f).map(|r| (r - 4, at(r, i))).fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
                if s >= conf {
                    v.push((xyxy(at(0, i), at(1, i), at(2, i), at(3, i)), c, s));
                }
            }
        }
        Decoder::Yolov5 => {
            let (n, f) = (shape[1], shape[2]);
            if f < 6 {
                return Err(rt(format!("YOLOv5 output {shape:?} has no classes")));
            }
            for i in 0..n {
                let row = &out[i * f..(i + 1) * f];
                let (c, cs) =
                    row[5..].iter().enumerate().fold((0, f32::MIN), |b, (k, x)| if *x > b.1 { (k, *x) } else { b });
                let s = row[4] * cs;
                if s >= conf {
                    v.push((xyxy(row[0], row[1], row[2], row[3]), c, s));
                }
            }
        }
        _ => return Err(rt("not a detection decoder")),
    }
    Ok(v)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Per-class non-maximum suppression, highest score first.
pub fn nms(mut c: Vec<([f32; 4], usize, f32)>, iou_thr: f32, max: usize) -> Vec<([f32; 4], usize, f32)> {
    c.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut keep: Vec<([f32; 4], usize, f32)> = Vec::new();
    for cand in c {
        if keep.len() >= max {
            break;
        }
        if keep.iter().all(|k| k.1 != cand.1 || iou(&k.0, &cand.0) <= iou_thr) {
            keep.push(cand);
        }
    }
    keep
}

/// Numerically stable softmax.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The `k` best classes, best first (ties: lower index first).
pub fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut v: Vec<(usize, f32)> = p.iter().copied().enumerate().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_names_metadata() {
        assert_eq!(parse_names("{0: 'person', 1: 'bicycle', 2: \"car\"}"), vec!["person", "bicycle", "car"]);
        assert!(parse_names("{}").is_empty());
    }

    #[test]
    fn nms_is_per_class() {
        let a = ([0.0, 0.0, 10.0, 10.0], 0, 0.9);
        let b = ([1.0, 1.0, 11.0, 11.0], 0, 0.8); // IoU 0.68 with a, same class
        let c = ([1.0, 1.0, 11.0, 11.0], 1, 0.7); // same place, other class
        let d = ([50.0, 50.0, 60.0, 60.0], 0, 0.6);
        let kept = nms(vec![b, d, a, c], 0.45, 10);
        assert_eq!(kept, vec![a, c, d]);
        assert_eq!(nms(vec![a, c, d], 0.45, 2).len(), 2);
    }

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2).iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn yolov5_score_is_objectness_times_class() {
        // one anchor: box, obj 0.5, classes [0.2, 0.9]
        let out = [10.0, 10.0, 4.0, 4.0, 0.5, 0.2, 0.9];
        let v = decode_yolo(Decoder::Yolov5, &out, &[1, 1, 7], 0.25).unwrap();
        assert_eq!(v, vec![([8.0, 8.0, 12.0, 12.0], 1, 0.45)]);
        assert!(decode_yolo(Decoder::Yolov5, &out, &[1, 1, 7], 0.5).unwrap().is_empty());
    }
}
