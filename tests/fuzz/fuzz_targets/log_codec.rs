//! The log's record codec on any bytes (a damaged index value or segment
//! record): decoding never panics, and what decodes re-encodes to itself.
#![no_main]
use gateway::log::codec::{decode, encode};
use gateway::records::FrameRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, body)) = decode(data) {
        assert_eq!(decode(&encode(kind, body)).ok(), Some((kind, body)));
    }
    if let Ok(f) = FrameRecord::decode(data) {
        assert_eq!(FrameRecord::decode(&f.encode()).ok(), Some(f));
    }
});
