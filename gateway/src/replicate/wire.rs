//! What goes on the wire: the Kafka headers of each record kind, images
//! cut into chunks.

use crate::records::{header, SCHEMA_VERSION};
use rdkafka::message::{Header, OwnedHeaders};

/// Adds one header.
pub(super) fn with_header(k: &'static str, v: &str, hs: OwnedHeaders) -> OwnedHeaders {
    hs.insert(Header { key: k, value: Some(v) })
}

/// The Kafka headers of an annotation record.
pub fn annotation_headers(frame_id: &str, model: &str) -> OwnedHeaders {
    let hs = with_header(header::FRAME_ID, frame_id, OwnedHeaders::new_with_capacity(3));
    with_header(header::SCHEMA, &SCHEMA_VERSION.to_string(), with_header(header::MODEL, model, hs))
}

/// What every chunk of one image says about the image.
#[derive(Debug, Clone, Copy)]
pub struct ImageHead<'a> {
    /// The frame's id.
    pub frame_id: &'a str,
    /// Its camera.
    pub camera: &'a str,
    /// MIME type of the whole image.
    pub content_type: &'a str,
    /// sha256 of the whole image, hex.
    pub sha256: &'a str,
}

/// The Kafka headers of chunk `index` of `count` (as text) of an image.
pub fn chunk_headers(image: &ImageHead<'_>, index: usize, count: &str) -> OwnedHeaders {
    let hs = with_header(header::FRAME_ID, image.frame_id, OwnedHeaders::new_with_capacity(6));
    let hs = with_header(header::CAMERA, image.camera, hs);
    let hs = with_header(header::SHA256, image.sha256, with_header(header::CONTENT_TYPE, image.content_type, hs));
    with_header(header::CHUNK_COUNT, count, with_header(header::CHUNK_INDEX, &index.to_string(), hs))
}

/// Splits an image into chunks of at most `chunk` bytes (at least one,
/// even for an empty image).
pub fn chunks(bytes: &[u8], chunk: usize) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(chunk.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_the_image_exactly() {
        let img: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let c = chunks(&img, 1000);
        assert_eq!(c.iter().map(|x| x.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        assert_eq!(c.concat(), img);
        assert_eq!(chunks(&img[..1000], 1000).len(), 1);
        assert_eq!(chunks(&[], 1000).len(), 1);
    }
}
