//! `[detect.codes]`: reading the codes on the label (DataMatrix, Code 128,
//! QR by default; other symbologies opt-in), within a time budget a frame.
//!
//! The section's presence turns it on (`enabled = false` turns it off
//! again); the checked result is [`inference::codes::CodeOptions`].

use super::Validator;
use inference::codes::{CodeOptions, Region, Symbology};
use serde::Deserialize;
use std::time::Duration;

/// `[detect.codes]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawCodes {
    /// Read codes on every frame. Default `true` once the section is there.
    pub enabled: Option<bool>,
    /// Which symbologies: `data_matrix`, `code128`, `qr` (the default
    /// three), and opt-in `ean13`, `ean8`, `upc_a`, `upc_e`, `code39`,
    /// `code93`, `itf`, `codabar`, `pdf417`, `aztec` (1D codes with short
    /// symbols give false reads on noise: enable only those your labels
    /// carry).
    pub symbologies: Option<Vec<String>>,
    /// How long the worker waits for a frame's codes, from when their
    /// decode starts; past it the annotation says `codes_timeout` and the
    /// worker goes on. Default `"500ms"`, at most `"10s"`. In `region =
    /// "frame"` the decode starts with the model, so a decode that ends
    /// before the model does is always taken, and the budget only bounds
    /// the wait beyond the model.
    pub budget: Option<toml::Value>,
    /// `"thorough"` (default: rotations and more rows, reads more) or
    /// `"fast"`.
    pub effort: Option<String>,
    /// `"frame"` (default: the whole frame, beside the model) or
    /// `"labels"` (around the text the OCR found, after the model; less to
    /// scan on a large frame).
    pub region: Option<String>,
}

/// Checks `[detect.codes]`: `None` when the section is absent or disabled.
pub(super) fn validate(v: &mut Validator<'_>, raw: Option<RawCodes>) -> Option<CodeOptions> {
    let raw = raw?;
    let def = CodeOptions::default();
    let symbologies = match raw.symbologies {
        None => def.symbologies,
        Some(list) => {
            let mut out = Vec::new();
            for s in &list {
                match Symbology::parse(s) {
                    Some(x) if !out.contains(&x) => out.push(x),
                    Some(_) => v.problem("detect.codes.symbologies", format!("{s:?} is listed twice")),
                    None => {
                        let names: Vec<&str> = Symbology::ALL.iter().map(|s| s.name()).collect();
                        v.problem("detect.codes.symbologies", format!("{s:?} is not one of {}", names.join(", ")));
                    }
                }
            }
            if list.is_empty() {
                v.problem("detect.codes.symbologies", "is empty (leave it out for the default three)".into());
            }
            out
        }
    };
    let budget = v.duration("detect.codes.budget", raw.budget.as_ref(), def.budget);
    if budget.is_zero() || budget > Duration::from_secs(10) {
        v.problem("detect.codes.budget", format!("{budget:?} is not within 1ms..=10s"));
    }
    let thorough = match raw.effort.as_deref() {
        None | Some("thorough") => true,
        Some("fast") => false,
        Some(o) => {
            v.problem("detect.codes.effort", format!("{o:?} is not \"thorough\" or \"fast\""));
            true
        }
    };
    let region = match raw.region.as_deref() {
        None | Some("frame") => Region::Frame,
        Some("labels") => Region::Labels,
        Some(o) => {
            v.problem("detect.codes.region", format!("{o:?} is not \"frame\" or \"labels\""));
            Region::Frame
        }
    };
    raw.enabled.unwrap_or(true).then_some(CodeOptions { symbologies, budget, thorough, region })
}
