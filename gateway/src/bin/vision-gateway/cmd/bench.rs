//! `bench`: the project's throughput next to baselines measured in the same
//! run (see `crate::bench`); each subcommand prints a table, or JSON.

use crate::bench;
use crate::output::{bench_dir, emit, runtime};
use anyhow::Result;
use gateway::records::header;
use gateway::util::units::parse_size;
use std::path::PathBuf;
use std::process::ExitCode;

/// `bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
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
        #[arg(long, default_value = "models/ppocr-v6")]
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
    /// Reading the codes on the label (`[detect.codes]`) next to the model
    /// alone on tests/fixtures/codes: wall and model time per frame, the
    /// code reader's own time, codes read and misprints flagged, for the
    /// whole frame and the label regions; Python zxing-cpp on the same
    /// files when the reference venv is there.
    Codes {
        /// ONNX Runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The reference Python (default: $VISION_GATEWAY_REF_PYTHON, then
        /// the venv tests/run makes).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The OCR detector side (`detect.ocr_side`): label lines read exactly
    /// and time per frame on the fixtures, for each side.
    OcrSide {
        /// Model folder.
        #[arg(long, default_value = "models/ppocr-v6")]
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
    /// Each OCR model set on the label fixtures next to the Python RapidOCR
    /// release that ships its files, interleaved frame by frame: lines and
    /// fields read exactly, junk on blank frames, ms per frame, and the
    /// gateway's whole-frame speed over Python's. Run from the repository
    /// after `bash tests/run` made the reference venv.
    Models {
        /// Model folders; `models/ppocr-v4det-v6rec` (not shipped) is made
        /// from the v4 detector and the v6 recogniser;
        /// `models/ppocr-v5-mobile` needs `bash models/fetch measured`.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "models/ppocr-v6,models/ppocr-v4det-v6rec,models/ppocr-v5-mobile,models/ppocr-v4"
        )]
        models: Vec<PathBuf>,
        /// Thread counts (both engines).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Every Nth fixture frame (1: all).
        #[arg(long, default_value_t = 1)]
        every: usize,
        /// The gateway's OCR detector sides (`detect.ocr_side`, or a
        /// camera's own); Python runs at its default, 736.
        #[arg(long, value_delimiter = ',', default_value = "736,480")]
        sides: Vec<usize>,
        /// The reference Python (default: $VISION_GATEWAY_REF_PYTHON, then
        /// tests/run's venv in the cache).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Directory for the Python logs (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The runtimes side by side (ONNX Runtime where its library is, and
    /// tract): detector and recogniser time per run and whole-frame time,
    /// for each thread count, on the same fixture frames.
    Backends {
        /// Model folder.
        #[arg(long, default_value = "models/ppocr-v6")]
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
        /// Runs, each with its own baseline (the spread is printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The claim check's uploads (client and whole image lane) next to a
    /// bare object_store PUT loop on the same store (SeaweedFS, from
    /// tests/run's cache or WEED_BIN), images and concurrency.
    Store {
        /// Directory for the store's data and the log (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Images per row.
        #[arg(long, default_value_t = 200)]
        images: u64,
        /// Bytes per image.
        #[arg(long, default_value = "2MiB")]
        image_bytes: String,
        /// Requests in flight.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
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

/// Runs one benchmark and prints its report.
pub fn run(command: Command) -> Result<ExitCode> {
    let rt = runtime()?;
    let _guard = rt.enter();
    let repo = std::env::current_dir()?;
    match command {
        Command::All { dir, json } => {
            let o = bench::AllOptions::default();
            let r = rt.block_on(bench::all(&repo, &bench_dir(dir)?, &o, |what| eprintln!("bench all: {what}")))?;
            if json {
                // The table still goes to the terminal; the JSON to stdout.
                eprint!("{r}");
            }
            emit(&r, json)?;
        }
        Command::Detect { model, dir, frames, workers, threads, json } => {
            let dir = bench_dir(dir)?;
            let run = bench::DetectRun { model, frames, workers, intra_threads: threads };
            emit(&rt.block_on(bench::detect_throughput(&repo, &dir, &run))?, json)?;
        }
        Command::Codes { threads, python, json } => {
            let python = python.unwrap_or_else(reference_python);
            emit(&bench::codes(&repo, threads, Some(&python))?, json)?;
        }
        Command::OcrSide { model, sides, threads, json } => {
            emit(&bench::ocr_sides(&repo, &model, &sides, threads)?, json)?
        }
        Command::Models { models, threads, every, sides, python, dir, json } => {
            let python = python.unwrap_or_else(reference_python);
            let run = bench::ModelsRun { models, threads, every, sides, python };
            emit(&bench::models(&repo, &run, &bench_dir(dir)?)?, json)?;
        }
        Command::Backends { model, threads, every, json } => {
            emit(&bench::backends(&repo, &model, &threads, every)?, json)?;
        }
        Command::Drain { dir, backlog, live_fps, seconds, live_lane_after, runs, json } => {
            let dir = bench_dir(dir)?;
            emit(&rt.block_on(bench::drain_runs(&dir, runs, backlog, (live_fps, seconds), live_lane_after))?, json)?;
        }
        Command::Replicate { brokers, dir, records, image_bytes, json } => {
            let dir = bench_dir(dir)?;
            let mock;
            let brokers = match brokers {
                Some(b) => {
                    rt.block_on(create_topics(&b))?;
                    b
                }
                None => {
                    mock = rdkafka::mocking::MockCluster::new(1)?;
                    for t in header::ALL_TOPICS {
                        mock.create_topic(t, 1, 1)?;
                    }
                    mock.bootstrap_servers()
                }
            };
            emit(&rt.block_on(bench::replicate_throughput(&dir, &brokers, records, image_bytes))?, json)?;
        }
        Command::Store { dir, images, image_bytes, in_flight, json } => {
            let size = parse_size(&image_bytes).map_err(|e| anyhow::anyhow!("{image_bytes:?}: {e}"))? as usize;
            emit(&rt.block_on(bench::store_throughput(&bench_dir(dir)?, images, size, in_flight))?, json)?;
        }
        Command::Intake { dir, frames, size, json } => {
            emit(&rt.block_on(bench::intake_throughput(&bench_dir(dir)?, frames, size))?, json)?;
        }
        Command::Cameras { dir, cameras, frame_bytes, json } => {
            emit(&rt.block_on(bench::cameras(&bench_dir(dir)?, cameras, frame_bytes))?, json)?;
        }
        Command::Backlog { dir, bytes, frame_bytes, budget, json } => {
            let size = |s: &str| parse_size(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"));
            let dir = bench_dir(dir)?;
            emit(&rt.block_on(bench::backlog(&dir, size(&bytes)?, frame_bytes, size(&budget)?))?, json)?;
        }
        Command::Log { dir, bytes, sizes, batch, json } => {
            emit(&rt.block_on(bench::log_throughput(&bench_dir(dir)?, bytes, &sizes, &batch))?, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The gateway's topics on a real cluster (existing ones are left alone).
async fn create_topics(brokers: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> =
        header::ALL_TOPICS.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    let _ = admin.create_topics(&new, &AdminOptions::new()).await;
    Ok(())
}

/// The golden test's reference Python: `$VISION_GATEWAY_REF_PYTHON`, else
/// the venv tests/run makes in the cache.
fn reference_python() -> PathBuf {
    std::env::var_os("VISION_GATEWAY_REF_PYTHON").map_or_else(
        || {
            let cache = std::env::var_os("VISION_GATEWAY_CACHE").map_or_else(
                || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vision-gateway"),
                PathBuf::from,
            );
            cache.join("venv-ref/bin/python")
        },
        PathBuf::from,
    )
}
