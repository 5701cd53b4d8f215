//! `replay`: publishes a camera fixture directory to an MQTT broker, as the
//! cameras would ([`testkit::replay`]).

use crate::output::runtime;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fixture directory (`camera.toml` and frames).
    pub dir: PathBuf,
    /// Broker `host:port`.
    #[arg(long)]
    pub broker: String,
    /// Frames per second (default: the fixture's recorded rate).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Publishes every frame and waits for the broker's acknowledgements.
pub fn run(args: Args) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let cameras = testkit::replay::load_cameras(&args.dir)?;
    let frames: usize = cameras.iter().map(|c| c.frames.len()).sum();
    eprintln!("replaying {frames} frames of {} camera(s) to {}", cameras.len(), args.broker);
    let rt = runtime()?;
    let progress = std::io::stderr().is_terminal();
    let r = rt.block_on(testkit::replay::replay(&cameras, &args.broker, args.rate, progress))?;
    println!(
        "published {} frames ({:.1} MB) in {:.2} s, {} acknowledged by the broker",
        r.published,
        r.bytes as f64 / 1e6,
        r.seconds,
        r.acked
    );
    Ok(ExitCode::SUCCESS)
}
