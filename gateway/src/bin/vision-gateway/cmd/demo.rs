//! `demo`: the main job on stand-in brokers (a private mosquitto and
//! librdkafka's mock cluster), or with `--log-only` a tour of the durable
//! log alone.

use crate::output::{bench_dir, runtime};
use anyhow::Result;
use gateway::records::header;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to keep the demo's files (default: a temporary directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replay rate in frames/s per camera (default: the recorded rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Only tour the durable log (no brokers, no model).
    #[arg(long)]
    pub log_only: bool,
    /// Frames per simulated camera (with --log-only).
    #[arg(long, default_value_t = 500)]
    pub frames: u64,
}

/// Runs the demo; fails if an annotation is missing.
pub fn run(args: Args) -> Result<ExitCode> {
    let dir = bench_dir(args.out)?;
    let rt = runtime()?;
    if args.log_only {
        println!("vision-gateway demo --log-only: the durable log alone (no brokers, no model)\n");
        let s = rt.block_on(crate::demo::run(&dir, 3, args.frames))?;
        print!("{s}");
        println!("\nfiles kept in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("vision-gateway demo: the real pipeline (MQTT intake, durable log, PP-OCRv4, Kafka replication)");
    println!("NOTE: the brokers are demo stand-ins started by this command: a private mosquitto on");
    println!("127.0.0.1 and librdkafka's in-process mock Kafka cluster. Nothing leaves this machine.\n");
    let _guard = rt.enter();
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    for t in header::ALL_TOPICS {
        mock.create_topic(t, 1, 1)?;
    }
    let repo = std::env::current_dir()?;
    let s = rt.block_on(crate::demo::pipeline(&repo, &mock.bootstrap_servers(), &dir, args.rate))?;
    print!("{s}");
    Ok(if s.annotations_out == s.frames_in { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
