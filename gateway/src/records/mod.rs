//! The records the stages hand to each other and send upstream, in one
//! place, so that no stage imports another to know a record's shape. The
//! bottom layer: it imports nothing of the crate.
//!
//! - [`frame`]: a frame as received (intake writes it, detect reads it;
//!   its byte layout is the log's codec);
//! - [`annotation`]: what detect writes and replicate sends (JSON, schema
//!   [`SCHEMA_VERSION`]), and why an image was sampled;
//! - [`dead_letter`]: what intake keeps of a quarantined frame and why it
//!   was quarantined (the blob layout is `[u32 LE header length][JSON
//!   header][payload]`, the payload kept only while the dead-letter area is
//!   under `mqtt.quarantine_max_bytes`);
//! - [`gap`]: the log's areas, and a run of sequence numbers that will
//!   never be delivered, and why;
//! - [`header`]: the Kafka header names.
//!
//! Promise: every record says which frame it is about by `frame_id`
//! (`"{gateway_id}:{seq}"`), or for a gap by its seq range, so consumers can
//! de-duplicate and account for every sequence number.

pub mod annotation;
pub mod dead_letter;
pub mod frame;
pub mod gap;
pub mod header;

pub use annotation::{FrameAnnotation, SampleReason, SCHEMA_VERSION};
pub use dead_letter::{DeadLetter, QuarantineReason};
pub use frame::FrameRecord;
pub use gap::{Area, GapReason, GapRecord};
