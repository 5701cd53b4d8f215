//! The seam between the pipelines (OCR, detectors, classifiers) and the
//! runtimes that execute an ONNX graph: ONNX Runtime (through `ort`, the
//! vendor library loaded at run time) and tract (pure Rust, compiled in).
//!
//! Owns the choice of runtime. Promise: both engines take the same rank-4
//! f32 input and give the same output (checked by the golden test: max
//! |difference| 7e-5 on PP-OCR's own inputs), so the pipelines do not know
//! which one runs.

use crate::tract_engine::TractGraph;
use crate::InferenceError;
use ndarray::{ArrayD, ArrayView4};
use ort::session::Session;
use ort::value::TensorRef;

/// Which runtime executes the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// ONNX Runtime 1.31 (`libonnxruntime.so.1.31.1`).
    OnnxRuntime,
    /// tract (compiled in; no library).
    Tract,
}

impl EngineKind {
    /// Name and version, as annotations report them.
    pub fn describe(self) -> &'static str {
        match self {
            EngineKind::OnnxRuntime => "onnxruntime 1.31.1",
            EngineKind::Tract => "tract 0.23.9",
        }
    }
}

/// One graph, ready to run.
pub trait Engine: Send {
    /// Runs the graph on `input` (its first input); returns its first
    /// output.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the runtime fails.
    fn run(&mut self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, InferenceError>;

    /// A string from the graph's metadata (`metadata_props`), if present.
    fn metadata(&self, key: &str) -> Option<String>;
}

fn rt(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Runtime(e.to_string())
}

/// An ONNX Runtime session.
pub struct OrtEngine(pub Session);

impl Engine for OrtEngine {
    fn run(&mut self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, InferenceError> {
        let outputs = self.0.run(ort::inputs![TensorRef::from_array_view(input).map_err(rt)?]).map_err(rt)?;
        Ok(outputs[0].try_extract_array::<f32>().map_err(rt)?.to_owned())
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.0.metadata().ok()?.custom(key)
    }
}

impl Engine for TractGraph {
    fn run(&mut self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, InferenceError> {
        TractGraph::run(self, input)
    }

    fn metadata(&self, key: &str) -> Option<String> {
        TractGraph::metadata(self, key)
    }
}
