//! Measurements printed by `vision-gateway bench`.
//!
//! Owns the benchmark figures quoted in the README and issue notes. Each
//! benchmark measures the project next to a baseline in the same run and
//! prints the ratio, so figures from different machines compare.

mod all;
mod backends;
mod backlog;
mod codes;
mod detect;
mod idle;
mod live;
mod models;
mod service;
mod store;
mod stream;

pub use all::{all, AllOptions};
pub use backends::backends;
pub use backlog::{backlog, cameras};
pub use codes::codes;
pub use detect::{detect_throughput, fixture_frames, ocr_sides, DetectBench, DetectRun};
pub use idle::{idle, IdleBench};
pub use live::{drain_runs, DrainRuns};
pub use models::{models, ModelsRun};
pub use store::{store_throughput, StoreBench};

use gateway::log::{DurableLog, LogOptions, WhenFull};
use gateway::records::FrameRecord;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::config::GatewayToml;
use testkit::frames::{noise, synthetic_jpeg};

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// What was measured.
    pub what: String,
    /// Records written.
    pub records: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

impl Throughput {
    /// A row.
    pub fn new(what: String, records: u64, bytes: u64, d: Duration) -> Self {
        Self { what, records, bytes, seconds: d.as_secs_f64() }
    }
    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    /// MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// Results of the log benchmark: for each record size and batch, raw
/// write+fdatasync and the log's append+group commit.
#[derive(Debug, Clone, Serialize)]
pub struct LogBench {
    /// (record size, batch, raw, log) per case.
    pub rows: Vec<(usize, usize, Throughput, Throughput)>,
}

/// Measures append + group commit (a flush every `batch` records) against
/// raw sequential write + fdatasync of the same bytes to a file in the same
/// directory, for each record size and batch. Each case writes about
/// `bytes_per_case` bytes, twice, alternating raw and log; the faster of
/// each pair is kept (both sides get the same treatment).
///
/// # Errors
/// I/O or log errors.
pub async fn log_throughput(
    dir: &Path,
    bytes_per_case: u64,
    sizes: &[usize],
    batches: &[usize],
) -> anyhow::Result<LogBench> {
    let mut rows = Vec::new();
    for &size in sizes {
        let size = size.max(1);
        let payload = noise(size, 0x9E37_79B9_7F4A_7C15);
        let records = (bytes_per_case / size as u64).max(16);
        for &batch in batches {
            let batch = batch.max(1);
            let (mut raw, mut lg) = (None::<Throughput>, None::<Throughput>);
            for round in 0..2 {
                let r = raw_write(dir, &payload, records, batch, round)?;
                let l = log_append(dir, &payload, records, batch, round).await?;
                raw = Some(match raw {
                    Some(b) if b.seconds <= r.seconds => b,
                    _ => r,
                });
                lg = Some(match lg {
                    Some(b) if b.seconds <= l.seconds => b,
                    _ => l,
                });
            }
            if let (Some(raw), Some(lg)) = (raw, lg) {
                rows.push((size, batch, raw, lg));
            }
        }
    }
    Ok(LogBench { rows })
}

fn raw_write(dir: &Path, payload: &[u8], records: u64, batch: usize, round: u32) -> anyhow::Result<Throughput> {
    let raw_path = dir.join(format!("raw-{round}.bin"));
    let mut f = std::fs::File::create(&raw_path)?;
    let t = Instant::now();
    for i in 0..records {
        f.write_all(payload)?;
        if (i + 1) % batch as u64 == 0 || i + 1 == records {
            f.sync_data()?;
        }
    }
    let what = format!("raw write+fdatasync {} B x{batch}", payload.len());
    let r = Throughput::new(what, records, records * payload.len() as u64, t.elapsed());
    drop(f);
    std::fs::remove_file(&raw_path)?;
    Ok(r)
}

async fn log_append(dir: &Path, payload: &[u8], records: u64, batch: usize, round: u32) -> anyhow::Result<Throughput> {
    let log_dir = dir.join(format!("log-{round}"));
    let mut o = LogOptions::new(&log_dir, "bench");
    o.max_bytes = u64::MAX / 2;
    o.when_full = WhenFull::Block;
    let log = DurableLog::open(o)?;
    let mut frame = FrameRecord {
        camera: "cam-1".into(),
        content_type: "image/jpeg".into(),
        received_at_ms: 0,
        captured_at_ms: None,
        camera_seq: None,
        payload: payload.to_vec(),
    };
    let t = Instant::now();
    for i in 0..records {
        frame.received_at_ms = i;
        log.append_frame(&frame)?;
        if (i + 1) % batch as u64 == 0 || i + 1 == records {
            log.flush().await?;
        }
    }
    let what = format!("log append+group commit {} B x{batch}", payload.len());
    let r = Throughput::new(what, records, records * payload.len() as u64, t.elapsed());
    drop(log);
    std::fs::remove_dir_all(&log_dir)?;
    Ok(r)
}

/// Prints a table header, then a baseline row (ratio 1.00) and the
/// measured row with its ratio to the baseline, for each pair.
fn ratio_table<'a>(
    f: &mut std::fmt::Formatter<'_>,
    width: usize,
    unit: &str,
    pairs: impl Iterator<Item = (&'a Throughput, &'a Throughput)>,
) -> std::fmt::Result {
    writeln!(f, "{:<width$} {:>10} {:>10} {:>8}", "", unit, "MB/s", "ratio")?;
    for (base, m) in pairs {
        writeln!(f, "{:<width$} {:>10.0} {:>10.1} {:>8}", base.what, base.records_per_s(), base.mb_per_s(), "1.00")?;
        let ratio = m.mb_per_s() / base.mb_per_s();
        writeln!(f, "{:<width$} {:>10.0} {:>10.1} {:>8.2}", m.what, m.records_per_s(), m.mb_per_s(), ratio)?;
    }
    Ok(())
}

impl std::fmt::Display for LogBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "log throughput: append + group commit next to raw write + fdatasync (same disk, same run)")?;
        ratio_table(f, 44, "records/s", self.rows.iter().map(|(_, _, raw, lg)| (raw, lg)))
    }
}

/// Results of the intake benchmark: the gateway's durable intake next to
/// its two bounds, `mosquitto_sub` draining the same queued stream to
/// /dev/null and a raw write+fdatasync loop of the same frames on the same
/// disk.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeBench {
    /// Frame payload size.
    pub frame_bytes: usize,
    /// mosquitto_sub, QoS 1, output to /dev/null.
    pub mosquitto_sub: Throughput,
    /// The same frames written to one file, fdatasync every
    /// [`RAW_SYNC_EVERY`] frames, in the log's directory.
    pub raw_write: Throughput,
    /// The intake stage: checks, append, group-commit flush, then PUBACK.
    pub gateway: Throughput,
}

impl IntakeBench {
    /// The lower of the two bounds (MQTT delivery, the disk).
    pub fn bound(&self) -> &Throughput {
        if self.raw_write.mb_per_s() < self.mosquitto_sub.mb_per_s() {
            &self.raw_write
        } else {
            &self.mosquitto_sub
        }
    }
}

impl std::fmt::Display for IntakeBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "intake throughput, {} B frames queued on a local mosquitto (same run)", self.frame_bytes)?;
        let pairs = [(&self.mosquitto_sub, &self.gateway), (&self.raw_write, &self.gateway)];
        ratio_table(f, 44, "frames/s", pairs.into_iter())?;
        writeln!(f, "bound: {} (the lower of the two)", self.bound().what)
    }
}

/// The raw baseline's group commit: the most frames the bench's intake may
/// hold unacknowledged (`mqtt.receive_maximum = 64`), so its fdatasyncs
/// are no more frequent than the intake's can be at best.
pub const RAW_SYNC_EVERY: usize = 64;

/// Queues `frames` frames of `size` bytes on a private mosquitto (started on
/// a free loopback port) for a persistent QoS 1 session, then measures how
/// fast `mosquitto_sub` and the gateway's intake drain them.
///
/// # Errors
/// Missing mosquitto binaries, broker or log failures.
// One measured sequence: mosquitto_sub, the raw write loop and the
// intake on the same queued frames, side by side.
#[allow(clippy::too_many_lines)]
pub async fn intake_throughput(dir: &Path, frames: u64, size: usize) -> anyhow::Result<IntakeBench> {
    use gateway::config::Config;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use std::sync::atomic::Ordering;
    use tokio_util::sync::CancellationToken;

    let sub = testkit::process::program(&["mosquitto_sub"], "mosquitto-clients")?;
    let broker = testkit::mosquitto::Mosquitto::start_with(testkit::mosquitto::Persistence::Off, 0)?;
    let port = broker.port;
    let topic = "cameras/bench-cam/frames";
    let payload = synthetic_jpeg(size, 7);

    // Publishes `frames` frames and waits for the broker's PUBACKs.
    let publish = |client_id: String| {
        let payload = payload.clone();
        async move {
            let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
            o.set_max_packet_size(Some(256 << 20));
            let (c, mut el) = AsyncClient::new(o, 64);
            let pubs = tokio::spawn(async move {
                for _ in 0..frames {
                    c.publish(topic, QoS::AtLeastOnce, false, payload.clone()).await?;
                }
                Ok::<_, anyhow::Error>(c)
            });
            let mut acked = 0;
            while acked < frames {
                if let Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) = el.poll().await? {
                    acked += 1;
                }
            }
            let c = pubs.await??;
            let _ = c.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
            Ok::<_, anyhow::Error>(())
        }
    };

    // mosquitto_sub: create the session, queue, then time the drain.
    let sub_args = |extra: &[&str]| {
        let mut c = tokio::process::Command::new(&sub);
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5", "-q", "1", "-c", "-i", "bench-sub"])
            .args(["-x", "3600", "-t", topic])
            .args(extra)
            .stdout(std::process::Stdio::null());
        c
    };
    anyhow::ensure!(sub_args(&["-E"]).status().await?.success(), "mosquitto_sub could not subscribe");
    publish("bench-pub-1".into()).await?;
    let t = Instant::now();
    let n = frames.to_string();
    anyhow::ensure!(sub_args(&["-C", &n]).status().await?.success(), "mosquitto_sub failed");
    let m = Throughput::new("mosquitto_sub -q 1 > /dev/null".into(), frames, frames * size as u64, t.elapsed());
    // The disk's bound: the same frames, written and fdatasynced in groups.
    std::fs::create_dir_all(dir.join("raw"))?;
    let mut raw = raw_write(&dir.join("raw"), &payload, frames, RAW_SYNC_EVERY, 0)?;
    raw.what = format!("raw write+fdatasync every {RAW_SYNC_EVERY}");

    // The gateway's intake: same steps.
    let mut t = GatewayToml::new("bench", &dir.join("intake-log"), port);
    t.max_bytes = "64GiB".into();
    t.max_frame_bytes = Some("16MiB".into());
    t.receive_maximum = Some(64);
    let text = t.render();
    let cfg =
        Config::parse(Path::new("bench"), &text, &gateway::config::ProcessEnv).map_err(|e| anyhow::anyhow!("{e}"))?;
    let log = gateway::open_log(&cfg)?;
    {
        let stop = CancellationToken::new();
        let intake = gateway::intake::Intake::new(cfg.mqtt.clone(), log.clone());
        let stats = intake.stats();
        let task = tokio::spawn(intake.run(stop.clone()));
        while !stats.subscribed.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await??;
    }
    publish("bench-pub-2".into()).await?;
    let stop = CancellationToken::new();
    let intake = gateway::intake::Intake::new(cfg.mqtt.clone(), log.clone());
    let stats = intake.stats();
    let t = Instant::now();
    let task = tokio::spawn(intake.run(stop.clone()));
    // Waits on the log's own notification for each new frame.
    let mut reader = log.frame_reader()?;
    let mut seen = 0;
    while seen < frames {
        seen += reader.next_frames(1024).await?.records.len() as u64;
    }
    while stats.acked.load(Ordering::Relaxed) < frames {
        tokio::task::yield_now().await;
    }
    let g = Throughput::new("gateway intake (durable, acked)".into(), frames, frames * size as u64, t.elapsed());
    stop.cancel();
    task.await??;
    drop(broker);
    Ok(IntakeBench { frame_bytes: size, mosquitto_sub: m, raw_write: raw, gateway: g })
}

/// Results of the replicate benchmark: the stage next to a bare producer
/// sending the same payloads to the same broker.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicateBench {
    /// Where it ran.
    pub broker: String,
    /// (case, bare producer, replicate stage) rows.
    pub rows: Vec<(String, Throughput, Throughput)>,
    /// Where the stage's time went, per case.
    pub steps: Vec<(String, StageSteps)>,
}

/// The replicate stage's time per record, by step, next to the bare
/// producer's whole time per record (wall time over records, both).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageSteps {
    /// Reading the log: index, segments, the annotation's head (µs).
    pub read_us: f64,
    /// Handing records to librdkafka (µs).
    pub produce_us: f64,
    /// Committing acknowledged batches: cursors and deletions (µs).
    pub commit_us: f64,
    /// The stage's wall time per record (µs).
    pub stage_us: f64,
    /// The bare producer's wall time per record (µs).
    pub bare_us: f64,
}

impl StageSteps {
    fn of(times: &gateway::replicate::StageTimes, records: u64, stage: &Throughput, bare: &Throughput) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let per = |ns: u64| ns as f64 / 1e3 / records.max(1) as f64;
        let wall = |t: &Throughput| t.seconds * 1e6 / records.max(1) as f64;
        Self {
            read_us: per(times.read.load(Relaxed)),
            produce_us: per(times.produce.load(Relaxed)),
            commit_us: per(times.commit.load(Relaxed)),
            stage_us: wall(stage),
            bare_us: wall(bare),
        }
    }

    /// The ratio to the bare producer the stage could reach if everything
    /// but its log work (read and commit) were free and nothing overlapped.
    pub fn log_bound(&self) -> f64 {
        self.bare_us / (self.read_us + self.commit_us)
    }
}

impl std::fmt::Display for ReplicateBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "replicate throughput on {} (same broker, same run)", self.broker)?;
        ratio_table(f, 48, "records/s", self.rows.iter().map(|(_, bare, stage)| (bare, stage)))?;
        writeln!(f, "(the stage rows are also the backlog drain rate: the log was filled before it started)")?;
        writeln!(f, "where the stage's time goes, µs per record (its steps run one after another on one task):")?;
        writeln!(
            f,
            "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "", "read", "produce", "commit", "stage", "bare", "log bound"
        )?;
        for (case, s) in &self.steps {
            writeln!(
                f,
                "{case:<24} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2}",
                s.read_us,
                s.produce_us,
                s.commit_us,
                s.stage_us,
                s.bare_us,
                s.log_bound()
            )?;
        }
        writeln!(
            f,
            "(log bound: the bare producer's time over the stage's log work alone, read + commit: the ratio the"
        )?;
        writeln!(f, " stage could not pass even if handing records to librdkafka and waiting for reports cost nothing)")
    }
}

/// The stored annotation of bench frame `f` at `seq` (sampled or not).
pub(super) fn bench_annotation(
    log: &DurableLog,
    seq: u64,
    f: &FrameRecord,
    sampled: bool,
    annotation: inference::Annotation,
) -> gateway::records::FrameAnnotation {
    gateway::records::FrameAnnotation {
        schema: gateway::records::SCHEMA_VERSION,
        frame_id: log.frame_id(seq),
        gateway_id: log.gateway_id().to_owned(),
        seq,
        camera: f.camera.clone(),
        camera_seq: f.camera_seq,
        captured_at_ms: f.captured_at_ms,
        received_at_ms: f.received_at_ms,
        content_type: f.content_type.clone(),
        frame_bytes: f.payload.len() as u64,
        sampled: sampled.then_some(gateway::records::SampleReason::EveryNth),
        annotation,
    }
}

/// Records per log batch while a bench fills its log.
const FILL_BATCH: u64 = 1024;

/// Fills a log with `records` annotation records (and, if `image_bytes` >
/// 0, a sampled image each), then times the replicate stage draining it,
/// next to a bare idempotent producer sending the same payloads.
///
/// # Errors
/// Broker or log errors.
// One measured sequence: the baseline and the stage on the same
// records and cluster, side by side so both get the same treatment.
#[allow(clippy::too_many_lines)]
pub async fn replicate_throughput(
    dir: &Path,
    brokers: &str,
    records: u64,
    image_bytes: usize,
) -> anyhow::Result<ReplicateBench> {
    use gateway::log::Cursor;
    use gateway::records::{Area, FrameRecord};
    use sha2::Digest;
    use tokio_util::sync::CancellationToken;

    let text =
        format!("gateway_id = \"bench\"\n[mqtt]\nbroker = \"127.0.0.1:1\"\n[replicate]\nbrokers = \"{brokers}\"\n");
    let cfg = gateway::config::Config::parse(Path::new("bench"), &text, &gateway::config::ProcessEnv)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut rows, mut steps) = (Vec::new(), Vec::new());
    for (case, img) in [("annotations only", 0usize), ("annotations + images", image_bytes)] {
        if case != "annotations only" && img == 0 {
            continue;
        }
        let log_dir = dir.join(format!("replicate-{img}"));
        let mut o = LogOptions::new(&log_dir, "bench");
        o.max_bytes = u64::MAX / 2;
        let log = DurableLog::open(o)?;
        let mut payloads: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut b = log.batch();
        for i in 0..records {
            let f = FrameRecord {
                camera: format!("cam-{}", i % 4),
                content_type: "image/jpeg".into(),
                received_at_ms: i,
                captured_at_ms: Some(i),
                camera_seq: Some(i),
                payload: synthetic_jpeg(img.max(64), i),
            };
            let seq = log.append_frame(&f)?.seq;
            let annotation = inference::Annotation {
                width: 640,
                height: 480,
                items: (0..5)
                    .map(|k| {
                        inference::Item::text(
                            format!("SN {i:08}-{k}"),
                            0.98,
                            [[10.0, 20.0], [200.0, 20.0], [200.0, 44.0], [10.0, 44.0]],
                        )
                    })
                    .collect(),
                error: None,
                ..inference::Annotation::failed(
                    inference::ModelInfo::new("ppocr-v4", "4", &"0".repeat(64)),
                    String::new(),
                )
            };
            let fa = bench_annotation(&log, seq, &f, img > 0, annotation);
            let json = serde_json::to_vec(&fa)?;
            b.put_blob(Area::Annotations, seq, &json);
            if img > 0 {
                b.put_frame(Area::Images, seq, &f);
                payloads.push((json, f.payload.clone()));
            } else {
                payloads.push((json, Vec::new()));
            }
            // Committed as detect does, a batch at a time: one batch of
            // 400,000 records peaked at 8.4 GB and left the heap so
            // fragmented that the stage measured malloc, not itself.
            if (i + 1) % FILL_BATCH == 0 {
                b.set_cursor(Cursor::Detect, seq + 1);
                log.apply(std::mem::replace(&mut b, log.batch()))?;
            }
        }
        b.set_cursor(Cursor::Detect, log.counts().next_seq);
        log.apply(b)?;
        log.flush().await?;
        let bytes: u64 = payloads.iter().map(|(a, i)| (a.len() + i.len()) as u64).sum();

        // Both producers are warmed up first (connection, idempotent
        // producer id, topic metadata), so the timings compare steady states.
        async fn warm(p: &gateway::replicate::KafkaProducer, topics: [&str; 2]) -> anyhow::Result<()> {
            for t in topics {
                gateway::replicate::enqueue_yielding(p, t, "warm-up", b"{}", rdkafka::message::OwnedHeaders::new())
                    .await?
                    .await?;
            }
            Ok(())
        }
        let topics = [cfg.replicate.annotations_topic.as_str(), cfg.replicate.images_topic.as_str()];

        // Bare producer: same settings, same payloads, await every report.
        let producer = gateway::replicate::producer(&cfg.replicate)?;
        warm(&producer, topics).await?;
        let t = Instant::now();
        let mut futs = Vec::new();
        // The same records as the stage sends: keys, headers, chunks.
        let model = format!("ppocr-v4@{}", "0".repeat(64));
        for (i, (json, image)) in payloads.iter().enumerate() {
            let key = format!("cam-{}", i % 4);
            let frame_id = log.frame_id(i as u64);
            let (a_topic, i_topic) = (&cfg.replicate.annotations_topic, &cfg.replicate.images_topic);
            let headers = gateway::replicate::annotation_headers(&frame_id, &model);
            futs.push(gateway::replicate::enqueue_yielding(&producer, a_topic, &key, json, headers).await?);
            if image.is_empty() {
                continue;
            }
            let sha256 = hex::encode(sha2::Sha256::digest(image));
            let head = gateway::replicate::ImageHead {
                frame_id: &frame_id,
                camera: &key,
                content_type: "image/jpeg",
                sha256: &sha256,
            };
            let parts = gateway::replicate::chunks(image, cfg.replicate.chunk_bytes as usize);
            let count = parts.len().to_string();
            for (k, chunk) in parts.into_iter().enumerate() {
                let headers = gateway::replicate::chunk_headers(&head, k, &count);
                futs.push(gateway::replicate::enqueue_yielding(&producer, i_topic, &key, chunk, headers).await?);
            }
        }
        for f in futs {
            f.await?;
        }
        let bare = Throughput::new(format!("bare rdkafka producer, {case}"), records, bytes, t.elapsed());

        let stage_producer = gateway::replicate::producer(&cfg.replicate)?;
        warm(&stage_producer, topics).await?;
        let stage = gateway::replicate::Replicate::new(log.clone(), cfg.replicate.clone(), stage_producer);
        let stats = stage.stats();
        let stop = CancellationToken::new();
        let t = Instant::now();
        let task = tokio::spawn(stage.run(stop.clone()));
        let end = log.counts().next_seq;
        while log.cursor(Cursor::Replicate)? < end {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let measured = Throughput::new(format!("replicate stage, {case}"), records, bytes, t.elapsed());
        stop.cancel();
        task.await??;
        steps.push((case.to_owned(), StageSteps::of(&stats.time_ns, records, &measured, &bare)));
        rows.push((case.to_owned(), bare, measured));
    }
    Ok(ReplicateBench { broker: brokers.to_owned(), rows, steps })
}
