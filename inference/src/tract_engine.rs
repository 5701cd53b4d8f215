//! tract (pure Rust, no vendor library) running one ONNX graph with one f32
//! input of rank 4: the second engine behind [`crate::engine::Engine`].
//! Work in progress (issue 16): used for OCR models only so far.
//!
//! Owns the graph and its optimised plans. Promise: the graph is parsed
//! once; a plan is optimised once per input shape and the most recently
//! used [`PLANS`] are kept (PP-OCR's detector sees one shape per frame
//! size, its recogniser one per batch width).

use crate::InferenceError;
use ndarray::{ArrayD, ArrayView4};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Optimised plans kept, most recently used first.
pub const PLANS: usize = 8;

fn rt(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Runtime(format!("tract: {e}"))
}

/// One ONNX graph under tract.
pub struct TractGraph {
    model: InferenceModel,
    plans: Vec<(Vec<usize>, Arc<TypedRunnableModel>)>,
}

impl std::fmt::Debug for TractGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractGraph").field("plans", &self.plans.len()).finish_non_exhaustive()
    }
}

impl TractGraph {
    /// Parses the graph at `path`.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if tract cannot read it.
    pub fn load(path: &Path) -> Result<Self, InferenceError> {
        let model = tract_onnx::onnx().model_for_path(path).map_err(rt)?;
        Ok(Self { model, plans: Vec::new() })
    }

    /// A string from the graph's `metadata_props`, if present.
    pub fn metadata(&self, key: &str) -> Option<String> {
        let t = self.model.properties.get(&format!("onnx.metadata_props.{key}"))?;
        t.to_plain_array_view::<String>().ok()?.iter().next().cloned()
    }

    /// Runs the graph on `input`; returns its first output.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the plan cannot be made or run.
    pub fn run(&mut self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, InferenceError> {
        let shape = input.shape().to_vec();
        let plan = match self.plans.iter().position(|(s, _)| *s == shape) {
            Some(i) => {
                let p = self.plans.remove(i);
                let plan = p.1.clone();
                self.plans.insert(0, p);
                plan
            }
            None => {
                let plan = self
                    .model
                    .clone()
                    .with_input_fact(0, f32::fact(&shape).into())
                    .map_err(rt)?
                    .into_optimized()
                    .map_err(rt)?
                    .into_runnable()
                    .map_err(rt)?;
                self.plans.insert(0, (shape, plan.clone()));
                self.plans.truncate(PLANS);
                plan
            }
        };
        let t: Tensor = input.to_owned().into_dyn().into();
        let out = plan.run(tvec!(t.into())).map_err(rt)?;
        let first = out.first().ok_or_else(|| rt("the graph has no output"))?;
        Ok(first.to_plain_array_view::<f32>().map_err(rt)?.to_owned())
    }
}
