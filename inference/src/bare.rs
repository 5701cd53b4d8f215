//! The bench's hooks (feature `bench`, which `vision-gateway bench` and
//! the golden test turn on): the session inputs the pipeline makes for some
//! frames, captured so that the sessions can be run alone on exactly them.
//! That bare `session.run` loop is the baseline the detect stage is
//! measured against. Not part of what the gateway runs.

use crate::{InferenceError, Model, Pipeline, Stage};
use std::time::Instant;

/// The session inputs the pipeline made for some frames, in order, so that
/// the sessions can be run alone on exactly them: the bare `session.run`
/// baseline the detect stage is measured against.
#[derive(Debug, Default)]
pub struct BareInputs {
    inputs: Vec<(Stage, ndarray::Array4<f32>)>,
    frames: usize,
}

impl BareInputs {
    /// Frames captured.
    pub fn frames(&self) -> usize {
        self.frames
    }
    /// Session runs captured.
    pub fn runs(&self) -> usize {
        self.inputs.len()
    }
    /// The captured inputs: (`"det"` or `"rec"`, tensor), in run order.
    pub fn tensors(&self) -> Vec<(&'static str, ndarray::ArrayView4<'_, f32>)> {
        self.inputs.iter().map(|(s, t)| (if *s == Stage::Det { "det" } else { "rec" }, t.view())).collect()
    }
}

impl Model {
    /// Annotates `frames` (encoded) and keeps every session input made on
    /// the way, for [`run_bare`](Self::run_bare).
    ///
    /// # Errors
    /// As [`annotate`](Self::annotate).
    pub fn capture_inputs(&mut self, frames: &[&[u8]]) -> Result<BareInputs, InferenceError> {
        self.set_capture(Some(Vec::new()));
        let mut result = Ok(());
        for f in frames {
            if let Err(e) = self.annotate(f) {
                result = Err(e);
                break;
            }
        }
        let inputs = self.set_capture(None).unwrap_or_default();
        result.map(|()| BareInputs { inputs, frames: frames.len() })
    }

    /// Runs the sessions alone on captured inputs: no decoding, no pre- or
    /// post-processing, the outputs read and dropped.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails.
    pub fn run_bare(&mut self, inputs: &BareInputs) -> Result<(), InferenceError> {
        match &mut self.pipeline {
            Pipeline::Ocr(o) => o.run_bare(&inputs.inputs, None),
            Pipeline::Vision(v) => v.run_bare(&inputs.inputs),
        }
    }

    /// Runs each captured input alone, timed: total milliseconds and runs
    /// of the detector (or the only graph of a detector/classifier), then
    /// of the OCR recogniser.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails.
    pub fn time_bare(&mut self, inputs: &BareInputs) -> Result<[(f64, usize); 2], InferenceError> {
        let mut out = [(0.0, 0usize); 2];
        for (stage, t) in &inputs.inputs {
            let one = BareInputs { inputs: vec![(*stage, t.clone())], frames: 1 };
            let start = Instant::now();
            self.run_bare(&one)?;
            let k = usize::from(*stage == Stage::Rec);
            out[k].0 += start.elapsed().as_secs_f64() * 1e3;
            out[k].1 += 1;
        }
        Ok(out)
    }

    /// OCR only: the first output of each captured run, as the runtime
    /// computes it (for comparing runtimes on the same inputs).
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if a session fails or the model is not OCR.
    pub fn bare_outputs(&mut self, inputs: &BareInputs) -> Result<Vec<ndarray::ArrayD<f32>>, InferenceError> {
        match &mut self.pipeline {
            Pipeline::Ocr(o) => {
                let mut out = Vec::new();
                o.run_bare(&inputs.inputs, Some(&mut out))?;
                Ok(out)
            }
            Pipeline::Vision(_) => Err(InferenceError::Runtime("bare_outputs: OCR models only".into())),
        }
    }

    fn set_capture(
        &mut self,
        to: Option<Vec<(Stage, ndarray::Array4<f32>)>>,
    ) -> Option<Vec<(Stage, ndarray::Array4<f32>)>> {
        match &mut self.pipeline {
            Pipeline::Ocr(o) => std::mem::replace(&mut o.capture, to),
            Pipeline::Vision(v) => std::mem::replace(&mut v.capture, to),
        }
    }
}
