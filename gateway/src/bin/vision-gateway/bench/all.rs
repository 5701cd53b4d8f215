//! `vision-gateway bench all`: every stage next to the bare tool that bounds
//! it, measured side by side in one run, in one table (and as JSON, to
//! compare commits).
//!
//! Each row is a ratio of two figures taken in the same run on the same
//! machine, so that the noise of a shared box mostly cancels. The goals are
//! those of the performance issue; the table says which are met. Nothing
//! here asserts: the figures are printed, not tested.

use super::{DetectBench, DrainRuns, IdleBench, IntakeBench, ReplicateBench, StoreBench};
use crate::demo::PipelineSummary;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is compared.
    pub figure: String,
    /// The baseline's figure, with its unit.
    pub baseline: String,
    /// The stage's figure, with its unit.
    pub measured: String,
    /// measured / baseline (or the figure itself for the CPU row).
    pub ratio: f64,
    /// The goal, e.g. ">= 0.8".
    pub goal: String,
    /// Whether the goal is met.
    pub met: bool,
    /// Why the row could not be measured, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Everything `bench all` measured.
#[derive(Debug, Clone, Serialize)]
pub struct AllBench {
    /// The table.
    pub rows: Vec<Row>,
    /// Wall time of the whole run, s.
    pub seconds: f64,
    /// The detailed results behind the rows.
    pub intake: Option<IntakeBench>,
    /// Replicate on librdkafka's mock cluster.
    pub replicate_mock: Option<ReplicateBench>,
    /// Replicate on tansu (when its binary is found).
    pub replicate_tansu: Option<ReplicateBench>,
    /// Detect stage and bare loop.
    pub detect: Option<DetectBench>,
    /// The pipeline at half the model's capacity.
    pub half_capacity: Option<PipelineSummary>,
    /// Drain with live traffic.
    pub drain: Option<DrainRuns>,
    /// Idle CPU.
    pub idle: Option<IdleBench>,
    /// Claim check uploads (when SeaweedFS is found).
    pub store: Option<StoreBench>,
}

/// Sizes of the run (defaults: about 6 minutes on a 2-core box).
#[derive(Debug, Clone)]
pub struct AllOptions {
    /// Intake frames (200 KB each).
    pub intake_frames: u64,
    /// Annotation records for the replicate rows.
    pub replicate_records: u64,
    /// Records with a 200 KB sampled image for the replicate MB/s row.
    pub replicate_image_records: u64,
    /// Frames for the detect rows (the fixtures, cycled).
    pub detect_frames: usize,
    /// Detect workers and threads per worker (the demo's: 2 x 1).
    pub workers: usize,
    /// See `workers`.
    pub intra_threads: usize,
    /// Backlog frames for the drain rows.
    pub backlog: u64,
    /// Live frames per second during the drain.
    pub live_fps: f64,
    /// Seconds of live traffic.
    pub live_seconds: f64,
    /// Drain runs (the worst is the figure, the spread is printed).
    pub drain_runs: usize,
    /// The tansu binary, if any.
    pub tansu: Option<PathBuf>,
}

impl Default for AllOptions {
    fn default() -> Self {
        let tansu = std::env::var_os("TANSU_BIN").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vision-gateway/tansu-0.6.0/bin/tansu"))
        });
        Self {
            intake_frames: 500,
            replicate_records: 20_000,
            replicate_image_records: 400,
            detect_frames: 46,
            workers: 2,
            intra_threads: 1,
            backlog: 100_000,
            live_fps: 20.0,
            live_seconds: 20.0,
            drain_runs: 3,
            tansu: tansu.filter(|p| p.is_file()),
        }
    }
}

fn row(figure: &str, baseline: String, measured: String, ratio: f64, goal: &str) -> Row {
    let met = match goal.split_once(' ') {
        Some((">=", v)) => v.parse::<f64>().is_ok_and(|v| ratio >= v),
        Some(("<=", v)) => v.trim_end_matches('%').parse::<f64>().is_ok_and(|v| ratio <= v),
        _ => false,
    };
    Row { figure: figure.into(), baseline, measured, ratio, goal: goal.into(), met, skipped: None }
}

fn skipped(figure: &str, goal: &str, why: String) -> Row {
    Row {
        figure: figure.into(),
        baseline: String::new(),
        measured: String::new(),
        ratio: f64::NAN,
        goal: goal.into(),
        met: false,
        skipped: Some(why),
    }
}

/// `dir/name`, created.
fn sub(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A tansu broker on a free loopback port, killed on drop.
struct Tansu {
    child: std::process::Child,
    port: u16,
}

impl Tansu {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = testkit::net::free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let child = std::process::Command::new(bin)
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log"))?)
            .spawn()?;
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(t.elapsed().as_secs() < 30, "tansu did not open port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn create_topics(brokers: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let names = gateway::records::header::ALL_TOPICS;
    let new: Vec<NewTopic> = names.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    let _ = admin.create_topics(&new, &AdminOptions::new()).await?;
    Ok(())
}

/// What every part of the run reads.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    repo: &'a Path,
    dir: &'a Path,
    o: &'a AllOptions,
    progress: &'a dyn Fn(&str),
}

/// Runs every benchmark in `dir` and builds the table. `progress` gets a
/// line as each part starts.
///
/// # Errors
/// Only a failure to set up (directories); a part that fails gives a
/// skipped row with the reason.
pub async fn all(repo: &Path, dir: &Path, o: &AllOptions, progress: impl Fn(&str)) -> anyhow::Result<AllBench> {
    let t0 = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut out = AllBench {
        rows: Vec::new(),
        seconds: 0.0,
        intake: None,
        replicate_mock: None,
        replicate_tansu: None,
        detect: None,
        half_capacity: None,
        drain: None,
        idle: None,
        store: None,
    };
    let cx = Ctx { repo, dir, o, progress: &progress };
    intake_part(&cx, &mut out, &mut rows).await?;
    detect_part(&cx, &mut out, &mut rows).await?;
    replicate_mock_part(&cx, &mut out, &mut rows).await?;
    replicate_tansu_part(&cx, &mut out, &mut rows).await?;
    store_part(&cx, &mut out, &mut rows).await?;
    drain_part(&cx, &mut out, &mut rows).await?;
    idle_part(&cx, &mut out, &mut rows).await?;
    out.rows = rows;
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The claim check's image lane next to a bare PUT loop (2 MiB images).
async fn store_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, progress, .. } = *cx;
    let fig = "claim check MB/s (image lane: upload, reference, free) / bare object_store PUT loop, 2 MiB images";
    if let Err(why) = testkit::seaweedfs::binary() {
        rows.push(skipped(fig, ">= 0.8", why));
        return Ok(());
    }
    progress("claim check uploads next to a bare object_store PUT loop (SeaweedFS)");
    match super::store_throughput(&sub(dir, "store")?, 150, 2 << 20, 4).await {
        Ok(b) => {
            rows.push(row(
                fig,
                format!("{:.1} MB/s", b.bare.mb_per_s()),
                format!("{:.1} MB/s", b.lane.mb_per_s()),
                b.lane.mb_per_s() / b.bare.mb_per_s(),
                ">= 0.8",
            ));
            out.store = Some(b);
        }
        Err(e) => rows.push(skipped(fig, ">= 0.8", e.to_string())),
    }
    Ok(())
}

/// Intake next to its two bounds.
async fn intake_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, o, progress, .. } = *cx;
    progress("intake next to mosquitto_sub and raw write+fdatasync (200 KB frames)");
    let fig = "durable intake MB/s / min(mosquitto_sub, raw write+fdatasync) MB/s, 200 KB frames";
    match super::intake_throughput(&sub(dir, "intake")?, o.intake_frames, 200_000).await {
        Ok(b) => {
            let r = b.gateway.mb_per_s() / b.bound().mb_per_s();
            rows.push(row(
                fig,
                format!(
                    "{:.1} MB/s (sub {:.1}, raw {:.1})",
                    b.bound().mb_per_s(),
                    b.mosquitto_sub.mb_per_s(),
                    b.raw_write.mb_per_s()
                ),
                format!("{:.1} MB/s", b.gateway.mb_per_s()),
                r,
                ">= 0.8",
            ));
            out.intake = Some(b);
        }
        Err(e) => rows.push(skipped(fig, ">= 0.8", e.to_string())),
    }
    Ok(())
}

/// The detect stage next to a bare session.run loop, then the pipeline at half its capacity.
async fn detect_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { repo, dir, o, progress, .. } = *cx;
    progress("detect stage next to a bare session.run loop");
    let model = repo.join("models/ppocr-v6");
    let figs = [
        "detect stage frames/s / bare session.run loop",
        "(decode + preprocess + postprocess) / model run time",
        "p99 capture->Kafka at 50% of model capacity / model latency",
    ];
    let run = super::DetectRun { model, frames: o.detect_frames, workers: o.workers, intra_threads: o.intra_threads };
    match super::detect_throughput(repo, &sub(dir, "detect")?, &run).await {
        Ok(b) => {
            rows.push(row(
                figs[0],
                format!("{:.2} frames/s", b.bare.records_per_s()),
                format!("{:.2} frames/s", b.stage.records_per_s()),
                b.ratio(),
                ">= 0.95",
            ));
            rows.push(row(
                figs[1],
                format!("{:.0} ms model", b.run_ms / b.stage.records as f64),
                format!("{:.1} ms other", (b.decode_ms + b.preprocess_ms + b.postprocess_ms) / b.stage.records as f64),
                b.overhead(),
                "<= 0.05",
            ));
            // Half the capacity, spread over the fixture cameras.
            let cameras = testkit::replay::load_cameras(&repo.join("tests/fixtures/cameras"))?.len().max(1);
            let rate = 0.5 * b.stage.records_per_s() / cameras as f64;
            progress(&format!("the pipeline at 50% of the model's capacity ({:.2} frames/s)", rate * cameras as f64));
            let mock = rdkafka::mocking::MockCluster::new(1)?;
            for t in gateway::records::header::ALL_TOPICS {
                mock.create_topic(t, 1, 1)?;
            }
            match crate::demo::pipeline(repo, &mock.bootstrap_servers(), &sub(dir, "half")?, Some(rate)).await {
                Ok(s) => {
                    rows.push(row(
                        figs[2],
                        format!("{:.0} ms model p50", s.model_p50_ms),
                        format!("{:.0} ms p99", s.end_to_end_p99_ms),
                        s.end_to_end_p99_ms / s.model_p50_ms.max(1e-3),
                        "<= 1.5",
                    ));
                    out.half_capacity = Some(s);
                }
                Err(e) => rows.push(skipped(figs[2], "<= 1.5", e.to_string())),
            }
            out.detect = Some(b);
        }
        Err(e) => {
            rows.push(skipped(figs[0], ">= 0.95", e.to_string()));
            rows.push(skipped(figs[1], "<= 0.05", e.to_string()));
            rows.push(skipped(figs[2], "<= 1.5", e.to_string()));
        }
    }
    Ok(())
}

/// The annotations-only row of a replicate benchmark.
fn annotations_row(b: &ReplicateBench, fig: &str, rows: &mut Vec<Row>) {
    if let Some((_, bare, stage)) = b.rows.iter().find(|r| r.0 == "annotations only") {
        rows.push(row(
            fig,
            format!("{:.0} records/s", bare.records_per_s()),
            format!("{:.0} records/s", stage.records_per_s()),
            stage.records_per_s() / bare.records_per_s(),
            ">= 0.8",
        ));
    }
}

/// Replicate next to a bare producer on the mock cluster.
async fn replicate_mock_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, o, progress, .. } = *cx;
    progress("replicate next to a bare rdkafka producer (mock cluster)");
    let fig_mock = "replicate records/s / bare producer, annotations (mock cluster)";
    {
        let mock = rdkafka::mocking::MockCluster::new(1)?;
        for t in gateway::records::header::ALL_TOPICS {
            mock.create_topic(t, 1, 1)?;
        }
        match super::replicate_throughput(
            &sub(dir, "replicate-mock")?,
            &mock.bootstrap_servers(),
            o.replicate_records,
            0,
        )
        .await
        {
            Ok(b) => {
                annotations_row(&b, fig_mock, rows);
                out.replicate_mock = Some(b);
            }
            Err(e) => rows.push(skipped(fig_mock, ">= 0.8", e.to_string())),
        }
    }
    Ok(())
}

/// Replicate next to a bare producer on tansu (annotations, then 200 KB images).
async fn replicate_tansu_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, o, progress, .. } = *cx;
    let fig_t = "replicate records/s / bare producer, annotations (tansu)";
    let fig_img = "replicate MB/s / bare producer, 200 KB images (tansu)";
    match &o.tansu {
        None => {
            let why = "tansu not found (set TANSU_BIN; bash tests/run builds it)".to_owned();
            rows.push(skipped(fig_t, ">= 0.8", why.clone()));
            rows.push(skipped(fig_img, ">= 0.9", why));
        }
        Some(bin) => {
            progress("replicate next to a bare rdkafka producer (tansu)");
            let run = async {
                let t = Tansu::start(bin, &sub(dir, "tansu")?)?;
                let brokers = format!("127.0.0.1:{}", t.port);
                create_topics(&brokers).await?;
                let a =
                    super::replicate_throughput(&sub(dir, "replicate-tansu")?, &brokers, o.replicate_records / 2, 0)
                        .await?;
                let i = super::replicate_throughput(
                    &sub(dir, "replicate-tansu-img")?,
                    &brokers,
                    o.replicate_image_records,
                    200_000,
                )
                .await?;
                drop(t);
                Ok::<_, anyhow::Error>((a, i))
            };
            match run.await {
                Ok((a, i)) => {
                    annotations_row(&a, fig_t, rows);
                    if let Some((_, bare, stage)) = i.rows.iter().find(|r| r.0 == "annotations + images") {
                        rows.push(row(
                            fig_img,
                            format!("{:.1} MB/s", bare.mb_per_s()),
                            format!("{:.1} MB/s", stage.mb_per_s()),
                            stage.mb_per_s() / bare.mb_per_s(),
                            ">= 0.9",
                        ));
                    }
                    let mut merged = a;
                    merged.rows.extend(i.rows.into_iter().filter(|r| r.0 != "annotations only"));
                    merged.steps.extend(i.steps.into_iter().filter(|r| r.0 != "annotations only"));
                    out.replicate_tansu = Some(merged);
                }
                Err(e) => {
                    rows.push(skipped(fig_t, ">= 0.8", e.to_string()));
                    rows.push(skipped(fig_img, ">= 0.9", e.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// A backlog draining while live frames flow.
async fn drain_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, o, progress, .. } = *cx;
    progress("backlog drain with live frames flowing");
    let figs = [
        "backlog drain rate / live ingest rate, live frames flowing",
        "p99 capture->Kafka of live frames during a drain / no backlog",
    ];
    let drain_dir = sub(dir, "drain")?;
    let runs = super::drain_runs(&drain_dir, o.drain_runs, o.backlog, (o.live_fps, o.live_seconds), 1000);
    match runs.await {
        Ok(d) => {
            rows.push(row(
                figs[0],
                format!("{:.0} frames/s live", o.live_fps),
                format!("worst of {} runs", d.runs.len()),
                d.worst_drain(),
                ">= 5",
            ));
            let worst = d.worst().map_or((0.0, 0.0), |w| (w.idle_p99_ms, w.during_p99_ms));
            rows.push(row(
                figs[1],
                format!("{:.0} ms", worst.0),
                format!("{:.0} ms (worst of {} runs, {} frames)", worst.1, d.runs.len(), d.during()),
                d.worst_starvation(),
                "<= 2",
            ));
            out.drain = Some(d);
        }
        Err(e) => {
            rows.push(skipped(figs[0], ">= 5", e.to_string()));
            rows.push(skipped(figs[1], "<= 2", e.to_string()));
        }
    }
    Ok(())
}

/// The CPU an idle gateway takes.
async fn idle_part(cx: &Ctx<'_>, out: &mut AllBench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Ctx { dir, progress, .. } = *cx;
    progress("CPU of an idle gateway");
    let fig = "CPU of an idle gateway, % of one core";
    match super::idle(&sub(dir, "idle")?, 20.0).await {
        Ok(i) => {
            rows.push(row(fig, "-".into(), format!("{:.2}%", i.cpu_percent), i.cpu_percent, "<= 0.5%"));
            out.idle = Some(i);
        }
        Err(e) => rows.push(skipped(fig, "<= 0.5%", e.to_string())),
    }
    Ok(())
}

impl std::fmt::Display for AllBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "vision-gateway bench all: each stage next to its bare baseline, one run ({:.0} s)\n",
            self.seconds
        )?;
        writeln!(f, "| figure | baseline | measured | ratio | goal | met |")?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for r in &self.rows {
            match &r.skipped {
                Some(why) => writeln!(f, "| {} | - | - | - | {} | skipped: {} |", r.figure, r.goal, why)?,
                None => writeln!(
                    f,
                    "| {} | {} | {} | {:.2} | {} | {} |",
                    r.figure,
                    r.baseline,
                    r.measured,
                    r.ratio,
                    r.goal,
                    if r.met { "yes" } else { "no" }
                )?,
            }
        }
        writeln!(f)?;
        for part in [
            self.intake.as_ref().map(ToString::to_string),
            self.detect.as_ref().map(ToString::to_string),
            self.replicate_mock.as_ref().map(ToString::to_string),
            self.replicate_tansu.as_ref().map(ToString::to_string),
            self.drain.as_ref().map(ToString::to_string),
            self.idle.as_ref().map(ToString::to_string),
        ]
        .into_iter()
        .flatten()
        {
            writeln!(f, "{part}")?;
        }
        if let Some(s) = &self.half_capacity {
            writeln!(
                f,
                "pipeline at 50% of capacity: {} frames, model p50 {:.0} ms, capture->Kafka p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
                s.frames_in, s.model_p50_ms, s.end_to_end_p50_ms, s.end_to_end_p95_ms, s.end_to_end_p99_ms
            )?;
        }
        Ok(())
    }
}
