//! Junk rejection on raw text lines ([`TextFilter`]): which lines the
//! OCR keeps. Promise: a rule only ever drops whole lines; fields are read
//! off every line of a plausible shape, whatever the score rules say.

use super::dist;
use crate::Item;

/// Which raw text lines are kept (junk rejection). Fields are read off
/// every line of a plausible shape, whatever its score.
///
/// The defaults come from a measurement (the golden test
/// `unseen_label_formats_are_read_and_marks_give_no_junk` repeats it): on
/// frames with no label (`tests/fixtures/blank`), the model read 35 junk
/// lines (`1111` off tick marks, `口` off a box, `"`, `P`) scoring
/// 0.50-0.94, of 1 to 6 characters, 0.3 to 2.2 box heights wide per
/// character; the 296 real label lines of the camera fixtures and
/// `tests/fixtures/labels2` scored at least 0.91, had at least 9 characters
/// and 0.54 to 0.88 heights per character. PP-OCRv6 reads tick marks with
/// more confidence: 17 lines of one repeated character (`111`, `11111`)
/// scoring 0.86-0.99 on the same frames, which the distinct-character
/// rule drops (every real label line has at least 6 distinct characters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextFilter {
    /// Lines scoring below this are dropped (the reference drops below 0.5).
    pub min_score: f32,
    /// Lines whose box is less tall than this, in frame pixels, are dropped.
    pub min_height: f32,
    /// Lines whose box is wider than this many heights per character are
    /// dropped (a rule or an edge read as `—`, a box read as `口`).
    pub max_aspect_per_char: f32,
    /// Lines with fewer characters than this (spaces aside) are dropped.
    pub min_chars: usize,
    /// Lines with fewer distinct characters than this (spaces aside) are
    /// dropped: one character repeated (`1111` off tick marks) is a mark.
    pub min_distinct_chars: usize,
}

impl TextFilter {
    /// Keeps every line the reference keeps.
    pub fn off() -> Self {
        Self {
            min_score: 0.0,
            min_height: 0.0,
            max_aspect_per_char: f32::INFINITY,
            min_chars: 0,
            min_distinct_chars: 0,
        }
    }

    /// Whether a text item is kept.
    pub fn keeps(&self, item: &Item) -> bool {
        let text = item.text.as_deref().unwrap_or("");
        let chars = text.chars().filter(|c| !c.is_whitespace()).count();
        item.score >= self.min_score
            && chars >= self.min_chars
            && distinct_chars(text, self.min_distinct_chars) >= self.min_distinct_chars
            && self.keeps_shape(item)
    }

    /// The size and aspect rules alone (a line must pass them to give a
    /// field).
    pub fn keeps_shape(&self, item: &Item) -> bool {
        let (w, h) = match item.quad {
            Some(q) => ((dist(q[0], q[1]) + dist(q[3], q[2])) / 2.0, (dist(q[0], q[3]) + dist(q[1], q[2])) / 2.0),
            None => (item.bbox[2] - item.bbox[0], item.bbox[3] - item.bbox[1]),
        };
        let text = item.text.as_deref().unwrap_or("");
        let chars = text.chars().filter(|c| !c.is_whitespace()).count().max(1);
        h >= self.min_height && w <= self.max_aspect_per_char * h.max(1.0) * chars as f32
    }
}

/// Distinct characters of `text` (spaces aside), counted up to `enough`.
fn distinct_chars(text: &str, enough: usize) -> usize {
    let mut seen: Vec<char> = Vec::with_capacity(enough);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        if seen.len() >= enough {
            break;
        }
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen.len()
}

impl Default for TextFilter {
    /// Minimum score 0.85, height 8 px, 1.5 heights per character, 2
    /// characters, 2 distinct characters.
    fn default() -> Self {
        Self { min_score: 0.85, min_height: 8.0, max_aspect_per_char: 1.5, min_chars: 2, min_distinct_chars: 2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_character_repeated_is_a_mark_not_a_line() {
        let line = |t: &str, w: f32| Item::text(t.into(), 0.99, [[0.0, 0.0], [w, 0.0], [w, 20.0], [0.0, 20.0]]);
        let f = TextFilter::default();
        // As PP-OCRv6 reads tick marks (score 0.86-0.99, 0.40-0.50 heights per character).
        for t in ["11", "111", "11111", "1 1 1", "口口"] {
            assert!(!f.keeps(&line(t, 9.0 * t.len() as f32)), "{t}");
        }
        for t in ["LOT L2112X", "SN 84541427", "PN 8402-620-K", "A1"] {
            assert!(f.keeps(&line(t, 11.0 * t.len() as f32)), "{t}");
        }
        let off = TextFilter { min_distinct_chars: 0, ..f };
        assert!(off.keeps(&line("1111", 36.0)), "0 turns the rule off");
        assert_eq!(distinct_chars("aaaaab", 10), 2);
        assert_eq!(distinct_chars("abcdef", 3), 3, "counting stops at enough");
    }
}
