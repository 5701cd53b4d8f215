//! Label field formats and constrained decoding on any input: the format
//! is the text before the first NUL, the recogniser output is made of the
//! bytes after it. Parsing never panics; a decoded line is always a line of
//! its format, and its score is a probability.
#![no_main]
use inference::fields::{Decoder, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(format) = std::str::from_utf8(&data[..cut]) else { return };
    let Ok(pattern) = Pattern::parse(format) else { return };
    let charset = inference::ocr::ctc::charset("0\n1\n2\n3\n4\n5\n6\n7\n8\n9\nA\nB\nC\nL\nO\nS\nN\nT\n-\n/\n.");
    let Ok(decoder) = Decoder::new(&pattern, &charset) else { return };
    let bytes = data.get(cut + 1..).unwrap_or(&[]);
    let classes = charset.len();
    let steps = (bytes.len() / classes).min(200);
    if steps == 0 {
        return;
    }
    let probs: Vec<f32> = bytes[..steps * classes].iter().map(|&b| f32::from(b) / 255.0).collect();
    if let Some(d) = decoder.decode(&probs, steps, classes) {
        assert!(pattern.matches(&d.line).is_some(), "{format:?} decoded {:?}, not a line of it", d.line);
        assert!((0.0..=1.0).contains(&d.score) && d.gap >= 0.0, "{d:?}");
    }
});
