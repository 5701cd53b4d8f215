//! GS1 element strings on any input: the parser never panics, and what
//! it accepts is consistent: every AI it returns is 2 to 4 digits with a
//! value of GS1 characters no longer than the input, and a value it calls
//! a GTIN has a right check digit.
#![no_main]
use inference::codes::gs1;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match gs1::parse(s) {
        Ok(ais) => {
            assert!(!ais.is_empty(), "{s:?} parsed to nothing");
            for (ai, v) in &ais {
                assert!((2..=4).contains(&ai.len()) && ai.bytes().all(|b| b.is_ascii_digit()), "AI {ai:?}");
                assert!(!v.is_empty() && v.len() <= s.len() && !v.contains(gs1::GS), "{ai}: {v:?}");
            }
            if let Some(gtin) = ais.get("01") {
                assert!(gs1::check_digit_ok(gtin), "GTIN {gtin:?} accepted with a wrong check digit");
            }
        }
        Err(e) => assert!(e.at <= s.len(), "{e} past the end of {s:?}"),
    }
});
