//! Model manifests (`model.toml`) on any text: parsing and checking never
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = inference::Manifest::parse(text, std::path::Path::new("/nonexistent"));
});
