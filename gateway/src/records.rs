//! The records the stages hand to each other and send upstream, in one
//! place, so that no stage imports another to know a record's shape.
//!
//! Owns the record types and their wire names:
//!
//! - [`FrameRecord`]: a frame as received (intake writes it, detect reads
//!   it; its byte layout is the log's codec);
//! - [`FrameAnnotation`]: what detect writes and replicate sends (JSON,
//!   schema [`SCHEMA_VERSION`]);
//! - [`DeadLetter`]: what intake keeps of a quarantined frame (its blob
//!   layout is `[u32 LE header length][JSON header][payload]`, the payload
//!   kept only while the dead-letter area is under
//!   `mqtt.quarantine_max_bytes`);
//! - [`GapRecord`] and [`GapReason`]: a run of sequence numbers that will
//!   never be delivered, and why;
//! - [`header`]: the Kafka header names.
//!
//! Promise: every record says which frame it is about by `frame_id`
//! (`"{gateway_id}:{seq}"`), or for a gap by its seq range, so consumers can
//! de-duplicate and account for every sequence number.

use crate::intake::validate::Reason;
use crate::log::Area;
use inference::Annotation;
use serde::{Deserialize, Serialize};

pub use crate::log::codec::FrameRecord;

/// Kafka header names.
pub mod header {
    /// The frame's id (every topic but gaps).
    pub const FRAME_ID: &str = "frame_id";
    /// Camera id (images).
    pub const CAMERA: &str = "camera";
    /// MIME type of the image (images).
    pub const CONTENT_TYPE: &str = "content_type";
    /// sha256 of the whole image, hex (images).
    pub const SHA256: &str = "sha256";
    /// Index of the chunk, from 0 (images).
    pub const CHUNK_INDEX: &str = "chunk_index";
    /// Chunks of the image (images).
    pub const CHUNK_COUNT: &str = "chunk_count";
    /// `name@hash` of the model (annotations).
    pub const MODEL: &str = "model";
    /// Schema version (annotations).
    pub const SCHEMA: &str = "schema";
    /// Gap reason (gaps).
    pub const REASON: &str = "reason";
    /// `backfill` on a record of a backlog sent behind the live lane
    /// (annotations, image chunks, dead letters); absent otherwise. Order
    /// per camera holds within each lane; `frame_id`'s sequence orders the
    /// two together.
    pub const LANE: &str = "lane";
    /// The value of [`LANE`] on backlog records.
    pub const BACKFILL: &str = "backfill";
}

/// Version of the [`FrameAnnotation`] JSON schema.
pub const SCHEMA_VERSION: u32 = 1;

/// The annotation record the log keeps and replicate sends (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameAnnotation {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// `"{gateway_id}:{seq}"`: unique across sites, for de-duplication.
    pub frame_id: String,
    /// Gateway that took the frame in.
    pub gateway_id: String,
    /// Sequence number in that gateway's log.
    pub seq: u64,
    /// Camera id.
    pub camera: String,
    /// The camera's own sequence number, if it sends one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera_seq: Option<u64>,
    /// When the camera captured the frame (ms since the Unix epoch), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_at_ms: Option<u64>,
    /// When the gateway received it.
    pub received_at_ms: u64,
    /// MIME type of the frame.
    pub content_type: String,
    /// Size of the frame in bytes.
    pub frame_bytes: u64,
    /// Why the image was kept for upload (absent: not sampled, its bytes
    /// were freed after detection).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sampled: Option<crate::sample::SampleReason>,
    /// The model's output (with `error` set if the frame could not be read).
    pub annotation: Annotation,
}

/// Metadata of a quarantined frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// MQTT topic it arrived on.
    pub topic: String,
    /// Camera id, if the topic gave one.
    pub camera: Option<String>,
    /// Why it was quarantined.
    pub reason: Reason,
    /// Payload size in bytes.
    pub size: u64,
    /// When the gateway received it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Whether the payload bytes follow the header.
    pub payload_kept: bool,
    /// The camera's own sequence number, if it sent one (so a consumer can
    /// tell which frame of the camera this was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_seq: Option<u64>,
    /// When the camera captured it (ms since the Unix epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at_ms: Option<u64>,
}

impl DeadLetter {
    /// Encodes header and (optional) payload into a log blob.
    pub fn encode(&self, payload: Option<&[u8]>) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        let h = serde_json::to_vec(self).unwrap_or_default();
        let mut b = Vec::with_capacity(4 + h.len() + payload.map_or(0, <[u8]>::len));
        b.extend_from_slice(&(h.len() as u32).to_le_bytes());
        b.extend_from_slice(&h);
        if let Some(p) = payload {
            b.extend_from_slice(p);
        }
        b
    }

    /// Decodes a log blob into header and payload.
    ///
    /// # Errors
    /// A message if the blob is not a dead letter.
    pub fn decode(b: &[u8]) -> Result<(Self, &[u8]), String> {
        let n = b.get(..4).ok_or("dead letter too short")?;
        let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let h = b.get(4..4 + n).ok_or("dead letter header cut short")?;
        let d: DeadLetter = serde_json::from_slice(h).map_err(|e| e.to_string())?;
        Ok((d, &b[4 + n..]))
    }
}

/// Why records were dropped or set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// A sampled image was dropped before upload to stay within `log.max_bytes`.
    ImageDroppedForSpace,
    /// A frame was dropped before detection to stay within `log.max_bytes` (`drop_oldest`).
    FrameDroppedForSpace,
    /// A record could not be read back (torn, damaged, segment missing); see `detail`.
    Unreadable,
    /// Kafka refused the record for good (too large for the broker, topic
    /// missing for an image, ...), see `detail`; it was dropped after
    /// bounded retries so that the records behind it keep flowing.
    Undeliverable,
}

impl GapReason {
    /// Every reason.
    pub const ALL: [GapReason; GapReason::COUNT] = [
        GapReason::ImageDroppedForSpace,
        GapReason::FrameDroppedForSpace,
        GapReason::Unreadable,
        GapReason::Undeliverable,
    ];
    /// How many reasons there are.
    pub const COUNT: usize = 4;

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name (as in gap records and metrics).
    pub fn name(self) -> &'static str {
        match self {
            GapReason::ImageDroppedForSpace => "image_dropped_for_space",
            GapReason::FrameDroppedForSpace => "frame_dropped_for_space",
            GapReason::Unreadable => "unreadable",
            GapReason::Undeliverable => "undeliverable",
        }
    }
}

/// A contiguous run of records that will never be delivered, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// Gap id, increasing from 0 in this log.
    pub id: u64,
    /// Gateway that lost the records.
    pub gateway_id: String,
    /// Area the records were in.
    pub area: Area,
    /// First sequence number of the run.
    pub from_seq: u64,
    /// Last sequence number of the run (inclusive).
    pub to_seq: u64,
    /// Records actually removed in the run (sequence numbers can be sparse).
    pub records: u64,
    /// Logical bytes freed.
    pub bytes: u64,
    /// Why.
    pub reason: GapReason,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// What exactly was wrong, for unreadable records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = DeadLetter {
            topic: "cameras/c1/frames".into(),
            camera: Some("c1".into()),
            reason: Reason::NotAnImage,
            size: 3,
            received_at_ms: 5,
            payload_kept: true,
            camera_seq: Some(7),
            captured_at_ms: None,
        };
        let b = d.encode(Some(b"abc"));
        assert_eq!(DeadLetter::decode(&b).unwrap(), (d, &b"abc"[..]));
        assert!(DeadLetter::decode(&b[..3]).is_err());
    }
}
