//! Sampling: which images go upstream, decided at detect time.
//!
//! Owns the per-camera sampling state. A frame is sampled when a rule
//! picks it (first matching rule is the reason) and the camera's limits
//! allow it:
//!
//! - rules: every Nth frame of a camera; an item whose label or text
//!   matches `labels` / `text_pattern` with at least `min_score`; a best
//!   score below `low_confidence_below` (material for retraining); a frame
//!   that could not be decoded; a frame whose print disagrees with its
//!   code (`mismatches`); a frame with a declared label field missing or
//!   uncertain (`review`, for a human look upstream);
//! - limits: at most one sampled frame per `min_interval` per camera, and a
//!   per-camera token bucket of `max_bytes_per_second` (burst: 10 s worth).
//!
//! Promise: `decide` is deterministic given the sequence of calls and their
//! timestamps, and never samples more than the limits allow. Frames not
//! sampled lose their image bytes right after detection. Memory is bounded
//! whatever camera ids arrive: a camera idle for [`IDLE_EVICT`] is
//! forgotten, and at most [`MAX_CAMERAS`] are tracked (the least recently
//! seen goes first). A forgotten camera starts counting afresh.

use crate::config::SampleConfig;
use crate::records::SampleReason;
use inference::Annotation;
use std::collections::HashMap;
use std::time::Duration;

/// A camera not seen for this long is forgotten.
pub const IDLE_EVICT: Duration = Duration::from_secs(3600);
/// Cameras tracked at most.
pub const MAX_CAMERAS: usize = 65_536;

#[derive(Debug, Default)]
struct CameraState {
    seen_ms: u64,
    frames: u64,
    last_sampled_ms: Option<u64>,
    tokens: f64,
    tokens_at_ms: Option<u64>,
}

/// Per-camera sampling decisions.
#[derive(Debug)]
pub struct Sampler {
    cfg: SampleConfig,
    cameras: HashMap<String, CameraState>,
    calls: u64,
    max_cameras: usize,
}

impl Sampler {
    /// A sampler with these rules.
    pub fn new(cfg: SampleConfig) -> Self {
        Self { cfg, cameras: HashMap::new(), calls: 0, max_cameras: MAX_CAMERAS }
    }

    /// Cameras tracked now.
    pub fn cameras(&self) -> usize {
        self.cameras.len()
    }

    /// Forgets idle cameras (every 1024 calls) and the least recently seen
    /// past the cap.
    fn evict(&mut self, now_ms: u64) {
        self.calls += 1;
        if self.calls % 1024 == 0 {
            let idle = IDLE_EVICT.as_millis() as u64;
            self.cameras.retain(|_, st| now_ms.saturating_sub(st.seen_ms) < idle);
        }
        while self.cameras.len() > self.max_cameras {
            let Some(oldest) = self.cameras.iter().min_by_key(|(_, st)| st.seen_ms).map(|(k, _)| k.clone()) else {
                break;
            };
            self.cameras.remove(&oldest);
        }
    }

    fn rule(&self, frame_no: u64, a: &Annotation) -> Option<SampleReason> {
        if a.error.is_some() {
            return self.cfg.errors.then_some(SampleReason::Error);
        }
        if self.cfg.mismatches && !a.mismatches.is_empty() {
            return Some(SampleReason::Mismatch);
        }
        if self.cfg.review && a.needs_review() {
            return Some(SampleReason::Review);
        }
        if self.cfg.every_nth > 0 && frame_no % self.cfg.every_nth == 0 {
            return Some(SampleReason::EveryNth);
        }
        let hit = a.items.iter().any(|i| {
            i.score >= self.cfg.min_score
                && (i.label.as_ref().is_some_and(|l| self.cfg.labels.contains(l))
                    || i.text.as_ref().is_some_and(|t| self.cfg.text_pattern.as_ref().is_some_and(|p| p.is_match(t))))
        });
        if hit {
            return Some(SampleReason::Match);
        }
        if let Some(low) = self.cfg.low_confidence_below {
            let best = a.items.iter().map(|i| i.score).fold(f32::NAN, f32::max);
            if !a.items.is_empty() && best < low {
                return Some(SampleReason::LowConfidence);
            }
        }
        None
    }

    /// Whether to keep this frame's image (and why), at time `now_ms`.
    pub fn decide(&mut self, camera: &str, a: &Annotation, frame_bytes: u64, now_ms: u64) -> Option<SampleReason> {
        let frame_no = {
            let st = self.cameras.entry(camera.to_owned()).or_default();
            st.seen_ms = now_ms;
            let n = st.frames;
            st.frames += 1;
            n
        };
        self.evict(now_ms);
        let reason = self.rule(frame_no, a)?;
        let cfg = &self.cfg;
        let st = self.cameras.get_mut(camera)?;
        if let Some(last) = st.last_sampled_ms {
            if now_ms.saturating_sub(last) < cfg.min_interval.as_millis() as u64 {
                return None;
            }
        }
        if cfg.max_bytes_per_second > 0 {
            let rate = cfg.max_bytes_per_second as f64;
            let burst = rate * 10.0;
            let since = st.tokens_at_ms.map_or(burst / rate * 1000.0, |t| now_ms.saturating_sub(t) as f64);
            st.tokens = (st.tokens + since / 1000.0 * rate).min(burst);
            st.tokens_at_ms = Some(now_ms);
            if st.tokens < frame_bytes as f64 {
                return None;
            }
            st.tokens -= frame_bytes as f64;
        }
        st.last_sampled_ms = Some(now_ms);
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::{Item, ModelInfo};

    fn ann(items: &[(&str, f32)]) -> Annotation {
        Annotation {
            width: 10,
            height: 10,
            items: items.iter().map(|(t, s)| Item::text((*t).into(), *s, [[0.0, 0.0]; 4])).collect(),
            error: None,
            ..Annotation::failed(ModelInfo::new("m", "1", "h"), String::new())
        }
    }

    #[test]
    fn a_misprint_is_sampled_as_a_mismatch_unless_turned_off() {
        let mut a = ann(&[("LOT 1", 0.99)]);
        a.mismatches = vec!["lot".into()];
        let mut s = Sampler::new(SampleConfig { every_nth: 0, ..SampleConfig::default() });
        assert_eq!(s.decide("c", &a, 1, 1), Some(SampleReason::Mismatch));
        assert_eq!(s.decide("c", &ann(&[("LOT 1", 0.99)]), 1, 2), None);
        let mut off = Sampler::new(SampleConfig { every_nth: 0, mismatches: false, ..SampleConfig::default() });
        assert_eq!(off.decide("c", &a, 1, 1), None);
    }

    #[test]
    fn every_nth_per_camera() {
        let mut s = Sampler::new(SampleConfig { every_nth: 3, ..SampleConfig::default() });
        let a = ann(&[]);
        let picks: Vec<bool> = (0..7).map(|i| s.decide("c1", &a, 10, i).is_some()).collect();
        assert_eq!(picks, vec![true, false, false, true, false, false, true]);
        assert!(s.decide("c2", &a, 10, 0).is_some(), "cameras count separately");
    }

    #[test]
    fn text_pattern_low_confidence_and_errors() {
        let cfg = SampleConfig {
            every_nth: 0,
            text_pattern: Some(regex::Regex::new("^SN").unwrap()),
            low_confidence_below: Some(0.6),
            ..SampleConfig::default()
        };
        let mut s = Sampler::new(cfg);
        assert_eq!(s.decide("c", &ann(&[("SN123", 0.9)]), 1, 0), Some(SampleReason::Match));
        assert_eq!(s.decide("c", &ann(&[("SN123", 0.4)]), 1, 1), Some(SampleReason::LowConfidence));
        assert_eq!(s.decide("c", &ann(&[("LOT1", 0.9)]), 1, 2), None);
        let mut e = ann(&[]);
        e.error = Some("bad".into());
        assert_eq!(s.decide("c", &e, 1, 3), Some(SampleReason::Error));
    }

    #[test]
    fn missing_or_uncertain_fields_are_sampled_for_review() {
        let mut s = Sampler::new(SampleConfig { every_nth: 0, ..SampleConfig::default() });
        let field = |uncertain| inference::fields::FieldValue {
            value: "L2112X".into(),
            score: if uncertain { 0.3 } else { 0.9 },
            raw: "L0T L2112X".into(),
            bbox: [0.0; 4],
            uncertain,
            verified: None,
            code: None,
        };
        let mut ok = ann(&[("LOT L2112X", 0.9)]);
        ok.fields.insert("lot".into(), field(false));
        assert_eq!(s.decide("c", &ok, 1, 0), None);
        let mut unsure = ok.clone();
        unsure.fields.insert("lot".into(), field(true));
        assert_eq!(s.decide("c", &unsure, 1, 1), Some(SampleReason::Review));
        let mut missing = ok.clone();
        missing.missing.push("sn".into());
        assert_eq!(s.decide("c", &missing, 1, 2), Some(SampleReason::Review));
        let mut off = Sampler::new(SampleConfig { every_nth: 0, review: false, ..SampleConfig::default() });
        assert_eq!(off.decide("c", &missing, 1, 3), None);
    }

    #[test]
    fn camera_state_is_bounded_by_idleness_and_count() {
        let mut s = Sampler::new(SampleConfig { every_nth: 2, ..SampleConfig::default() });
        s.max_cameras = 100;
        let a = ann(&[]);
        for i in 0..10_000u64 {
            s.decide(&format!("cam{i}"), &a, 1, i);
            assert!(s.cameras() <= 100);
        }
        // An hour later every one of them is idle: the next sweep forgets them.
        let later = 10_000 + IDLE_EVICT.as_millis() as u64;
        for i in 0..1024u64 {
            s.decide("live", &a, 1, later + i);
        }
        assert_eq!(s.cameras(), 1);
    }

    #[test]
    fn interval_and_byte_budget_limit_sampling() {
        let mut s = Sampler::new(SampleConfig {
            every_nth: 1,
            min_interval: Duration::from_millis(100),
            ..SampleConfig::default()
        });
        let a = ann(&[]);
        let picks: Vec<bool> = [0, 50, 100, 120, 250].iter().map(|t| s.decide("c", &a, 1, *t).is_some()).collect();
        assert_eq!(picks, vec![true, false, true, false, true]);

        // 1000 B/s, burst 10 s = 10000 B: ten 1000 B frames, then one per second.
        let mut s = Sampler::new(SampleConfig { every_nth: 1, max_bytes_per_second: 1000, ..SampleConfig::default() });
        let n = (0..20).filter(|i| s.decide("c", &a, 1000, *i).is_some()).count();
        assert_eq!(n, 10);
        assert!(s.decide("c", &a, 1000, 1019).is_some(), "a second later the bucket has refilled one frame");
    }
}
