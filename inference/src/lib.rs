//! The model crate of the vision gateway: manifests, sessions,
//! pre- and post-processing. Synchronous, no tokio.
//!
//! Owns what a model folder is and what loading one promises. A model is a
//! folder under `models/` with a `model.toml` manifest that names the task,
//! its ONNX files with their sha256, the licence and the provenance.
//! [`Manifest::load`] refuses a folder whose files are missing or whose bytes
//! are not the bytes the manifest pins; nothing is ever downloaded.
//!
//! Running models (ONNX Runtime through `ort`, decoders for `ocr`, `detect`
//! and `classify`) lands with the inference issue; until then
//! [`Model::load`] says so with [`InferenceError::NotAvailable`].

mod manifest;

pub use manifest::{Manifest, ModelFile, Task};

use std::path::PathBuf;
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
    /// This capability is not built yet.
    #[error("{0} is not available in this build yet")]
    NotAvailable(&'static str),
}

impl InferenceError {
    /// Nothing here gets better by retrying without a change.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Model {
    /// Its verified manifest.
    pub manifest: Manifest,
}

impl Model {
    /// Loads the model in folder `dir`.
    ///
    /// # Errors
    /// Every manifest and checksum error of [`Manifest::load`]; then
    /// [`InferenceError::NotAvailable`] until the ONNX Runtime backend lands.
    pub fn load(dir: &std::path::Path) -> Result<Self, InferenceError> {
        let _manifest = Manifest::load(dir)?;
        Err(InferenceError::NotAvailable("running models (ONNX Runtime backend)"))
    }
}
