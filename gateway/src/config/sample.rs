//! `[sample]`: which images go upstream, and at what rate.

use super::Validator;
use regex::Regex;
use serde::Deserialize;
use std::time::Duration;

/// `[sample]`: which images go upstream (annotations always do).
#[derive(Debug, Default, Deserialize)]
pub struct RawSample {
    /// Every Nth frame of each camera (0 = off). Default 100.
    pub every_nth: Option<u64>,
    /// Labels that select a frame (detectors, classifiers).
    pub labels: Option<Vec<String>>,
    /// Regular expression on read texts that selects a frame (OCR), e.g.
    /// `"^SN"`.
    pub text_pattern: Option<String>,
    /// Minimum score of a selecting label or text. Default 0.5.
    pub min_score: Option<f32>,
    /// Frames whose best score is below this are sampled (retraining
    /// material). Default: off.
    pub low_confidence_below: Option<f32>,
    /// Sample frames that could not be decoded. Default true.
    pub errors: Option<bool>,
    /// Sample frames with a required field missing or a field uncertain
    /// (see `[[fields]]`), for review upstream. Default true.
    pub review: Option<bool>,
    /// Sample frames where a printed field disagrees with the code that
    /// carries the same value (`verify` in `[[fields]]`). Default true.
    pub mismatches: Option<bool>,
    /// Minimum time between two sampled frames of one camera. Default `"0s"`.
    pub min_interval: Option<toml::Value>,
    /// Upload budget per camera, e.g. `"200KiB"` per second (0 = no limit).
    /// Default 0.
    pub max_bytes_per_second: Option<toml::Value>,
}

/// Sampling rules and limits (`[sample]`).
#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// Every Nth frame per camera (0 = off).
    pub every_nth: u64,
    /// Labels (detectors, classifiers) that select a frame.
    pub labels: Vec<String>,
    /// Texts (OCR) that select a frame.
    pub text_pattern: Option<Regex>,
    /// Minimum score of a selecting item.
    pub min_score: f32,
    /// Frames whose best item scores below this are sampled (None = off).
    pub low_confidence_below: Option<f32>,
    /// Sample frames that could not be decoded.
    pub errors: bool,
    /// Sample frames with a missing or uncertain label field.
    pub review: bool,
    /// Sample frames whose print disagrees with their code.
    pub mismatches: bool,
    /// Minimum time between two sampled frames of one camera.
    pub min_interval: Duration,
    /// Upload budget per camera, bytes per second (0 = unlimited).
    pub max_bytes_per_second: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            every_nth: 100,
            labels: Vec::new(),
            text_pattern: None,
            min_score: 0.5,
            low_confidence_below: None,
            errors: true,
            review: true,
            mismatches: true,
            min_interval: Duration::ZERO,
            max_bytes_per_second: 0,
        }
    }
}

/// Checks `[sample]`.
pub(super) fn validate(v: &mut Validator<'_>, sm: RawSample) -> SampleConfig {
    let text_pattern = sm.text_pattern.as_deref().and_then(|p| match Regex::new(p) {
        Ok(r) => Some(r),
        Err(e) => {
            v.problem("sample.text_pattern", format!("{p:?} is not a regular expression: {e}"));
            None
        }
    });
    SampleConfig {
        every_nth: sm.every_nth.unwrap_or(100),
        labels: sm.labels.unwrap_or_default(),
        text_pattern,
        min_score: sm.min_score.unwrap_or(0.5),
        low_confidence_below: sm.low_confidence_below,
        errors: sm.errors.unwrap_or(true),
        review: sm.review.unwrap_or(true),
        mismatches: sm.mismatches.unwrap_or(true),
        min_interval: v.duration("sample.min_interval", sm.min_interval.as_ref(), Duration::ZERO),
        max_bytes_per_second: v.size("sample.max_bytes_per_second", sm.max_bytes_per_second.as_ref(), 0),
    }
}
