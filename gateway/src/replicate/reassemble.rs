//! Reassembling sampled images from `vision.images`.
//!
//! Owns the consumer side of image chunking: a consumer group reads the
//! topic, collects the chunks of each `frame_id` (any order, duplicates
//! allowed), checks the sha256 of the whole image, and writes
//! `<out>/<camera>/<frame_id>.<ext>`. A frame id already written is a
//! duplicate and is skipped. Offsets are committed only below the oldest
//! image still incomplete in each partition, so a restart loses nothing.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a reassembly run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Images written.
    pub written: Vec<PathBuf>,
    /// Images already written before (same `frame_id`).
    pub duplicates: u64,
    /// Images whose sha256 did not match (not written).
    pub corrupt: Vec<String>,
    /// Images with chunks still missing when the run ended.
    pub incomplete: Vec<String>,
    /// Messages without the chunk headers.
    pub malformed: u64,
}

#[derive(Default)]
struct Partial {
    camera: String,
    content_type: String,
    sha256: String,
    count: usize,
    chunks: BTreeMap<usize, Vec<u8>>,
    first_offset: (i32, i64),
}

fn header(m: &impl Message, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter().find(|x| x.key == key).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => "bin",
    }
}

fn safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-:".contains(c) { c } else { '_' }).collect()
}

/// Consumes `topic` with `group` from `brokers` until no message arrived
/// for `idle`, writing whole images under `out`.
///
/// # Errors
/// Consumer or file-system errors.
pub async fn reassemble(brokers: &str, topic: &str, group: &str, out: &Path, idle: Duration) -> anyhow::Result<Report> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.message.max.bytes", "5242880")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut report = Report::default();
    let mut partial: HashMap<String, Partial> = HashMap::new();
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    // The idle clock starts once the group has given us partitions.
    let started = std::time::Instant::now();
    let mut assigned = false;
    loop {
        let wait = if assigned { idle } else { Duration::from_millis(200) };
        let msg = match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) if assigned => break,
            Err(_) => {
                assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "no partition of {topic} was assigned within 60 s"
                );
                continue;
            }
            Ok(r) => {
                assigned = true;
                r?
            }
        };
        let (part, offset) = (msg.partition(), msg.offset());
        next_offset.insert(part, offset + 1);
        let (Some(frame_id), Some(idx), Some(count)) = (
            header(&msg, "frame_id"),
            header(&msg, "chunk_index").and_then(|v| v.parse::<usize>().ok()),
            header(&msg, "chunk_count").and_then(|v| v.parse::<usize>().ok()),
        ) else {
            report.malformed += 1;
            continue;
        };
        let p = partial.entry(frame_id.clone()).or_insert_with(|| Partial {
            camera: header(&msg, "camera").unwrap_or_default(),
            content_type: header(&msg, "content_type").unwrap_or_default(),
            sha256: header(&msg, "sha256").unwrap_or_default(),
            count,
            first_offset: (part, offset),
            ..Partial::default()
        });
        p.chunks.insert(idx, msg.payload().unwrap_or_default().to_vec());
        if p.chunks.len() == p.count {
            let Some(p) = partial.remove(&frame_id) else { continue };
            let bytes: Vec<u8> = p.chunks.into_values().flatten().collect();
            let dir = out.join(safe(&p.camera));
            let file = dir.join(format!("{}.{}", safe(&frame_id), extension(&p.content_type)));
            if file.exists() {
                report.duplicates += 1;
            } else if hex::encode(Sha256::digest(&bytes)) != p.sha256 {
                report.corrupt.push(frame_id);
            } else {
                std::fs::create_dir_all(&dir)?;
                let tmp = file.with_extension("part");
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &file)?;
                report.written.push(file);
            }
        }
        // Commit below the oldest incomplete image of each partition.
        let mut tpl = TopicPartitionList::new();
        for (part, next) in &next_offset {
            let low =
                partial.values().filter(|p| p.first_offset.0 == *part).map(|p| p.first_offset.1).min().unwrap_or(*next);
            tpl.add_partition_offset(topic, *part, rdkafka::Offset::Offset(low))?;
        }
        consumer.commit(&tpl, CommitMode::Async)?;
    }
    report.incomplete = partial.into_keys().collect();
    report.incomplete.sort();
    Ok(report)
}
