//! OCR pre- and post-processing on random shapes: the detector input of
//! any frame size stays bounded (the resource model), and the box finder
//! on a random probability map of a random size never panics and keeps
//! its boxes inside the frame.
#![no_main]
use inference::ocr::{db, DetPlan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = |k: usize| data.get(k).copied().unwrap_or(1);
    let w = usize::from(u16::from_le_bytes([b(0), b(1)])) * usize::from(b(2)).max(1);
    let h = usize::from(u16::from_le_bytes([b(3), b(4)])) * usize::from(b(5)).max(1);
    let p = DetPlan::of(w, h);
    assert!((32..=2016).contains(&p.det_width) && (32..=2016).contains(&p.det_height), "{w}x{h}: {p:?}");
    assert!(p.preprocess_bytes() < 100 << 20);
    // A small map from the rest of the input.
    let (mw, mh) = (usize::from(b(6) % 64) + 1, usize::from(b(7) % 64) + 1);
    let map: Vec<f32> = (0..mw * mh).map(|i| f32::from(data.get(8 + i).copied().unwrap_or(0)) / 255.0).collect();
    let (fw, fh) = (usize::from(b(8)) + 1, usize::from(b(9)) + 1);
    for (quad, score) in db::boxes_from_map(&map, (mw, mh), (fw, fh), db::DbParams::default()) {
        assert!(score.is_finite());
        for pt in quad {
            assert!(pt[0] >= 0.0 && pt[0] <= fw as f64 && pt[1] >= 0.0 && pt[1] <= fh as f64, "{pt:?} in {fw}x{fh}");
        }
    }
});
