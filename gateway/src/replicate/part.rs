//! The vocabulary of a batch: a record of it ([`Part`], an image standing
//! for all its chunks), what an acknowledged delivery counts as
//! ([`Sent`]), the lane a batch travels in ([`Lane`]) and a failed delivery
//! ([`Failure`]).

use crate::records::Area;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// One record of a batch (an image stands for all its chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Part {
    Annotation(u64),
    Image(u64),
    DeadLetter(u64),
    Gap(u64),
}

impl Part {
    pub(super) fn area(self) -> Area {
        match self {
            Part::Annotation(_) => Area::Annotations,
            Part::Image(_) => Area::Images,
            Part::DeadLetter(_) => Area::DeadLetters,
            Part::Gap(_) => Area::Gaps,
        }
    }

    pub(super) fn seq(self) -> u64 {
        match self {
            Part::Annotation(s) | Part::Image(s) | Part::DeadLetter(s) | Part::Gap(s) => s,
        }
    }

    pub(super) fn kind(self) -> &'static str {
        match self {
            Part::Annotation(_) => "annotation",
            Part::Image(_) => "image",
            Part::DeadLetter(_) => "dead letter",
            Part::Gap(_) => "gap record",
        }
    }
}

/// What an acknowledged delivery counts as (`vision_gateway_replicated_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// An annotation record.
    Annotation,
    /// The last chunk of an image (the image counts once, its chunk too).
    Image,
    /// A chunk of an image before its last.
    Chunk,
    /// A dead letter.
    DeadLetter,
    /// A gap record.
    Gap,
}

/// Which lane a batch belongs to (see the module's promise on the live
/// lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// No backlog lane: the only one.
    Main,
    /// New records, first, while a backlog drains behind them.
    Live,
    /// The backlog behind the live lane (header `lane = backfill`).
    Backfill,
}

/// A delivery of a batch that failed.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) part: Part,
    pub(super) topic: String,
    pub(super) code: Option<RDKafkaErrorCode>,
    pub(super) error: String,
}

impl Failure {
    pub(super) fn new(part: Part, topic: &str, e: &KafkaError) -> Self {
        Self { part, topic: topic.to_owned(), code: e.rdkafka_error_code(), error: e.to_string() }
    }
}
