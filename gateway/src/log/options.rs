//! How a log is opened ([`LogOptions`]: path, identity, budget, policy at
//! the budget) and the stages' cursors ([`Cursor`]) with the areas each
//! consumes.

use crate::records::Area;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The pipeline's durable cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cursor {
    /// The detect stage: every frame below it is annotated (and every other
    /// sequence number below it was not a frame).
    Detect,
    /// The replicate stage: annotations, images and dead letters below it
    /// are in Kafka. Never passes [`Cursor::Detect`].
    Replicate,
    /// Gap records below it are in Kafka.
    ReplicateGaps,
    /// The replicate stage's live lane: while a backlog drains behind it
    /// (this cursor above [`Cursor::Replicate`]), records from here on go
    /// first, and each is deleted as soon as Kafka has it; the records
    /// left between the two cursors are the backlog. At or below
    /// `replicate`: no backlog lane. Never passes [`Cursor::Detect`].
    ReplicateLive,
    /// The replicate stage's image lane (when the claim check is on):
    /// sampled images below it are in Kafka, in chunks or as a reference to
    /// an object the store has acknowledged. With the claim check off it
    /// follows [`Cursor::Replicate`]. Never passes [`Cursor::Detect`].
    ReplicateImages,
}

impl Cursor {
    /// Every cursor.
    pub const ALL: [Cursor; 5] =
        [Cursor::Detect, Cursor::Replicate, Cursor::ReplicateGaps, Cursor::ReplicateLive, Cursor::ReplicateImages];

    /// Stable name (the key in the index, and in `log stats`).
    pub fn name(self) -> &'static str {
        match self {
            Cursor::Detect => "detect",
            Cursor::Replicate => "replicate",
            Cursor::ReplicateGaps => "replicate_gaps",
            Cursor::ReplicateLive => "replicate_live",
            Cursor::ReplicateImages => "replicate_images",
        }
    }
}

/// What to do when the byte budget is reached and retention and dropping
/// sampled images did not free enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the append ([`LogError::Full`]): intake stops acknowledging so
    /// the MQTT broker holds the frames. Nothing is dropped. The default.
    #[default]
    Block,
    /// Drop the oldest frames not yet detected, recording a gap for each run.
    DropOldest,
}

/// How to open a [`DurableLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of the log (created if missing).
    pub path: PathBuf,
    /// This gateway's id; stored at creation and checked on every open.
    pub gateway_id: String,
    /// Byte budget on disk: segments and index together.
    pub max_bytes: u64,
    /// Policy when the budget is reached.
    pub when_full: WhenFull,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Target size of a payload segment; `None`: `max_bytes / 32`, between
    /// 1 MiB and 64 MiB.
    pub segment_bytes: Option<u64>,
    /// Records larger than this go to segments even when their area keeps
    /// small records in the index (annotations, dead letters).
    pub inline_max: u64,
    /// Part of the budget kept for the index's growth between two
    /// measurements of its size (each flush measures it).
    pub index_reserve: u64,
    /// Which cursors must pass a record before retention may delete it.
    /// An area without consumers is never deleted by retention.
    pub retention: Vec<(Area, Cursor)>,
    /// Size of the space reserve file, and the free space on the file
    /// system below which intake's appends wait ([`LogError::NoSpace`]);
    /// see `space.rs`. 0 turns both off.
    pub reserve_bytes: u64,
}

impl LogOptions {
    /// Options with the pipeline's standard retention table: frames are
    /// needed by `detect`; images, annotations and dead letters by
    /// `replicate` (images also by `replicate_images`); gaps by
    /// `replicate_gaps`.
    pub fn new(path: impl Into<PathBuf>, gateway_id: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            gateway_id: gateway_id.into(),
            max_bytes: 2 << 30,
            when_full: WhenFull::Block,
            cache_bytes: 64 << 20,
            segment_bytes: None,
            inline_max: 16 << 10,
            index_reserve: 1 << 20,
            retention: vec![
                (Area::Frames, Cursor::Detect),
                (Area::Images, Cursor::Replicate),
                (Area::Images, Cursor::ReplicateImages),
                (Area::Annotations, Cursor::Replicate),
                (Area::DeadLetters, Cursor::Replicate),
                (Area::Gaps, Cursor::ReplicateGaps),
            ],
            reserve_bytes: 16 << 20,
        }
    }

    pub(super) fn consumers(&self, area: Area) -> impl Iterator<Item = Cursor> + '_ {
        self.retention.iter().filter(move |(a, _)| *a == area).map(|(_, c)| *c)
    }

    pub(super) fn segment_target(&self) -> u64 {
        self.segment_bytes.unwrap_or((self.max_bytes / 32).clamp(1 << 20, 64 << 20))
    }
}
