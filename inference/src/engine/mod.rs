//! The seam between the pipelines (OCR, detectors, classifiers) and the
//! runtimes that execute an ONNX graph: ONNX Runtime (through `ort`, the
//! vendor library loaded at run time) and tract (pure Rust, compiled in).
//!
//! Owns the choice of runtime ([`Backend`], resolved to an [`EngineKind`])
//! and what a loaded graph offers ([`Engine`]). Promise: both engines take
//! the same rank-4 f32 input and give the same outputs (the golden test
//! checks it on every fixture frame), so the pipelines do not know which one
//! runs; annotations say which one did ([`EngineKind::name`],
//! [`EngineKind::version`]).

use crate::InferenceError;
use ndarray::{ArrayD, ArrayView4};
use serde::{Deserialize, Serialize};

mod onnxruntime;
pub mod tract;

pub use onnxruntime::OrtEngine;
use std::path::Path;
pub use tract::TractGraph;

/// The version of tract compiled in (pinned with `=` in
/// `inference/Cargo.toml`; a unit test keeps the two equal).
pub const TRACT_VERSION: &str = "0.23.9";

/// The ONNX Runtime version the gateway is built and tested against (the
/// library file name pins it).
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// Which runtime executes the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// ONNX Runtime 1.31 (`libonnxruntime.so.1.31.1`).
    OnnxRuntime,
    /// tract (compiled in; no library).
    Tract,
}

impl EngineKind {
    /// Name, as annotations report it (`model.backend`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::OnnxRuntime => "onnxruntime",
            EngineKind::Tract => "tract",
        }
    }

    /// Version, as annotations report it (`model.backend_version`).
    pub fn version(self) -> &'static str {
        match self {
            EngineKind::OnnxRuntime => ONNXRUNTIME_VERSION,
            EngineKind::Tract => TRACT_VERSION,
        }
    }

    /// `name version`.
    pub fn describe(self) -> String {
        format!("{} {}", self.name(), self.version())
    }
}

/// What the config (`detect.backend`) or a manifest (`backend`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ONNX Runtime where its library is present, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime; its library must be present.
    Onnxruntime,
    /// tract, compiled in.
    Tract,
}

impl Backend {
    /// Parses `auto`, `onnxruntime` or `tract`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Backend::Auto),
            "onnxruntime" => Some(Backend::Onnxruntime),
            "tract" => Some(Backend::Tract),
            _ => None,
        }
    }

    /// The name as written in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Onnxruntime => "onnxruntime",
            Backend::Tract => "tract",
        }
    }

    /// The choice that applies: the config's unless it is `auto`, then the
    /// manifest's.
    pub fn over(self, manifest: Backend) -> Backend {
        if self == Backend::Auto {
            manifest
        } else {
            self
        }
    }

    /// The engine this choice runs with ONNX Runtime's library at `library`
    /// (`auto`: ONNX Runtime if that file exists, else tract).
    pub fn resolve(self, library: &Path) -> EngineKind {
        match self {
            Backend::Onnxruntime => EngineKind::OnnxRuntime,
            Backend::Tract => EngineKind::Tract,
            Backend::Auto if library.is_file() => EngineKind::OnnxRuntime,
            Backend::Auto => EngineKind::Tract,
        }
    }
}

/// One input or output of a graph: its name and shape (`-1` for a dimension
/// the graph leaves open; no shape if unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Tensor name.
    pub name: String,
    /// Dimensions, `-1` where dynamic.
    pub shape: Option<Vec<i64>>,
}

/// One graph, ready to run.
pub trait Engine: Send {
    /// Runs the graph on `input` (fed to its first input); returns output
    /// number `output`.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the runtime fails or there is no such
    /// output.
    fn run_output(&mut self, input: ArrayView4<'_, f32>, output: usize) -> Result<ArrayD<f32>, InferenceError>;

    /// Runs the graph on `input`; returns its first output.
    ///
    /// # Errors
    /// As [`run_output`](Self::run_output).
    fn run(&mut self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, InferenceError> {
        self.run_output(input, 0)
    }

    /// A string from the graph's metadata (`metadata_props`), if present.
    fn metadata(&self, key: &str) -> Option<String>;

    /// The graph's inputs.
    fn inputs(&self) -> Vec<Port>;

    /// The graph's outputs (shapes as known for the input it was planned
    /// for, if any).
    fn outputs(&self) -> Vec<Port>;

    /// Which runtime this is.
    fn kind(&self) -> EngineKind;

    /// Readies the graph for inputs of `shape` (tract optimises a plan for
    /// it; ONNX Runtime has nothing to do).
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the graph cannot take that shape.
    fn prepare(&mut self, shape: &[usize]) -> Result<(), InferenceError> {
        let _ = shape;
        Ok(())
    }
}

pub(crate) fn rt(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Runtime(e.to_string())
}

/// Opens `model` with the engine `kind`, `threads` threads inside one run.
/// ONNX Runtime is loaded from `library` (once per process).
///
/// # Errors
/// [`InferenceError::Runtime`] if the runtime or the graph cannot be loaded.
pub fn open(kind: EngineKind, library: &Path, model: &Path, threads: usize) -> Result<Box<dyn Engine>, InferenceError> {
    Ok(match kind {
        EngineKind::OnnxRuntime => {
            let env = crate::runtime::init(library)?;
            Box::new(OrtEngine(crate::runtime::session(&env, model, threads)?))
        }
        EngineKind::Tract => Box::new(TractGraph::load(model, threads)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tract_version_is_the_pinned_one() {
        let cargo = include_str!("../../Cargo.toml");
        assert!(
            cargo.contains(&format!("tract-onnx = \"={TRACT_VERSION}\"")),
            "inference/Cargo.toml pins another tract"
        );
    }

    #[test]
    fn auto_prefers_onnxruntime_where_its_library_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("libonnxruntime.so.1.31.1");
        assert_eq!(Backend::Auto.resolve(&lib), EngineKind::Tract);
        std::fs::write(&lib, b"x").expect("write");
        assert_eq!(Backend::Auto.resolve(&lib), EngineKind::OnnxRuntime);
        assert_eq!(Backend::Tract.resolve(&lib), EngineKind::Tract);
        assert_eq!(Backend::Onnxruntime.resolve(&dir.path().join("none")), EngineKind::OnnxRuntime);
        assert_eq!(Backend::Auto.over(Backend::Tract), Backend::Tract);
        assert_eq!(Backend::Onnxruntime.over(Backend::Tract), Backend::Onnxruntime);
        for b in [Backend::Auto, Backend::Onnxruntime, Backend::Tract] {
            assert_eq!(Backend::parse(b.as_str()), Some(b));
        }
        assert_eq!(Backend::parse("ort"), None);
    }
}
