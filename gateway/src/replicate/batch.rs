//! One batch of the stage: the next annotations and dead letters read in
//! sequence order (with the sampled images that go with them, under a
//! byte budget), handed to librdkafka, and settled from its delivery
//! reports.

use super::part::{Failure, Lane, Part, Sent};
use super::producer::{enqueue_yielding, DeliveryFuture};
use super::wire::{annotation_headers, chunk_headers, chunks, with_header, ImageHead};
use super::{Replicate, ReplicateError, BATCH};
use crate::records::{header, Area, DeadLetter, FrameRecord, GapRecord};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

pub(super) enum Out {
    Annotation { seq: u64, camera: String, frame_id: String, model: String, json: Vec<u8>, image: Option<FrameRecord> },
    DeadLetter { seq: u64, camera: String, frame_id: String, json: Vec<u8> },
}

impl Out {
    pub(super) fn seq(&self) -> u64 {
        match self {
            Out::Annotation { seq, .. } | Out::DeadLetter { seq, .. } => *seq,
        }
    }
}

/// A batch handed to librdkafka: its delivery reports to await, and where
/// the cursors go once they are all successes.
pub(super) struct Pending {
    pub(super) lane: Lane,
    /// (report, record, counter kind, payload bytes), in send order; taken
    /// from the front as they resolve, so waiting can be interrupted.
    pub(super) reports: std::collections::VecDeque<(DeliveryFuture, Part, Sent, u64)>,
    /// Successful reports seen so far (counter kind, payload bytes).
    pub(super) counted: Vec<(Sent, u64)>,
    /// Failed deliveries, and records librdkafka would not even take.
    pub(super) failures: Vec<Failure>,
    /// Every record of the batch (an annotation with its image as two).
    pub(super) parts: Vec<Part>,
    /// `replicate` (or `replicate_live`) cursor after this batch, if it
    /// holds records.
    pub(super) records_end: Option<u64>,
    /// `replicate_gaps` cursor after this batch, if it holds gap records.
    pub(super) gaps_end: Option<u64>,
    /// Sampled image bytes in the batch (released once it settles).
    pub(super) image_bytes: usize,
    /// Records (not chunks) in the batch.
    pub(super) records: usize,
    /// When it was handed to librdkafka.
    pub(super) sent_at: std::time::Instant,
}

impl Replicate {
    /// The next annotations and dead letters in `[from, to)`, merged in
    /// sequence order; `to` never passes the detect cursor: a dead letter
    /// written at intake waits for the frames before it to be annotated, so
    /// the cursor cannot jump over them. Sampled images are read while
    /// their bytes stay under `image_budget` (at least one record is
    /// returned).
    pub(super) fn next_records(&self, from: u64, to: u64, image_budget: usize) -> Result<Vec<Out>, ReplicateError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let n = BATCH;
        let anns = self.log.read_blobs(Area::Annotations, from, to, n)?;
        let dead = self.log.read_blobs(Area::DeadLetters, from, to, n)?;
        let mut out = Vec::with_capacity(n);
        let mut image_bytes = 0usize;
        let (mut a, mut d) = (anns.into_iter().peekable(), dead.into_iter().peekable());
        while out.len() < n && image_bytes < image_budget.max(1) {
            let take_a = match (a.peek(), d.peek()) {
                (Some((sa, _)), Some((sd, _))) => sa < sd,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_a {
                let Some((seq, json)) = a.next() else { break };
                match super::head::parse(&json) {
                    Ok(fa) => {
                        // With the claim check on, images go by their own lane.
                        let ours = fa.sampled && self.cfg.claim_check.is_none();
                        let image = if ours { self.log.read_area_frame(Area::Images, seq)? } else { None };
                        image_bytes += image.as_ref().map_or(0, |i| i.payload.len());
                        out.push(Out::Annotation {
                            seq,
                            camera: fa.camera,
                            frame_id: fa.frame_id,
                            model: format!("{}@{}", fa.annotation.model.name, fa.annotation.model.hash),
                            json,
                            image,
                        });
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "annotation record does not parse; sent as is");
                        out.push(Out::Annotation {
                            seq,
                            camera: String::new(),
                            frame_id: self.log.frame_id(seq),
                            model: String::new(),
                            json,
                            image: None,
                        });
                    }
                }
            } else {
                let Some((seq, body)) = d.next() else { break };
                let frame_id = self.log.frame_id(seq);
                let (camera, json) = match DeadLetter::decode(&body) {
                    Ok((dl, _)) => {
                        let mut v = serde_json::to_value(&dl).unwrap_or_default();
                        v["frame_id"] = serde_json::Value::String(frame_id.clone());
                        v["gateway_id"] = serde_json::Value::String(self.log.gateway_id().to_owned());
                        (dl.camera.unwrap_or_default(), serde_json::to_vec(&v).unwrap_or_default())
                    }
                    Err(e) => (String::new(), format!("{{\"frame_id\":{frame_id:?},\"error\":{e:?}}}").into_bytes()),
                };
                out.push(Out::DeadLetter { seq, camera, frame_id, json });
            }
        }
        Ok(out)
    }

    /// Hands a batch to librdkafka, in sequence order, and returns what to
    /// await. Each record's payload is copied by librdkafka, so the batch's
    /// memory is freed here. Backfill records carry header `lane =
    /// backfill`.
    pub(super) async fn produce(&self, lane: Lane, records: Vec<Out>, gaps: Vec<(u64, GapRecord)>) -> Pending {
        let mut p = Pending {
            lane,
            reports: VecDeque::new(),
            counted: Vec::new(),
            failures: Vec::new(),
            parts: Vec::with_capacity(records.len() + gaps.len()),
            records_end: records.last().map(|r| r.seq() + 1),
            gaps_end: gaps.last().map(|(id, _)| id + 1),
            image_bytes: 0,
            records: records.len() + gaps.len(),
            sent_at: std::time::Instant::now(),
        };
        let h = |k: &'static str, v: &str, hs: OwnedHeaders| hs.insert(Header { key: k, value: Some(v) });
        let lane_of = |hs: OwnedHeaders| {
            if lane == Lane::Backfill {
                with_header(header::LANE, header::BACKFILL, hs)
            } else {
                hs
            }
        };
        let cfg = &self.cfg;
        for r in &records {
            match r {
                Out::Annotation { seq, camera, frame_id, model, json, image } => {
                    let part = Part::Annotation(*seq);
                    p.parts.push(part);
                    let headers = lane_of(annotation_headers(frame_id, model));
                    match enqueue_yielding(&self.producer, &cfg.annotations_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push_back((f, part, Sent::Annotation, json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.annotations_topic, &e)),
                    }
                    if let Some(img) = image {
                        let part = Part::Image(*seq);
                        p.parts.push(part);
                        p.image_bytes += img.payload.len();
                        let (sent, failed) = self.enqueue_chunks(*seq, frame_id, img, lane == Lane::Backfill).await;
                        p.reports.extend(sent.into_iter().map(|(f, kind, n)| (f, part, kind, n)));
                        p.failures.extend(failed);
                    }
                }
                Out::DeadLetter { seq, camera, frame_id, json } => {
                    let part = Part::DeadLetter(*seq);
                    p.parts.push(part);
                    let headers = lane_of(h(header::FRAME_ID, frame_id, OwnedHeaders::new()));
                    match enqueue_yielding(&self.producer, &cfg.dead_letters_topic, camera, json, headers).await {
                        Ok(f) => p.reports.push_back((f, part, Sent::DeadLetter, json.len() as u64)),
                        Err(e) => p.failures.push(Failure::new(part, &cfg.dead_letters_topic, &e)),
                    }
                }
            }
        }
        for (id, g) in &gaps {
            let part = Part::Gap(*id);
            p.parts.push(part);
            let json = serde_json::to_vec(g).unwrap_or_default();
            let headers = h(header::REASON, g.reason.name(), OwnedHeaders::new());
            match enqueue_yielding(&self.producer, &cfg.gaps_topic, &g.gateway_id, &json, headers).await {
                Ok(f) => p.reports.push_back((f, part, Sent::Gap, json.len() as u64)),
                Err(e) => p.failures.push(Failure::new(part, &cfg.gaps_topic, &e)),
            }
        }
        p
    }

    /// Hands the chunks of the sampled image of frame `seq` to
    /// librdkafka, in order (header `lane = backfill` if `backfill`): the
    /// reports of those it took and, if it refused one, the failure (the
    /// chunks after it are not sent).
    pub(super) async fn enqueue_chunks(
        &self,
        seq: u64,
        frame_id: &str,
        img: &FrameRecord,
        backfill: bool,
    ) -> (Vec<(DeliveryFuture, Sent, u64)>, Option<Failure>) {
        let cfg = &self.cfg;
        let part = Part::Image(seq);
        let sha256 = hex::encode(Sha256::digest(&img.payload));
        let camera = img.camera.as_str();
        let head = ImageHead { frame_id, camera, content_type: &img.content_type, sha256: &sha256 };
        let parts = chunks(&img.payload, cfg.chunk_bytes as usize);
        let count = parts.len().to_string();
        let mut sent = Vec::with_capacity(parts.len());
        for (i, chunk) in parts.iter().enumerate() {
            let mut headers = chunk_headers(&head, i, &count);
            if backfill {
                headers = with_header(header::LANE, header::BACKFILL, headers);
            }
            let kind = if i + 1 == parts.len() { Sent::Image } else { Sent::Chunk };
            match enqueue_yielding(&self.producer, &cfg.images_topic, camera, chunk, headers).await {
                Ok(f) => sent.push((f, kind, chunk.len() as u64)),
                Err(e) => return (sent, Some(Failure::new(part, &cfg.images_topic, &e))),
            }
        }
        (sent, None)
    }

    /// The topic a record goes to.
    fn topic(&self, part: Part) -> &str {
        match part {
            Part::Annotation(_) => &self.cfg.annotations_topic,
            Part::Image(_) => &self.cfg.images_topic,
            Part::DeadLetter(_) => &self.cfg.dead_letters_topic,
            Part::Gap(_) => &self.cfg.gaps_topic,
        }
    }

    /// Waits for every delivery report of a batch. On success counts it;
    /// otherwise returns every failed delivery (an image counts once, for
    /// all its chunks). Cancel-safe: reports are taken from the batch as
    /// they resolve, so a wait given up is resumed by the next call.
    pub(super) async fn settle(&self, p: &mut Pending) -> Result<(), Vec<Failure>> {
        while let Some(front) = p.reports.front_mut() {
            let result = (&mut front.0).await;
            let Some((_, part, kind, bytes)) = p.reports.pop_front() else { break };
            let error = match result {
                Ok(()) => {
                    p.counted.push((kind, bytes));
                    continue;
                }
                Err(KafkaError::Canceled) => Failure {
                    part,
                    topic: self.topic(part).to_owned(),
                    code: None,
                    error: "delivery report lost".into(),
                },
                Err(e) => Failure::new(part, self.topic(part), &e),
            };
            if !p.failures.iter().any(|x| x.part == part) {
                p.failures.push(error);
            }
        }
        if !p.failures.is_empty() {
            return Err(std::mem::take(&mut p.failures));
        }
        for (kind, bytes) in p.counted.drain(..) {
            self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            let c = match kind {
                Sent::Annotation => &self.stats.annotations,
                Sent::Image => {
                    self.stats.chunks.fetch_add(1, Ordering::Relaxed);
                    &self.stats.images
                }
                Sent::Chunk => &self.stats.chunks,
                Sent::DeadLetter => &self.stats.dead_letters,
                Sent::Gap => &self.stats.gaps,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
