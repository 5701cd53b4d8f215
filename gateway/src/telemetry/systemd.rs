//! The service manager's view: readiness, status lines and the watchdog
//! (`sd_notify`, for `Type=notify` units; a no-op without `NOTIFY_SOCKET`).
//!
//! Promises:
//! - `READY=1` is sent once, when the log is open, the model is loaded and
//!   the MQTT subscriptions are acknowledged (what `/readyz` checks), or
//!   when the service waits for disk space it cannot start without (see
//!   [`waiting`]): a full disk is a state, not a failed start.
//! - `WATCHDOG=1` is sent only while every stage is alive: it made progress
//!   within the watchdog timeout (at least [`STALL_AFTER`]), or it has
//!   nothing to do, or (intake) it is connected and waiting for frames or
//!   held back on purpose (waiting for log space), or (detect) its model
//!   workers are computing: a frame that takes minutes on a slow board
//!   uses CPU time, a worker blocked for good does not (a model spinning
//!   forever would pass for slow). A hung model worker or
//!   a wedged uplink loop with work waiting stops the pings, and systemd
//!   restarts the service; nothing is lost, the log is durable.
//! - `STATUS=` carries a one-line summary (`systemctl status` shows it).

use super::status::{starting, Backlog, Telemetry};
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the status line is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// A stage is stuck only after this long without progress (or the watchdog
/// timeout, if longer): a Kafka batch may take `message.timeout.ms` (30 s)
/// to fail and then wait out a 30 s backoff, an MQTT reconnect up to
/// `mqtt.reconnect_max_backoff` (30 s by default).
pub const STALL_AFTER: Duration = Duration::from_secs(90);

/// Progress figures of one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    intake: u64,
    detect: u64,
    /// The model workers' CPU time: a frame in the model moves it.
    detect_cpu: u64,
    replicate: u64,
}

/// Tracks when each stage last moved.
#[derive(Debug)]
pub struct Liveness {
    last: Marks,
    moved: [Instant; 3],
}

/// A stage that has work waiting and has not moved within the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// `intake`, `detect` or `replicate`.
    pub stage: &'static str,
    /// Seconds since it last moved.
    pub idle_s: u64,
    /// What waits for it.
    pub waiting: u64,
}

fn marks(t: &Telemetry) -> Marks {
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let r = &t.replicate;
    let undeliverable: u64 = r.undeliverable.iter().map(ld).sum();
    Marks {
        intake: ld(&t.intake.polls),
        detect: t.detect.as_ref().map_or(0, |d| ld(&d.annotated)),
        detect_cpu: t.detect.as_ref().map_or(0, |d| d.cpu_ticks()),
        // Progress is what Kafka acknowledged or what was given up. A failed
        // attempt counts only while Kafka is unreachable (the loop is
        // waiting for the uplink, as it must for days if need be); a record
        // or topic Kafka refuses over and over is not progress.
        replicate: ld(&r.annotations)
            + ld(&r.dead_letters)
            + ld(&r.gaps)
            + ld(&r.chunks)
            + ld(&r.references)
            + ld(&r.waits)
            + undeliverable,
    }
}

impl Liveness {
    /// Starts tracking now.
    pub fn new(t: &Telemetry, now: Instant) -> Self {
        Self { last: marks(t), moved: [now; 3] }
    }

    /// The stages that are stuck: work waiting, no progress for `limit`.
    pub fn check(&mut self, t: &Telemetry, now: Instant, limit: Duration) -> Vec<Stall> {
        let m = marks(t);
        let b = Backlog::of(&t.log.counts());
        // Intake connected (or held back for log space on purpose) is idle-
        // healthy: frames come when cameras send them, and the MQTT
        // keep-alive notices a dead link. Disconnected, its loop must keep
        // trying (each attempt is a poll).
        let idle_ok = t.intake.blocked.load(Ordering::Relaxed)
            || t.intake.disk_full.load(Ordering::Relaxed)
            || t.intake.connected.load(Ordering::Relaxed);
        let stages = [
            ("intake", m.intake != self.last.intake, if idle_ok { 0 } else { 1 }),
            // A frame that takes longer than the limit on a slow board is
            // not a hang while its worker computes (CPU time moves); a
            // worker blocked for good uses none.
            (
                "detect",
                m.detect != self.last.detect || m.detect_cpu != self.last.detect_cpu,
                if t.detect.is_some() { b.detect.records } else { 0 },
            ),
            ("replicate", m.replicate != self.last.replicate, b.replicate.records),
        ];
        self.last = m;
        let mut stalls = Vec::new();
        for (i, (stage, moved, waiting)) in stages.into_iter().enumerate() {
            if moved || waiting == 0 {
                self.moved[i] = now;
            } else if now.duration_since(self.moved[i]) >= limit {
                stalls.push(Stall { stage, idle_s: now.duration_since(self.moved[i]).as_secs(), waiting });
            }
        }
        stalls
    }
}

/// The one-line status for `systemctl status`.
pub fn status_line(t: &Telemetry) -> String {
    let s = super::status::status(t);
    let pct = (s.log_used_bytes * 100).checked_div(s.log_max_bytes).unwrap_or(0);
    format!(
        "{} cameras, {} frames in, {} annotated, {} sent; backlog {} frames, {} uplink records; mqtt {}, kafka {}; disk {}%{}{}",
        s.cameras.len(),
        s.frames_received,
        s.frames_annotated,
        s.annotations_replicated,
        s.backlog.detect.records,
        s.backlog.replicate.records,
        if s.mqtt_subscribed { "up" } else { "down" },
        if s.kafka_connected { "up" } else { "down" },
        pct,
        if s.intake_blocked { "; intake paused (log full)" } else { "" },
        s.not_ready.iter().find(|w| w.starts_with("disk full")).map_or(String::new(), |w| format!("; {w}"))
    )
}

/// While no pipeline runs (the log cannot be opened for lack of disk
/// space): the process is up and waiting on purpose, so it tells systemd
/// it has started, says why in `STATUS=` and keeps the watchdog fed.
pub fn waiting(why: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(&format!("waiting: {why}")), NotifyState::Watchdog]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Sends readiness, status and watchdog pings until `stop`.
pub async fn supervise(t: Telemetry, stop: CancellationToken) {
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    if let Some(w) = watchdog {
        tracing::info!(timeout = ?w, "systemd watchdog enabled");
    }
    let tick = watchdog.map_or(STATUS_EVERY, |w| (w / 4).clamp(Duration::from_millis(100), STATUS_EVERY));
    let mut ready = false;
    let mut live = Liveness::new(&t, Instant::now());
    let mut was_stalled = false;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let status = status_line(&t);
        if !ready && starting(&t).is_empty() {
            ready = true;
            tracing::info!(systemd = under_systemd, "ready: log open, model loaded, subscribed");
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else {
            notify(&[NotifyState::Status(&status)]);
        }
        // systemd arms the watchdog when start-up completes (READY=1).
        let Some(w) = watchdog.filter(|_| ready) else { continue };
        let stalls = live.check(&t, Instant::now(), w.max(STALL_AFTER));
        if stalls.is_empty() {
            if was_stalled {
                tracing::info!("every stage moves again; watchdog pings resume");
                was_stalled = false;
            }
            notify(&[NotifyState::Watchdog]);
        } else if !was_stalled {
            was_stalled = true;
            for s in &stalls {
                tracing::error!(
                    stage = s.stage,
                    idle_s = s.idle_s,
                    waiting = s.waiting,
                    "stage made no progress within the watchdog timeout with work waiting; withholding watchdog pings so systemd restarts the service"
                );
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing batches, flushing the log")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectStats;
    use crate::intake::IntakeStats;
    use crate::log::{DurableLog, LogOptions};
    use crate::records::FrameRecord;
    use crate::replicate::ReplicateStats;
    use std::sync::Arc;

    fn telemetry(dir: &std::path::Path) -> Telemetry {
        Telemetry {
            log: DurableLog::open(LogOptions::new(dir, "t")).unwrap(),
            intake: Arc::new(IntakeStats::default()),
            detect: Some(Arc::new(DetectStats::default())),
            replicate: Arc::new(ReplicateStats::default()),
            started: Instant::now(),
        }
    }

    /// Appends one frame: work waiting for detect.
    fn a_frame_for_detect(t: &Telemetry) {
        let f = FrameRecord {
            camera: "c".into(),
            content_type: "image/jpeg".into(),
            received_at_ms: 1,
            captured_at_ms: None,
            camera_seq: None,
            payload: vec![1; 10],
        };
        t.log.append_frame(&f).unwrap();
    }

    #[test]
    fn idle_stages_are_alive_and_a_stage_with_work_and_no_progress_stalls() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let mut l = Liveness::new(&t, t0);
        // Nothing waits anywhere; intake's loop polls.
        t.intake.polls.fetch_add(1, Ordering::Relaxed);
        assert!(l.check(&t, t0 + Duration::from_secs(120), limit).is_empty());

        // A frame waits for detect, which does not move.
        a_frame_for_detect(&t);
        t.intake.polls.fetch_add(1, Ordering::Relaxed);
        assert!(l.check(&t, t0 + Duration::from_secs(150), limit).is_empty(), "within the limit");
        t.intake.polls.fetch_add(1, Ordering::Relaxed);
        let s = l.check(&t, t0 + Duration::from_secs(181), limit);
        assert_eq!(s, vec![Stall { stage: "detect", idle_s: 61, waiting: 1 }]);

        // Progress clears it.
        t.detect.as_ref().unwrap().annotated.fetch_add(1, Ordering::Relaxed);
        t.intake.polls.fetch_add(1, Ordering::Relaxed);
        assert!(l.check(&t, t0 + Duration::from_secs(182), limit).is_empty());

        // Disconnected and intake's loop stops trying: a stall. Connected
        // or held back for space, it is idle-healthy.
        let s = l.check(&t, t0 + Duration::from_secs(300), limit);
        assert_eq!(s.iter().map(|s| s.stage).collect::<Vec<_>>(), ["intake", "detect"]);
        t.intake.connected.store(true, Ordering::Relaxed);
        assert_eq!(l.check(&t, t0 + Duration::from_secs(300), limit).len(), 1);
        t.intake.connected.store(false, Ordering::Relaxed);
        t.intake.blocked.store(true, Ordering::Relaxed);
        t.detect.as_ref().unwrap().annotated.fetch_add(1, Ordering::Relaxed);
        assert!(l.check(&t, t0 + Duration::from_secs(301), limit).is_empty());
        assert!(status_line(&t).contains("1 frames"), "{}", status_line(&t));
    }

    /// A model worker that computes one frame for longer than the limit
    /// (a slow board: minutes a frame emulated) keeps detect alive; one
    /// that is blocked does not. Found by booting the armhf package: the
    /// watchdog restarted the service in the middle of a frame, over and
    /// over (images/boot).
    #[test]
    fn a_worker_computing_a_long_frame_is_alive_and_a_blocked_one_stalls() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        let d = t.detect.clone().unwrap();
        a_frame_for_detect(&t);
        t.intake.connected.store(true, Ordering::Relaxed);
        let limit = Duration::from_secs(60);
        let t0 = Instant::now();

        // A worker thread that computes until told to stop, then blocks
        // (a wait that never ends, until the test releases it).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tid_tx.send(crate::util::threads::current_tid()).unwrap();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                let _ = blocked.recv();
                x
            })
        };
        d.worker_tids.lock().unwrap().extend(tid_rx.recv().unwrap());
        assert_eq!(d.worker_tids.lock().unwrap().len(), 1, "the thread id is read from /proc");
        let mut l = Liveness::new(&t, t0);
        let mut at = t0;
        // Each check comes after the worker used CPU time (a clock tick
        // at least); the frame is never finished, yet no stall.
        for _ in 0..5 {
            let before = d.cpu_ticks();
            while d.cpu_ticks() == before {
                std::thread::sleep(Duration::from_millis(5));
            }
            at += Duration::from_secs(61);
            assert!(l.check(&t, at, limit).is_empty(), "a computing worker is progress");
        }
        // Blocked: the thread lives on, uses no CPU time and annotates
        // nothing: a stall. (Waits until it has left the loop: its CPU
        // time stops moving.)
        stop.store(true, Ordering::Relaxed);
        let mut last = d.cpu_ticks();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = d.cpu_ticks();
            if now == last {
                break;
            }
            last = now;
        }
        // Watched from here, where its CPU time stands still.
        let mut l = Liveness::new(&t, at);
        assert!(l.check(&t, at + Duration::from_secs(59), limit).is_empty(), "within the limit");
        let s = l.check(&t, at + Duration::from_secs(61), limit);
        assert_eq!(s, vec![Stall { stage: "detect", idle_s: 61, waiting: 1 }]);
        drop(release);
        spin.join().unwrap();
    }
}
