//! Constrained CTC decoding: the most probable reading of a recogniser
//! output that is a line of a given format.
//!
//! Owns the search. A [`Decoder`] is a format's automaton laid over a
//! model's character set: each automaton state is split by the character
//! that led into it, because CTC merges a repeated character unless a blank
//! separates the two. [`Decoder::decode`] runs Viterbi over time steps and
//! these cells, so every path it considers is a line of the format (a digit
//! position can only come out as a digit) and the one it returns is the
//! most probable of them under the model's per-step probabilities, not a
//! fix-up of the greedy text.
//!
//! Promise: the result is the exact maximum over the format's lines (ties
//! aside); memory is `steps x cells` back-pointers, with cells bounded by
//! the format's size and the character set; no input can make it panic.

use super::pattern::{value_of, Pattern, CLOSE, OPEN};
use std::collections::HashMap;

/// Probabilities below this are taken as this (log 1e-30 = -69).
const FLOOR: f32 = 1e-30;
/// Most cells a format may have against a character set: back-pointers
/// take 8 bytes per cell and time step, so with the recogniser's longest
/// line (600 steps, a 1:100 crop) one decode stays under 20 MB.
pub const MAX_CELLS: usize = 4096;
/// Longest output decoded (time steps); longer outputs give `None`.
pub const MAX_STEPS: usize = 1024;

/// A format compiled against one character set.
#[derive(Debug, Clone)]
pub struct Decoder {
    pattern: Pattern,
    /// Charset indices the format uses (compact index -> charset index);
    /// compact index 0 is the blank.
    used: Vec<usize>,
    /// The character of each compact index (`'\0'` for the blank).
    used_char: Vec<char>,
    /// For each state, its cells `start..end`.
    state_cells: Vec<(usize, usize)>,
    /// Each cell: (state, compact char).
    cells: Vec<(usize, usize)>,
    /// Steps into each cell, CSR: `cell_in_start[c]..cell_in_start[c+1]`
    /// into `cell_in` (step indices).
    cell_in_start: Vec<usize>,
    cell_in: Vec<usize>,
}

/// What could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharsetError(pub String);

impl std::fmt::Display for CharsetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most probable line of a format.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The whole line as the format writes it (dropped spaces written).
    pub line: String,
    /// The value (between `<` and `>`, or the whole line).
    pub value: String,
    /// The weakest character of the value: for each character read, the
    /// highest probability it had over the steps it spans; the minimum of
    /// these (0 if the value has no character read).
    pub score: f32,
    /// Log-probability of the best unconstrained path minus that of this
    /// path (>= 0): what the format cost.
    pub gap: f32,
    /// Characters read on the path.
    pub chars: usize,
}

#[derive(Clone, Copy)]
struct Back {
    /// Step index, or `u32::MAX` when the cell's character continues.
    step: u32,
    /// Previous cell, or -1 for the blank of the step's source state.
    prev: i32,
}

impl Decoder {
    /// Lays `pattern` over `charset` (index 0 the blank; entries of one
    /// character are usable).
    ///
    /// # Errors
    /// A literal the model cannot write, or a class with none of its
    /// characters in the model's set.
    pub fn new(pattern: &Pattern, charset: &[String]) -> Result<Self, CharsetError> {
        let mut index: HashMap<char, usize> = HashMap::new();
        for (i, s) in charset.iter().enumerate().skip(1) {
            let mut cs = s.chars();
            if let (Some(c), None) = (cs.next(), cs.next()) {
                index.entry(c).or_insert(i);
            }
        }
        let mut used = vec![0usize];
        let mut used_char = vec!['\0'];
        let mut compact: HashMap<usize, usize> = HashMap::new();
        let mut class_chars: Vec<Vec<usize>> = Vec::new();
        for k in &pattern.classes {
            let mut v = Vec::new();
            for c in &k.chars {
                match index.get(c) {
                    Some(&i) => {
                        let ci = *compact.entry(i).or_insert_with(|| {
                            used.push(i);
                            used_char.push(*c);
                            used.len() - 1
                        });
                        v.push(ci);
                    }
                    None if k.literal => {
                        return Err(CharsetError(format!("the model cannot read {c:?} (not in its character set)")))
                    }
                    None => {}
                }
            }
            if v.is_empty() {
                return Err(CharsetError(format!(
                    "the model can read none of [{}]",
                    k.chars.iter().take(16).collect::<String>()
                )));
            }
            v.sort_unstable();
            class_chars.push(v);
        }
        // Cells: per state, the characters that lead into it.
        let mut into: Vec<Vec<usize>> = vec![Vec::new(); pattern.states];
        for st in &pattern.steps {
            into[st.to].extend(&class_chars[st.class]);
        }
        let mut state_cells = Vec::with_capacity(pattern.states);
        let mut cells = Vec::new();
        for (s, v) in into.iter_mut().enumerate() {
            v.sort_unstable();
            v.dedup();
            let start = cells.len();
            cells.extend(v.iter().map(|&c| (s, c)));
            state_cells.push((start, cells.len()));
        }
        if cells.len() > MAX_CELLS {
            return Err(CharsetError(format!(
                "the format is too large for this model: {} positions x characters, at most {MAX_CELLS} \
                 (use a class such as \\d or [A-F] instead of . where you can, or fewer repeats)",
                cells.len()
            )));
        }
        let mut ins: Vec<Vec<usize>> = vec![Vec::new(); cells.len()];
        for (i, st) in pattern.steps.iter().enumerate() {
            let (a, b) = state_cells[st.to];
            for &c in &class_chars[st.class] {
                if let Ok(off) = cells[a..b].binary_search_by_key(&c, |&(_, ch)| ch) {
                    ins[a + off].push(i);
                }
            }
        }
        let mut cell_in_start = Vec::with_capacity(cells.len() + 1);
        let mut cell_in = Vec::new();
        for v in ins {
            cell_in_start.push(cell_in.len());
            cell_in.extend(v);
        }
        cell_in_start.push(cell_in.len());
        Ok(Self { pattern: pattern.clone(), used, used_char, state_cells, cells, cell_in_start, cell_in })
    }

    /// Cells of the search (its size per time step).
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// The most probable line of the format for `steps` x `classes`
    /// probabilities (rows of the recogniser's softmax output), or `None`
    /// if no line of the format fits in `steps` (or the input is not that
    /// shape).
    // One narrated algorithm (forward pass over the cells, then the
    // back-trace): split, its invariants would be spread over functions.
    #[allow(clippy::too_many_lines)]
    pub fn decode(&self, probs: &[f32], steps: usize, classes: usize) -> Option<Decoded> {
        if steps == 0 || steps > MAX_STEPS || classes == 0 || probs.len() != steps.checked_mul(classes)? {
            return None;
        }
        if self.used.iter().any(|&i| i >= classes) {
            return None;
        }
        let ns = self.pattern.states;
        let nc = self.cells.len();
        let neg = f32::NEG_INFINITY;
        let mut b = vec![neg; ns];
        b[0] = 0.0;
        let mut c = vec![neg; nc];
        let mut nb = vec![neg; ns];
        let mut ncv = vec![neg; nc];
        let mut back_b: Vec<i32> = vec![-1; steps * ns];
        let mut back_c: Vec<Back> = vec![Back { step: u32::MAX, prev: -1 }; steps * nc];
        let mut best1 = vec![(neg, -1i32); ns];
        let mut best2 = vec![(neg, -1i32); ns];
        let mut lp = vec![0f32; self.used.len()];
        let mut greedy = 0f64;
        for t in 0..steps {
            let row = &probs[t * classes..(t + 1) * classes];
            let top = row.iter().copied().fold(0f32, f32::max).max(FLOOR);
            greedy += f64::from(top.ln());
            for (k, &i) in self.used.iter().enumerate() {
                lp[k] = row[i].max(FLOOR).ln();
            }
            for s in 0..ns {
                let (a, z) = self.state_cells[s];
                let (mut x1, mut x2) = ((neg, -1i32), (neg, -1i32));
                for (cell, v) in c.iter().enumerate().take(z).skip(a) {
                    if *v > x1.0 {
                        x2 = x1;
                        x1 = (*v, cell as i32);
                    } else if *v > x2.0 {
                        x2 = (*v, cell as i32);
                    }
                }
                best1[s] = x1;
                best2[s] = x2;
                if b[s] >= x1.0 {
                    nb[s] = b[s] + lp[0];
                    back_b[t * ns + s] = -1;
                } else {
                    nb[s] = x1.0 + lp[0];
                    back_b[t * ns + s] = x1.1;
                }
            }
            for cell in 0..nc {
                let (_, ch) = self.cells[cell];
                let l = lp[ch];
                let mut best = c[cell] + l;
                let mut bk = Back { step: u32::MAX, prev: -1 };
                for &si in &self.cell_in[self.cell_in_start[cell]..self.cell_in_start[cell + 1]] {
                    let r = self.pattern.steps[si].from;
                    // From the blank of r, or from r's best cell whose
                    // character differs (the same one would be a repeat).
                    let other =
                        if best1[r].1 >= 0 && self.cells[best1[r].1 as usize].1 == ch { best2[r] } else { best1[r] };
                    let (from, prev) = if b[r] >= other.0 { (b[r], -1) } else { other };
                    if from + l > best {
                        best = from + l;
                        bk = Back { step: si as u32, prev };
                    }
                }
                ncv[cell] = best;
                back_c[t * nc + cell] = bk;
            }
            std::mem::swap(&mut b, &mut nb);
            std::mem::swap(&mut c, &mut ncv);
        }
        // The best end.
        let mut end: Option<(f32, usize, i32)> = None; // (score, state, cell or -1)
        for (s, (&bs, &(a, z))) in b.iter().zip(&self.state_cells).enumerate() {
            if self.pattern.accept[s].is_none() {
                continue;
            }
            let mut cand = (bs, -1i32);
            for (cell, v) in c.iter().enumerate().take(z).skip(a) {
                if *v > cand.0 {
                    cand = (*v, cell as i32);
                }
            }
            if cand.0 > neg && end.is_none_or(|e| cand.0 > e.0) {
                end = Some((cand.0, s, cand.1));
            }
        }
        let (score, state, mut cell) = end?;
        let mut s = state;
        // Walk back: emissions (step, compact char, best probability).
        let mut emitted: Vec<(usize, usize, f32)> = Vec::new();
        let mut run_max = 0f32;
        for t in (0..steps).rev() {
            if cell < 0 {
                cell = back_b[t * ns + s];
                continue;
            }
            let cu = cell as usize;
            let ch = self.cells[cu].1;
            run_max = run_max.max(probs[t * classes + self.used[ch]]);
            let bk = back_c[t * nc + cu];
            if bk.step != u32::MAX {
                emitted.push((bk.step as usize, ch, run_max));
                run_max = 0.0;
                s = self.pattern.steps[bk.step as usize].from;
                cell = bk.prev;
            }
        }
        emitted.reverse();
        // The line, with each character's probability (None: written by
        // the format, not read).
        let mut out: Vec<(char, Option<f32>)> = Vec::new();
        for &(si, ch, p) in &emitted {
            out.extend(self.pattern.steps[si].prefix.chars().map(|c| (c, None)));
            out.push((self.used_char[ch], Some(p)));
        }
        if let Some(sfx) = &self.pattern.accept[state] {
            out.extend(sfx.chars().map(|c| (c, None)));
        }
        let text: String = out.iter().map(|x| x.0).collect();
        let (a, z) = match (out.iter().position(|x| x.0 == OPEN), out.iter().position(|x| x.0 == CLOSE)) {
            (Some(a), Some(z)) if a < z => (a + 1, z),
            _ => (0, out.len()),
        };
        let value_score =
            out[a..z].iter().filter_map(|x| x.1).fold(None, |m: Option<f32>, p| Some(m.map_or(p, |m| m.min(p))));
        Some(Decoded {
            line: text.chars().filter(|&c| c != OPEN && c != CLOSE).collect(),
            value: value_of(&text),
            score: value_score.unwrap_or(0.0),
            gap: (greedy - f64::from(score)).max(0.0) as f32,
            chars: emitted.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::ctc;

    /// A charset of `blank, chars..., space` and a probability matrix from
    /// per-step (char, p) lists (the rest of each row shares what is left).
    fn matrix(cs: &[String], rows: &[&[(char, f32)]]) -> Vec<f32> {
        let n = cs.len();
        let mut m = vec![0f32; rows.len() * n];
        for (t, row) in rows.iter().enumerate() {
            let used: f32 = row.iter().map(|x| x.1).sum();
            let rest = (1.0 - used).max(0.0) / (n - row.len()) as f32;
            for k in 0..n {
                m[t * n + k] = rest;
            }
            for &(ch, p) in row.iter() {
                let k = if ch == '_' { 0 } else { cs.iter().position(|s| s == &ch.to_string()).unwrap() };
                m[t * n + k] = p;
            }
        }
        m
    }

    fn charset() -> Vec<String> {
        ctc::charset("0\n1\n2\n3\n4\n5\n6\n7\n8\n9\nA\nB\nL\nO\nP\nT\nS\nN\n-")
    }

    fn dec(p: &str, cs: &[String]) -> Decoder {
        Decoder::new(&Pattern::parse(p).unwrap(), cs).unwrap()
    }

    #[test]
    fn a_digit_position_cannot_read_a_letter() {
        let cs = charset();
        // Greedy reads "L0T 1O": the O at the end is in a digit position.
        let m = matrix(
            &cs,
            &[
                &[('L', 0.9)],
                &[('_', 0.9)],
                &[('0', 0.6), ('O', 0.35)],
                &[('T', 0.9)],
                &[(' ', 0.8)],
                &[('1', 0.9)],
                &[('_', 0.9)],
                &[('O', 0.55), ('0', 0.40)],
                &[('_', 0.9)],
            ],
        );
        let (greedy, _) = ctc::decode(&m, 9, cs.len(), &cs);
        assert_eq!(greedy, "L0T 1O");
        let d = dec(r"LOT <\d\d>", &cs).decode(&m, 9, cs.len()).unwrap();
        assert_eq!(d.line, "LOT 10");
        assert_eq!(d.value, "10");
        assert!((d.score - 0.40).abs() < 1e-6, "the weakest value character: {}", d.score);
        // What the format cost: 0.6 -> 0.35 and 0.55 -> 0.40.
        let want = (0.6f32 / 0.35).ln() + (0.55f32 / 0.40).ln();
        assert!((d.gap - want).abs() < 1e-4, "gap {} want {want}", d.gap);
        assert_eq!(d.chars, 6);
    }

    #[test]
    fn repeats_need_a_blank_and_counts_are_kept() {
        let cs = charset();
        // "1 1 _ 1": greedy reads "11" (the first two merge).
        let m = matrix(&cs, &[&[('1', 0.9)], &[('1', 0.9)], &[('_', 0.9)], &[('1', 0.9)]]);
        assert_eq!(ctc::decode(&m, 4, cs.len(), &cs).0, "11");
        // Three digits: the format keeps the count; the search finds the
        // cheapest third character.
        let d = dec(r"\d{3}", &cs).decode(&m, 4, cs.len()).unwrap();
        assert_eq!(d.value.chars().count(), 3, "{d:?}");
        assert!(d.gap > 1.0, "a third digit costs: {d:?}");
        let two = dec(r"\d{2}", &cs).decode(&m, 4, cs.len()).unwrap();
        assert_eq!(two.value, "11");
        assert!(two.gap < 1e-5, "the greedy path itself: {}", two.gap);
        // Four characters in four steps: each step starts one, so no two
        // alike follow each other (CTC would merge them).
        let four = dec(r"\d{4}", &cs).decode(&m, 4, cs.len()).unwrap();
        let v: Vec<char> = four.value.chars().collect();
        assert_eq!(v.len(), 4);
        assert!(v.windows(2).all(|w| w[0] != w[1]), "{}", four.value);
        // Five characters cannot fit in four steps.
        assert_eq!(dec(r"\d{5}", &cs).decode(&m, 4, cs.len()), None);
    }

    #[test]
    fn a_dropped_space_and_alternatives() {
        let cs = charset();
        // "SN12" with no space read.
        let m = matrix(&cs, &[&[('S', 0.9)], &[('N', 0.9)], &[('1', 0.9)], &[('_', 0.9)], &[('2', 0.9)]]);
        let d = dec(r"SN <\d+>", &cs).decode(&m, 5, cs.len()).unwrap();
        assert_eq!((d.line.as_str(), d.value.as_str()), ("SN 12", "12"));
        assert!(d.gap < 1e-5);
        let d = dec(r"(PN|SN) \d\d", &cs).decode(&m, 5, cs.len()).unwrap();
        assert_eq!(d.value, "SN 12");
        // A format that does not fit costs a lot.
        let far = dec(r"LOT \d\d", &cs).decode(&m, 5, cs.len()).unwrap();
        assert!(far.gap > 5.0, "{far:?}");
    }

    #[test]
    fn the_constrained_path_beats_fixing_up_the_greedy_text() {
        let cs = charset();
        // Greedy: "B8" (B 0.5 vs 8 0.45; 8 0.9). A string fix-up of the
        // greedy text has no digit for B; the search takes 8 from the
        // probabilities, and then the repeat 8,8 needs the blank between.
        let m = matrix(&cs, &[&[('B', 0.5), ('8', 0.45)], &[('_', 0.6), ('8', 0.3)], &[('8', 0.9)]]);
        assert_eq!(ctc::decode(&m, 3, cs.len(), &cs).0, "B8");
        let d = dec(r"\d\d", &cs).decode(&m, 3, cs.len()).unwrap();
        assert_eq!(d.value, "88");
        assert!((d.score - 0.45).abs() < 1e-6);
    }

    #[test]
    fn hostile_inputs_give_none() {
        let cs = charset();
        let d = dec(r"\d", &cs);
        assert_eq!(d.decode(&[], 0, cs.len()), None);
        assert_eq!(d.decode(&[0.5; 3], 2, cs.len()), None, "wrong size");
        assert_eq!(d.decode(&[0.5; 4], 2, 2), None, "classes narrower than the charset");
        let nan = vec![f32::NAN; 3 * cs.len()];
        let _ = d.decode(&nan, 3, cs.len());
        assert!(Decoder::new(&Pattern::parse("X").unwrap(), &cs).is_err(), "X is not in the set");
        let wide: Vec<String> = ctc::charset(&('!'..='~').map(String::from).collect::<Vec<_>>().join("\n"));
        let e = Decoder::new(&Pattern::parse(".{64}").unwrap(), &wide).unwrap_err();
        assert!(e.0.contains("too large"), "{e}");
        assert!(Decoder::new(&Pattern::parse(".{40}").unwrap(), &wide).is_ok());
        assert!(Decoder::new(&Pattern::parse(r"\l").unwrap(), &cs).is_err(), "no lower case");
    }
}
