//! A quarantined frame: why it was set aside ([`QuarantineReason`]) and
//! what the log keeps of it ([`DeadLetter`], blob layout
//! `[u32 LE header length][JSON header][payload]`).

use serde::{Deserialize, Serialize};

/// Why a frame was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    /// The topic matches no configured filter, or its camera id is invalid.
    UnknownTopic,
    /// Zero-byte payload.
    Empty,
    /// Larger than `mqtt.max_frame_bytes`.
    Oversize,
    /// Neither JPEG nor PNG magic bytes.
    NotAnImage,
    /// The header is cut short or inconsistent, or a JPEG has no end marker.
    Truncated,
    /// The header claims more than `mqtt.max_pixels` pixels.
    TooManyPixels,
    /// The topic matches a filter but its camera level is not a valid
    /// camera id (empty, over 64 characters, characters other than
    /// `A-Z a-z 0-9 . _ -`, or starting with a dot such as `.` and `..`:
    /// camera ids become file and folder names downstream).
    BadCameraId,
}

impl QuarantineReason {
    /// Every reason, for metrics.
    pub const ALL: [QuarantineReason; QuarantineReason::COUNT] = [
        QuarantineReason::UnknownTopic,
        QuarantineReason::Empty,
        QuarantineReason::Oversize,
        QuarantineReason::NotAnImage,
        QuarantineReason::Truncated,
        QuarantineReason::TooManyPixels,
        QuarantineReason::BadCameraId,
    ];
    /// How many reasons there are.
    pub const COUNT: usize = 7;

    /// Stable snake_case name (metrics label, dead-letter field).
    pub fn name(self) -> &'static str {
        match self {
            QuarantineReason::UnknownTopic => "unknown_topic",
            QuarantineReason::Empty => "empty",
            QuarantineReason::Oversize => "oversize",
            QuarantineReason::NotAnImage => "not_an_image",
            QuarantineReason::Truncated => "truncated",
            QuarantineReason::TooManyPixels => "too_many_pixels",
            QuarantineReason::BadCameraId => "bad_camera_id",
        }
    }
}

/// Metadata of a quarantined frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// MQTT topic it arrived on.
    pub topic: String,
    /// Camera id, if the topic gave one.
    pub camera: Option<String>,
    /// Why it was quarantined.
    pub reason: QuarantineReason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = DeadLetter {
            topic: "cameras/c1/frames".into(),
            camera: Some("c1".into()),
            reason: QuarantineReason::NotAnImage,
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
