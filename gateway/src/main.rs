//! `vision-gateway`: parses the command line and calls into the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gateway::config::{units::format_size, Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Edge machine-vision gateway: MQTT frames -> durable log -> ONNX
/// annotations -> Kafka.
#[derive(Debug, Parser)]
#[command(name = "vision-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/vision-gateway/gateway.toml")]
        config: PathBuf,
    },
    /// Self-contained demo: the main job on stand-in brokers.
    Demo {
        /// Where to keep the demo's files (default: a temporary directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replay rate in frames/s per camera (default: the recorded rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Only tour the durable log (no brokers, no model).
        #[arg(long)]
        log_only: bool,
        /// Frames per simulated camera (with --log-only).
        #[arg(long, default_value_t = 500)]
        frames: u64,
    },
    /// Validate a configuration file; print every problem.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = "/etc/vision-gateway/gateway.toml")]
        config: PathBuf,
    },
    /// Inspect the on-disk log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Publish a camera fixture directory to an MQTT broker.
    Replay {
        /// Fixture directory (`camera.toml` and frames).
        dir: PathBuf,
        /// Broker `host:port`.
        #[arg(long)]
        broker: String,
        /// Frames per second (default: the fixture's recorded rate).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Run a model on image files and print one annotation per image.
    Annotate {
        /// Model folder (with model.toml).
        #[arg(long, default_value = "models/ppocr-v4")]
        model: PathBuf,
        /// libonnxruntime.so.1.31.1 (default: $ORT_DYLIB_PATH, then
        /// models/runtime/<arch>/, then /usr/lib/vision-gateway/).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Threads the runtime may use per run.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Runtime: auto (ONNX Runtime where its library is, else tract;
        /// a manifest's `backend` is followed), onnxruntime or tract.
        #[arg(long, default_value = "auto", value_parser = ["auto", "onnxruntime", "tract"])]
        backend: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// A gateway config: read its `[[fields]]` and apply its
        /// `[detect.text]` (the rest of the file is not needed), to check
        /// formats on sample images before deploying them.
        #[arg(long)]
        config: Option<PathBuf>,
        /// With --config: apply the fields declared for this camera id
        /// (default: every field, whatever its `cameras`).
        #[arg(long, requires = "config")]
        camera: Option<String>,
        /// JPEG or PNG files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Consume sampled images from Kafka and write them whole.
    Reassemble {
        /// Kafka bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Images topic.
        #[arg(long, default_value = "vision.images")]
        topic: String,
        /// Consumer group (offsets are committed there).
        #[arg(long, default_value = "vision-gateway-reassemble")]
        group: String,
        /// Output folder: <out>/<camera>/<frame_id>.<ext>.
        #[arg(long)]
        out: PathBuf,
        /// Stop after this long without a message.
        #[arg(long, default_value = "10s")]
        idle: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure the project's throughput next to baselines in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Records, bytes, cursors and backlog of the log.
    Stats {
        /// Configuration file (for log.path and gateway_id).
        #[arg(long, default_value = "/etc/vision-gateway/gateway.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Every stage next to its bare baseline, one table, one run (about 6
    /// minutes on 2 cores). Run from the repository (fixtures, model).
    All {
        /// Directory for logs and brokers (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON (the table and every detail) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The detect stage next to a bare session.run loop on the same frames,
    /// model and threads; and the share of decode/pre/post-processing.
    Detect {
        /// Model folder.
        #[arg(long, default_value = "models/ppocr-v4")]
        model: PathBuf,
        /// Directory for the log (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Frames (the fixtures, cycled).
        #[arg(long, default_value_t = 46)]
        frames: usize,
        /// Worker threads (each with its own model).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// ONNX Runtime threads per worker.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The OCR detector side (`detect.ocr_side`): label lines read exactly
    /// and time per frame on the fixtures, for each side.
    OcrSide {
        /// Model folder.
        #[arg(long, default_value = "models/ppocr-v4")]
        model: PathBuf,
        /// Sides to try (multiples of 32).
        #[arg(long, value_delimiter = ',', default_value = "416,544,640,736,960")]
        sides: Vec<usize>,
        /// ONNX Runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The runtimes side by side (ONNX Runtime where its library is, and
    /// tract): detector and recogniser time per run and whole-frame time,
    /// for each thread count, on the same fixture frames.
    Backends {
        /// Model folder.
        #[arg(long, default_value = "models/ppocr-v4")]
        model: PathBuf,
        /// Thread counts to try.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Every Nth fixture frame (1: all 46).
        #[arg(long, default_value_t = 4)]
        every: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A backlog drained when the broker comes back while live frames flow: drain rate
    /// and live latency next to the same live stream with no backlog.
    Drain {
        /// Directory for logs (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Backlog frames.
        #[arg(long, default_value_t = 100_000)]
        backlog: u64,
        /// Live frames per second.
        #[arg(long, default_value_t = 20.0)]
        live_fps: f64,
        /// Seconds of live traffic.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// The service's `replicate.live_lane_after` (0: one lane).
        #[arg(long, default_value_t = 1000)]
        live_lane_after: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicate stage next to a bare rdkafka producer, same broker, same payloads.
    Replicate {
        /// Kafka bootstrap servers (default: librdkafka's in-process mock cluster).
        #[arg(long)]
        brokers: Option<String>,
        /// Directory for the logs (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Records per case.
        #[arg(long, default_value_t = 2000)]
        records: u64,
        /// Size of each sampled image.
        #[arg(long, default_value_t = 200_000)]
        image_bytes: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Intake drain rate next to mosquitto_sub on the same queued stream.
    Intake {
        /// Directory for the log (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Frames to queue and drain.
        #[arg(long, default_value_t = 500)]
        frames: u64,
        /// Frame size in bytes.
        #[arg(long, default_value_t = 200_000)]
        size: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The real service receiving one frame from each of many distinct
    /// camera ids: resident memory after each thousand (it must stay flat).
    Cameras {
        /// Directory for the log (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Distinct camera ids.
        #[arg(long, default_value_t = 10_000)]
        cameras: u64,
        /// Frame size in bytes.
        #[arg(long, default_value_t = 20_000)]
        frame_bytes: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The real service with a large backlog: time to ready and memory next
    /// to an empty gateway, and bytes on disk at the budget.
    Backlog {
        /// Directory for the logs (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Backlog size, e.g. 5GB.
        #[arg(long, default_value = "5GB")]
        bytes: String,
        /// Frame size in bytes.
        #[arg(long, default_value_t = 600_000)]
        frame_bytes: usize,
        /// `log.max_bytes` for the budget rows, e.g. 512MiB.
        #[arg(long, default_value = "512MiB")]
        budget: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Log append + group commit against raw write + fdatasync on the same disk.
    Log {
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bytes written per case (and per side).
        #[arg(long, default_value_t = 400_000_000)]
        bytes: u64,
        /// Record sizes in bytes; one case per value.
        #[arg(long, value_delimiter = ',', default_value = "40000,200000,2000000")]
        sizes: Vec<usize>,
        /// Records per flush (group commit); one case per value.
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        batch: Vec<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo drives the log into its budget on purpose; its drop warnings
    // are expected and summarised instead.
    // `run` sets up logging once its config (which names the format) is read.
    if !matches!(cli.command, Command::Run { .. }) {
        init_tracing(
            if matches!(cli.command, Command::Demo { .. }) { "warn,gateway::log=error" } else { "info" },
            LogFormat::Text,
        );
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: errors that already quote
/// their source in their own text (`log I/O error at …: No space left on
/// device`) are not followed by it again.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// Logs go to stderr. Plain text by default; under systemd (`JOURNAL_STREAM`
/// set) without timestamps or colours, since journald stamps every line.
/// `RUST_LOG` overrides the level filter.
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},ort=warn")));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().with_current_span(false).init(),
        LogFormat::Text if journald => b.without_time().with_ansi(false).init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn load(config: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!("{}: OK", config.display());
            println!("  gateway_id   {}", c.gateway_id);
            println!(
                "  log          {} (budget {}, when full: {:?})",
                c.log.path.display(),
                format_size(c.log.max_bytes),
                c.log.when_full
            );
            println!(
                "  mqtt         {}:{}{} topics {:?}",
                c.mqtt.broker.host,
                c.mqtt.broker.port,
                if c.mqtt.broker.tls { " (TLS)" } else { "" },
                c.mqtt.topics
            );
            println!("  model        {}", c.detect.model.display());
            if c.detect.enabled {
                let manifest = std::fs::read_to_string(c.detect.model.join("model.toml"))
                    .map_err(|e| e.to_string())
                    .and_then(|t| inference::Manifest::parse(&t, &c.detect.model).map_err(|e| e.to_string()));
                match manifest {
                    Ok(m) => {
                        let choice = c.detect.backend.over(m.backend);
                        let kind = choice.resolve(&c.detect.onnxruntime);
                        let why = match choice {
                            inference::engine::Backend::Auto if kind == inference::engine::EngineKind::Tract => {
                                format!(" (auto: no ONNX Runtime library at {})", c.detect.onnxruntime.display())
                            }
                            inference::engine::Backend::Auto => {
                                format!(" (auto: {})", c.detect.onnxruntime.display())
                            }
                            _ => String::new(),
                        };
                        println!("  runtime      {}{why}", kind.describe());
                    }
                    Err(e) => println!("  runtime      unknown: {e}"),
                }
            } else {
                println!("  runtime      none (detect.enabled = false)");
            }
            if c.fields.is_empty() {
                println!("  fields       none ([[fields]] declares label fields)");
            }
            for f in &c.fields {
                println!(
                    "  field        {} = {}{}{}",
                    f.spec.name,
                    f.spec.format,
                    if f.spec.required { " (required)" } else { "" },
                    if f.cameras.is_empty() { String::new() } else { format!(" on {}", f.cameras.join(", ")) }
                );
            }
            println!("  kafka        {}", c.replicate.brokers);
            println!("  telemetry    http://{}", c.telemetry.listen);
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { command: LogCommand::Stats { config, json } } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let log = gateway::open_log(&c).with_context(|| {
                "if a gateway is running on this log, stop it first (the log allows one process at a time)"
            })?;
            let s = log.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("log {} (gateway {})", s.path.display(), s.gateway_id);
                println!(
                    "  used {} of {} ({} on disk)",
                    format_size(s.used_bytes),
                    format_size(s.max_bytes),
                    format_size(s.size_on_disk)
                );
                println!(
                    "  next seq {}, gaps written {}, records set aside {}",
                    s.next_seq, s.gaps_written, s.set_aside
                );
                for (a, st) in &s.areas {
                    println!("  {:<13} {:>10} records {:>12}", a.name(), st.records, format_size(st.bytes));
                }
                for (n, cs) in &s.cursors {
                    println!(
                        "  cursor {:<15} at {:>10}, backlog {} records, {}",
                        n,
                        cs.position,
                        cs.backlog_records,
                        format_size(cs.backlog_bytes)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_tracing("info", c.telemetry.log_format);
            let rt = runtime()?;
            let shutdown = CancellationToken::new();
            rt.block_on(async {
                let s = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("shutdown requested");
                    s.cancel();
                });
                gateway::run(c, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, rate, log_only, frames } => {
            let dir = bench_dir(out)?;
            let rt = runtime()?;
            if log_only {
                println!("vision-gateway demo --log-only: the durable log alone (no brokers, no model)\n");
                let s = rt.block_on(gateway::demo::run(&dir, 3, frames))?;
                print!("{s}");
                println!("\nfiles kept in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            println!("vision-gateway demo: the real pipeline (MQTT intake, durable log, PP-OCRv4, Kafka replication)");
            println!("NOTE: the brokers are demo stand-ins started by this command: a private mosquitto on");
            println!("127.0.0.1 and librdkafka's in-process mock Kafka cluster. Nothing leaves this machine.\n");
            let _guard = rt.enter();
            let mock = rdkafka::mocking::MockCluster::new(1)?;
            for t in ["vision.annotations", "vision.images", "vision.gaps", "vision.dead-letters"] {
                mock.create_topic(t, 1, 1)?;
            }
            let repo = std::env::current_dir()?;
            let s = rt.block_on(gateway::demo::pipeline(&repo, &mock.bootstrap_servers(), &dir, rate))?;
            print!("{s}");
            Ok(if s.annotations_out == s.frames_in { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Replay { dir, broker, rate } => {
            use std::io::IsTerminal;
            let cameras = gateway::replay::load_cameras(&dir)?;
            let frames: usize = cameras.iter().map(|c| c.frames.len()).sum();
            eprintln!("replaying {frames} frames of {} camera(s) to {broker}", cameras.len());
            let rt = runtime()?;
            let r = rt.block_on(gateway::replay::replay(&cameras, &broker, rate, std::io::stderr().is_terminal()))?;
            println!(
                "published {} frames ({:.1} MB) in {:.2} s, {} acknowledged by the broker",
                r.published,
                r.bytes as f64 / 1e6,
                r.seconds,
                r.acked
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Reassemble { brokers, topic, group, out, idle, json } => {
            let idle = gateway::config::units::parse_duration(&idle).map_err(anyhow::Error::msg)?;
            let rt = runtime()?;
            let r = rt.block_on(gateway::replicate::reassemble::reassemble(&brokers, &topic, &group, &out, idle))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} images written to {}, {} duplicates skipped, {} corrupt, {} inconsistent, {} expired, {} incomplete, {} malformed messages",
                    r.written.len(),
                    out.display(),
                    r.duplicates,
                    r.corrupt.len(),
                    r.inconsistent.len(),
                    r.expired.len(),
                    r.incomplete.len(),
                    r.malformed
                );
                for c in &r.corrupt {
                    println!("  corrupt (sha256 mismatch): {c}");
                }
                for i in &r.inconsistent {
                    println!("  inconsistent (chunk headers contradict each other): {i}");
                }
                for i in &r.expired {
                    println!("  expired (given up incomplete): {i}");
                }
                for i in &r.incomplete {
                    println!("  incomplete: {i}");
                }
            }
            let clean = r.corrupt.is_empty() && r.inconsistent.is_empty();
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Annotate { model, onnxruntime, threads, backend, json, config, camera, images } => {
            let cwd = std::env::current_dir().ok();
            let library = inference::runtime::default_library(onnxruntime.as_deref(), cwd.as_deref());
            let backend = inference::engine::Backend::parse(&backend).unwrap_or_default();
            let (decls, filter) = match &config {
                Some(path) => match Config::load_fields(path) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::from(2));
                    }
                },
                None => (Vec::new(), inference::ocr::TextFilter::default()),
            };
            let decls: Vec<_> = decls.into_iter().filter(|d| camera.as_deref().is_none_or(|c| d.applies(c))).collect();
            let opts = inference::LoadOptions {
                intra_threads: threads,
                text_filter: filter,
                ..inference::LoadOptions::new(library, backend)
            };
            let mut m = inference::Model::load(&model, &opts)
                .with_context(|| format!("cannot load the model in {}", model.display()))?;
            let compiled = m.compile_fields(decls.iter().map(|d| &d.spec)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let fields: Vec<&inference::fields::Field> = compiled.iter().collect();
            let mut failed = false;
            for path in &images {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                let a = m.annotate_with(&bytes, &fields)?;
                failed |= a.error.is_some();
                if json {
                    let mut v = serde_json::to_value(&a)?;
                    v["file"] = serde_json::Value::String(path.display().to_string());
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    println!(
                        "{} ({}x{}, {} {} {:.12} on {} {}, {:.0} ms)",
                        path.display(),
                        a.width,
                        a.height,
                        a.model.name,
                        a.model.version,
                        a.model.hash,
                        a.model.backend,
                        a.model.backend_version,
                        a.timings.decode_ms + a.timings.preprocess_ms + a.timings.run_ms + a.timings.postprocess_ms
                    );
                    if let Some(e) = &a.error {
                        println!("  error: {e}");
                    }
                    for it in &a.items {
                        let what = it.text.as_deref().or(it.label.as_deref()).unwrap_or("");
                        println!(
                            "  {:>5.3}  [{:.0}, {:.0}, {:.0}, {:.0}]  {what}",
                            it.score, it.bbox[0], it.bbox[1], it.bbox[2], it.bbox[3]
                        );
                    }
                    for (name, f) in &a.fields {
                        println!(
                            "  field {name} = {:?}  score {:.3}{}  (read {:?})",
                            f.value,
                            f.score,
                            if f.uncertain { " UNCERTAIN" } else { "" },
                            f.raw
                        );
                    }
                    if !a.missing.is_empty() {
                        println!("  missing: {}", a.missing.join(", "));
                    }
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Bench { command: BenchCommand::Replicate { brokers, dir, records, image_bytes, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let _guard = rt.enter();
            let topics = ["vision.annotations", "vision.images", "vision.gaps", "vision.dead-letters"];
            let mock;
            let brokers = match brokers {
                Some(b) => {
                    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                        rdkafka::ClientConfig::new().set("bootstrap.servers", &b).create()?;
                    let new: Vec<NewTopic> =
                        topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
                    let _ = rt.block_on(admin.create_topics(&new, &AdminOptions::new()));
                    b
                }
                None => {
                    mock = rdkafka::mocking::MockCluster::new(1)?;
                    for t in topics {
                        mock.create_topic(t, 1, 1)?;
                    }
                    mock.bootstrap_servers()
                }
            };
            let r = rt.block_on(gateway::bench::replicate_throughput(&dir, &brokers, records, image_bytes))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::All { dir, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let _guard = rt.enter();
            let repo = std::env::current_dir()?;
            let o = gateway::bench::AllOptions::default();
            let r = rt.block_on(gateway::bench::all(&repo, &dir, &o, |what| eprintln!("bench all: {what}")))?;
            if json {
                // The table still goes to the terminal; the JSON to stdout.
                eprint!("{r}");
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Detect { model, dir, frames, workers, threads, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let repo = std::env::current_dir()?;
            let r = rt.block_on(gateway::bench::detect_throughput(&repo, &dir, &model, frames, workers, threads))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::OcrSide { model, sides, threads, json } } => {
            let repo = std::env::current_dir()?;
            let r = gateway::bench::ocr_sides(&repo, &model, &sides, threads)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Backends { model, threads, every, json } } => {
            let repo = std::env::current_dir()?;
            let r = gateway::bench::backends(&repo, &model, &threads, every)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Drain { dir, backlog, live_fps, seconds, live_lane_after, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let _guard = rt.enter();
            let r = rt.block_on(gateway::bench::drain(&dir, backlog, live_fps, seconds, live_lane_after))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Intake { dir, frames, size, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let r = rt.block_on(gateway::bench::intake_throughput(&dir, frames, size))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Cameras { dir, cameras, frame_bytes, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let r = rt.block_on(gateway::bench::cameras(&dir, cameras, frame_bytes))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Backlog { dir, bytes, frame_bytes, budget, json } } => {
            let dir = bench_dir(dir)?;
            let size = |s: &str| gateway::config::units::parse_size(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"));
            let rt = runtime()?;
            let r = rt.block_on(gateway::bench::backlog(&dir, size(&bytes)?, frame_bytes, size(&budget)?))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Log { dir, bytes, sizes, batch, json } } => {
            let dir = bench_dir(dir)?;
            let rt = runtime()?;
            let r = rt.block_on(gateway::bench::log_throughput(&dir, bytes, &sizes, &batch))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The benchmark's directory: the one given (created), or a fresh one.
fn bench_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
            Ok(d)
        }
        None => tempdir(),
    }
}

/// A fresh directory under the system temp dir (kept, so it can be inspected).
fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "vision-gateway-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
