//! The annotation record detect writes and replicate sends (JSON, schema
//! [`SCHEMA_VERSION`]), and why its image was kept ([`SampleReason`]).

use inference::Annotation;
use serde::{Deserialize, Serialize};

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
    pub sampled: Option<SampleReason>,
    /// The model's output (with `error` set if the frame could not be read).
    pub annotation: Annotation,
}

/// Why a frame's image was kept for upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleReason {
    /// Every Nth frame of its camera.
    EveryNth,
    /// A chosen label or text above the score.
    Match,
    /// Best score below the low-confidence threshold.
    LowConfidence,
    /// The frame could not be decoded.
    Error,
    /// A required label field is missing or a field is uncertain.
    Review,
    /// A printed field disagrees with the code that carries its value.
    Mismatch,
}
