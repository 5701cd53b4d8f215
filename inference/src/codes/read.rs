//! The time-bounded reader: one helper thread per worker runs rxing on a
//! grey image while the worker waits at most the frame's budget.
//!
//! Promise: [`CodeReader::read`] returns within the budget (plus the time
//! to hand the image over). A decode that overruns is abandoned: its helper
//! finishes it on its own and then ends (its result is never looked at),
//! and the next frame gets a fresh helper, so one hostile frame costs the
//! frames after it nothing. At most [`MAX_HELPERS`] helpers of a worker are
//! alive (the current one and those still finishing an abandoned decode,
//! each holding one grey frame); past that, a frame waits within its own
//! budget for one to end and is a timeout if none does. A panic inside
//! rxing ends that decode with [`Outcome::Failed`]; a helper that has gone
//! is started again on the next frame.

use super::{code, merge, Code, CodeOptions, Symbology};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Helper threads of one worker alive at once: the current one and two
/// still finishing decodes that overran.
pub const MAX_HELPERS: usize = 3;

/// What reading one frame gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The codes found (possibly none).
    Read(Vec<Code>),
    /// The budget ran out before the decode ended.
    Timeout,
    /// The decoder failed (a panic inside it, or its thread could not run).
    Failed(String),
}

struct Job {
    id: u64,
    luma: Vec<u8>,
    width: u32,
    height: u32,
    origin: [f32; 2],
}

/// A job's id, its codes, and the decode's time in ms.
type Reply = (u64, Result<Vec<Code>, String>, f64);

/// A read handed to the helper ([`CodeReader::start`]).
#[derive(Debug)]
pub struct Ticket {
    id: Option<u64>,
    started: Instant,
    deadline: Instant,
    /// Known without the helper (a bad size, still busy, no thread).
    early: Option<Outcome>,
}

/// A worker's code reader (not shared: each worker has its own, as its
/// model).
pub struct CodeReader {
    opts: CodeOptions,
    helper: Option<(SyncSender<Job>, Receiver<Reply>)>,
    next_id: u64,
    /// Helper threads alive (the current one and abandoned ones).
    live: Arc<AtomicUsize>,
    /// A job handed over and not yet finished: if the caller never
    /// finishes it (the model failed meanwhile), the next start abandons
    /// that helper instead of queueing behind an unread reply.
    outstanding: Option<u64>,
}

impl std::fmt::Debug for CodeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeReader")
            .field("opts", &self.opts)
            .field("helpers", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl CodeReader {
    /// A reader with these options; its helper thread starts on the first
    /// frame.
    pub fn new(opts: CodeOptions) -> Self {
        Self { opts, helper: None, next_id: 0, live: Arc::new(AtomicUsize::new(0)), outstanding: None }
    }

    /// Its options.
    pub fn options(&self) -> &CodeOptions {
        &self.opts
    }

    /// Reads the codes on a `width` x `height` grey image (`luma`, one
    /// byte a pixel, rows top to bottom) whose top-left corner is at
    /// `origin` in the frame (points are given in frame pixels): [`start`]
    /// then [`finish`].
    ///
    /// [`start`]: Self::start
    /// [`finish`]: Self::finish
    pub fn read(&mut self, luma: Vec<u8>, width: u32, height: u32, origin: [f32; 2]) -> Outcome {
        let t = self.start(luma, width, height, origin);
        self.finish(t).0
    }

    /// Hands a grey image to the helper and returns at once (the caller
    /// runs the model meanwhile); the budget counts from here.
    pub fn start(&mut self, luma: Vec<u8>, width: u32, height: u32, origin: [f32; 2]) -> Ticket {
        let started = Instant::now();
        let deadline = started + self.opts.budget;
        let early = |o: Outcome| Ticket { id: None, started, deadline, early: Some(o) };
        if self.outstanding.take().is_some() {
            // The last job was never finished: its helper may still be
            // busy with it, and its reply would sit unread. Abandon it.
            self.helper = None;
        }
        if luma.len() as u64 != u64::from(width) * u64::from(height) || width == 0 || height == 0 {
            return early(Outcome::Read(Vec::new()));
        }
        // Too many helpers still finishing overrun decodes: wait (within
        // this frame's budget) for one to end.
        if self.helper.is_none() {
            while self.live.load(Ordering::Acquire) >= MAX_HELPERS {
                if Instant::now() >= deadline {
                    return early(Outcome::Timeout);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let job = Job { id, luma, width, height, origin };
        // The helper is idle here (every job before was finished or its
        // helper abandoned), so its one-job queue has room; `try_send`
        // makes sure the worker never blocks on it.
        let sent = match self.helper() {
            Ok((tx, _)) => tx.try_send(job).map_err(|e| match e {
                mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
            }),
            Err(e) => return early(Outcome::Failed(e)),
        };
        if let Err(job) = sent {
            // The helper has gone (its thread died) or is still busy: start
            // a new one, once.
            self.helper = None;
            match self.helper() {
                Ok((tx, _)) => {
                    if tx.try_send(job).is_err() {
                        return early(Outcome::Failed("the code reader's thread could not be started".into()));
                    }
                }
                Err(e) => return early(Outcome::Failed(e)),
            }
        }
        self.outstanding = Some(id);
        Ticket { id: Some(id), started, deadline, early: None }
    }

    /// Waits (until the ticket's deadline) for the codes of a started
    /// read. Returns them with the decode's own time in ms (the helper's,
    /// or the time waited when it ran out).
    pub fn finish(&mut self, t: Ticket) -> (Outcome, f64) {
        let waited = || t.started.elapsed().as_secs_f64() * 1e3;
        let id = match (t.early, t.id) {
            (Some(o), _) => return (o, waited()),
            (None, Some(id)) => id,
            (None, None) => return (Outcome::Read(Vec::new()), 0.0),
        };
        self.outstanding = None;
        match self.wait_for(id, t.deadline) {
            Some((Ok(codes), ms)) => (Outcome::Read(codes), ms),
            Some((Err(e), ms)) => (Outcome::Failed(e), ms),
            None => {
                // Abandon the helper: it ends after this decode.
                self.helper = None;
                (Outcome::Timeout, waited())
            }
        }
    }

    /// The reply to job `id`, or `None` when the deadline passes first
    /// (replies to older jobs are dropped on the way).
    fn wait_for(&mut self, id: u64, deadline: Instant) -> Option<(Result<Vec<Code>, String>, f64)> {
        let (_, rx) = self.helper.as_ref()?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((got, r, ms)) if got == id => return Some((r, ms)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.helper = None;
                    return Some((Err("the code reader's thread ended".into()), 0.0));
                }
            }
        }
    }

    fn helper(&mut self) -> Result<&(SyncSender<Job>, Receiver<Reply>), String> {
        if self.helper.is_none() {
            let (jtx, jrx) = mpsc::sync_channel::<Job>(1);
            let (rtx, rrx) = mpsc::sync_channel::<Reply>(2);
            let opts = self.opts.clone();
            let live = Arc::clone(&self.live);
            live.fetch_add(1, Ordering::AcqRel);
            let alive = Alive(Arc::clone(&live));
            std::thread::Builder::new()
                .name("codes".into())
                .spawn(move || {
                    let _alive = alive;
                    for job in jrx {
                        let id = job.id;
                        let opts = &opts;
                        let t = Instant::now();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || decode(job, opts)))
                            .unwrap_or_else(|_| Err("the code decoder panicked on this frame".into()));
                        if rtx.send((id, r, t.elapsed().as_secs_f64() * 1e3)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start the code reader's thread: {e}"))?;
            self.helper = Some((jtx, rrx));
        }
        self.helper.as_ref().ok_or_else(|| "no code reader thread".into())
    }
}

/// Counts a helper thread as alive until it ends (or could not start).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs rxing's multiple-code reader on one grey image, one symbology at
/// a time in [`Symbology::ALL`]'s order: rxing tries the formats of one
/// call in a hash set's order, which changes from process to process, and
/// which symbol it finds first decides where it looks next; one format a
/// pass makes the result the same on every run (and no symbol hides
/// another of a different kind).
fn decode(job: Job, opts: &CodeOptions) -> Result<Vec<Code>, String> {
    let [ox, oy] = job.origin;
    let mut codes = Vec::new();
    for sym in Symbology::ALL.into_iter().filter(|s| opts.symbologies.contains(s)) {
        let mut hints = rxing::DecodeHints::default()
            .with(rxing::DecodeHintValue::PossibleFormats(HashSet::from([sym.to_rxing()])))
            .with(rxing::DecodeHintValue::TryHarder(opts.thorough));
        let found = match rxing::helpers::detect_multiple_in_luma_with_hints(
            job.luma.clone(),
            job.width,
            job.height,
            &mut hints,
        ) {
            Ok(found) => found,
            Err(rxing::Exceptions::NotFoundException(_)) => Vec::new(),
            Err(e) => return Err(format!("code decoder: {e}")),
        };
        codes.extend(found.into_iter().filter_map(|r| {
            let sym = Symbology::from_rxing(*r.getBarcodeFormat())?;
            let id = match r.getRXingResultMetadata().get(&rxing::RXingResultMetadataType::SYMBOLOGY_IDENTIFIER) {
                Some(rxing::RXingResultMetadataValue::SymbologyIdentifier(s)) => s.clone(),
                _ => String::new(),
            };
            let pts: Vec<[f32; 2]> = r.getPoints().iter().map(|p| [p.x + ox, p.y + oy]).collect();
            Some(code(sym, r.getText().to_owned(), &id, &pts))
        }));
    }
    Ok(merge(codes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxing::Writer;
    use std::time::Duration;

    /// Draws `text` as `format` into a grey canvas at (x, y), `scale`
    /// pixels a module (black on white); text with a GS is drawn as GS1.
    fn draw(canvas: &mut [u8], cw: usize, at: (usize, usize), text: &str, format: rxing::BarcodeFormat) {
        let gs1 = text.contains('\u{1d}');
        // rxing's DataMatrix writer makes GS1 (leading FNC1, GS as FNC1)
        // only with its minimal ("compact") encoder.
        let hints = rxing::EncodeHints::default()
            .with(rxing::EncodeHintValue::Gs1Format(gs1))
            .with(rxing::EncodeHintValue::DataMatrixCompact(gs1));
        let m = rxing::MultiFormatWriter
            .encode_with_hints(text, &format, 0, 0, &hints)
            .unwrap_or_else(|e| panic!("encode {text:?}: {e}"));
        let scale = if matches!(format, rxing::BarcodeFormat::CODE_128) { 2 } else { 5 };
        let rows = if matches!(format, rxing::BarcodeFormat::CODE_128) { 60 } else { m.height() as usize * scale };
        for y in 0..rows {
            for x in 0..m.width() as usize * scale {
                let my = if matches!(format, rxing::BarcodeFormat::CODE_128) { 0 } else { (y / scale) as u32 };
                if m.get((x / scale) as u32, my) {
                    canvas[(at.1 + y) * cw + at.0 + x] = 0;
                }
            }
        }
    }

    fn reader(budget: Duration) -> CodeReader {
        CodeReader::new(CodeOptions { budget, ..CodeOptions::default() })
    }

    #[test]
    fn reads_a_gs1_datamatrix_a_qr_and_a_code_128_on_one_frame() {
        let (w, h) = (640usize, 480usize);
        let mut img = vec![255u8; w * h];
        draw(&mut img, w, (40, 40), "0109506000134376\u{1d}10LOT-7\u{1d}17271231", rxing::BarcodeFormat::DATA_MATRIX);
        draw(&mut img, w, (360, 40), "https://example.invalid/p/42", rxing::BarcodeFormat::QR_CODE);
        draw(&mut img, w, (60, 320), "SN-000123", rxing::BarcodeFormat::CODE_128);
        let Outcome::Read(codes) = reader(Duration::from_secs(60)).read(img, w as u32, h as u32, [10.0, 20.0]) else {
            panic!("not read")
        };
        let texts: Vec<(Symbology, &str)> = codes.iter().map(|c| (c.symbology, c.text.as_str())).collect();
        assert!(texts.contains(&(Symbology::Qr, "https://example.invalid/p/42")), "{texts:?}");
        assert!(texts.contains(&(Symbology::Code128, "SN-000123")), "{texts:?}");
        let dm = codes.iter().find(|c| c.symbology == Symbology::DataMatrix).expect("the DataMatrix");
        // Drawn at (40, 40) and read in a region whose corner is (10, 20).
        assert!(dm.bbox[0] >= 45.0 && dm.bbox[1] >= 55.0 && dm.bbox[2] < 330.0, "{:?}", dm.bbox);
        let gs1: Vec<(&str, &str)> = dm.gs1.iter().flatten().map(|(a, v)| (a.as_str(), v.as_str())).collect();
        assert_eq!(gs1, [("01", "09506000134376"), ("10", "LOT-7"), ("17", "271231")], "{dm:?}");
        assert_eq!(codes.len(), 3, "one code per symbol: {texts:?}");
    }

    #[test]
    fn a_decode_over_its_budget_is_a_timeout_and_the_worker_goes_on() {
        // A large noisy frame with a zero budget cannot be decoded in time.
        let (w, h) = (3000usize, 2000usize);
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..w * h)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let mut r = reader(Duration::ZERO);
        assert_eq!(r.read(noise.clone(), w as u32, h as u32, [0.0; 2]), Outcome::Timeout);
        // The next frame gets a fresh helper and is read at once.
        r.opts.budget = Duration::from_secs(120);
        let mut img = vec![255u8; 300 * 300];
        draw(&mut img, 300, (50, 50), "AFTER", rxing::BarcodeFormat::QR_CODE);
        let Outcome::Read(codes) = r.read(img.clone(), 300, 300, [0.0; 2]) else {
            panic!("not read after the timeout")
        };
        assert_eq!(codes.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), ["AFTER"]);
        // Overruns pile up to MAX_HELPERS threads, never more: past that a
        // frame is a timeout without a new thread.
        r.opts.budget = Duration::ZERO;
        for _ in 0..MAX_HELPERS + 2 {
            assert_eq!(r.read(noise.clone(), w as u32, h as u32, [0.0; 2]), Outcome::Timeout);
            assert!(r.live.load(Ordering::Acquire) <= MAX_HELPERS);
        }
        // Given time, one ends and the frame is read.
        r.opts.budget = Duration::from_secs(300);
        let Outcome::Read(codes) = r.read(img, 300, 300, [0.0; 2]) else { panic!("not read once a helper ended") };
        assert_eq!(codes.len(), 1);
    }

    #[test]
    fn reads_started_and_never_finished_do_not_block_the_next_ones() {
        // The model failing after a start (its error returned before
        // finish), frame after frame: each start abandons the helper of
        // the unfinished one instead of queueing behind its reply.
        let mut r = reader(Duration::from_secs(120));
        let mut img = vec![255u8; 300 * 300];
        draw(&mut img, 300, (50, 50), "NEXT", rxing::BarcodeFormat::QR_CODE);
        for _ in 0..8 {
            drop(r.start(img.clone(), 300, 300, [0.0; 2]));
        }
        let Outcome::Read(codes) = r.read(img, 300, 300, [0.0; 2]) else { panic!("not read") };
        assert_eq!(codes.len(), 1);
        assert!(r.live.load(Ordering::Acquire) <= MAX_HELPERS);
    }

    #[test]
    fn hostile_shapes_and_noise_give_a_result_not_a_panic() {
        let mut r = reader(Duration::from_secs(60));
        for (w, h) in [(1u32, 1u32), (2000, 1), (1, 2000), (3, 3), (64, 64)] {
            let img: Vec<u8> = (0..w * h).map(|i| if (i / 3) % 2 == 0 { 0 } else { 255 }).collect();
            assert!(matches!(r.read(img, w, h, [0.0; 2]), Outcome::Read(_)), "{w}x{h}");
        }
        // A buffer that does not match its size is no code, not a read
        // past its end.
        assert_eq!(r.read(vec![0; 10], 100, 100, [0.0; 2]), Outcome::Read(Vec::new()));
        assert_eq!(r.read(Vec::new(), 0, 0, [0.0; 2]), Outcome::Read(Vec::new()));
    }
}
