//! The replicate stage against librdkafka's mock cluster (real loopback
//! TCP listeners in this process): what is produced, with which headers,
//! chunking and reassembly, what happens while the broker is down, and a
//! record it refuses as too large (injected `MSG_SIZE_TOO_LARGE`).
//! The end-to-end suite repeats the main path against a real broker.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway::config::{Config, ProcessEnv};
use gateway::log::{Cursor, DurableLog, LogOptions, WhenFull};
use gateway::records::SampleReason;
use gateway::records::{Area, FrameRecord};
use gateway::records::{FrameAnnotation, SCHEMA_VERSION};
use gateway::replicate::{producer, Replicate};
use inference::{Annotation, Item, ModelInfo};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use testkit::frames::noise;
use tokio_util::sync::CancellationToken;

const TOPICS: [&str; 4] = ["vision.annotations", "vision.images", "vision.gaps", "vision.dead-letters"];

fn config(brokers: &str) -> Config {
    let text = format!(
        "gateway_id = \"mock-gw\"\n[mqtt]\nbroker = \"127.0.0.1:1\"\n[replicate]\nbrokers = \"{brokers}\"\n\
         [replicate.librdkafka]\n\"message.timeout.ms\" = \"2000\"\n"
    );
    Config::parse(Path::new("mock.toml"), &text, &ProcessEnv).unwrap()
}

fn frame(camera: &str, i: u64, payload: Vec<u8>) -> FrameRecord {
    FrameRecord {
        camera: camera.into(),
        content_type: "image/jpeg".into(),
        received_at_ms: i,
        captured_at_ms: None,
        camera_seq: Some(i),
        payload,
    }
}

/// A log holding what detect would leave: gaps for dropped frames,
/// then 6 annotations (2 cameras) of which 2 sampled (one image of 3 MB),
/// and one dead letter in between.
fn filled_log(dir: &Path) -> (DurableLog, Vec<u8>) {
    {
        let mut o = LogOptions::new(dir, "mock-gw");
        // The smallest budget: 2.5 MiB for frames beside the index.
        o.max_bytes = 4 << 20;
        o.when_full = WhenFull::DropOldest;
        let small = DurableLog::open(o).unwrap();
        for i in 0..6 {
            small.append_frame(&frame("cam-a", i, vec![0; 600_000])).unwrap();
        }
        assert!(small.counts().gaps_written >= 1);
        let mut b = small.batch();
        b.set_cursor(Cursor::Detect, small.counts().next_seq);
        small.apply(b).unwrap();
    }
    let mut o = LogOptions::new(dir, "mock-gw");
    o.max_bytes = 256 << 20;
    let log = DurableLog::open(o).unwrap();
    let big = noise(3_000_000, 7);
    let mut b = log.batch();
    for i in 0..6u64 {
        let camera = if i % 2 == 0 { "cam-a" } else { "cam-b" };
        let payload = if i == 4 { big.clone() } else { noise(10_000, i) };
        let f = frame(camera, i, payload);
        let seq = log.append_frame(&f).unwrap().seq;
        if i == 2 {
            log.append_dead_letter(
                &gateway::records::DeadLetter {
                    topic: "cameras/cam-a/frames".into(),
                    camera: Some("cam-a".into()),
                    reason: gateway::records::QuarantineReason::NotAnImage,
                    size: 3,
                    received_at_ms: 0,
                    payload_kept: true,
                    camera_seq: None,
                    captured_at_ms: None,
                }
                .encode(Some(b"abc")),
            )
            .unwrap();
        }
        let sampled = (i == 1 || i == 4).then_some(SampleReason::EveryNth);
        let fa = FrameAnnotation {
            schema: SCHEMA_VERSION,
            frame_id: log.frame_id(seq),
            gateway_id: "mock-gw".into(),
            seq,
            camera: camera.into(),
            camera_seq: Some(i),
            captured_at_ms: None,
            received_at_ms: i,
            content_type: "image/jpeg".into(),
            frame_bytes: f.payload.len() as u64,
            sampled,
            annotation: Annotation {
                width: 640,
                height: 480,
                items: vec![Item::text(format!("SN{i}"), 0.9, [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])],
                error: None,
                ..Annotation::failed(ModelInfo::new("m", "1", "abc"), String::new())
            },
        };
        b.put_blob(Area::Annotations, seq, &serde_json::to_vec(&fa).unwrap());
        if sampled.is_some() {
            b.put_frame(Area::Images, seq, &f);
        }
    }
    b.set_cursor(Cursor::Detect, log.counts().next_seq);
    log.apply(b).unwrap();
    // As intake does before acknowledging: only durable records go up.
    log.flush_blocking().unwrap();
    (log, big)
}

fn consume(brokers: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("t-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.message.max.bytes", "5242880")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        while out.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("message").unwrap();
            out.push(m.detach());
        }
        out
    })
}

fn header(m: &rdkafka::message::OwnedMessage, k: &str) -> String {
    let h = m.headers().unwrap();
    h.iter().find(|x| x.key == k).map(|x| String::from_utf8_lossy(x.value.unwrap()).into_owned()).unwrap()
}

/// A mock cluster with the four topics.
fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 1, 1).unwrap();
    }
    cluster
}

/// The replicate stage running on its own runtime against `brokers`.
struct Running {
    rt: tokio::runtime::Runtime,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), gateway::replicate::ReplicateError>>,
    stats: std::sync::Arc<gateway::replicate::ReplicateStats>,
}

impl Running {
    fn start(log: &DurableLog, brokers: &str) -> Self {
        Self::start_with(log, &config(brokers))
    }

    fn start_with(log: &DurableLog, cfg: &Config) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let _guard = rt.enter();
        let stop = CancellationToken::new();
        let stage = Replicate::new(log.clone(), cfg.replicate.clone(), producer(&cfg.replicate).unwrap());
        let stats = stage.stats();
        let task = rt.spawn(stage.run(stop.clone()));
        Self { rt, stop, task, stats }
    }

    fn stop(self) -> tokio::runtime::Runtime {
        self.stop.cancel();
        self.rt.block_on(self.task).unwrap().unwrap();
        self.rt
    }
}

fn wait_until(rt: &tokio::runtime::Runtime, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        while !f() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn annotations_images_dead_letters_and_gaps_reach_kafka_then_free_the_log() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (log, big) = filled_log(dir.path());
    let end = log.counts().next_seq;
    let gaps = log.counts().gaps_written;
    let running = Running::start(&log, &brokers);
    let stats = running.stats.clone();
    wait_until(&running.rt, "everything acknowledged", || {
        log.cursor(Cursor::Replicate).unwrap() == end && log.cursor(Cursor::ReplicateGaps).unwrap() == gaps
    });
    let rt = running.stop();

    // Delivered data is freed locally.
    for a in [Area::Annotations, Area::Images, Area::DeadLetters, Area::Gaps] {
        assert_eq!(log.area_stats(a).records, 0, "{a:?} freed");
    }
    assert_eq!(stats.annotations.load(Ordering::Relaxed), 6);
    assert_eq!(stats.images.load(Ordering::Relaxed), 2);

    let anns = consume(&brokers, "vision.annotations", 6);
    let mut per_cam: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for m in &anns {
        let fa: FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(header(m, "frame_id"), fa.frame_id);
        assert_eq!(header(m, "schema"), SCHEMA_VERSION.to_string());
        assert_eq!(header(m, "model"), "m@abc");
        assert_eq!(std::str::from_utf8(m.key().unwrap()).unwrap(), fa.camera);
        per_cam.entry(fa.camera).or_default().push(fa.camera_seq.unwrap());
    }
    assert_eq!(per_cam["cam-a"], vec![0, 2, 4]);
    assert_eq!(per_cam["cam-b"], vec![1, 3, 5]);

    // 3 MB at 900 KiB chunks = 4 chunks, plus the small sampled image.
    let imgs = consume(&brokers, "vision.images", 5);
    let big_chunks: Vec<_> = imgs.iter().filter(|m| header(m, "chunk_count") == "4").collect();
    assert_eq!(big_chunks.len(), 4);
    assert!(big_chunks.iter().all(|m| m.payload().unwrap().len() <= 900 << 10));
    assert_eq!(header(big_chunks[0], "sha256"), hex::encode(Sha256::digest(&big)));

    let out = tempfile::tempdir().unwrap();
    let report = rt
        .block_on(gateway::replicate::reassemble::reassemble(
            &brokers,
            "vision.images",
            "reasm",
            out.path(),
            Duration::from_secs(3),
        ))
        .unwrap();
    assert_eq!(report.written.len(), 2, "{report:?}");
    assert!(report.corrupt.is_empty() && report.incomplete.is_empty());
    let big_file = report.written.iter().find(|p| std::fs::metadata(p).unwrap().len() == 3_000_000).unwrap();
    assert_eq!(std::fs::read(big_file).unwrap(), big, "byte-identical");
    assert!(big_file.starts_with(out.path().join("cam-a")));
    // Consuming again with the same group finds nothing new: offsets were committed.
    let again = rt
        .block_on(gateway::replicate::reassemble::reassemble(
            &brokers,
            "vision.images",
            "reasm",
            out.path(),
            Duration::from_secs(2),
        ))
        .unwrap();
    assert!(again.written.is_empty() && again.duplicates == 0, "{again:?}");

    let dead = consume(&brokers, "vision.dead-letters", 1);
    let v: serde_json::Value = serde_json::from_slice(dead[0].payload().unwrap()).unwrap();
    assert_eq!(v["reason"], "not_an_image");
    assert_eq!(v["frame_id"], header(&dead[0], "frame_id"));
    let g = consume(&brokers, "vision.gaps", gaps as usize);
    let gv: serde_json::Value = serde_json::from_slice(g[0].payload().unwrap()).unwrap();
    assert_eq!(gv["reason"], "frame_dropped_for_space");
}

#[test]
fn while_the_broker_is_down_nothing_is_lost_and_the_backlog_drains_when_it_returns() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = filled_log(dir.path());
    let end = log.counts().next_seq;
    let before = log.area_stats(Area::Annotations);
    let running = Running::start(&log, &brokers);
    let stats = running.stats.clone();
    wait_until(&running.rt, "a failed batch", || stats.retries.load(Ordering::Relaxed) >= 1);
    assert_eq!(log.cursor(Cursor::Replicate).unwrap(), 0, "nothing acknowledged, cursor still");
    assert_eq!(log.area_stats(Area::Annotations), before, "the backlog is still on disk");
    assert!(!stats.connected.load(Ordering::Relaxed));

    cluster.broker_up(1).unwrap();
    wait_until(&running.rt, "the backlog drained", || log.cursor(Cursor::Replicate).unwrap() == end);
    running.stop();
    assert!(stats.connected.load(Ordering::Relaxed));
    assert_eq!(log.area_stats(Area::Annotations).records, 0);
    // At-least-once: every annotation arrived (duplicates possible from the failed attempts).
    let anns = consume(&brokers, "vision.annotations", 6);
    let ids: std::collections::BTreeSet<String> = anns.iter().map(|m| header(m, "frame_id")).collect();
    assert_eq!(ids.len(), 6);
}

/// Appends `n` frames with their annotations, as detect leaves them
/// (camera `cam-{i % 3}`, camera_seq `first + i / 3`), moves the detect
/// cursor past them and makes them durable.
fn annotate(log: &DurableLog, first: u64, n: u64) {
    let mut b = log.batch();
    for i in first..first + n {
        let camera = format!("cam-{}", i % 3);
        let f = frame(&camera, i / 3, noise(2_000, i));
        let seq = log.append_frame(&f).unwrap().seq;
        let fa = FrameAnnotation {
            schema: SCHEMA_VERSION,
            frame_id: log.frame_id(seq),
            gateway_id: "mock-gw".into(),
            seq,
            camera,
            camera_seq: Some(i / 3),
            captured_at_ms: None,
            received_at_ms: i,
            content_type: "image/jpeg".into(),
            frame_bytes: f.payload.len() as u64,
            sampled: None,
            annotation: Annotation {
                width: 640,
                height: 480,
                items: Vec::new(),
                error: None,
                ..Annotation::failed(ModelInfo::new("m", "1", "abc"), String::new())
            },
        };
        b.put_blob(Area::Annotations, seq, &serde_json::to_vec(&fa).unwrap());
    }
    b.set_cursor(Cursor::Detect, log.counts().next_seq);
    log.apply(b).unwrap();
    log.flush_blocking().unwrap();
}

/// A backlog is sent behind a live lane: records that arrive while it
/// drains overtake it, every record arrives, each lane keeps order per
/// camera, the backlog carries `lane = backfill`, and when it is sent the
/// lanes merge and the log is empty. The broker is held down while the
/// live records arrive, so the interleaving is the same on every run: the
/// 8 backlog batches in flight go first, then the live records, then the
/// rest of the backlog.
#[test]
fn new_records_overtake_a_backlog_which_follows_in_order_behind_them() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut o = LogOptions::new(dir.path(), "mock-gw");
    o.max_bytes = 256 << 20;
    let log = DurableLog::open(o).unwrap();
    annotate(&log, 0, 3000);
    cluster.broker_down(1).unwrap();
    let text = format!(
        "gateway_id = \"mock-gw\"\n[mqtt]\nbroker = \"127.0.0.1:1\"\n[replicate]\nbrokers = \"{brokers}\"\n\
         live_lane_after = 50\n"
    );
    let cfg = Config::parse(Path::new("mock.toml"), &text, &ProcessEnv).unwrap();
    let running = Running::start_with(&log, &cfg);
    let stats = running.stats.clone();
    wait_until(&running.rt, "the live lane opened", || stats.lanes_opened.load(Ordering::Relaxed) == 1);
    assert_eq!(log.cursor(Cursor::ReplicateLive).unwrap(), 3000, "the live lane starts at the end of the backlog");
    // Live records arrive while the uplink is still out (the backlog has
    // taken every slot in flight: no live record was coming).
    annotate(&log, 3000, 90);
    std::thread::sleep(Duration::from_millis(300));
    cluster.broker_up(1).unwrap();
    let end = log.counts().next_seq;
    wait_until(&running.rt, "everything sent and the lanes merged", || {
        log.cursor(Cursor::Replicate).unwrap() == end && !stats.live_lane.load(Ordering::Relaxed)
    });
    running.stop();
    assert!(log.cursor(Cursor::ReplicateLive).unwrap() <= end);
    assert_eq!(log.area_stats(Area::Annotations).records, 0, "every annotation freed");
    assert_eq!(stats.backfilled.load(Ordering::Relaxed), 3000, "the backlog went behind the live lane");

    let msgs = consume(&brokers, "vision.annotations", 3090);
    let mut seen = std::collections::BTreeSet::new();
    let mut last: std::collections::BTreeMap<(String, bool), u64> = Default::default();
    let (mut first_live_at, mut last_backfill_at) = (usize::MAX, 0);
    for (offset, m) in msgs.iter().enumerate() {
        let fa: FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let backfill = m.headers().is_some_and(|h| h.iter().any(|x| x.key == "lane" && x.value == Some(b"backfill")));
        assert_eq!(backfill, fa.seq < 3000, "seq {}: the backlog and only the backlog is backfill", fa.seq);
        if backfill {
            last_backfill_at = offset;
        } else {
            first_live_at = first_live_at.min(offset);
        }
        if !seen.insert(fa.frame_id.clone()) {
            continue;
        }
        let cseq = fa.camera_seq.unwrap();
        if let Some(prev) = last.insert((fa.camera.clone(), backfill), cseq) {
            assert!(cseq > prev, "{} {}: {prev} then {cseq}", fa.camera, if backfill { "backfill" } else { "live" });
        }
    }
    assert_eq!(seen.len(), 3090, "every record, once or more");
    assert!(first_live_at < last_backfill_at, "live records went ahead of the backlog's end");
    println!(
        "live lane: 3090 records, the first live one at offset {first_live_at}, the last backfill one at {last_backfill_at}"
    );
}

/// A record the broker refuses as too large (`MSG_SIZE_TOO_LARGE`, what a
/// Kafka broker answers past its `message.max.bytes`; injected in the mock
/// cluster, since tansu 0.6.0 does not enforce the limit) is not retried
/// forever: after `POISON_STRIKES` refusals it is given up with an
/// `undeliverable` gap record saying why, and the records behind it go up,
/// in order.
#[test]
fn a_record_refused_as_too_large_is_reported_and_does_not_block_the_records_behind_it() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
    let strikes = gateway::replicate::POISON_STRIKES as usize;
    cluster.request_errors(RDKafkaApiKey::Produce, &vec![too_large; strikes]);
    let dir = tempfile::tempdir().unwrap();
    let log = DurableLog::open(LogOptions::new(dir.path(), "mock-gw")).unwrap();
    annotate(&log, 0, 1);
    let refused_id = log.frame_id(0);
    let running = Running::start(&log, &brokers);
    let stats = running.stats.clone();
    wait_until(&running.rt, "the refused record given up", || stats.undeliverable[0].load(Ordering::Relaxed) == 1);
    annotate(&log, 1, 9);
    let end = log.counts().next_seq;
    wait_until(&running.rt, "the records behind it sent", || log.cursor(Cursor::Replicate).unwrap() == end);
    running.stop();
    assert_eq!(stats.undeliverable[0].load(Ordering::Relaxed), 1, "one record given up, no other");
    let anns = consume(&brokers, "vision.annotations", 9);
    let ids: Vec<String> = anns.iter().map(|m| header(m, "frame_id")).collect();
    let want: Vec<String> = (1..10).map(|s| log.frame_id(s)).collect();
    assert_eq!(ids, want, "the records behind it, in order");
    let gaps = consume(&brokers, "vision.gaps", 1);
    let gap: serde_json::Value = serde_json::from_slice(gaps[0].payload().unwrap()).unwrap();
    let text = gap.to_string();
    assert!(text.contains("undeliverable") && text.contains("refused by Kafka"), "{text}");
    assert!(text.contains("MessageSizeTooLarge"), "{text}");
    assert_eq!((&gap["from_seq"], &gap["to_seq"], &gap["records"]), (&0.into(), &0.into(), &1.into()), "{text}");
    assert!(!ids.contains(&refused_id));
}
