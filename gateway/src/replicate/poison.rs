//! Records Kafka refuses for good: which refusals are transient, which
//! mean the topic or the record, and how a record refused
//! [`POISON_STRIKES`] times is given up (with a gap record) so that the
//! records behind it keep flowing.

use super::part::{Failure, Part};
use super::{Replicate, ReplicateError};
use crate::records::Area;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Deliveries of one record that Kafka refused for good before the record
/// is given up (dropped with a gap record, or, for a refused topic of the
/// main streams, reported while it waits).
pub const POISON_STRIKES: u32 = 3;

/// How a failed delivery is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// May succeed later (broker down, timeout, leader change): the batch
    /// is retried with backoff, for as long as it takes.
    Transient,
    /// The topic is missing or forbidden: nothing can go to it until an
    /// operator acts.
    Topic,
    /// This record can never be accepted (too large for the broker,
    /// invalid).
    Record,
}

/// Classifies a delivery error by its Kafka error code.
pub fn refusal(code: Option<RDKafkaErrorCode>) -> Refusal {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::TopicAuthorizationFailed | C::InvalidTopic) => {
            Refusal::Topic
        }
        Some(
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord | C::PolicyViolation | C::InvalidMessage,
        ) => Refusal::Record,
        _ => Refusal::Transient,
    }
}

impl Replicate {
    /// Counts the refusals of a failed batch and gives up the records
    /// refused [`POISON_STRIKES`] times, in one log batch:
    ///
    /// - an image or a dead letter (the topic refused, or the record): the
    ///   record is dropped with an `undeliverable` gap record saying why;
    /// - an annotation the broker refuses as a record (too large): the same;
    /// - an annotation or gap record whose *topic* is missing or forbidden
    ///   is kept: the main streams wait on disk for the operator (the
    ///   error is logged and counted, and the watchdog sees no progress);
    /// - a gap record refused as a record is deleted and counted (a gap of
    ///   a gap would be refused again).
    ///
    /// Returns whether anything was given up (then the batch is sent again
    /// at once, without it) and whether every failure was transient.
    pub(super) async fn give_up_poison(
        &self,
        failures: &[Failure],
        strikes: &mut HashMap<Part, u32>,
    ) -> Result<(bool, bool), ReplicateError> {
        let mut b = self.log.batch();
        let mut gave_up = false;
        let mut transient = true;
        for f in failures {
            let r = refusal(f.code);
            if r == Refusal::Transient {
                continue;
            }
            transient = false;
            if r == Refusal::Topic {
                self.stats.topic_refusals.fetch_add(1, Ordering::Relaxed);
            }
            let n = strikes.entry(f.part).or_insert(0);
            *n += 1;
            let hold = r == Refusal::Topic && matches!(f.part, Part::Annotation(_) | Part::Gap(_));
            if *n < POISON_STRIKES || hold {
                if hold {
                    if let Some(held) = self.warn.check(&f.topic) {
                        tracing::error!(topic = %f.topic, error = %f.error, suppressed = held, "Kafka refuses the topic: create it (or fix replicate.*_topic); the records wait on disk");
                    }
                }
                continue;
            }
            let detail = format!("{} refused by Kafka on topic {} ({} times): {}", f.part.kind(), f.topic, n, f.error);
            tracing::error!(kind = f.part.kind(), seq = f.part.seq(), topic = %f.topic, error = %f.error, "record undeliverable: given up so the records behind it flow");
            let k = match f.part {
                Part::Annotation(_) => 0,
                Part::Image(_) => 1,
                Part::DeadLetter(_) => 2,
                Part::Gap(_) => 3,
            };
            self.stats.undeliverable[k].fetch_add(1, Ordering::Relaxed);
            match f.part {
                Part::Gap(id) => {
                    b.remove(Area::Gaps, id);
                }
                p => {
                    b.undeliverable(p.area(), p.seq(), detail);
                }
            }
            strikes.remove(&f.part);
            gave_up = true;
        }
        if gave_up {
            self.log.apply(b)?;
            // Gap records go up once durable; nothing else may flush soon.
            self.log.flush().await?;
        }
        Ok((gave_up, transient))
    }
}
