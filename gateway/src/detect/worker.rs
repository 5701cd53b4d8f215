//! One detect worker thread: loads its own model (and compiles the label
//! fields against its character set), then annotates the frames it is
//! handed, one at a time. A session failure or a panic inside a run gives
//! the frame an error annotation; after a panic the model is loaded afresh.

use super::{not_annotated, DetectError, Done, Job};
use crate::config::FieldConfig;
use crate::faults::Faults;
use crate::records::FrameRecord;
use inference::fields::Field;
use inference::{Annotation, LoadOptions, Model};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a worker runs with.
pub(super) struct Worker {
    /// The model folder (`None`: `detect.enabled = false`, frames are
    /// forwarded as not annotated).
    pub(super) model_dir: Option<PathBuf>,
    /// How to load it.
    pub(super) load: LoadOptions,
    /// The declared label fields.
    pub(super) field_decls: Vec<FieldConfig>,
    /// OCR detector side per camera (`[[detect.camera]]`); the others use
    /// the load options' side.
    pub(super) camera_sides: std::collections::BTreeMap<String, usize>,
    /// Injected faults (tests only).
    pub(super) faults: Faults,
}

/// How a worker talks to the stage.
pub(super) struct Channels {
    /// Frames to annotate, shared by the workers.
    pub(super) jobs: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>,
    /// Annotated frames, or why the worker stopped.
    pub(super) results: mpsc::UnboundedSender<Result<Done, String>>,
    /// Once, when the model is loaded (with this thread's id, for the
    /// watchdog) or could not be.
    pub(super) ready: std::sync::mpsc::Sender<Result<Option<u32>, DetectError>>,
}

impl Worker {
    /// Loads the model, says so on `ready`, then annotates until the jobs
    /// channel closes or the stage stops listening.
    pub(super) fn run(self, ch: Channels) {
        let (mut model, compiled) = match self.start() {
            Ok(x) => x,
            Err(e) => {
                let _ = ch.ready.send(Err(e));
                return;
            }
        };
        let _ = ch.ready.send(Ok(crate::util::threads::current_tid()));
        loop {
            let job = {
                let rx = ch.jobs.lock().unwrap_or_else(|p| p.into_inner());
                rx.recv()
            };
            let Ok(Job { seq, frame }) = job else { return };
            let annotation = match model.as_mut() {
                None => not_annotated(),
                Some(m) => match self.annotate(m, &compiled, &frame, seq) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ch.results.send(Err(e));
                        return;
                    }
                },
            };
            if ch.results.send(Ok(Done { seq, frame, annotation })).is_err() {
                return;
            }
        }
    }

    /// The model (none when disabled) and each field compiled against its
    /// character set.
    fn start(&self) -> Result<(Option<Model>, Vec<Field>), DetectError> {
        let model = self.model_dir.as_ref().map(|d| Model::load(d, &self.load)).transpose()?;
        if let Some(m) = &model {
            tracing::info!(
                model = %m.info.name,
                version = %m.info.version,
                runtime = %format!("{} {}", m.info.backend, m.info.backend_version),
                threads = self.load.intra_threads,
                "model loaded"
            );
        }
        let compiled = match &model {
            Some(m) => m.compile_fields(self.field_decls.iter().map(|f| &f.spec)).map_err(DetectError::Fields)?,
            None => Vec::new(),
        };
        if !compiled.is_empty() {
            tracing::info!(fields = compiled.len(), "label fields compiled");
        }
        Ok((model, compiled))
    }

    /// One frame through the model. `Err` only when the model cannot be
    /// loaded again after a panic (the worker stops).
    fn annotate(
        &self,
        model: &mut Model,
        compiled: &[Field],
        frame: &FrameRecord,
        seq: u64,
    ) -> Result<Annotation, String> {
        let info = model.info.clone();
        let failed = |error: String| Annotation::failed(info.clone(), error);
        let panic_here = self.faults.panic_camera.as_deref() == Some(frame.camera.as_str());
        if self.faults.detect_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.faults.detect_delay_ms));
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if panic_here {
                panic!("injected fault: model run panics on camera {}", frame.camera);
            }
            let fields: Vec<&Field> = compiled
                .iter()
                .zip(&self.field_decls)
                .filter(|(_, d)| d.applies(&frame.camera))
                .map(|(f, _)| f)
                .collect();
            model.set_ocr_side(self.camera_sides.get(&frame.camera).copied().unwrap_or(self.load.ocr_side));
            model.annotate_with(&frame.payload, &fields)
        }));
        Ok(match run {
            Ok(Ok(a)) => a,
            // A session failure on one frame: recorded on the frame, the
            // worker goes on.
            Ok(Err(e)) => failed(e.to_string()),
            // A panic inside the run: the frame gets an error annotation and
            // the model is loaded afresh (its state may be broken).
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(seq, camera = %frame.camera, panic = %why, "model run panicked; error annotation written, model reloaded");
                if let Some(dir) = &self.model_dir {
                    *model = Model::load(dir, &self.load)
                        .map_err(|e| format!("reloading the model after a panic failed: {e}"))?;
                }
                failed(format!("model run panicked: {why}"))
            }
        })
    }
}
