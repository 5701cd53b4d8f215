//! Reassembling sampled images from `vision.images`.
//!
//! Owns the consumer side of image chunking: a consumer group reads the
//! topic, collects the chunks of each `frame_id` (any order, duplicates
//! allowed), checks the sha256 of the whole image, and writes
//! `<out>/<camera>/<frame_id>.<ext>`. A frame id already written is a
//! duplicate and is skipped. Offsets are committed only below the oldest
//! image still incomplete in each partition, so a restart loses nothing.
//!
//! # Promises, whatever the headers say
//!
//! - **Paths stay under `--out`**: camera and frame id are reduced to
//!   `A-Z a-z 0-9 . _ - :`, at most 128 characters, and never start with a
//!   dot (so `..` becomes `__`).
//! - **Consistency**: a chunk whose index is not below its count, whose
//!   count is 0 or over [`Limits::max_chunks`], or whose count, sha256 or
//!   camera differs from the image's first chunk makes the image
//!   *inconsistent*: reported, its chunks freed, never written.
//! - **Bounded memory**: partial images hold at most
//!   [`Limits::max_partial_bytes`]; past that the oldest partial is given
//!   up. A partial older than [`Limits::max_age`] is given up too. Both are
//!   reported as *expired*, and stop holding back the committed offset.
//! - **References are followed** (header `claim_check = s3`, the claim
//!   check): the object is downloaded from the store the run was given (at
//!   most [`MAX_REFERENCED_BYTES`]), its sha256 checked against the
//!   reference, and written like a chunked image. A reference that cannot
//!   be resolved now (no store given, the store unreachable) stops the run
//!   with an error before its offset is committed, so a later run takes it
//!   again; one whose object is missing or differs is reported *corrupt*.

mod follow;

use super::Store;
use crate::records::header as h;
use follow::follow;
pub use follow::MAX_REFERENCED_BYTES;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// Images whose chunks contradict each other (index out of range, count
    /// or sha256 changing): not written.
    pub inconsistent: Vec<String>,
    /// Images given up while incomplete: too old, or the oldest when the
    /// partial images took more than their byte budget.
    pub expired: Vec<String>,
    /// Messages without the chunk headers.
    pub malformed: u64,
    /// Images downloaded from the object store (claim check references).
    pub referenced: u64,
}

impl std::fmt::Display for Report {
    /// One line of counts, then a line per image that needs a look.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let folders: std::collections::BTreeSet<_> =
            self.written.iter().filter_map(|p| p.parent().and_then(Path::parent)).collect();
        let to = folders.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        writeln!(
            f,
            "{} images written{}, {} duplicates skipped, {} corrupt, {} inconsistent, {} expired, {} incomplete, {} malformed messages",
            self.written.len(),
            if to.is_empty() { String::new() } else { format!(" to {to}") },
            self.duplicates,
            self.corrupt.len(),
            self.inconsistent.len(),
            self.expired.len(),
            self.incomplete.len(),
            self.malformed
        )?;
        let lists = [
            ("corrupt (sha256 mismatch)", &self.corrupt),
            ("inconsistent (chunk headers contradict each other)", &self.inconsistent),
            ("expired (given up incomplete)", &self.expired),
            ("incomplete", &self.incomplete),
        ];
        for (what, ids) in lists {
            for id in ids {
                writeln!(f, "  {what}: {id}")?;
            }
        }
        Ok(())
    }
}

/// Bounds of the reassembler.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes all partial images may hold together.
    pub max_partial_bytes: usize,
    /// A partial image older than this is given up.
    pub max_age: Duration,
    /// Most chunks an image may claim.
    pub max_chunks: usize,
}

impl Default for Limits {
    /// 256 MiB, 10 minutes, 1024 chunks (900 MiB at the default chunk size).
    fn default() -> Self {
        Self { max_partial_bytes: 256 << 20, max_age: Duration::from_secs(600), max_chunks: 1024 }
    }
}

/// One message of the images topic, as the assembler sees it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Partition and offset.
    pub at: (i32, i64),
    /// `frame_id` header.
    pub frame_id: String,
    /// `camera` header.
    pub camera: String,
    /// `content_type` header.
    pub content_type: String,
    /// `sha256` header (of the whole image).
    pub sha256: String,
    /// `chunk_index` header.
    pub index: usize,
    /// `chunk_count` header.
    pub count: usize,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// A whole image whose sha256 matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Relative path under the output folder (safe, see the module doc).
    pub path: PathBuf,
    /// The image.
    pub bytes: Vec<u8>,
    /// Its frame id.
    pub frame_id: String,
}

/// What one chunk led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored; the image still misses chunks.
    Pending,
    /// The image is whole and its sha256 matched.
    Whole(Image),
    /// The image is whole but its sha256 did not match.
    Corrupt(String),
    /// The chunk contradicts the image's other chunks.
    Inconsistent(String),
}

struct Partial {
    camera: String,
    content_type: String,
    sha256: String,
    count: usize,
    chunks: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
    first_offset: (i32, i64),
    since: Instant,
}

/// Collects chunks into images within [`Limits`]. Pure: no I/O.
pub struct Assembler {
    limits: Limits,
    partial: HashMap<String, Partial>,
    /// Frame ids found inconsistent, so their later chunks are dropped too
    /// (bounded by the budget's count of images).
    bad: HashMap<String, Instant>,
    bytes: usize,
}

/// A path component from an outside string: only `A-Z a-z 0-9 . _ - :`,
/// at most 128 characters, never empty, never starting with a dot.
pub fn safe_name(s: &str) -> String {
    let mut out: String =
        s.chars().take(128).map(|c| if c.is_ascii_alphanumeric() || "._-:".contains(c) { c } else { '_' }).collect();
    let dots = out.len() - out.trim_start_matches('.').len();
    out.replace_range(..dots, &"_".repeat(dots));
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => "bin",
    }
}

/// Where an image is written under `--out`: `<camera>/<frame_id>.<ext>`,
/// each part made safe.
fn image_path(camera: &str, frame_id: &str, content_type: &str) -> PathBuf {
    Path::new(&safe_name(camera)).join(format!("{}.{}", safe_name(frame_id), extension(content_type)))
}

impl Assembler {
    /// An empty assembler.
    pub fn new(limits: Limits) -> Self {
        Self { limits, partial: HashMap::new(), bad: HashMap::new(), bytes: 0 }
    }

    /// Bytes held by partial images.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Takes one chunk. `expired` receives the frame ids given up to stay
    /// within the byte budget.
    pub fn offer(&mut self, c: Chunk, now: Instant, expired: &mut Vec<String>) -> Outcome {
        if self.bad.contains_key(&c.frame_id) {
            return Outcome::Inconsistent(c.frame_id);
        }
        let valid = c.count >= 1 && c.count <= self.limits.max_chunks && c.index < c.count;
        let fits = self.partial.get(&c.frame_id).is_none_or(|p| {
            p.count == c.count && p.sha256 == c.sha256 && p.camera == c.camera && p.content_type == c.content_type
        });
        if !valid || !fits {
            if let Some(p) = self.partial.remove(&c.frame_id) {
                self.bytes -= p.bytes;
            }
            if self.bad.len() >= 4096 {
                // Forget the oldest half: only a bound, not a record.
                let mut ages: Vec<Instant> = self.bad.values().copied().collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                self.bad.retain(|_, t| *t > cut);
            }
            self.bad.insert(c.frame_id.clone(), now);
            return Outcome::Inconsistent(c.frame_id);
        }
        let p = self.partial.entry(c.frame_id.clone()).or_insert_with(|| Partial {
            camera: c.camera.clone(),
            content_type: c.content_type.clone(),
            sha256: c.sha256.clone(),
            count: c.count,
            chunks: BTreeMap::new(),
            bytes: 0,
            first_offset: c.at,
            since: now,
        });
        if !p.chunks.contains_key(&c.index) {
            p.bytes += c.payload.len();
            self.bytes += c.payload.len();
            p.chunks.insert(c.index, c.payload);
        }
        if p.chunks.len() == p.count {
            let Some(p) = self.partial.remove(&c.frame_id) else { return Outcome::Pending };
            self.bytes -= p.bytes;
            let bytes: Vec<u8> = p.chunks.into_values().flatten().collect();
            if hex::encode(Sha256::digest(&bytes)) != p.sha256 {
                return Outcome::Corrupt(c.frame_id);
            }
            let path = image_path(&p.camera, &c.frame_id, &p.content_type);
            return Outcome::Whole(Image { path, bytes, frame_id: c.frame_id });
        }
        // Over budget: give up the oldest partials (not the one just fed
        // unless it is the oldest).
        while self.bytes > self.limits.max_partial_bytes {
            let Some(oldest) = self.partial.iter().min_by_key(|(_, p)| p.since).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(p) = self.partial.remove(&oldest) {
                self.bytes -= p.bytes;
            }
            expired.push(oldest);
        }
        Outcome::Pending
    }

    /// Gives up the partial images older than the age limit.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let max_age = self.limits.max_age;
        let old: Vec<String> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) > max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            if let Some(p) = self.partial.remove(k) {
                self.bytes -= p.bytes;
            }
        }
        old
    }

    /// The lowest offset still needed in `partition` (first chunk of the
    /// oldest partial image there), if any.
    pub fn low_water(&self, partition: i32) -> Option<i64> {
        self.partial.values().filter(|p| p.first_offset.0 == partition).map(|p| p.first_offset.1).min()
    }

    /// Frame ids of the partial images.
    pub fn incomplete(&self) -> Vec<String> {
        let mut v: Vec<String> = self.partial.keys().cloned().collect();
        v.sort();
        v
    }
}

fn header(m: &impl Message, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter().find(|x| x.key == key).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Consumes `topic` with `group` from `brokers` until no message arrived
/// for `idle`, writing whole images under `out`, within default [`Limits`].
///
/// # Errors
/// Consumer or file-system errors.
pub async fn reassemble(brokers: &str, topic: &str, group: &str, out: &Path, idle: Duration) -> anyhow::Result<Report> {
    reassemble_with(&Source { brokers, topic, group, store: None }, out, idle, Limits::default()).await
}

/// The chunk a message carries, `None` without the chunk headers.
fn chunk_of(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Chunk> {
    Some(Chunk {
        at: (msg.partition(), msg.offset()),
        frame_id: header(msg, h::FRAME_ID)?,
        camera: header(msg, h::CAMERA).unwrap_or_default(),
        content_type: header(msg, h::CONTENT_TYPE).unwrap_or_default(),
        sha256: header(msg, h::SHA256).unwrap_or_default(),
        index: header(msg, h::CHUNK_INDEX)?.parse::<usize>().ok()?,
        count: header(msg, h::CHUNK_COUNT)?.parse::<usize>().ok()?,
        payload: msg.payload().unwrap_or_default().to_vec(),
    })
}

/// Writes a whole image under `out` (to a `.part` file, then renamed);
/// `None` if it was written before (a duplicate).
fn write_whole(out: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<Option<PathBuf>> {
    let file = out.join(path);
    if file.exists() {
        return Ok(None);
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("part");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &file)?;
    Ok(Some(file))
}

/// Where the images are read from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Kafka bootstrap servers.
    pub brokers: &'a str,
    /// The images topic.
    pub topic: &'a str,
    /// The consumer group (offsets are committed there).
    pub group: &'a str,
    /// The claim check's store, to follow references.
    pub store: Option<&'a Store>,
}

/// [`reassemble`] with explicit limits.
///
/// # Errors
/// Consumer or file-system errors.
pub async fn reassemble_with(src: &Source<'_>, out: &Path, idle: Duration, limits: Limits) -> anyhow::Result<Report> {
    let topic = src.topic;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", src.brokers)
        .set("group.id", src.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.message.max.bytes", "5242880")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut report = Report::default();
    let mut asm = Assembler::new(limits);
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    // The idle clock starts once the group has given us partitions.
    let started = Instant::now();
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
        let now = Instant::now();
        let mut expired = asm.expire(now);
        let outcome = if header(&msg, h::CLAIM_CHECK).is_some() {
            let o = follow(&msg, src.store).await?;
            report.referenced += u64::from(matches!(o, Outcome::Whole(_)));
            o
        } else {
            let Some(chunk) = chunk_of(&msg) else {
                report.malformed += 1;
                continue;
            };
            asm.offer(chunk, now, &mut expired)
        };
        match outcome {
            Outcome::Pending => {}
            Outcome::Corrupt(id) => report.corrupt.push(id),
            Outcome::Inconsistent(id) => {
                if !report.inconsistent.contains(&id) {
                    report.inconsistent.push(id);
                }
            }
            Outcome::Whole(img) => match write_whole(out, &img.path, &img.bytes)? {
                Some(file) => report.written.push(file),
                None => report.duplicates += 1,
            },
        }
        for id in expired {
            tracing::warn!(frame_id = %id, "image given up incomplete (too old, or partial images over their byte budget)");
            report.expired.push(id);
        }
        // Commit below the oldest incomplete image of each partition.
        let mut tpl = TopicPartitionList::new();
        for (part, next) in &next_offset {
            let low = asm.low_water(*part).unwrap_or(*next);
            tpl.add_partition_offset(topic, *part, rdkafka::Offset::Offset(low))?;
        }
        consumer.commit(&tpl, CommitMode::Async)?;
    }
    report.incomplete = asm.incomplete();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, camera: &str, bytes: &[u8], chunk: usize) -> Vec<Chunk> {
        let sha = hex::encode(Sha256::digest(bytes));
        let parts: Vec<&[u8]> = bytes.chunks(chunk).collect();
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| Chunk {
                at: (0, i as i64),
                frame_id: id.into(),
                camera: camera.into(),
                content_type: "image/jpeg".into(),
                sha256: sha.clone(),
                index: i,
                count: parts.len(),
                payload: p.to_vec(),
            })
            .collect()
    }

    #[test]
    fn names_from_headers_stay_inside_the_output_folder() {
        assert_eq!(safe_name(".."), "__");
        assert_eq!(safe_name("."), "_");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("../../etc/passwd"), "___.._etc_passwd");
        assert_eq!(safe_name("gw:12"), "gw:12");
        assert_eq!(safe_name(&"a".repeat(500)).len(), 128);
        let mut a = Assembler::new(Limits::default());
        let mut out = None;
        for c in image("../../x", "..", b"hello world", 4) {
            if let Outcome::Whole(img) = a.offer(c, Instant::now(), &mut Vec::new()) {
                out = Some(img);
            }
        }
        let img = out.unwrap();
        assert_eq!(img.path, Path::new("__").join("___.._x.jpg"));
        assert!(img.path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
    }

    #[test]
    fn chunks_in_any_order_with_duplicates_make_the_image() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut chunks = image("gw:1", "cam", &bytes, 300);
        chunks.reverse();
        chunks.insert(1, chunks[0].clone());
        let mut a = Assembler::new(Limits::default());
        let outcomes: Vec<Outcome> = chunks.into_iter().map(|c| a.offer(c, Instant::now(), &mut Vec::new())).collect();
        assert!(matches!(outcomes.last(), Some(Outcome::Whole(i)) if i.bytes == bytes));
        assert_eq!(a.held_bytes(), 0);
    }

    #[test]
    fn contradicting_chunks_make_the_image_inconsistent_and_free_it() {
        let mut a = Assembler::new(Limits::default());
        let mut c = image("gw:2", "cam", b"0123456789", 4);
        let now = Instant::now();
        assert_eq!(a.offer(c[0].clone(), now, &mut Vec::new()), Outcome::Pending);
        c[1].count = 7;
        assert_eq!(a.offer(c[1].clone(), now, &mut Vec::new()), Outcome::Inconsistent("gw:2".into()));
        assert_eq!(a.held_bytes(), 0);
        // Later chunks of it are dropped too.
        assert_eq!(a.offer(c[2].clone(), now, &mut Vec::new()), Outcome::Inconsistent("gw:2".into()));
        // Index beyond count, zero count, too many chunks.
        let mut d = image("gw:3", "cam", b"ab", 1);
        d[0].index = 2;
        assert!(matches!(a.offer(d[0].clone(), now, &mut Vec::new()), Outcome::Inconsistent(_)));
        let mut e = image("gw:4", "cam", b"ab", 1);
        e[0].count = 0;
        assert!(matches!(a.offer(e[0].clone(), now, &mut Vec::new()), Outcome::Inconsistent(_)));
        let mut f = image("gw:5", "cam", b"ab", 1);
        f[0].count = 1_000_000;
        assert!(matches!(a.offer(f[0].clone(), now, &mut Vec::new()), Outcome::Inconsistent(_)));
        // A wrong sha256 over consistent chunks is corrupt.
        let mut g = image("gw:6", "cam", b"abcd", 2);
        for x in &mut g {
            x.sha256 = "00".into();
        }
        let last = g.into_iter().map(|x| a.offer(x, now, &mut Vec::new())).last();
        assert_eq!(last, Some(Outcome::Corrupt("gw:6".into())));
    }

    #[test]
    fn lying_counts_cannot_hold_memory_or_offsets_forever() {
        let limits = Limits { max_partial_bytes: 1000, max_age: Duration::from_secs(60), max_chunks: 1024 };
        let mut a = Assembler::new(limits);
        let t0 = Instant::now();
        let mut expired = Vec::new();
        // Each image claims 1000 chunks and sends one of 400 bytes.
        for i in 0..5 {
            let mut c = image(&format!("gw:{i}"), "cam", &[i as u8; 400], 400).remove(0);
            c.count = 1000;
            c.at = (0, i);
            assert_eq!(a.offer(c, t0 + Duration::from_secs(i as u64), &mut expired), Outcome::Pending);
            assert!(a.held_bytes() <= 1000);
        }
        assert_eq!(expired, vec!["gw:0", "gw:1", "gw:2"], "the oldest go first");
        assert_eq!(a.low_water(0), Some(3), "given-up images no longer hold back the commit");
        assert_eq!(a.expire(t0 + Duration::from_secs(64)), vec!["gw:3".to_owned()]);
        assert_eq!(a.incomplete(), vec!["gw:4".to_owned()]);
    }

    #[test]
    fn five_hundred_never_completed_images_stay_within_the_budget() {
        let limits = Limits { max_partial_bytes: 1 << 20, max_age: Duration::from_secs(600), max_chunks: 1024 };
        let mut a = Assembler::new(limits);
        let t0 = Instant::now();
        let mut expired = Vec::new();
        for i in 0..500u64 {
            // Each claims 1000 chunks of 64 KiB and sends 3 of them.
            for k in 0..3usize {
                let c = Chunk {
                    at: (0, (i * 3) as i64 + k as i64),
                    frame_id: format!("gw:{i}"),
                    camera: "cam".into(),
                    content_type: "image/jpeg".into(),
                    sha256: "ff".into(),
                    index: k,
                    count: 1000,
                    payload: vec![i as u8; 64 << 10],
                };
                assert_eq!(a.offer(c, t0 + Duration::from_millis(i), &mut expired), Outcome::Pending);
                assert!(a.held_bytes() <= limits.max_partial_bytes, "{} bytes held", a.held_bytes());
            }
        }
        assert!(a.incomplete().len() <= 6, "{} partial images held", a.incomplete().len());
        assert!(expired.len() >= 494, "{} given up", expired.len());
        // Whatever is held, an hour later nothing is.
        let held = a.incomplete().len();
        assert_eq!(a.expire(t0 + Duration::from_secs(3600)).len(), held);
        assert_eq!(a.held_bytes(), 0);
    }
}
