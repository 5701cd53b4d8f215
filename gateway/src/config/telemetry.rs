//! `[telemetry]`: the local HTTP endpoint and the log format.

use super::Validator;
use serde::Deserialize;
use std::net::SocketAddr;

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/`).
    /// Default `"127.0.0.1:9464"`.
    pub listen: Option<String>,
    /// `"text"` (journald-friendly, default) or `"json"`.
    pub log_format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text for journald.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[telemetry]`.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
}

/// Checks `[telemetry]`.
pub(super) fn validate(v: &mut Validator<'_>, t: RawTelemetry) -> TelemetryConfig {
    let listen_s = t.listen.unwrap_or_else(|| "127.0.0.1:9464".into());
    let listen = listen_s.parse().unwrap_or_else(|_| {
        v.problem("telemetry.listen", format!("{listen_s:?} is not an address like \"127.0.0.1:9464\""));
        SocketAddr::from(([127, 0, 0, 1], 9464))
    });
    let log_format = match t.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(o) => {
            v.problem("telemetry.log_format", format!("{o:?} is not a format (use \"text\" or \"json\")"));
            LogFormat::Text
        }
    };
    TelemetryConfig { listen, log_format }
}
