//! Label fields: declared formats read as structured, validated values.
//!
//! Owns what a field is and how lines become fields. A [`FieldSpec`] names
//! a field, its format (the language of [`pattern`]), whether it is
//! required and the score below which it is uncertain. [`Field::compile`]
//! compiles a spec against a model's character set; the OCR pipeline then
//! decodes every recognised line against every field's format as soon as
//! the recogniser has run ([`decode_line`], [`viterbi`]) and [`assign`]s
//! lines to fields.
//!
//! Promises:
//! - a field's value is always a line of its format (a digit position
//!   holds a digit), found as the most probable such line, not by fixing up
//!   the greedy text;
//! - a line fits a format only when the format costs at most
//!   [`MAX_GAP_PER_CHAR`] nats per character read against the
//!   unconstrained reading, and its line differs from the greedy text in
//!   at most [`max_edits`] characters; a line that fits none stays raw
//!   text only;
//! - each line gives at most one field and each field comes from at most
//!   one line (the best fitting pairs first);
//! - `missing` lists the required fields not read on a frame where any
//!   text was read (a frame with no text has no label, and nothing is
//!   missing from it).

pub mod pattern;
pub mod viterbi;

pub use pattern::{Pattern, PatternError};
pub use viterbi::{Decoded, Decoder};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A line fits a format when the format's best path is at most this many
/// nats per character less probable than the unconstrained best path.
/// A confusion the format fixes (`O` read where a digit must be) costs
/// 0-5 nats once; a line of another format costs about 10 per character.
pub const MAX_GAP_PER_CHAR: f32 = 1.5;
/// Default score below which a field is uncertain.
pub const DEFAULT_MIN_SCORE: f32 = 0.5;

/// A field as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// Its name in annotations.
    pub name: String,
    /// The format (see [`pattern`]).
    pub format: String,
    /// Listed in `missing` when not read.
    pub required: bool,
    /// A value whose weakest character scores below this is uncertain.
    pub min_score: f32,
    /// The code value the printed value must agree with (`verify =
    /// "gs1:10"`), see [`crate::codes::verify`].
    pub verify: Option<crate::codes::verify::Rule>,
}

/// A field read on a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The value, a line of the format (or its `<...>` part).
    pub value: String,
    /// The weakest character's probability (see [`Decoded::score`]).
    pub score: f32,
    /// What the unconstrained (greedy) reading of the line said.
    pub raw: String,
    /// The line's box `[x0, y0, x1, y1]` in frame pixels.
    pub bbox: [f32; 4],
    /// The score is below the field's `min_score`: worth a human look.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uncertain: bool,
    /// The field has a `verify` rule and a code on the frame carries its
    /// value: whether the print agrees (absent: no rule, or no code
    /// carries the value, and the field is listed in the annotation's
    /// `unverified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// When `verified` is false: the code's value (`value` is the print's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A field compiled for one model.
#[derive(Debug, Clone)]
pub struct Field {
    /// The declaration.
    pub spec: FieldSpec,
    decoder: Decoder,
}

impl Field {
    /// Compiles a spec against a model's character set (index 0 the blank).
    ///
    /// # Errors
    /// A message naming the field: a bad format, or characters the model
    /// cannot read.
    pub fn compile(spec: &FieldSpec, charset: &[String]) -> Result<Self, String> {
        let p = Pattern::parse(&spec.format)
            .map_err(|e| format!("field {:?}: format {:?}: {e}", spec.name, spec.format))?;
        let decoder =
            Decoder::new(&p, charset).map_err(|e| format!("field {:?}: format {:?}: {e}", spec.name, spec.format))?;
        Ok(Self { spec: spec.clone(), decoder })
    }

    /// The decoder (for tests and benches).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

/// Characters (spaces aside) in which the format's line may differ from
/// the greedy reading of a `len`-character line: a third, at least one.
/// The search itself is not limited by this; it only says whether the
/// line is this field at all (junk read off marks fits a loose format
/// only by inventing characters).
pub fn max_edits(len: usize) -> usize {
    (len / 3).max(1)
}

/// Edit distance between two character strings.
pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// One recognised line, as the field assignment sees it: its greedy text,
/// its box and its decoding against each field (see [`decode_line`]).
#[derive(Debug)]
pub struct Line {
    /// Greedy text.
    pub raw: String,
    /// Box in frame pixels.
    pub bbox: [f32; 4],
    /// For each field, in order, the format's best line, if one fits the
    /// steps at all.
    pub decoded: Vec<Option<Decoded>>,
}

/// Decodes one line's recogniser output (`steps` x `classes`) against
/// every field. Done as soon as the recogniser has run, so that no
/// probability matrix outlives its batch.
pub fn decode_line(fields: &[&Field], probs: &[f32], steps: usize, classes: usize) -> Vec<Option<Decoded>> {
    fields.iter().map(|f| f.decoder.decode(probs, steps, classes)).collect()
}

/// Reads `fields` off `lines`: every line against every format, then the
/// best fitting (line, field) pairs first, each line and each field once.
/// Returns the fields read and the required ones missing. `text_read`
/// says whether the frame kept any raw text: a frame with neither text nor
/// a field has no label, and nothing is missing from it (the module's
/// promise).
pub fn assign(fields: &[&Field], lines: &[Line], text_read: bool) -> (BTreeMap<String, FieldValue>, Vec<String>) {
    let mut fits: Vec<(f32, usize, usize)> = Vec::new();
    for (li, l) in lines.iter().enumerate() {
        let raw: Vec<char> = l.raw.chars().filter(|c| !c.is_whitespace()).collect();
        for (fi, d) in l.decoded.iter().enumerate().take(fields.len()) {
            let Some(d) = d else { continue };
            let line: Vec<char> = d.line.chars().filter(|c| !c.is_whitespace()).collect();
            let per_char = d.gap / raw.len().max(1) as f32;
            let edits = levenshtein(&raw, &line);
            if per_char <= MAX_GAP_PER_CHAR && edits <= max_edits(line.len()) {
                fits.push((per_char, li, fi));
            }
        }
    }
    fits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut line_used = vec![false; lines.len()];
    let mut field_used = vec![false; fields.len()];
    let mut out = BTreeMap::new();
    for (_, li, fi) in fits {
        let Some(d) = &lines[li].decoded[fi] else { continue };
        if line_used[li] || field_used[fi] {
            continue;
        }
        line_used[li] = true;
        field_used[fi] = true;
        let f = fields[fi];
        out.insert(
            f.spec.name.clone(),
            FieldValue {
                uncertain: d.score < f.spec.min_score,
                value: d.value.clone(),
                score: d.score,
                raw: lines[li].raw.clone(),
                bbox: lines[li].bbox,
                verified: None,
                code: None,
            },
        );
    }
    let missing = if !text_read && out.is_empty() {
        Vec::new()
    } else {
        fields
            .iter()
            .filter(|f| f.spec.required && !out.contains_key(&f.spec.name))
            .map(|f| f.spec.name.clone())
            .collect()
    };
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::ctc;

    fn one_hot(cs: &[String], text: &str, p: f32) -> Vec<f32> {
        // Each character on one step followed by a blank.
        let n = cs.len();
        let mut m = Vec::new();
        for ch in text.chars() {
            let k = cs.iter().position(|s| s == &ch.to_string()).unwrap();
            let mut row = vec![(1.0 - p) / (n - 1) as f32; n];
            row[k] = p;
            m.extend(&row);
            let mut blank = vec![0.01 / (n - 1) as f32; n];
            blank[0] = 0.99;
            m.extend(&blank);
        }
        m
    }

    #[test]
    fn edit_distance() {
        let c = |s: &str| s.chars().collect::<Vec<char>>();
        assert_eq!(levenshtein(&c("ROT0R"), &c("ROTOR")), 1);
        assert_eq!(levenshtein(&c("IPIP'I"), &c("IPIP-119")), 4);
        assert_eq!(levenshtein(&c(""), &c("AB")), 2);
        assert_eq!((max_edits(2), max_edits(9), max_edits(12)), (1, 3, 4));
    }

    #[test]
    fn lines_go_to_the_fields_they_fit() {
        let cs = ctc::charset("0\n1\n2\n3\n4\n5\n6\n7\n8\n9\nA\nC\nE\nL\nM\nN\nO\nP\nS\nT\nR\n-");
        let spec = |name: &str, format: &str, required| FieldSpec {
            verify: None,
            name: name.into(),
            format: format.into(),
            required,
            min_score: 0.6,
        };
        let specs = [
            spec("pn", r"PN <\d{4}-\d{3}>", true),
            spec("lot", r"LOT <L\d{4}>", true),
            spec("sn", r"SN <\d{8}>", true),
        ];
        let fields: Vec<Field> = specs.iter().map(|s| Field::compile(s, &cs).unwrap()).collect();
        let refs: Vec<&Field> = fields.iter().collect();
        let texts = ["ACME PARTS", "PN 1234-567", "L0T L2O34", "SN12345678"];
        let mats: Vec<Vec<f32>> =
            texts.iter().enumerate().map(|(i, t)| one_hot(&cs, t, if i == 2 { 0.55 } else { 0.95 })).collect();
        let lines: Vec<Line> = texts
            .iter()
            .zip(&mats)
            .map(|(t, m)| Line {
                raw: (*t).into(),
                bbox: [0.0; 4],
                decoded: decode_line(&refs, m, m.len() / cs.len(), cs.len()),
            })
            .collect();
        let (got, missing) = assign(&refs, &lines, true);
        assert_eq!(got["pn"].value, "1234-567");
        assert_eq!(got["sn"].value, "12345678", "the dropped space");
        assert!(!got["sn"].uncertain);
        // One-hot rows: the O -> 0 fix is the next best class, and costly.
        let lot = &got["lot"];
        assert_eq!(lot.value, "L2034");
        assert_eq!(lot.raw, "L0T L2O34");
        assert!(lot.uncertain, "{lot:?}");
        assert!(missing.is_empty());
        assert_eq!(got.len(), 3, "ACME PARTS fits nothing");

        // Without the SN line, it is missing; with no line at all, nothing is.
        let (got, missing) = assign(&refs, &lines[..3], true);
        assert_eq!((got.len(), missing), (2, vec!["sn".to_string()]));
        let (got, missing) = assign(&refs, &[], false);
        assert!(got.is_empty() && missing.is_empty());
    }
}
