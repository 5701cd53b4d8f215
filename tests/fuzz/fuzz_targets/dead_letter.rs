//! The dead-letter codec on any bytes: decoding never panics, and what
//! decodes re-encodes to the same header and payload.
#![no_main]
use gateway::records::DeadLetter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((d, payload)) = DeadLetter::decode(data) {
        let again = d.encode(Some(payload));
        let (d2, p2) = DeadLetter::decode(&again).expect("re-encoded dead letter decodes");
        assert_eq!((d2, p2), (d, payload));
    }
});
