//! ONNX Runtime, loaded at run time from a file (`ort` with `load-dynamic`).
//!
//! Promise: the library is loaded once per process, from an explicit path,
//! with telemetry off (`ORT_DISABLE_TELEMETRY=1` is set before loading, so
//! the library makes no look-ups to its vendor). A missing or wrong library
//! is an [`InferenceError::Runtime`] naming the path, never a panic.

use crate::InferenceError;
use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static ENV: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads ONNX Runtime from `library` (once; later calls with the same path
/// return the same environment).
///
/// # Errors
/// [`InferenceError::Runtime`] if the file is missing, cannot be loaded, or
/// another library was loaded before.
pub fn init(library: &Path) -> Result<Environment, InferenceError> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, env)) = ENV.get() {
        if p != library {
            return Err(InferenceError::Runtime(format!(
                "ONNX Runtime was already loaded from {}; cannot also load {}",
                p.display(),
                library.display()
            )));
        }
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(InferenceError::Runtime(format!(
            "ONNX Runtime library not found at {} (set detect.onnxruntime or ORT_DYLIB_PATH; \
             `bash models/fetch` puts it in models/runtime/<arch>/)",
            library.display()
        )));
    }
    // Before the library is loaded: it reads this at start.
    std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    let builder = ort::init_from(library)
        .map_err(|e| InferenceError::Runtime(format!("cannot load {}: {e}", library.display())))?;
    let env = builder
        .with_name("vision-gateway")
        .with_telemetry(false)
        .build()
        .map_err(|e| InferenceError::Runtime(format!("cannot start ONNX Runtime: {e}")))?;
    let _ = ENV.set((library.to_owned(), env.clone()));
    Ok(env)
}

/// A session on one model file, with `intra_threads` threads.
///
/// # Errors
/// [`InferenceError::Runtime`] if the model cannot be loaded.
pub fn session(env: &Environment, model: &Path, intra_threads: usize) -> Result<ort::session::Session, InferenceError> {
    let err = |e: String| InferenceError::Runtime(format!("{}: {e}", model.display()));
    ort::session::Session::builder(env)
        .map_err(|e| err(e.to_string()))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.to_string()))?
        .commit_from_file(model)
        .map_err(|e| err(e.to_string()))
}

/// The library path to use: the explicit one, else `ORT_DYLIB_PATH`, else
/// the fetched one for this architecture under `models/runtime/`.
pub fn default_library(explicit: Option<&Path>, repo_root: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let fetched =
        repo_root.map(|r| r.join("models/runtime").join(std::env::consts::ARCH).join("libonnxruntime.so.1.31.1"));
    match fetched {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("/usr/lib/vision-gateway/libonnxruntime.so.1.31.1"),
    }
}
