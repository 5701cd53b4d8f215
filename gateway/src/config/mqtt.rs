//! `[mqtt]`: the broker the cameras publish to, the topics, the limits on
//! what is accepted, the session and its credentials.

use super::{parse_host_port, LogConfig, Secret, Validator};
use crate::util::units::format_size;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[mqtt]`: intake.
#[derive(Debug, Default, Deserialize)]
pub struct RawMqtt {
    /// Broker address: `"host:port"`, `"mqtt://host:port"` or
    /// `"mqtts://host:port"` (TLS). Required.
    pub broker: Option<String>,
    /// MQTT client id; it names the persistent session on the broker, so it
    /// must be stable. Default `"vision-gateway-{gateway_id}"`.
    pub client_id: Option<String>,
    /// Topic filters to subscribe to with QoS 1. The camera id is the `+`
    /// level. Default `["cameras/+/frames"]`.
    pub topics: Option<Vec<String>>,
    /// Largest frame accepted, e.g. `"16MiB"`; larger ones are quarantined.
    /// Default `"16MiB"`.
    pub max_frame_bytes: Option<toml::Value>,
    /// Largest picture accepted, in pixels (width x height read from the
    /// image header), against decompression bombs. Default 50000000.
    pub max_pixels: Option<u64>,
    /// Byte cap of the dead-letter area that keeps quarantined payloads;
    /// beyond it only their metadata is kept. Default `"16MiB"`.
    pub quarantine_max_bytes: Option<toml::Value>,
    /// Unacknowledged frames the broker may send at once (MQTT 5 receive
    /// maximum). Bounds intake memory to about this many frames. Default 16.
    pub receive_maximum: Option<u16>,
    /// MQTT keep-alive interval. Default `"30s"`.
    pub keep_alive: Option<toml::Value>,
    /// How long the broker keeps the session (and queued frames) while the
    /// gateway is away. Default `"7d"`.
    pub session_expiry: Option<toml::Value>,
    /// Upper bound of the reconnect backoff. Default `"30s"`.
    pub reconnect_max_backoff: Option<toml::Value>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// File holding the password (a systemd credential: a relative path is
    /// looked up in `$CREDENTIALS_DIRECTORY`).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// TLS settings (used with `mqtts://`).
    pub tls: Option<RawTls>,
}

/// `[mqtt.tls]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    /// PEM file of the CA that signed the broker's certificate. Required for TLS.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY`).
    pub key_file: Option<PathBuf>,
}

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether to use TLS.
    pub tls: bool,
}

/// Validated `[mqtt.tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// CA file.
    pub ca_file: PathBuf,
    /// Client certificate and key for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker.
    pub broker: BrokerAddr,
    /// Client id (session name).
    pub client_id: String,
    /// Topic filters.
    pub topics: Vec<String>,
    /// Largest frame accepted.
    pub max_frame_bytes: u64,
    /// Largest picture in pixels.
    pub max_pixels: u64,
    /// Dead-letter payload cap.
    pub quarantine_max_bytes: u64,
    /// MQTT 5 receive maximum.
    pub receive_maximum: u16,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Session expiry.
    pub session_expiry: Duration,
    /// Backoff cap.
    pub reconnect_max_backoff: Duration,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// TLS.
    pub tls: Option<TlsConfig>,
}

/// Checks `[mqtt]` against the log's budget (frames and kept dead letters
/// must fit in it).
pub(super) fn validate(v: &mut Validator<'_>, m: RawMqtt, gateway_id: &str, log: &LogConfig) -> MqttConfig {
    let broker = broker(v, m.broker.as_deref());
    let topics = topics(v, m.topics);
    let max_frame_bytes = v.size("mqtt.max_frame_bytes", m.max_frame_bytes.as_ref(), 16 << 20);
    if max_frame_bytes > 256 << 20 {
        v.problem("mqtt.max_frame_bytes", "is above the MQTT limit of 256MiB".into());
    }
    if max_frame_bytes.saturating_add(2 << 20) > log.max_bytes {
        v.problem(
            "mqtt.max_frame_bytes",
            "must leave 2MiB of log.max_bytes for the index (set log.max_bytes higher or this lower)".into(),
        );
    }
    let password = v.secret("mqtt.password", m.password_file.as_deref(), m.password_env.as_deref());
    if password.is_some() && m.username.is_none() {
        v.problem("mqtt.username", "a password is set but no username".into());
    }
    let tls = tls(v, m.tls);
    if broker.tls && tls.is_none() {
        v.problem("mqtt.tls", "mqtts:// needs [mqtt.tls] with ca_file".into());
    }
    let max_pixels = match m.max_pixels {
        Some(0) => {
            v.problem("mqtt.max_pixels", "must be at least 1 (0 would quarantine every frame)".into());
            50_000_000
        }
        p => p.unwrap_or(50_000_000),
    };
    let quarantine_max_bytes = quarantine_max_bytes(v, m.quarantine_max_bytes.as_ref(), log);
    let keep_alive = keep_alive(v, m.keep_alive.as_ref());
    MqttConfig {
        client_id: m.client_id.unwrap_or_else(|| format!("vision-gateway-{gateway_id}")),
        broker,
        topics,
        max_frame_bytes,
        max_pixels,
        quarantine_max_bytes,
        receive_maximum: match m.receive_maximum {
            Some(0) => {
                v.problem("mqtt.receive_maximum", "must be at least 1".into());
                16
            }
            r => r.unwrap_or(16),
        },
        keep_alive,
        session_expiry: v.duration("mqtt.session_expiry", m.session_expiry.as_ref(), Duration::from_secs(7 * 86_400)),
        reconnect_max_backoff: v.duration(
            "mqtt.reconnect_max_backoff",
            m.reconnect_max_backoff.as_ref(),
            Duration::from_secs(30),
        ),
        username: m.username,
        password,
        tls,
    }
}

fn broker(v: &mut Validator<'_>, raw: Option<&str>) -> BrokerAddr {
    let none = BrokerAddr { host: String::new(), port: 0, tls: false };
    match raw {
        None => {
            v.problem(
                "mqtt.broker",
                "missing (for example \"127.0.0.1:1883\" or \"mqtts://broker.local:8883\")".into(),
            );
            none
        }
        Some(b) => parse_broker(b).unwrap_or_else(|e| {
            v.problem("mqtt.broker", e);
            none
        }),
    }
}

fn topics(v: &mut Validator<'_>, raw: Option<Vec<String>>) -> Vec<String> {
    let topics = raw.unwrap_or_else(|| vec![crate::records::header::DEFAULT_FRAME_TOPICS.into()]);
    if topics.is_empty() {
        v.problem("mqtt.topics", "is empty: the gateway would receive nothing".into());
    }
    for t in &topics {
        if t.split('/').filter(|l| *l == "+").count() != 1 || t.contains('#') {
            v.problem("mqtt.topics", format!("{t:?} must contain exactly one `+` level (the camera id) and no `#`"));
        }
    }
    topics
}

fn tls(v: &mut Validator<'_>, raw: Option<RawTls>) -> Option<TlsConfig> {
    let t = raw?;
    let ca_file = v.existing_file("mqtt.tls.ca_file", t.ca_file, true);
    let cert = v.existing_file("mqtt.tls.cert_file", t.cert_file, false);
    let key = t.key_file.map(|k| v.credential_path(&k));
    let key = v.existing_file("mqtt.tls.key_file", key, false);
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            v.problem("mqtt.tls", "cert_file and key_file go together (mutual TLS)".into());
            None
        }
    };
    ca_file.map(|ca_file| TlsConfig { ca_file, client })
}

/// Default: 16MiB, or a quarter of a small log.
fn quarantine_max_bytes(v: &mut Validator<'_>, raw: Option<&toml::Value>, log: &LogConfig) -> u64 {
    let bytes = v.size("mqtt.quarantine_max_bytes", raw, (16u64 << 20).min(log.max_bytes / 4));
    if bytes.saturating_add(2 << 20) > log.max_bytes {
        v.problem(
            "mqtt.quarantine_max_bytes",
            format!(
                "{} must leave 2MiB of log.max_bytes ({}) free: kept quarantined payloads must fit in the log",
                format_size(bytes),
                format_size(log.max_bytes)
            ),
        );
    }
    bytes
}

fn keep_alive(v: &mut Validator<'_>, raw: Option<&toml::Value>) -> Duration {
    let keep_alive = v.duration("mqtt.keep_alive", raw, Duration::from_secs(30));
    if keep_alive > Duration::from_secs(u64::from(u16::MAX)) || keep_alive < Duration::from_secs(5) {
        v.problem(
            "mqtt.keep_alive",
            format!("{keep_alive:?} is out of range: MQTT allows 5 s to 65535 s here (a 16-bit number of seconds)"),
        );
    }
    keep_alive
}

/// Parses `host:port`, `mqtt://host:port` or `mqtts://host:port`.
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_broker(s: &str) -> Result<BrokerAddr, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (false, r)
    } else if s.contains("://") {
        return Err(format!("{s:?}: only mqtt:// and mqtts:// are supported"));
    } else {
        (false, s)
    };
    if rest.contains('@') {
        return Err(format!("{s:?}: credentials do not go in the address; set mqtt.username and mqtt.password_file"));
    }
    let (host, port) = parse_host_port(rest.trim_end_matches('/'), Some(if tls { 8883 } else { 1883 }))?;
    Ok(BrokerAddr { host, port, tls })
}
