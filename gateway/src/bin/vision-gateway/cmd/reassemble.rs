//! `reassemble`: consumes sampled images from Kafka and writes them whole
//! ([`gateway::replicate::reassemble`]).

use crate::output::{emit, runtime};
use anyhow::Result;
use gateway::replicate::reassemble::{reassemble_with, Limits, Source};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: String,
    /// Images topic.
    #[arg(long, default_value = gateway::records::header::IMAGES_TOPIC)]
    pub topic: String,
    /// Consumer group (offsets are committed there).
    #[arg(long, default_value = "vision-gateway-reassemble")]
    pub group: String,
    /// Output folder: <out>/<camera>/<frame_id>.<ext>.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this long without a message.
    #[arg(long, default_value = "10s")]
    pub idle: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A gateway config whose `[replicate.claim_check]` names the object
    /// store: references (header claim_check = s3) are downloaded from it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Exit 1 if an image was corrupt or its chunks contradicted each other.
pub fn run(args: Args) -> Result<ExitCode> {
    let idle = gateway::util::units::parse_duration(&args.idle).map_err(anyhow::Error::msg)?;
    let store = match &args.config {
        None => None,
        Some(path) => {
            let c = gateway::config::Config::load(path)?;
            let Some(cc) = c.replicate.claim_check else {
                anyhow::bail!("{}: [replicate.claim_check] is not enabled", path.display());
            };
            Some(gateway::replicate::Store::new(&cc, &c.gateway_id)?)
        }
    };
    let rt = runtime()?;
    let src = Source { brokers: &args.brokers, topic: &args.topic, group: &args.group, store: store.as_ref() };
    let r = rt.block_on(reassemble_with(&src, &args.out, idle, Limits::default()))?;
    emit(&r, args.json)?;
    let clean = r.corrupt.is_empty() && r.inconsistent.is_empty();
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
