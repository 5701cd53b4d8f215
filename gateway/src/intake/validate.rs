//! What intake accepts: topic to camera id, and cheap checks of the payload
//! before anything decodes it.
//!
//! Pure functions, no I/O. The checks read only headers: magic bytes,
//! PNG's IHDR or JPEG's SOF for the picture size (decompression bombs), and
//! JPEG's end-of-image marker (truncation). A frame that passes can still
//! fail to decode later; the detect stage turns that into an error
//! annotation.

use crate::records::QuarantineReason;

/// Image container recognised from magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 50 4E 47 0D 0A 1A 0A`).
    Png,
}

impl Format {
    /// MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
        }
    }
}

/// Limits applied to every payload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload in bytes.
    pub max_bytes: u64,
    /// Largest picture in pixels.
    pub max_pixels: u64,
}

/// A payload that passed: its format and picture size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Container.
    pub format: Format,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Extracts the camera id from `topic` using the filters (each with exactly
/// one `+` level, which is the camera id).
///
/// # Errors
/// [`QuarantineReason::UnknownTopic`] if no filter matches; [`QuarantineReason::BadCameraId`]
/// if one matches but the camera level is not a valid id: 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn camera_id<'t>(filters: &[String], topic: &'t str) -> Result<&'t str, QuarantineReason> {
    let levels: Vec<&str> = topic.split('/').collect();
    let mut bad = false;
    for f in filters {
        let fl: Vec<&str> = f.split('/').collect();
        if fl.len() != levels.len() {
            continue;
        }
        let mut camera = None;
        let matches = fl.iter().zip(&levels).all(|(f, t)| {
            if *f == "+" {
                camera = Some(*t);
                true
            } else {
                f == t
            }
        });
        if let (true, Some(c)) = (matches, camera) {
            if valid_camera_id(c) {
                return Ok(c);
            }
            bad = true;
        }
    }
    Err(if bad { QuarantineReason::BadCameraId } else { QuarantineReason::UnknownTopic })
}

/// 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn valid_camera_id(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && !c.starts_with('.')
        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
}

/// Checks a payload against the limits without decoding it.
///
/// # Errors
/// The [`QuarantineReason`] it must be quarantined for.
pub fn check_payload(p: &[u8], limits: Limits) -> Result<Checked, QuarantineReason> {
    if p.is_empty() {
        return Err(QuarantineReason::Empty);
    }
    if p.len() as u64 > limits.max_bytes {
        return Err(QuarantineReason::Oversize);
    }
    let (format, (width, height)) = if p.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (Format::Jpeg, jpeg_size(p)?)
    } else if p.starts_with(b"\x89PNG\r\n\x1a\n") {
        (Format::Png, png_size(p)?)
    } else {
        return Err(QuarantineReason::NotAnImage);
    };
    if width == 0 || height == 0 {
        return Err(QuarantineReason::Truncated);
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(QuarantineReason::TooManyPixels);
    }
    Ok(Checked { format, width, height })
}

fn png_size(p: &[u8]) -> Result<(u32, u32), QuarantineReason> {
    // signature(8) len(4) "IHDR"(4) width(4) height(4)
    if p.len() < 33 || &p[12..16] != b"IHDR" {
        return Err(QuarantineReason::Truncated);
    }
    let w = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    let h = u32::from_be_bytes([p[20], p[21], p[22], p[23]]);
    Ok((w, h))
}

/// Walks JPEG marker segments up to the first SOF for the size, and checks
/// that the stream ends with EOI (`FF D9`), allowing trailing padding.
fn jpeg_size(p: &[u8]) -> Result<(u32, u32), QuarantineReason> {
    let tail = &p[p.len().saturating_sub(64)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(QuarantineReason::Truncated);
    }
    let mut i = 2;
    while i + 4 <= p.len() {
        if p[i] != 0xFF {
            return Err(QuarantineReason::Truncated);
        }
        let marker = p[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([p[i + 2], p[i + 3]]));
        if len < 2 || i + 2 + len > p.len() {
            return Err(QuarantineReason::Truncated);
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            if len < 7 {
                return Err(QuarantineReason::Truncated);
            }
            let h = u32::from(u16::from_be_bytes([p[i + 5], p[i + 6]]));
            let w = u32::from(u16::from_be_bytes([p[i + 7], p[i + 8]]));
            return Ok((w, h));
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // scan data before any SOF: malformed
        }
        i += 2 + len;
    }
    Err(QuarantineReason::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_bytes: 1 << 20, max_pixels: 50_000_000 };

    fn filters() -> Vec<String> {
        vec!["cameras/+/frames".into(), "site/a/+/img".into()]
    }

    /// A minimal but structurally valid JPEG: SOI, SOF0 (w x h), EOI.
    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[1, 1, 0x11, 0]);
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
        v
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn camera_id_from_topic() {
        assert_eq!(camera_id(&filters(), "cameras/line1-cam2/frames"), Ok("line1-cam2"));
        assert_eq!(camera_id(&filters(), "site/a/c9/img"), Ok("c9"));
        assert_eq!(camera_id(&filters(), "cameras/cam.v2/frames"), Ok("cam.v2"));
        assert_eq!(camera_id(&filters(), "cameras/x/other"), Err(QuarantineReason::UnknownTopic));
        assert_eq!(camera_id(&filters(), "cameras/a/b/frames"), Err(QuarantineReason::UnknownTopic));
        for bad in ["", "bad id", "..", ".", ".hidden", "a/b", &"x".repeat(65)] {
            let topic = format!("cameras/{bad}/frames");
            let want = if bad.contains('/') { QuarantineReason::UnknownTopic } else { QuarantineReason::BadCameraId };
            assert_eq!(camera_id(&filters(), &topic), Err(want), "{topic:?}");
        }
    }

    #[test]
    fn good_images_pass_with_their_size() {
        assert_eq!(
            check_payload(&jpeg(640, 480), LIMITS),
            Ok(Checked { format: Format::Jpeg, width: 640, height: 480 })
        );
        assert_eq!(check_payload(&png(32, 16), LIMITS), Ok(Checked { format: Format::Png, width: 32, height: 16 }));
    }

    #[test]
    fn bad_payloads_get_their_reason() {
        assert_eq!(check_payload(&[], LIMITS), Err(QuarantineReason::Empty));
        assert_eq!(check_payload(&vec![0xFF; 2 << 20], LIMITS), Err(QuarantineReason::Oversize));
        assert_eq!(check_payload(b"GIF89a....", LIMITS), Err(QuarantineReason::NotAnImage));
        let j = jpeg(640, 480);
        assert_eq!(check_payload(&j[..j.len() - 4], LIMITS), Err(QuarantineReason::Truncated));
        assert_eq!(check_payload(&j[..12], LIMITS), Err(QuarantineReason::Truncated));
        assert_eq!(check_payload(&png(100_000, 100_000), LIMITS), Err(QuarantineReason::TooManyPixels));
        assert_eq!(check_payload(&jpeg(60_000, 60_000), LIMITS), Err(QuarantineReason::TooManyPixels));
        assert_eq!(check_payload(&png(100, 100)[..20], LIMITS), Err(QuarantineReason::Truncated));
        assert_eq!(check_payload(&png(0, 100), LIMITS), Err(QuarantineReason::Truncated));
    }
}
