//! Record codec of the durable log.
//!
//! Owns the byte layout of every value the log stores. A stored value is
//!
//! ```text
//! [version: u8 = 1][kind: u8][crc32c-free CRC-32 (IEEE) of kind+body: u32 LE][body ...]
//! ```
//!
//! Invariants:
//! - `decode(encode(kind, body)) == (kind, body)` for every input;
//! - any single flipped bit, truncation or unknown version makes `decode`
//!   fail with a [`CodecError`], never panic and never return wrong data
//!   silently (CRC-32 catches every single-bit and burst error up to 32 bits).
//!
//! Frame bodies use a small hand-written binary layout (no serde) because
//! they carry image bytes that must not be copied through a text format.

use crate::records::FrameRecord;
use thiserror::Error;

/// Version byte written in front of every record.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 6;

/// What a stored record is. The kind is covered by the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A camera frame as received (image bytes and metadata).
    Frame = 1,
    /// An opaque stage output (annotations, dead letters); body is the stage's own encoding.
    Blob = 2,
    /// A gap record (JSON body).
    Gap = 3,
    /// A pointer to a record in a payload segment (index values only).
    Pointer = 4,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Frame),
            2 => Some(Self::Blob),
            3 => Some(Self::Gap),
            4 => Some(Self::Pointer),
            _ => None,
        }
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// Shorter than the fixed header or than a length field says.
    #[error("record truncated: {0}")]
    Truncated(&'static str),
    /// Written by a format this build does not know.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// Unknown record kind byte.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// Checksum mismatch: the bytes on disk are not the bytes written.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// Checksum found in the header.
        stored: u32,
        /// Checksum of the bytes found.
        computed: u32,
    },
    /// The body is not valid for its kind (bad UTF-8, bad JSON, bad flag).
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Encodes `body` as a record of `kind`.
pub fn encode(kind: RecordKind, body: &[u8]) -> Vec<u8> {
    encode_with(kind, body.len(), |out| out.extend_from_slice(body))
}

/// Encodes a record whose body `fill` appends to the buffer it is given,
/// so the body is written once, in place (frames are large).
pub fn encode_with(kind: RecordKind, body_len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&[FORMAT_VERSION, kind as u8, 0, 0, 0, 0]);
    fill(&mut out);
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind as u8]);
    h.update(&out[HEADER_LEN..]);
    out[2..HEADER_LEN].copy_from_slice(&h.finalize().to_le_bytes());
    out
}

/// Checks and splits a stored value into its kind and body.
///
/// # Errors
/// A [`CodecError`] when the value is truncated, of an unknown version or
/// kind, or fails its checksum.
pub fn decode(value: &[u8]) -> Result<(RecordKind, &[u8]), CodecError> {
    if value.len() < HEADER_LEN {
        return Err(CodecError::Truncated("header"));
    }
    if value[0] != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(value[0]));
    }
    let stored = u32::from_le_bytes([value[2], value[3], value[4], value[5]]);
    let body = &value[HEADER_LEN..];
    let mut h = crc32fast::Hasher::new();
    h.update(&value[1..2]);
    h.update(body);
    let computed = h.finalize();
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let kind = RecordKind::from_u8(value[1]).ok_or(CodecError::UnknownKind(value[1]))?;
    Ok((kind, body))
}

/// A frame's fields without its payload, borrowed: intake writes a frame
/// from the network buffer it arrived in, without a copy of its bytes
/// (a 200 KB copy is a fresh allocation, its pages faulted in and zeroed).
#[derive(Debug, Clone, Copy)]
pub struct FrameHead<'a> {
    /// As [`FrameRecord::camera`].
    pub camera: &'a str,
    /// As [`FrameRecord::content_type`].
    pub content_type: &'a str,
    /// As [`FrameRecord::received_at_ms`].
    pub received_at_ms: u64,
    /// As [`FrameRecord::captured_at_ms`].
    pub captured_at_ms: Option<u64>,
    /// As [`FrameRecord::camera_seq`].
    pub camera_seq: Option<u64>,
}

impl FrameHead<'_> {
    /// The record's bytes before `payload`, checksum included:
    /// `[head.encode(p), p].concat()` is the whole frame record.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut head = Vec::with_capacity(HEADER_LEN + self.camera.len() + self.content_type.len() + 48);
        head.extend_from_slice(&[FORMAT_VERSION, RecordKind::Frame as u8, 0, 0, 0, 0]);
        put_str(&mut head, self.camera);
        put_str(&mut head, self.content_type);
        head.extend_from_slice(&self.received_at_ms.to_le_bytes());
        put_opt(&mut head, self.captured_at_ms);
        put_opt(&mut head, self.camera_seq);
        head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&[RecordKind::Frame as u8]);
        h.update(&head[HEADER_LEN..]);
        h.update(payload);
        head[2..HEADER_LEN].copy_from_slice(&h.finalize().to_le_bytes());
        head
    }
}

impl FrameRecord {
    /// Serialises the frame into a checksummed record.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.payload.len() + self.camera.len() + self.content_type.len() + 48;
        encode_with(RecordKind::Frame, len, |b| {
            put_str(b, &self.camera);
            put_str(b, &self.content_type);
            b.extend_from_slice(&self.received_at_ms.to_le_bytes());
            put_opt(b, self.captured_at_ms);
            put_opt(b, self.camera_seq);
            b.extend_from_slice(&(self.payload.len() as u64).to_le_bytes());
            b.extend_from_slice(&self.payload);
        })
    }

    /// The record in two parts, the encoded header and metadata, then the
    /// payload itself, so a frame is written without copying its bytes:
    /// `[head, payload].concat() == self.encode()`.
    pub fn encode_parts(&self) -> (Vec<u8>, &[u8]) {
        (self.head().encode(&self.payload), &self.payload)
    }

    /// The frame's fields without its payload.
    pub fn head(&self) -> FrameHead<'_> {
        FrameHead {
            camera: &self.camera,
            content_type: &self.content_type,
            received_at_ms: self.received_at_ms,
            captured_at_ms: self.captured_at_ms,
            camera_seq: self.camera_seq,
        }
    }

    /// Parses a stored frame record.
    ///
    /// # Errors
    /// A [`CodecError`] if the record is damaged or not a frame.
    pub fn decode(value: &[u8]) -> Result<Self, CodecError> {
        let (kind, body) = decode(value)?;
        if kind != RecordKind::Frame {
            return Err(CodecError::Malformed(format!("expected a frame, found {kind:?}")));
        }
        let mut r = Reader(body);
        let camera = r.str()?;
        let content_type = r.str()?;
        let received_at_ms = r.u64()?;
        let captured_at_ms = r.opt()?;
        let camera_seq = r.opt()?;
        let len = usize::try_from(r.u64()?).map_err(|_| CodecError::Malformed("payload length".into()))?;
        let payload = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(CodecError::Malformed("trailing bytes after payload".into()));
        }
        Ok(Self { camera, content_type, received_at_ms, captured_at_ms, camera_seq, payload })
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Camera ids and content types are short; longer strings are cut at a
    // char boundary rather than corrupting the layout.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(&(end as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_opt(b: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
        None => b.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated("field"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, CodecError> {
        let l = self.take(2)?;
        let n = u16::from_le_bytes([l[0], l[1]]) as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|e| CodecError::Malformed(e.to_string()))
    }
    fn opt(&mut self) -> Result<Option<u64>, CodecError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            f => Err(CodecError::Malformed(format!("bad option flag {f}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> FrameRecord {
        FrameRecord {
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            received_at_ms: 1_700_000_000_000,
            captured_at_ms: Some(1_699_999_999_000),
            camera_seq: None,
            payload: (0..5000u32).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn frame_round_trips() {
        let f = frame();
        assert_eq!(FrameRecord::decode(&f.encode()).unwrap(), f);
        let (head, payload) = f.encode_parts();
        assert_eq!([&head[..], payload].concat(), f.encode());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let enc = frame().encode();
        // Flip every bit of the header and a sample of the body.
        for i in (0..enc.len()).filter(|i| *i < 64 || i % 97 == 0) {
            for bit in 0..8 {
                let mut bad = enc.clone();
                bad[i] ^= 1 << bit;
                assert!(FrameRecord::decode(&bad).is_err(), "flip at byte {i} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let enc = frame().encode();
        for n in [0, 1, 5, 6, 20, enc.len() - 1] {
            assert!(FrameRecord::decode(&enc[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn unknown_version_is_reported() {
        let mut enc = encode(RecordKind::Blob, b"x");
        enc[0] = 9;
        assert_eq!(decode(&enc), Err(CodecError::UnknownVersion(9)));
    }

    #[test]
    fn kind_mismatch_is_malformed() {
        let enc = encode(RecordKind::Blob, b"hello");
        assert!(matches!(FrameRecord::decode(&enc), Err(CodecError::Malformed(_))));
    }
}
