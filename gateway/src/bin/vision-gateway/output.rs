//! What every subcommand shares: logging set-up, the async runtime, the
//! config loader that prints problems, one way to print a report (text or
//! JSON), and the scratch folder of the demo and the benches.

use anyhow::{Context, Result};
use gateway::config::{Config, LogFormat};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints `report`: pretty JSON to stdout, or its text form.
pub fn emit<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The error and its causes, each cause once: errors that already quote
/// their source in their own text (`log I/O error at …: No space left on
/// device`) are not followed by it again.
pub fn describe(e: &anyhow::Error) -> String {
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
pub fn init_tracing(default: &str, format: LogFormat) {
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

/// The multi-threaded tokio runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The config, or exit code 2 once its problems are printed.
pub fn load(config: &Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

/// The demo's or benchmark's directory: the one given (created), or a
/// fresh one under the system temp dir (kept, so it can be inspected).
pub fn bench_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let d = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vision-gateway-{}-{}", std::process::id(), gateway::util::now_ms()))
    });
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}
