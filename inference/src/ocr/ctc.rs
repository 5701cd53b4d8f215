//! CTC greedy decoding of PP-OCR's recogniser output.
//!
//! The character set is the model's `character` metadata (one per line),
//! with `blank` inserted at index 0 and a space appended at the end, as the
//! reference does. Decoding takes the best class per time step, merges
//! repeats, drops blanks; the score is the mean probability of the kept
//! steps (0 if none).

/// Builds the class list from the `character` metadata.
pub fn charset(metadata: &str) -> Vec<String> {
    let mut v = vec![String::new()];
    v.extend(metadata.split('\n').map(|l| l.trim_end_matches('\r').to_owned()));
    v.push(" ".into());
    v
}

/// Decodes one sequence of `steps` x `classes` probabilities.
pub fn decode(probs: &[f32], steps: usize, classes: usize, charset: &[String]) -> (String, f32) {
    let mut text = String::new();
    let mut sum = 0f64;
    let mut kept = 0usize;
    let mut prev = usize::MAX;
    for t in 0..steps {
        let row = &probs[t * classes..(t + 1) * classes];
        let (best, p) = row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        if best != 0 && best != prev {
            if let Some(c) = charset.get(best) {
                text.push_str(c);
            }
            sum += f64::from(p);
            kept += 1;
        }
        prev = best;
    }
    let score = if kept == 0 { 0.0 } else { (sum / kept as f64) as f32 };
    (text, score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_repeats_and_drops_blanks() {
        let cs = charset("a\nb");
        assert_eq!(cs, vec!["", "a", "b", " "]);
        // steps: a a blank a b space
        let steps = [1usize, 1, 0, 1, 2, 3];
        let mut probs = vec![0.0f32; steps.len() * 4];
        for (t, &c) in steps.iter().enumerate() {
            probs[t * 4 + c] = 0.5 + 0.1 * t as f32;
        }
        let (text, score) = decode(&probs, steps.len(), 4, &cs);
        assert_eq!(text, "aab ");
        let want = (0.5 + 0.8 + 0.9 + 1.0) / 4.0;
        assert!((score - want).abs() < 1e-6);
        assert_eq!(decode(&[1.0, 0.0, 0.0, 0.0], 1, 4, &cs), (String::new(), 0.0));
    }
}
