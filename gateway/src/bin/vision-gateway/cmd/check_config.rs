//! `check-config`: validates a file, prints every problem, or what the
//! gateway would run with ([`gateway::config::summary`]).

use crate::output::load;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vision-gateway/gateway.toml")]
    pub config: PathBuf,
}

/// Exit 0 and the summary, or 2 and every problem.
pub fn run(args: Args) -> Result<ExitCode> {
    match load(&args.config) {
        Ok(c) => {
            print!("{}", gateway::config::summary(&c));
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}
