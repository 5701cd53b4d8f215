//! Synthetic frames: deterministic bytes for tests and benches, with no
//! fixture file to carry.

/// Deterministic incompressible bytes (xorshift64).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A payload that passes intake's checks: SOI, a SOF0 header (640x480),
/// comment segments of noise up to `size`, EOI.
pub fn synthetic_jpeg(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0x01, 0xE0, 0x02, 0x80, 1, 1, 0x11, 0];
    let mut chunk = 0u64;
    while v.len() + 4 + 2 < size {
        let n = (size - v.len() - 6).min(65_000);
        v.extend_from_slice(&[0xFF, 0xFE]);
        v.extend_from_slice(&((n + 2) as u16).to_be_bytes());
        v.extend_from_slice(&noise(n, seed.wrapping_add(chunk)));
        chunk += 1;
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}
