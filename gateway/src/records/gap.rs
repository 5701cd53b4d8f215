//! What the log could not deliver: the [`Area`]s of the log, and
//! [`GapRecord`]s (a run of sequence numbers that will never be delivered,
//! with its [`GapReason`]).

use serde::{Deserialize, Serialize};

/// One area of the log: a kind of record with its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Frames as received, waiting for the detect stage.
    Frames,
    /// Sampled images waiting for upload.
    Images,
    /// Annotations waiting for replication.
    Annotations,
    /// Quarantined input (bad frames), waiting for replication.
    DeadLetters,
    /// Gap records (keyed by gap id, not frame seq).
    Gaps,
}

impl Area {
    /// Every area, in prefix order.
    pub const ALL: [Area; 5] = [Area::Frames, Area::Images, Area::Annotations, Area::DeadLetters, Area::Gaps];

    /// Its position in [`Area::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Stable lower-case name (used in stats and gap records).
    pub fn name(self) -> &'static str {
        match self {
            Area::Frames => "frames",
            Area::Images => "images",
            Area::Annotations => "annotations",
            Area::DeadLetters => "dead_letters",
            Area::Gaps => "gaps",
        }
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
