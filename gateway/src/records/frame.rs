//! A camera frame as intake took it in: what detect reads. Its byte
//! layout in the log is `log/codec.rs`.

/// A camera frame as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    /// Camera id (from the MQTT topic).
    pub camera: String,
    /// MIME type of `payload` (`image/jpeg`, `image/png`).
    pub content_type: String,
    /// When the gateway received the frame, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// When the camera captured it, if the camera said so.
    pub captured_at_ms: Option<u64>,
    /// The camera's own sequence number, if it sends one.
    pub camera_seq: Option<u64>,
    /// The encoded image bytes, unchanged.
    pub payload: Vec<u8>,
}
