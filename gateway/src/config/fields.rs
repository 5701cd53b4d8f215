//! `[[fields]]`: the label fields the OCR lines are read against, and the
//! cameras each applies to.

use super::Validator;
use serde::Deserialize;

/// `[[fields]]`: one label field.
#[derive(Debug, Default, Deserialize)]
pub struct RawField {
    /// Its name in annotations: 1 to 64 of `a-z 0-9 _ -`. Required.
    pub name: Option<String>,
    /// The format of the printed line, e.g. `'LOT <L\d{4}[A-FX]>'` (see
    /// the README's "Label fields"). Required.
    pub format: Option<String>,
    /// Listed in the annotation's `missing` when not read on a frame with
    /// text. Default true.
    pub required: Option<bool>,
    /// A value whose weakest character scores below this is `uncertain`.
    /// Default 0.5.
    pub min_score: Option<f32>,
    /// Camera ids the field applies to; `*` matches any run of characters
    /// (`"line1-*"`). Default: every camera.
    pub cameras: Option<Vec<String>>,
    /// The code value the print must agree with, `"gs1:<AI>"` (for example
    /// `"gs1:10"` for the lot, `"gs1:17"` for the expiry). Needs
    /// `[detect.codes]`. Default: none.
    pub verify: Option<String>,
}

/// A declared label field and the cameras it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldConfig {
    /// Name, format (checked), required, min score.
    pub spec: inference::fields::FieldSpec,
    /// Camera id globs (`*` any run); empty: every camera.
    pub cameras: Vec<String>,
}

impl FieldConfig {
    /// Whether the field applies to frames of `camera`.
    pub fn applies(&self, camera: &str) -> bool {
        self.cameras.is_empty() || self.cameras.iter().any(|g| glob(g, camera))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Checks every `[[fields]]` table; each problem names its field by
/// position (`fields[2].format`).
pub(super) fn validate(v: &mut Validator<'_>, raw: Vec<RawField>) -> Vec<FieldConfig> {
    let mut out: Vec<FieldConfig> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("fields[{i}].{k}");
        let name = match f.name {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')) =>
            {
                if out.iter().any(|o| o.spec.name == n) {
                    v.problem(&key("name"), format!("{n:?} is declared twice"));
                }
                n
            }
            Some(n) => {
                v.problem(&key("name"), format!("{n:?} must be 1 to 64 of a-z 0-9 _ -"));
                n
            }
            None => {
                v.problem(&key("name"), "missing".into());
                String::new()
            }
        };
        let format = match f.format {
            Some(p) => {
                if let Err(e) = inference::fields::Pattern::parse(&p) {
                    v.problem(&key("format"), format!("{p:?}: {e}"));
                }
                p
            }
            None => {
                v.problem(&key("format"), "missing (for example 'LOT <L\\d{4}[A-FX]>')".into());
                String::new()
            }
        };
        let min_score = match f.min_score {
            Some(s) if !(0.0..=1.0).contains(&s) => {
                v.problem(&key("min_score"), format!("{s} is not within 0..=1"));
                inference::fields::DEFAULT_MIN_SCORE
            }
            Some(s) => s,
            None => inference::fields::DEFAULT_MIN_SCORE,
        };
        let cameras = f.cameras.unwrap_or_default();
        for c in &cameras {
            if c.is_empty()
                || c.len() > 64
                || !c.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))
            {
                v.problem(&key("cameras"), format!("{c:?} is not a camera id (A-Z a-z 0-9 . _ - and * for any run)"));
            }
        }
        let verify = f.verify.as_deref().and_then(|r| match inference::codes::verify::Rule::parse(r) {
            Ok(rule) => Some(rule),
            Err(e) => {
                v.problem(&key("verify"), e);
                None
            }
        });
        out.push(FieldConfig {
            spec: inference::fields::FieldSpec {
                name,
                format,
                required: f.required.unwrap_or(true),
                min_score,
                verify,
            },
            cameras,
        });
    }
    out
}
