//! The wire names consumers depend on: the Kafka header names every record
//! carries and the default topics (changing one is a breaking change).

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

/// `s3` on a reference record of the claim check (images): the payload
/// is a small JSON document naming the object (bucket, key, size, sha256,
/// content type) instead of image bytes. Absent on chunks.
pub const CLAIM_CHECK: &str = "claim_check";
/// The value of [`CLAIM_CHECK`] for an S3-compatible store.
pub const S3: &str = "s3";

/// Default MQTT topic filter the cameras publish frames to (`+`: camera id).
pub const DEFAULT_FRAME_TOPICS: &str = "cameras/+/frames";
/// Default Kafka topic of annotations.
pub const ANNOTATIONS_TOPIC: &str = "vision.annotations";
/// Default Kafka topic of sampled images.
pub const IMAGES_TOPIC: &str = "vision.images";
/// Default Kafka topic of gap records.
pub const GAPS_TOPIC: &str = "vision.gaps";
/// Default Kafka topic of dead letters.
pub const DEAD_LETTERS_TOPIC: &str = "vision.dead-letters";
/// Every default Kafka topic (the demo and the benches create them).
pub const ALL_TOPICS: [&str; 4] = [ANNOTATIONS_TOPIC, IMAGES_TOPIC, GAPS_TOPIC, DEAD_LETTERS_TOPIC];
