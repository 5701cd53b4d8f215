//! `log stats`: records, bytes, cursors and backlog of the on-disk log.

use crate::output::{emit, load};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// `log` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
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

/// Opens the log (refused while a gateway runs on it) and prints its stats.
pub fn run(command: Command) -> Result<ExitCode> {
    let Command::Stats { config, json } = command;
    let c = match load(&config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let log = gateway::open_log(&c)
        .with_context(|| "if a gateway is running on this log, stop it first (the log allows one process at a time)")?;
    emit(&log.stats()?, json)?;
    Ok(ExitCode::SUCCESS)
}
