//! The reassembler's header handling on any sequence of chunks (frame id,
//! camera, index, count, sha256 and payload all hostile): it never panics,
//! the bytes it holds never pass its budget, and every path it would write
//! is plain names under the output folder.
#![no_main]
use gateway::replicate::reassemble::{Assembler, Chunk, Limits, Outcome};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const NAMES: [&str; 8] = ["..", ".", "", "a/../../b", "/etc/passwd", "gw:1", "cam\0x", "\u{202e}exe.jpg"];

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_partial_bytes: 4096, max_age: Duration::from_secs(5), max_chunks: 16 };
    let mut a = Assembler::new(limits);
    let t0 = Instant::now();
    for (i, rec) in data.chunks(8).enumerate() {
        let b = |k: usize| rec.get(k).copied().unwrap_or(0);
        let payload = vec![b(5); usize::from(b(6)) * 8];
        let sha = if b(7) & 1 == 0 { String::new() } else { "00".into() };
        let c = Chunk {
            at: (0, i as i64),
            frame_id: format!("{}{}", NAMES[usize::from(b(0)) % 8], b(1) % 4),
            camera: NAMES[usize::from(b(2)) % 8].to_owned(),
            content_type: if b(7) & 2 == 0 { "image/jpeg".into() } else { "x/../y".into() },
            sha256: sha,
            index: usize::from(b(3)) % 20,
            count: usize::from(b(4)) % 20,
            payload,
        };
        let now = t0 + Duration::from_millis(u64::from(b(7)) * 100 * i as u64);
        let mut expired = Vec::new();
        expired.extend(a.expire(now));
        if let Outcome::Whole(img) = a.offer(c, now, &mut expired) {
            assert!(img.path.components().all(|p| matches!(p, std::path::Component::Normal(_))), "{:?}", img.path);
            assert_eq!(img.path.components().count(), 2);
        }
        assert!(a.held_bytes() <= limits.max_partial_bytes + 255 * 8);
    }
});
