//! Intake's payload checks on any bytes: never panic, and what passes has
//! a picture within the pixel limit; the decoder, given what passed, never
//! allocates past its own limit (it returns an error instead).
#![no_main]
use gateway::intake::validate::{check_payload, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_bytes: 1 << 20, max_pixels: 4_000_000 };

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = check_payload(data, LIMITS) {
        assert!(u64::from(c.width) * u64::from(c.height) <= LIMITS.max_pixels);
        assert!(c.width > 0 && c.height > 0);
        if let Ok(img) = inference::imageops::decode(data, LIMITS.max_pixels) {
            assert!((img.width * img.height) as u64 <= LIMITS.max_pixels);
        }
    }
});
