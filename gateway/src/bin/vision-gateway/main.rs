//! `vision-gateway`: parses the command line, sets up logging and hands
//! each subcommand to its module in [`cmd`]. The service itself is the
//! library (`gateway::run`); the demo and the benchmarks are tools that
//! live here, beside it, not in it.

mod bench;
mod cmd;
mod demo;
mod output;

use clap::{Parser, Subcommand};
use gateway::config::LogFormat;
use std::process::ExitCode;

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
    Run(cmd::run::Args),
    /// Self-contained demo: the main job on stand-in brokers.
    Demo(cmd::demo::Args),
    /// Validate a configuration file; print every problem.
    CheckConfig(cmd::check_config::Args),
    /// Inspect the on-disk log.
    Log {
        #[command(subcommand)]
        command: cmd::log::Command,
    },
    /// Publish a camera fixture directory to an MQTT broker.
    Replay(cmd::replay::Args),
    /// Run a model on image files and print one annotation per image.
    Annotate(cmd::annotate::Args),
    /// Consume sampled images from Kafka and write them whole.
    Reassemble(cmd::reassemble::Args),
    /// Measure the project's throughput next to baselines in the same run.
    Bench {
        #[command(subcommand)]
        command: cmd::bench::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` sets up logging once its config (which names the format) is
    // read. The demo drives the log into its budget on purpose; its drop
    // warnings are expected and summarised instead.
    let quiet = "warn,gateway::log=error";
    match &cli.command {
        Command::Run(_) => {}
        Command::Demo(_) => output::init_tracing(quiet, LogFormat::Text),
        _ => output::init_tracing("info", LogFormat::Text),
    }
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Log { command } => cmd::log::run(command),
        Command::Replay(a) => cmd::replay::run(a),
        Command::Annotate(a) => cmd::annotate::run(a),
        Command::Reassemble(a) => cmd::reassemble::run(a),
        Command::Bench { command } => cmd::bench::run(command),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", output::describe(&e));
        ExitCode::FAILURE
    })
}
