//! `run`: the service, until SIGTERM or SIGINT.

use crate::output::{init_tracing, load, runtime};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vision-gateway/gateway.toml")]
    pub config: PathBuf,
}

/// Loads the config, sets up logging in the format it names, and runs the
/// pipeline until a signal.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = match load(&args.config) {
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
