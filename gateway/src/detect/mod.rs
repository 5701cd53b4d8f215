//! The detect stage: frames from the log, through the model, annotations
//! back into the log.
//!
//! Owns cursor `detect`. Frames are read in sequence order and handed to
//! `detect.workers` dedicated OS threads (never tokio workers: inference is
//! blocking work), each with its own model session, through a bounded
//! queue. Results come back in any order and are committed in sequence
//! order: each commit writes the annotations of a contiguous run of frames
//! and moves the cursor past them in one atomic batch, which also frees the
//! frames' bytes (retention). So annotations are in order per camera, and a
//! crash re-annotates at most the frames that were in flight.
//!
//! Sampling is decided here, per camera, in sequence order: a sampled
//! frame's image moves to the `images` area in the same batch; the others'
//! bytes are freed by that batch.
//!
//! A frame that cannot be decoded becomes an annotation with `error` set,
//! and is counted; the stage goes on. Dead letters and gaps are not frames:
//! they keep their own records and are not annotated.

pub mod latest;
mod worker;

use crate::log::{Cursor, DurableLog, LogError};
use crate::records::{Area, FrameAnnotation, FrameRecord, SCHEMA_VERSION};
use crate::util::RateLimiter;
use inference::{Annotation, LoadOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What stops the detect stage.
#[derive(Debug, Error)]
pub enum DetectError {
    /// The model could not be loaded (at start).
    #[error("cannot load the model: {0}")]
    Model(#[from] inference::InferenceError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A worker thread died.
    #[error("inference worker stopped: {0}")]
    Worker(String),
    /// A declared label field does not fit the model (`[[fields]]`).
    #[error("label fields: {0}")]
    Fields(String),
}

impl DetectError {
    /// True when retrying later may succeed without a change.
    pub fn is_transient(&self) -> bool {
        match self {
            DetectError::Log(e) => e.is_transient(),
            DetectError::Model(e) => e.is_transient(),
            DetectError::Worker(_) | DetectError::Fields(_) => false,
        }
    }
}

/// Live counters of the detect stage.
#[derive(Debug, Default)]
pub struct DetectStats {
    /// Frames annotated (errors included).
    pub annotated: AtomicU64,
    /// Frames that could not be decoded or run.
    pub errors: AtomicU64,
    /// Items found.
    pub items: AtomicU64,
    /// Frames whose image was kept for upload.
    pub sampled: AtomicU64,
    /// Sum of per-frame processing time, microseconds.
    pub busy_us: AtomicU64,
    /// The model is loaded in every worker.
    pub model_loaded: AtomicBool,
    /// Latency histogram (decode to annotation), counts per bucket of
    /// [`LATENCY_BUCKETS_MS`] (last = +Inf).
    pub latency: [AtomicU64; 12],
    /// The newest annotated frame per camera (for the status page).
    pub latest: latest::LatestFrames,
    /// Per declared label field: frames it was read on, read uncertain on,
    /// and missing from (names come from the config, so this is bounded).
    pub fields: std::sync::Mutex<BTreeMap<String, FieldCounts>>,
    /// Codes read (`[detect.codes]`).
    pub codes: AtomicU64,
    /// Frames whose code reading ran out of its budget.
    pub codes_timeouts: AtomicU64,
    /// Frames whose code reader failed (a decoder panic).
    pub codes_errors: AtomicU64,
    /// Frames with at least one printed field disagreeing with its code.
    pub mismatched_frames: AtomicU64,
    /// The model workers' thread ids (Linux), whose CPU time tells a slow
    /// model from a hung one ([`cpu_ticks`](Self::cpu_ticks)).
    pub worker_tids: std::sync::Mutex<Vec<u32>>,
}

impl DetectStats {
    /// CPU time the model workers have used (user + system, clock ticks,
    /// from `/proc/self/task/<tid>/stat`). A worker computing a frame, even
    /// one that takes minutes on a slow board, adds to it; one blocked for
    /// good (a deadlock, a wait that never ends) does not. Threads that
    /// ended or cannot be read count 0.
    pub fn cpu_ticks(&self) -> u64 {
        let tids = self.worker_tids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tids.iter().filter_map(|tid| crate::util::threads::thread_cpu_ticks(*tid)).sum()
    }
}

/// Counters of one label field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FieldCounts {
    /// Read (uncertain ones included).
    pub read: u64,
    /// Read with a score under the field's `min_score`.
    pub uncertain: u64,
    /// Required and not read on a frame with text.
    pub missing: u64,
    /// Read, with a `verify` rule, and agreeing with its code.
    pub verified: u64,
    /// Read, with a `verify` rule, and disagreeing with its code.
    pub mismatch: u64,
    /// Read, with a `verify` rule, and no code on the frame carried the
    /// value.
    pub unverified: u64,
}

/// Upper bounds (ms) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 11] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

impl DetectStats {
    fn observe(&self, ms: f64) {
        let i = LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.busy_us.fetch_add((ms * 1e3) as u64, Ordering::Relaxed);
    }
}

/// Settings of the stage.
#[derive(Debug, Clone, Default)]
pub struct DetectOptions {
    /// Run the model; `false` forwards every frame with an empty
    /// annotation (model `none`), sampling images as configured.
    pub enabled: bool,
    /// Model folder.
    pub model: PathBuf,
    /// ONNX Runtime library.
    pub library: PathBuf,
    /// Worker threads.
    pub workers: usize,
    /// ONNX Runtime threads per worker.
    pub intra_threads: usize,
    /// Frames waiting for a worker at most.
    pub queue: usize,
    /// Largest picture decoded.
    pub max_pixels: u64,
    /// Memory one frame's annotation may take (`detect.max_frame_memory`).
    pub max_frame_memory: u64,
    /// OCR detector side (`detect.ocr_side`).
    pub ocr_side: usize,
    /// OCR detector side per camera, where `[[detect.camera]]` sets one.
    pub camera_sides: std::collections::BTreeMap<String, usize>,
    /// Runtime (`detect.backend`).
    pub backend: inference::engine::Backend,
    /// Raw text filter (`[detect.text]`).
    pub text: inference::ocr::TextFilter,
    /// The code reader (`[detect.codes]`), one per worker.
    pub codes: Option<inference::codes::CodeOptions>,
    /// Label fields (`[[fields]]`), compiled by each worker for its model.
    pub fields: Vec<crate::config::FieldConfig>,
    /// Which images are kept for upload.
    pub sample: crate::config::SampleConfig,
    /// Injected faults (tests and chaos runs only; none in production).
    pub faults: crate::faults::Faults,
}

struct Job {
    seq: u64,
    frame: FrameRecord,
}

struct Done {
    seq: u64,
    frame: FrameRecord,
    annotation: Annotation,
}

/// The detect stage, with its models loaded.
pub struct Detect {
    log: DurableLog,
    stats: Arc<DetectStats>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    results: mpsc::UnboundedReceiver<Result<Done, String>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    capacity: usize,
    warn: RateLimiter,
    sampler: std::sync::Mutex<crate::sample::Sampler>,
}

impl Detect {
    /// Starts the workers; each loads its own model. Returns when every
    /// worker has its model, or the first load error.
    ///
    /// # Errors
    /// [`DetectError::Model`] with the loader's message (missing library,
    /// bad manifest, checksum mismatch).
    pub fn start(log: DurableLog, opts: &DetectOptions) -> Result<Self, DetectError> {
        let stats = Arc::new(DetectStats::default());
        let workers_n = opts.workers.max(1);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(opts.queue.max(1));
        let jobs_rx = Arc::new(std::sync::Mutex::new(jobs_rx));
        let (res_tx, res_rx) = mpsc::unbounded_channel();
        let mut workers = Vec::new();
        let mut loads = Vec::new();
        for i in 0..workers_n {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Option<u32>, DetectError>>();
            loads.push(ready_rx);
            let load = LoadOptions {
                library: opts.library.clone(),
                intra_threads: opts.intra_threads,
                max_pixels: opts.max_pixels,
                max_frame_memory: opts.max_frame_memory,
                ocr_side: opts.ocr_side,
                backend: opts.backend,
                text_filter: opts.text,
                codes: opts.codes.clone(),
            };
            let w = worker::Worker {
                model_dir: opts.enabled.then(|| opts.model.clone()),
                load,
                field_decls: opts.fields.clone(),
                camera_sides: opts.camera_sides.clone(),
                faults: opts.faults.clone(),
            };
            let channels = worker::Channels { jobs: jobs_rx.clone(), results: res_tx.clone(), ready: ready_tx };
            let handle = std::thread::Builder::new()
                .name(format!("detect-{i}"))
                .spawn(move || w.run(channels))
                .map_err(|e| DetectError::Worker(e.to_string()))?;
            workers.push(handle);
        }
        for r in loads {
            match r.recv() {
                Ok(Ok(tid)) => stats.worker_tids.lock().unwrap_or_else(|p| p.into_inner()).extend(tid),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(DetectError::Worker("a worker stopped while loading the model".into())),
            }
        }
        stats.model_loaded.store(true, Ordering::Relaxed);
        Ok(Self {
            log,
            stats,
            jobs: Some(jobs_tx),
            results: res_rx,
            workers,
            capacity: opts.queue.max(1) + workers_n,
            warn: RateLimiter::new(Duration::from_secs(10)),
            sampler: std::sync::Mutex::new(crate::sample::Sampler::new(opts.sample.clone())),
        })
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<DetectStats> {
        self.stats.clone()
    }

    /// Runs until `stop`; then finishes the frames in flight, commits them
    /// and stops the workers.
    ///
    /// # Errors
    /// [`DetectError`] if the log or a worker fails.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), DetectError> {
        let mut reader = self.log.frame_reader()?;
        let mut next_commit = reader.position();
        // Every sequence number below this was read (frames dispatched, the
        // rest were not frames): the cursor may pass it once nothing before
        // it is in flight.
        let mut scanned = next_commit;
        let mut pending: BTreeMap<u64, Option<Done>> = BTreeMap::new();
        let result = loop {
            let room = self.capacity.saturating_sub(pending.len());
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                r = self.results.recv() => match r {
                    Some(Ok(done)) => {
                        pending.insert(done.seq, Some(done));
                        if let Err(e) = self.commit_ready(&mut pending, &mut next_commit, scanned) {
                            break Err(e);
                        }
                    }
                    Some(Err(e)) => break Err(DetectError::Worker(e)),
                    None => break Err(DetectError::Worker("all workers stopped".into())),
                },
                frames = reader.next_frames(room), if room > 0 => {
                    let batch = match frames {
                        Ok(b) => b,
                        Err(e) => break Err(e.into()),
                    };
                    scanned = batch.upto;
                    let nothing_new = batch.records.is_empty();
                    for (seq, frame) in batch.records {
                        pending.insert(seq, None);
                        if let Some(tx) = &self.jobs {
                            // Never blocks: in-flight frames are bounded by `capacity`.
                            if tx.send(Job { seq, frame }).is_err() {
                                return Err(DetectError::Worker("workers stopped".into()));
                            }
                        }
                    }
                    if nothing_new {
                        // Only dead letters (or nothing) since the last
                        // frame: let the cursor pass them.
                        if let Err(e) = self.commit_ready(&mut pending, &mut next_commit, scanned) {
                            break Err(e);
                        }
                    }
                }
            }
        };
        // Finish the batch in flight, then stop the workers.
        while pending.values().any(Option::is_none) {
            match self.results.recv().await {
                Some(Ok(done)) => {
                    pending.insert(done.seq, Some(done));
                }
                _ => break,
            }
        }
        let committed = self.commit_ready(&mut pending, &mut next_commit, scanned);
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        result.and(committed)
    }

    /// Counts the frame's label fields, codes and cross-check, and warns
    /// (rate-limited) about a missing field, a misprint or a code reader
    /// that ran out of time.
    fn count_labels(&self, fa: &FrameAnnotation) {
        let a = &fa.annotation;
        if !a.fields.is_empty() || !a.missing.is_empty() {
            let mut counts = self.stats.fields.lock().unwrap_or_else(|p| p.into_inner());
            for (name, f) in &a.fields {
                let c = counts.entry(name.clone()).or_default();
                c.read += 1;
                c.uncertain += u64::from(f.uncertain);
                c.verified += u64::from(f.verified == Some(true));
                c.mismatch += u64::from(f.verified == Some(false));
            }
            for name in &a.unverified {
                counts.entry(name.clone()).or_default().unverified += 1;
            }
            for name in &a.missing {
                counts.entry(name.clone()).or_default().missing += 1;
            }
        }
        if !a.missing.is_empty() {
            if let Some(held) = self.warn.check("missing") {
                tracing::warn!(frame_id = %fa.frame_id, camera = %fa.camera, missing = %a.missing.join(","), suppressed = held, "required label field not read");
            }
        }
        self.stats.codes.fetch_add(a.codes.len() as u64, Ordering::Relaxed);
        if a.codes_timeout {
            self.stats.codes_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.warn.check("codes_timeout") {
                tracing::warn!(frame_id = %fa.frame_id, camera = %fa.camera, suppressed = held, "code reading ran out of its budget (detect.codes.budget); codes may be missing");
            }
        }
        if let Some(e) = &a.codes_error {
            self.stats.codes_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.warn.check("codes_error") {
                tracing::warn!(frame_id = %fa.frame_id, camera = %fa.camera, error = %e, suppressed = held, "code reader failed");
            }
        }
        if !a.mismatches.is_empty() {
            self.stats.mismatched_frames.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = self.warn.check("mismatch") {
                let detail: Vec<String> = a
                    .mismatches
                    .iter()
                    .filter_map(|n| {
                        let f = a.fields.get(n)?;
                        Some(format!("{n}: printed {:?}, code {:?}", f.value, f.code.as_deref().unwrap_or("")))
                    })
                    .collect();
                tracing::warn!(frame_id = %fa.frame_id, camera = %fa.camera, mismatches = %detail.join("; "), suppressed = held, "label print disagrees with its code");
            }
        }
    }

    /// Commits the annotations of the contiguous run of finished frames
    /// starting at `next_commit`, and moves the cursor past them (and up to
    /// `scanned` when nothing is in flight any more).
    fn commit_ready(
        &self,
        pending: &mut BTreeMap<u64, Option<Done>>,
        next_commit: &mut u64,
        scanned: u64,
    ) -> Result<(), DetectError> {
        let mut batch = self.log.batch();
        let mut last = None;
        let mut shown = Vec::new();
        while let Some(entry) = pending.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let (seq, done) = entry.remove_entry();
            let Some(mut done) = done else { break };
            let now_ms = crate::util::now_ms();
            let sampled = self.sampler.lock().unwrap_or_else(|p| p.into_inner()).decide(
                &done.frame.camera,
                &done.annotation,
                done.frame.payload.len() as u64,
                now_ms,
            );
            if sampled.is_some() {
                self.stats.sampled.fetch_add(1, Ordering::Relaxed);
                batch.put_frame(Area::Images, seq, &done.frame);
            }
            let fa = FrameAnnotation {
                schema: SCHEMA_VERSION,
                frame_id: self.log.frame_id(seq),
                gateway_id: self.log.gateway_id().to_owned(),
                seq,
                camera: done.frame.camera.clone(),
                camera_seq: done.frame.camera_seq,
                captured_at_ms: done.frame.captured_at_ms,
                received_at_ms: done.frame.received_at_ms,
                content_type: done.frame.content_type.clone(),
                frame_bytes: done.frame.payload.len() as u64,
                sampled,
                annotation: done.annotation,
            };
            if let Some(e) = &fa.annotation.error {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = self.warn.check("decode") {
                    tracing::warn!(frame_id = %fa.frame_id, camera = %fa.camera, error = %e, suppressed = held, "frame could not be annotated");
                }
            }
            self.stats.annotated.fetch_add(1, Ordering::Relaxed);
            let t = &fa.annotation.timings;
            self.stats.observe(t.total_ms());
            self.stats.items.fetch_add(fa.annotation.items.len() as u64, Ordering::Relaxed);
            self.count_labels(&fa);
            // Serialising plain data cannot fail.
            let body = serde_json::to_vec(&fa).unwrap_or_default();
            batch.put_blob(Area::Annotations, seq, &body);
            last = Some(seq);
            shown.push((fa, std::mem::take(&mut done.frame.payload), now_ms));
        }
        let mut target = last.map_or(*next_commit, |l| l + 1);
        if pending.is_empty() {
            target = target.max(scanned);
        }
        if target > *next_commit {
            *next_commit = target;
            batch.set_cursor(Cursor::Detect, target);
            self.log.apply(batch)?;
        }
        // The bytes move (no copy); only the newest frame per camera stays.
        for (fa, image, now_ms) in shown {
            self.stats.latest.record(&fa, image, now_ms);
        }
        Ok(())
    }
}

/// The annotation of a frame when `detect.enabled = false`: no model ran,
/// nothing was found, and the record still goes upstream in order.
pub fn not_annotated() -> Annotation {
    Annotation { error: None, ..Annotation::failed(inference::ModelInfo::new("none", "", ""), String::new()) }
}

/// The detect stage as the supervisor runs it.
pub enum DetectStage {
    /// The model on its worker threads.
    Model(Box<Detect>),
    /// `detect.enabled = false` with `when_disabled = "hold"`: frames stay
    /// in the log unannotated; the stage only waits for `stop`.
    Hold,
}

impl DetectStage {
    /// The model's counters (none while holding).
    pub fn stats(&self) -> Option<Arc<DetectStats>> {
        match self {
            DetectStage::Model(d) => Some(d.stats()),
            DetectStage::Hold => None,
        }
    }
}

impl crate::stage::Stage for DetectStage {
    const NAME: &'static str = "detect";
    type Error = DetectError;

    async fn run(self, stop: CancellationToken) -> Result<(), Self::Error> {
        match self {
            DetectStage::Model(d) => d.run(stop).await,
            DetectStage::Hold => {
                stop.cancelled().await;
                Ok(())
            }
        }
    }

    fn task_failed(why: String) -> Self::Error {
        DetectError::Worker(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotation schema documented in the README is the one we write:
    /// the example parses, and every key it shows is a key we produce.
    #[test]
    fn readme_example_matches_the_schema() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## Annotation records").expect("README section");
        let block = &readme[start..];
        let json = block.split("```json").nth(1).and_then(|b| b.split("```").next()).expect("json block");
        let example: serde_json::Value = serde_json::from_str(json).expect("README example is valid JSON");
        let parsed: FrameAnnotation = serde_json::from_value(example.clone()).expect("README example parses");
        assert_eq!(parsed.schema, SCHEMA_VERSION);
        let ours = serde_json::to_value(&parsed).unwrap();
        fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
            if let Some(o) = v.as_object() {
                for (k, v) in o {
                    out.push(format!("{prefix}{k}"));
                    keys(v, &format!("{prefix}{k}."), out);
                }
            } else if let Some(a) = v.as_array() {
                for v in a.iter().take(1) {
                    keys(v, &format!("{prefix}[]."), out);
                }
            }
        }
        let (mut documented, mut produced) = (Vec::new(), Vec::new());
        keys(&example, "", &mut documented);
        keys(&ours, "", &mut produced);
        documented.sort();
        produced.sort();
        assert_eq!(documented, produced, "README example and schema differ");
    }
}
