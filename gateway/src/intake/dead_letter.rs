//! The dead-letter record: what intake keeps of a quarantined frame.
//!
//! Layout of the log blob: `[u32 LE header length][JSON header][payload]`.
//! The payload is kept only while the dead-letter area is under
//! `mqtt.quarantine_max_bytes`; the header is always kept, so every
//! quarantined frame is counted and replicated.

use super::validate::Reason;
use serde::{Deserialize, Serialize};

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
