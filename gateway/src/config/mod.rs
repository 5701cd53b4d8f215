//! Configuration: one TOML file, typed with serde, validated all at once.
//!
//! Owns the mapping from `gateway.toml` to a validated [`Config`]. Loading
//! has two layers:
//!
//! 1. [`RawConfig`] is what serde reads. The `///` comment of each field is
//!    the user documentation (the README's configuration reference and
//!    `systemd/gateway.toml` repeat it). Sizes and durations are read as
//!    plain TOML values so that a bad one is reported with the others
//!    instead of stopping the parse. Unknown keys are rejected, all of them
//!    (collected with `serde_ignored`, which reports every unknown key where
//!    `deny_unknown_fields` would stop at the first).
//! 2. [`Config::from_raw`] checks every field and returns either a complete
//!    `Config` or a [`ConfigError`] listing every problem with its key.
//!
//! Promises: a `Config` that exists is valid (sizes parsed, required fields
//! present, secrets readable); secrets never appear in `Debug` or logs.

mod secret;
pub mod units;

pub use secret::Secret;

use crate::log::WhenFull;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use units::{format_size, parse_duration, parse_size};

/// The file as written by the user. See `systemd/gateway.toml` for a
/// commented example.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    /// Unique id of this gateway among all sites feeding the same Kafka
    /// cluster. Every frame id is `"{gateway_id}:{seq}"`. Letters, digits,
    /// `.`, `_` and `-`, at most 64 characters. Default: the host name.
    pub gateway_id: Option<String>,
    /// The durable on-disk log.
    #[serde(default)]
    pub log: RawLog,
    /// The MQTT broker the cameras publish to.
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// The inference stage.
    #[serde(default)]
    pub detect: RawDetect,
    /// Which images are sent upstream.
    #[serde(default)]
    pub sample: RawSample,
    /// Replication to the central Kafka cluster.
    #[serde(default)]
    pub replicate: RawReplicate,
    /// Logs, metrics, health endpoints.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Label fields (`[[fields]]`, one table per field): formats the OCR
    /// model's lines are read against.
    #[serde(default)]
    pub fields: Vec<RawField>,
}

/// `[[fields]]`: one label field.
#[derive(Debug, Default, Deserialize)]
pub struct RawField {
    /// Its name in annotations: 1 to 64 of `a-z 0-9 _ -`. Required.
    pub name: Option<String>,
    /// The format of the printed line, e.g. `'LOT <L\d{4}[A-FX]>'` (see
    /// the README's "Label fields"). Required.
    pub format: Option<String>,
    /// Listed in the annotation's `missing` when not read on a frame with
    /// text. Default true.
    pub required: Option<bool>,
    /// A value whose weakest character scores below this is `uncertain`.
    /// Default 0.5.
    pub min_score: Option<f32>,
    /// Camera ids the field applies to; `*` matches any run of characters
    /// (`"line1-*"`). Default: every camera.
    pub cameras: Option<Vec<String>>,
}

/// `[detect.text]`: which raw text lines are kept (junk rejection).
#[derive(Debug, Default, Deserialize)]
pub struct RawText {
    /// Lines scoring below this are dropped. Default 0.85 (the reference
    /// keeps down to 0.5; junk read off marks on frames without a label
    /// scored 0.50-0.94, real label lines 0.91 and up).
    pub min_score: Option<f32>,
    /// Lines whose box is less tall than this many pixels are dropped.
    /// Default 8.
    pub min_height: Option<f32>,
    /// Lines wider than this many box heights per character are dropped
    /// (0 turns the rule off). Default 1.5.
    pub max_aspect_per_char: Option<f32>,
    /// Lines with fewer characters than this (spaces aside) are dropped.
    /// Default 2.
    pub min_chars: Option<u32>,
}

/// `[log]`: where and how much the gateway keeps on disk.
#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    /// Directory of the log. Default: `$STATE_DIRECTORY/log` under systemd,
    /// else `/var/lib/vision-gateway/log`.
    pub path: Option<PathBuf>,
    /// Byte budget on disk of everything the log holds (payload segments
    /// and the index together), e.g. `"2GiB"`. Default `"2GiB"`, at least
    /// `"4MiB"`. The index takes at least 512 KiB plus 1 MiB kept for its
    /// growth; frames and images get the rest.
    pub max_bytes: Option<toml::Value>,
    /// What happens when `max_bytes` is reached after retention and after
    /// dropping sampled images not yet uploaded: `"block"` (default: stop
    /// acknowledging MQTT, the broker holds the frames) or `"drop_oldest"`
    /// (drop the oldest frames not yet detected, reported as gap records).
    pub when_full: Option<String>,
    /// Memory the storage engine may use as page cache, e.g. `"64MiB"`.
    pub cache: Option<toml::Value>,
    /// Free space kept on the log's file system, e.g. `"16MiB"` (default):
    /// intake stops acknowledging while less is free (the broker keeps the
    /// frames), and the log keeps a reserve file of this size that it
    /// releases when the disk fills up, so it can always open and drain.
    /// `"0"` turns both off.
    pub reserve: Option<toml::Value>,
}

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

/// `[detect]`: the inference stage.
#[derive(Debug, Default, Deserialize)]
pub struct RawDetect {
    /// Run the model on every frame. `false` (boxes without inference,
    /// e.g. armv7): see `when_disabled`. Default `true`.
    pub enabled: Option<bool>,
    /// With `enabled = false`: `"forward"` (default) sends every frame's
    /// record upstream with an empty annotation (model `"none"`) and samples
    /// images by `[sample]`, freeing the log; `"hold"` keeps frames in the
    /// log unannotated until a model is enabled (the log fills up).
    pub when_disabled: Option<String>,
    /// Model folder (with `model.toml`). Default
    /// `/usr/share/vision-gateway/models/ppocr-v4`.
    pub model: Option<PathBuf>,
    /// Path of `libonnxruntime.so.1.31.1`. Default: `$ORT_DYLIB_PATH`, else
    /// `/usr/lib/vision-gateway/libonnxruntime.so.1.31.1`.
    pub onnxruntime: Option<PathBuf>,
    /// Inference worker threads, each with its own session. Default 1.
    pub workers: Option<u32>,
    /// Threads ONNX Runtime may use inside one inference. Default 1.
    pub intra_threads: Option<u32>,
    /// Removed: it was validated but never used (each worker runs one frame
    /// at a time). Still accepted, and ignored, so that older config files
    /// load.
    pub batch: Option<u32>,
    /// Frames waiting for a worker (bounded queue). Default 8.
    pub queue: Option<u32>,
    /// Memory one frame's annotation may take; the OCR detector input is
    /// scaled down to fit, a frame that cannot fit gets an error
    /// annotation. Default `"512MiB"` (a 1 GB box).
    pub max_frame_memory: Option<toml::Value>,
    /// OCR: the frame's shorter side is brought up to this for the text
    /// detector, 32..=2016 in steps of 32. Default 736 (the reference's);
    /// smaller is faster and reads small print less well (`vision-gateway
    /// bench ocr-side` prints the trade-off on your frames).
    pub ocr_side: Option<u32>,
    /// The runtime: `"auto"` (default: ONNX Runtime where its library is,
    /// tract otherwise; a manifest's `backend` is followed), `"onnxruntime"`
    /// or `"tract"` (compiled in, no library).
    pub backend: Option<String>,
    /// OCR: which raw text lines are kept (junk rejection).
    #[serde(default)]
    pub text: RawText,
}

/// `[sample]`: which images go upstream (annotations always do).
#[derive(Debug, Default, Deserialize)]
pub struct RawSample {
    /// Every Nth frame of each camera (0 = off). Default 100.
    pub every_nth: Option<u64>,
    /// Labels that select a frame (detectors, classifiers).
    pub labels: Option<Vec<String>>,
    /// Regular expression on read texts that selects a frame (OCR), e.g.
    /// `"^SN"`.
    pub text_pattern: Option<String>,
    /// Minimum score of a selecting label or text. Default 0.5.
    pub min_score: Option<f32>,
    /// Frames whose best score is below this are sampled (retraining
    /// material). Default: off.
    pub low_confidence_below: Option<f32>,
    /// Sample frames that could not be decoded. Default true.
    pub errors: Option<bool>,
    /// Sample frames with a required field missing or a field uncertain
    /// (see `[[fields]]`), for review upstream. Default true.
    pub review: Option<bool>,
    /// Minimum time between two sampled frames of one camera. Default `"0s"`.
    pub min_interval: Option<toml::Value>,
    /// Upload budget per camera, e.g. `"200KiB"` per second (0 = no limit).
    /// Default 0.
    pub max_bytes_per_second: Option<toml::Value>,
}

/// `[replicate]`: the uplink to Kafka.
#[derive(Debug, Default, Deserialize)]
pub struct RawReplicate {
    /// Kafka bootstrap servers, `"host:port[,host:port...]"`. Required.
    pub brokers: Option<String>,
    /// Topic for annotations. Default `"vision.annotations"`.
    pub annotations_topic: Option<String>,
    /// Topic for sampled images (chunked). Default `"vision.images"`.
    pub images_topic: Option<String>,
    /// Topic for gap records. Default `"vision.gaps"`.
    pub gaps_topic: Option<String>,
    /// Topic for quarantined input. Default `"vision.dead-letters"`.
    pub dead_letters_topic: Option<String>,
    /// Images larger than this are split into chunks. Default `"900KiB"`
    /// (under Kafka's default 1 MB `message.max.bytes`).
    pub chunk_bytes: Option<toml::Value>,
    /// Extra librdkafka producer options passed through as they are (SSL,
    /// SASL, ...), e.g. `{ "security.protocol" = "ssl" }`.
    pub librdkafka: Option<BTreeMap<String, String>>,
    /// librdkafka options whose values are read from files (secrets), e.g.
    /// `{ "sasl.password" = "kafka-password" }` with a systemd credential.
    pub librdkafka_secret_files: Option<BTreeMap<String, PathBuf>>,
    /// A backlog of more than this many records when the uplink (re)starts
    /// is sent behind a live lane: new records go first, the backlog
    /// follows with header `lane = backfill`. Default 1000; 0 keeps one
    /// lane (strict order per camera, live records wait for the backlog).
    pub live_lane_after: Option<u64>,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/`).
    /// Default `"127.0.0.1:9464"`.
    pub listen: Option<String>,
    /// `"text"` (journald-friendly, default) or `"json"`.
    pub log_format: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it was read from (for messages).
    pub source: PathBuf,
    /// This gateway's id.
    pub gateway_id: String,
    /// `[log]`.
    pub log: LogConfig,
    /// `[mqtt]`.
    pub mqtt: MqttConfig,
    /// `[detect]`.
    pub detect: DetectConfig,
    /// `[sample]`.
    pub sample: crate::sample::SampleConfig,
    /// `[[fields]]`.
    pub fields: Vec<FieldConfig>,
    /// `[replicate]`.
    pub replicate: ReplicateConfig,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
}

/// Validated `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory.
    pub path: PathBuf,
    /// Byte budget.
    pub max_bytes: u64,
    /// Policy at the budget.
    pub when_full: WhenFull,
    /// Page cache bytes.
    pub cache_bytes: u64,
    /// Free-space floor and reserve file size (`log.reserve`).
    pub reserve_bytes: u64,
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

/// Validated `[detect]`.
#[derive(Debug, Clone)]
pub struct DetectConfig {
    /// Whether the model runs.
    pub enabled: bool,
    /// With the model off: hold frames in the log instead of forwarding.
    pub hold_when_disabled: bool,
    /// Model folder.
    pub model: PathBuf,
    /// ONNX Runtime library.
    pub onnxruntime: PathBuf,
    /// Worker threads.
    pub workers: u32,
    /// Intra-op threads.
    pub intra_threads: u32,
    /// Queue length.
    pub queue: u32,
    /// Memory budget of one frame's annotation.
    pub max_frame_memory: u64,
    /// OCR detector side.
    pub ocr_side: usize,
    /// Runtime.
    pub backend: inference::engine::Backend,
    /// Raw text filter (`[detect.text]`).
    pub text: inference::ocr::TextFilter,
}

/// A declared label field and the cameras it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldConfig {
    /// Name, format (checked), required, min score.
    pub spec: inference::fields::FieldSpec,
    /// Camera id globs (`*` any run); empty: every camera.
    pub cameras: Vec<String>,
}

impl FieldConfig {
    /// Whether the field applies to frames of `camera`.
    pub fn applies(&self, camera: &str) -> bool {
        self.cameras.is_empty() || self.cameras.iter().any(|g| glob(g, camera))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Validated `[replicate]`.
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Annotation topic.
    pub annotations_topic: String,
    /// Image topic.
    pub images_topic: String,
    /// Gap topic.
    pub gaps_topic: String,
    /// Dead-letter topic.
    pub dead_letters_topic: String,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Pass-through librdkafka options.
    pub librdkafka: BTreeMap<String, String>,
    /// Pass-through librdkafka options holding secrets.
    pub librdkafka_secrets: BTreeMap<String, Secret>,
    /// Backlog (records) above which a live lane opens; 0: never.
    pub live_lane_after: u64,
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

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`log.max_bytes`), or `""` for the file as a whole.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}:", self.path.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            if p.key.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where relative secret files are looked up (systemd credentials), and
/// environment variables are read. Injected for tests.
pub trait Env {
    /// `std::env::var`.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(path, &read_file(path)?, &ProcessEnv)
    }

    /// Parses and validates config text (`path` is used in messages and to
    /// resolve nothing else).
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        let (parsed, mut problems) = raw_config(text);
        match parsed {
            Some(raw) => match Self::from_raw(path, raw, env) {
                Ok(c) if problems.is_empty() => Ok(c),
                Ok(_) => Err(ConfigError { path: path.to_owned(), problems }),
                Err(mut e) => {
                    problems.append(&mut e.problems);
                    Err(ConfigError { path: path.to_owned(), problems })
                }
            },
            None => Err(ConfigError { path: path.to_owned(), problems }),
        }
    }

    /// Validates a raw config.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn from_raw(path: &Path, raw: RawConfig, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut v = Validator { problems: Vec::new(), env };

        let gateway_id = match raw.gateway_id.or_else(host_name) {
            Some(id) => {
                if id.is_empty()
                    || id.len() > 64
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    v.problem("gateway_id", format!("{id:?} must be 1 to 64 of A-Z a-z 0-9 . _ -"));
                }
                id
            }
            None => {
                v.problem("gateway_id", "missing, and the host name could not be read".into());
                String::new()
            }
        };

        let log = LogConfig {
            path: raw.log.path.unwrap_or_else(|| {
                env.var("STATE_DIRECTORY")
                    .and_then(|s| s.split(':').next().map(|d| PathBuf::from(d).join("log")))
                    .unwrap_or_else(|| PathBuf::from("/var/lib/vision-gateway/log"))
            }),
            max_bytes: v.size("log.max_bytes", raw.log.max_bytes.as_ref(), 2 << 30),
            when_full: match raw.log.when_full.as_deref() {
                None | Some("block") => WhenFull::Block,
                Some("drop_oldest") => WhenFull::DropOldest,
                Some(o) => {
                    v.problem("log.when_full", format!("{o:?} is not a policy (use \"block\" or \"drop_oldest\")"));
                    WhenFull::Block
                }
            },
            cache_bytes: v.size("log.cache", raw.log.cache.as_ref(), 64 << 20),
            reserve_bytes: v.size("log.reserve", raw.log.reserve.as_ref(), 16 << 20),
        };
        if log.max_bytes < 4 << 20 {
            v.problem(
                "log.max_bytes",
                format!(
                    "{} is too small (at least 4MiB: it counts the index, which takes at least 512KiB, and 1MiB kept for its growth)",
                    log.max_bytes
                ),
            );
        }

        let m = raw.mqtt;
        let broker = match m.broker.as_deref() {
            None => {
                v.problem(
                    "mqtt.broker",
                    "missing (for example \"127.0.0.1:1883\" or \"mqtts://broker.local:8883\")".into(),
                );
                BrokerAddr { host: String::new(), port: 0, tls: false }
            }
            Some(b) => parse_broker(b).unwrap_or_else(|e| {
                v.problem("mqtt.broker", e);
                BrokerAddr { host: String::new(), port: 0, tls: false }
            }),
        };
        let topics = m.topics.unwrap_or_else(|| vec!["cameras/+/frames".into()]);
        if topics.is_empty() {
            v.problem("mqtt.topics", "is empty: the gateway would receive nothing".into());
        }
        for t in &topics {
            if t.split('/').filter(|l| *l == "+").count() != 1 || t.contains('#') {
                v.problem(
                    "mqtt.topics",
                    format!("{t:?} must contain exactly one `+` level (the camera id) and no `#`"),
                );
            }
        }
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
        let tls = match m.tls {
            None => None,
            Some(t) => {
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
        };
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
        // Default: 16MiB, or a quarter of a small log.
        let quarantine_max_bytes =
            v.size("mqtt.quarantine_max_bytes", m.quarantine_max_bytes.as_ref(), (16u64 << 20).min(log.max_bytes / 4));
        if quarantine_max_bytes.saturating_add(2 << 20) > log.max_bytes {
            v.problem(
                "mqtt.quarantine_max_bytes",
                format!(
                    "{} must leave 2MiB of log.max_bytes ({}) free: kept quarantined payloads must fit in the log",
                    format_size(quarantine_max_bytes),
                    format_size(log.max_bytes)
                ),
            );
        }
        let keep_alive = v.duration("mqtt.keep_alive", m.keep_alive.as_ref(), Duration::from_secs(30));
        if keep_alive > Duration::from_secs(u64::from(u16::MAX)) || keep_alive < Duration::from_secs(5) {
            v.problem(
                "mqtt.keep_alive",
                format!("{keep_alive:?} is out of range: MQTT allows 5 s to 65535 s here (a 16-bit number of seconds)"),
            );
        }
        let mqtt = MqttConfig {
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
            session_expiry: v.duration(
                "mqtt.session_expiry",
                m.session_expiry.as_ref(),
                Duration::from_secs(7 * 86_400),
            ),
            reconnect_max_backoff: v.duration(
                "mqtt.reconnect_max_backoff",
                m.reconnect_max_backoff.as_ref(),
                Duration::from_secs(30),
            ),
            username: m.username,
            password,
            tls,
        };

        let d = raw.detect;
        let detect = DetectConfig {
            enabled: d.enabled.unwrap_or(true),
            hold_when_disabled: match d.when_disabled.as_deref() {
                None | Some("forward") => false,
                Some("hold") => true,
                Some(o) => {
                    v.problem("detect.when_disabled", format!("{o:?} is not \"forward\" or \"hold\""));
                    false
                }
            },
            model: d.model.unwrap_or_else(|| PathBuf::from("/usr/share/vision-gateway/models/ppocr-v4")),
            onnxruntime: d
                .onnxruntime
                .or_else(|| env.var("ORT_DYLIB_PATH").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/usr/lib/vision-gateway/libonnxruntime.so.1.31.1")),
            workers: v.range("detect.workers", d.workers, 1, 1, 64),
            intra_threads: v.range("detect.intra_threads", d.intra_threads, 1, 1, 64),
            queue: v.range("detect.queue", d.queue, 8, 1, 4096),
            max_frame_memory: {
                let m =
                    v.size("detect.max_frame_memory", d.max_frame_memory.as_ref(), inference::DEFAULT_MAX_FRAME_MEMORY);
                if m < 128 << 20 {
                    v.problem(
                        "detect.max_frame_memory",
                        format!(
                            "{} is too small: the runtime and models alone take about 100MiB (at least 128MiB)",
                            format_size(m)
                        ),
                    );
                }
                m
            },
            ocr_side: {
                let side = v.range("detect.ocr_side", d.ocr_side, inference::ocr::DET_MIN_SIDE as u32, 32, 2016);
                if side % 32 != 0 {
                    v.problem(
                        "detect.ocr_side",
                        format!("{side} is not a multiple of 32 (the detector works in steps of 32)"),
                    );
                }
                side as usize
            },
            backend: match d.backend.as_deref().map(|b| (b, inference::engine::Backend::parse(b))) {
                None => inference::engine::Backend::Auto,
                Some((_, Some(b))) => b,
                Some((b, None)) => {
                    v.problem("detect.backend", format!("{b:?} is not \"auto\", \"onnxruntime\" or \"tract\""));
                    inference::engine::Backend::Auto
                }
            },
            text: text_filter(&mut v, &d.text),
        };

        if detect.enabled && detect.backend == inference::engine::Backend::Onnxruntime && !detect.onnxruntime.is_file()
        {
            v.problem(
                "detect.backend",
                format!(
                    "\"onnxruntime\" needs its library, and there is no file at {} (detect.onnxruntime); \
                     use \"tract\" or \"auto\" on a box without ONNX Runtime",
                    detect.onnxruntime.display()
                ),
            );
        }

        let sm = raw.sample;
        let text_pattern = sm.text_pattern.as_deref().and_then(|p| match regex::Regex::new(p) {
            Ok(r) => Some(r),
            Err(e) => {
                v.problem("sample.text_pattern", format!("{p:?} is not a regular expression: {e}"));
                None
            }
        });
        let sample = crate::sample::SampleConfig {
            every_nth: sm.every_nth.unwrap_or(100),
            labels: sm.labels.unwrap_or_default(),
            text_pattern,
            min_score: sm.min_score.unwrap_or(0.5),
            low_confidence_below: sm.low_confidence_below,
            errors: sm.errors.unwrap_or(true),
            review: sm.review.unwrap_or(true),
            min_interval: v.duration("sample.min_interval", sm.min_interval.as_ref(), Duration::ZERO),
            max_bytes_per_second: v.size("sample.max_bytes_per_second", sm.max_bytes_per_second.as_ref(), 0),
        };

        let fields = fields(&mut v, raw.fields);
        if !fields.is_empty() && !detect.enabled {
            v.problem(
                "fields",
                "label fields are read by the model, and detect.enabled is false (enable it or remove [[fields]])"
                    .into(),
            );
        }

        let r = raw.replicate;
        let brokers = r.brokers.unwrap_or_else(|| {
            v.problem(
                "replicate.brokers",
                "missing (for example \"kafka-1.example:9092,kafka-2.example:9092\")".into(),
            );
            String::new()
        });
        for b in brokers.split(',').filter(|b| !b.trim().is_empty()) {
            if let Err(e) = parse_host_port(b.trim(), None) {
                v.problem("replicate.brokers", e);
            }
        }
        let chunk_bytes = v.size("replicate.chunk_bytes", r.chunk_bytes.as_ref(), 900 << 10);
        if !(1024..=4 << 20).contains(&chunk_bytes) {
            v.problem("replicate.chunk_bytes", "must be between 1KiB and 4MiB".into());
        }
        let mut librdkafka_secrets = BTreeMap::new();
        for (k, p) in r.librdkafka_secret_files.unwrap_or_default() {
            let key = format!("replicate.librdkafka_secret_files.{k}");
            if let Some(s) = v.secret(&key, Some(&p), None) {
                librdkafka_secrets.insert(k, s);
            }
        }
        let librdkafka = r.librdkafka.unwrap_or_default();
        for (k, val) in &librdkafka {
            if let Some(why) = crate::replicate::forbidden_option(k, val) {
                v.problem(&format!("replicate.librdkafka.{k}"), format!("{val:?} cannot be set: {why}"));
            }
        }
        for k in librdkafka_secrets.keys() {
            if let Some(why) = crate::replicate::forbidden_option(k, "") {
                v.problem(&format!("replicate.librdkafka_secret_files.{k}"), format!("cannot be set: {why}"));
            }
        }
        for k in librdkafka.keys() {
            if k.contains("password") || k.contains("secret") {
                v.problem(
                    &format!("replicate.librdkafka.{k}"),
                    "looks like a secret: put it in a file and use replicate.librdkafka_secret_files".into(),
                );
            }
        }
        let replicate = ReplicateConfig {
            brokers,
            annotations_topic: r.annotations_topic.unwrap_or_else(|| "vision.annotations".into()),
            images_topic: r.images_topic.unwrap_or_else(|| "vision.images".into()),
            gaps_topic: r.gaps_topic.unwrap_or_else(|| "vision.gaps".into()),
            dead_letters_topic: r.dead_letters_topic.unwrap_or_else(|| "vision.dead-letters".into()),
            chunk_bytes,
            librdkafka,
            librdkafka_secrets,
            live_lane_after: r.live_lane_after.unwrap_or(1000),
        };

        let t = raw.telemetry;
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

        if v.problems.is_empty() {
            Ok(Config {
                source: path.to_owned(),
                gateway_id,
                log,
                mqtt,
                detect,
                sample,
                fields,
                replicate,
                telemetry: TelemetryConfig { listen, log_format },
            })
        } else {
            Err(ConfigError { path: path.to_owned(), problems: v.problems })
        }
    }
}

/// The file's text, or a problem saying why it cannot be read.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem { key: String::new(), message: format!("cannot read the file: {e}") }],
    })
}

/// What serde reads of `text` (`None` if it is not a config at all), and
/// a problem for every unknown key and for the parse error.
fn raw_config(text: &str) -> (Option<RawConfig>, Vec<Problem>) {
    let mut unknown = Vec::new();
    let parsed: Result<RawConfig, _> =
        serde_ignored::deserialize(toml::Deserializer::new(text), |p| unknown.push(p.to_string()));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| Problem { key, message: "unknown key (check the spelling; see systemd/gateway.toml)".into() })
        .collect();
    match parsed {
        Ok(raw) => (Some(raw), problems),
        Err(e) => {
            problems.push(Problem { key: String::new(), message: e.to_string().trim().replace('\n', "\n    ") });
            (None, problems)
        }
    }
}

/// `[detect.text]` over [`inference::ocr::TextFilter::default`].
fn text_filter(v: &mut Validator<'_>, t: &RawText) -> inference::ocr::TextFilter {
    let def = inference::ocr::TextFilter::default();
    let mut num = |key: &str, x: Option<f32>, default: f32, hi: f32| match x {
        Some(x) if !(0.0..=hi).contains(&x) => {
            v.problem(key, format!("{x} is out of range 0..={hi}"));
            default
        }
        Some(x) => x,
        None => default,
    };
    inference::ocr::TextFilter {
        min_score: num("detect.text.min_score", t.min_score, def.min_score, 1.0),
        min_height: num("detect.text.min_height", t.min_height, def.min_height, 10_000.0),
        // 0 turns the rule off.
        max_aspect_per_char: match num(
            "detect.text.max_aspect_per_char",
            t.max_aspect_per_char,
            def.max_aspect_per_char,
            1000.0,
        ) {
            0.0 => f32::INFINITY,
            x => x,
        },
        min_chars: t.min_chars.map_or(def.min_chars, |n| n as usize),
    }
}

impl Config {
    /// Only the `[[fields]]` and `[detect.text]` of a config file, checked
    /// (for `vision-gateway annotate --config`, which needs no broker).
    ///
    /// # Errors
    /// Unreadable file, TOML errors, unknown keys, and every problem of
    /// those two sections.
    pub fn load_fields(path: &Path) -> Result<(Vec<FieldConfig>, inference::ocr::TextFilter), ConfigError> {
        let (raw, problems) = raw_config(&read_file(path)?);
        let Some(raw) = raw else { return Err(ConfigError { path: path.to_owned(), problems }) };
        let env = ProcessEnv;
        let mut v = Validator { problems, env: &env };
        let filter = text_filter(&mut v, &raw.detect.text);
        let fields = fields(&mut v, raw.fields);
        if v.problems.is_empty() {
            Ok((fields, filter))
        } else {
            Err(ConfigError { path: path.to_owned(), problems: v.problems })
        }
    }
}

/// Checks every `[[fields]]` table; each problem names its field by
/// position (`fields[2].format`).
fn fields(v: &mut Validator<'_>, raw: Vec<RawField>) -> Vec<FieldConfig> {
    let mut out: Vec<FieldConfig> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("fields[{i}].{k}");
        let name = match f.name {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')) =>
            {
                if out.iter().any(|o| o.spec.name == n) {
                    v.problem(&key("name"), format!("{n:?} is declared twice"));
                }
                n
            }
            Some(n) => {
                v.problem(&key("name"), format!("{n:?} must be 1 to 64 of a-z 0-9 _ -"));
                n
            }
            None => {
                v.problem(&key("name"), "missing".into());
                String::new()
            }
        };
        let format = match f.format {
            Some(p) => {
                if let Err(e) = inference::fields::Pattern::parse(&p) {
                    v.problem(&key("format"), format!("{p:?}: {e}"));
                }
                p
            }
            None => {
                v.problem(&key("format"), "missing (for example 'LOT <L\\d{4}[A-FX]>')".into());
                String::new()
            }
        };
        let min_score = match f.min_score {
            Some(s) if !(0.0..=1.0).contains(&s) => {
                v.problem(&key("min_score"), format!("{s} is not within 0..=1"));
                inference::fields::DEFAULT_MIN_SCORE
            }
            Some(s) => s,
            None => inference::fields::DEFAULT_MIN_SCORE,
        };
        let cameras = f.cameras.unwrap_or_default();
        for c in &cameras {
            if c.is_empty()
                || c.len() > 64
                || !c.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))
            {
                v.problem(&key("cameras"), format!("{c:?} is not a camera id (A-Z a-z 0-9 . _ - and * for any run)"));
            }
        }
        out.push(FieldConfig {
            spec: inference::fields::FieldSpec { name, format, required: f.required.unwrap_or(true), min_score },
            cameras,
        });
    }
    out
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            (h, p.parse::<u16>().map_err(|_| format!("{s:?}: {p:?} is not a port number"))?)
        }
        _ => match default_port {
            Some(p) if !s.is_empty() => (s, p),
            _ => return Err(format!("{s:?} is not \"host:port\"")),
        },
    };
    if host.contains('@') {
        return Err(format!("{s:?}: credentials do not go in the address (use the credential settings)"));
    }
    if host.contains('/') || host.contains(' ') {
        return Err(format!("{s:?} is not \"host:port\""));
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
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

struct Validator<'a> {
    problems: Vec<Problem>,
    env: &'a dyn Env,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: String) {
        self.problems.push(Problem { key: key.to_owned(), message });
    }

    fn size(&mut self, key: &str, v: Option<&toml::Value>, default: u64) -> u64 {
        let r = match v {
            None => return default,
            Some(toml::Value::Integer(i)) => u64::try_from(*i).map_err(|_| format!("{i} is negative")),
            Some(toml::Value::String(s)) => parse_size(s),
            Some(o) => Err(format!("{o} is not a size (write a string like \"2GiB\")")),
        };
        r.unwrap_or_else(|e| {
            self.problem(key, e);
            default
        })
    }

    fn duration(&mut self, key: &str, v: Option<&toml::Value>, default: Duration) -> Duration {
        let r = match v {
            None => return default,
            Some(toml::Value::String(s)) => parse_duration(s),
            Some(o) => Err(format!("{o} is not a duration (write a string like \"30s\")")),
        };
        r.unwrap_or_else(|e| {
            self.problem(key, e);
            default
        })
    }

    fn range(&mut self, key: &str, v: Option<u32>, default: u32, lo: u32, hi: u32) -> u32 {
        let x = v.unwrap_or(default);
        if !(lo..=hi).contains(&x) {
            self.problem(key, format!("{x} is out of range {lo}..={hi}"));
            return default;
        }
        x
    }

    /// A relative secret path is a systemd credential: `$CREDENTIALS_DIRECTORY/p`,
    /// or `$CREDENTIALS_DIRECTORY/credentials_p` as the shipped unit loads
    /// the whole of `/etc/vision-gateway/credentials/` under the id
    /// `credentials` (`LoadCredential=credentials:/etc/vision-gateway/credentials`).
    fn credential_path(&self, p: &Path) -> PathBuf {
        match self.env.var("CREDENTIALS_DIRECTORY") {
            Some(dir) if p.is_relative() => {
                let direct = PathBuf::from(&dir).join(p);
                let prefixed = PathBuf::from(&dir).join(format!("credentials_{}", p.display()));
                if !direct.exists() && prefixed.exists() {
                    prefixed
                } else {
                    direct
                }
            }
            _ => p.to_owned(),
        }
    }

    fn existing_file(&mut self, key: &str, p: Option<PathBuf>, required: bool) -> Option<PathBuf> {
        match p {
            None => {
                if required {
                    self.problem(key, "missing".into());
                }
                None
            }
            Some(p) if p.is_file() => Some(p),
            Some(p) => {
                self.problem(key, format!("{} is not a readable file", p.display()));
                None
            }
        }
    }

    fn secret(&mut self, key: &str, file: Option<&Path>, var: Option<&str>) -> Option<Secret> {
        match (file, var) {
            (Some(_), Some(_)) => {
                self.problem(key, "set either a file or an environment variable, not both".into());
                None
            }
            (Some(f), None) => {
                let p = self.credential_path(f);
                match Secret::from_file(&p) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.problem(&format!("{key}_file"), e);
                        None
                    }
                }
            }
            (None, Some(name)) => match self.env.var(name) {
                Some(s) if !s.is_empty() => Some(Secret::new(s)),
                _ => {
                    self.problem(&format!("{key}_env"), format!("environment variable {name} is not set"));
                    None
                }
            },
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<String, String>);
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env() -> FakeEnv {
        FakeEnv(HashMap::new())
    }

    const MINIMAL: &str = r#"
gateway_id = "line1"
[mqtt]
broker = "127.0.0.1:1883"
[replicate]
brokers = "127.0.0.1:9092"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(Path::new("t.toml"), MINIMAL, &env()).unwrap();
        assert_eq!(c.gateway_id, "line1");
        assert_eq!(c.log.max_bytes, 2 << 30);
        assert_eq!(c.log.when_full, WhenFull::Block);
        assert_eq!(c.mqtt.topics, vec!["cameras/+/frames".to_string()]);
        assert_eq!(c.mqtt.max_frame_bytes, 16 << 20);
        assert_eq!(c.mqtt.client_id, "vision-gateway-line1");
        assert_eq!(c.replicate.chunk_bytes, 900 << 10);
        assert_eq!(c.mqtt.broker, BrokerAddr { host: "127.0.0.1".into(), port: 1883, tls: false });
    }

    #[test]
    fn three_mistakes_are_all_reported() {
        let text = r#"
gateway_id = "line1"
[log]
max_bytes = "2 gigs"
colour = "blue"
[replicate]
brokers = "127.0.0.1:9092"
"#;
        let e = Config::parse(Path::new("bad.toml"), text, &env()).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["log.colour", "log.max_bytes", "mqtt.broker"], "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("bad.toml: 3 problems:"), "{shown}");
    }

    #[test]
    fn label_fields_are_checked_all_at_once() {
        let base =
            "gateway_id = \"g\"\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n[replicate]\nbrokers = \"127.0.0.1:9092\"\n";
        let good = format!(
            "{base}[detect.text]\nmin_score = 0.9\nmax_aspect_per_char = 0\n\
             [[fields]]\nname = \"lot\"\nformat = 'LOT <L\\d{{4}}[A-FX]>'\n\
             [[fields]]\nname = \"sn\"\nformat = 'SN <\\d{{8}}>'\nrequired = false\nmin_score = 0.7\ncameras = [\"line1-*\"]\n"
        );
        let c = Config::parse(Path::new("g.toml"), &good, &env()).unwrap();
        assert_eq!(c.fields.len(), 2);
        assert_eq!(c.fields[0].spec.format, r"LOT <L\d{4}[A-FX]>");
        assert!(c.fields[0].spec.required && !c.fields[1].spec.required);
        assert_eq!(c.fields[1].spec.min_score, 0.7);
        assert!(c.fields[1].applies("line1-cam2") && !c.fields[1].applies("line2-cam1") && c.fields[0].applies("x"));
        assert_eq!(c.detect.text.min_score, 0.9);
        assert!(c.detect.text.max_aspect_per_char.is_infinite(), "0 turns the rule off");
        assert_eq!(c.detect.text.min_chars, inference::ocr::TextFilter::default().min_chars);

        let bad = format!(
            "{base}[detect.text]\nmin_score = 2.0\n\
             [[fields]]\nname = \"Lot Number\"\nformat = 'LOT <\\d{{4}}'\n\
             [[fields]]\nname = \"sn\"\n\
             [[fields]]\nname = \"sn\"\nformat = '\\q'\nmin_score = -1\ncameras = [\"a/b\"]\ncolour = 1\n"
        );
        let e = Config::parse(Path::new("g.toml"), &bad, &env()).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "fields.2.colour",
                "detect.text.min_score",
                "fields[0].name",
                "fields[0].format",
                "fields[1].format",
                "fields[2].name",
                "fields[2].format",
                "fields[2].min_score",
                "fields[2].cameras",
            ],
            "{e}"
        );
        let shown = e.to_string();
        assert!(shown.contains("at column 5: this < is not closed by >"), "{shown}");
        assert!(shown.contains("unknown escape \\q"), "{shown}");
        assert!(shown.contains("declared twice"), "{shown}");

        let off = format!("{base}[detect]\nenabled = false\n[[fields]]\nname = \"a\"\nformat = 'A\\d'\n");
        let e = Config::parse(Path::new("g.toml"), &off, &env()).unwrap_err();
        assert!(e.to_string().contains("detect.enabled is false"), "{e}");
    }

    #[test]
    fn globs() {
        assert!(glob("line1-*", "line1-cam2") && glob("*", "") && glob("a*b*c", "a12b34c") && glob("cam", "cam"));
        assert!(!glob("line1-*", "line2-cam1") && !glob("a*b", "ba") && !glob("ab*ba", "aba") && !glob("cam", "cam2"));
    }

    #[test]
    fn librdkafka_options_that_break_order_delivery_or_idempotence_are_rejected() {
        let text = format!(
            "{MINIMAL}[replicate.librdkafka]\npartitioner = \"random\"\n\"delivery.report.only.error\" = \"true\"\n\
             \"transactional.id\" = \"x\"\n\"request.required.acks\" = \"1\"\n\"max.in.flight\" = \"100\"\n\
             \"security.protocol\" = \"ssl\"\n\"compression.type\" = \"lz4\"\n"
        );
        let e = Config::parse(Path::new("k.toml"), &text, &env()).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "replicate.librdkafka.delivery.report.only.error",
                "replicate.librdkafka.max.in.flight",
                "replicate.librdkafka.partitioner",
                "replicate.librdkafka.request.required.acks",
                "replicate.librdkafka.transactional.id",
            ],
            "{e}"
        );
        assert!(e.to_string().contains("break their order"), "{e}");
    }

    #[test]
    fn combinations_that_loop_or_mislead_are_rejected_all_at_once() {
        let text = r#"
gateway_id = "line1"
[log]
max_bytes = "64MiB"
[mqtt]
broker = "user:pass@10.0.0.1:1883"
max_pixels = 0
keep_alive = "70000s"
quarantine_max_bytes = "1GiB"
[replicate]
brokers = "u:p@127.0.0.1:9092"
[detect]
batch = 4
ocr_side = 700
"#;
        let e = Config::parse(Path::new("c.toml"), text, &env()).unwrap_err();
        let mut keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "detect.ocr_side",
                "mqtt.broker",
                "mqtt.keep_alive",
                "mqtt.max_pixels",
                "mqtt.quarantine_max_bytes",
                "replicate.brokers"
            ],
            "{e}"
        );
        assert!(e.to_string().contains("700 is not a multiple of 32"), "{e}");
        assert!(e.to_string().contains("credentials do not go in the address"), "{e}");
        // A small log gets a smaller default quarantine, not an error.
        let small = format!("{MINIMAL}[log]\nmax_bytes = \"8MiB\"\n");
        let small = small.replacen("[mqtt]", "[mqtt]\nmax_frame_bytes = \"1MiB\"", 1);
        let c = Config::parse(Path::new("s.toml"), &small, &env()).unwrap();
        assert_eq!(c.mqtt.quarantine_max_bytes, 2 << 20);
    }

    #[test]
    fn the_backend_is_checked_and_onnxruntime_needs_its_library() {
        let c = Config::parse(Path::new("c.toml"), MINIMAL, &env()).unwrap();
        assert_eq!(c.detect.backend, inference::engine::Backend::Auto);
        let t = format!("{MINIMAL}[detect]\nbackend = \"tract\"\n");
        assert_eq!(
            Config::parse(Path::new("c.toml"), &t, &env()).unwrap().detect.backend,
            inference::engine::Backend::Tract
        );
        let t = format!("{MINIMAL}[detect]\nbackend = \"tensorrt\"\n");
        let e = Config::parse(Path::new("c.toml"), &t, &env()).unwrap_err();
        assert_eq!(e.problems[0].key, "detect.backend", "{e}");
        assert!(e.to_string().contains("\"tensorrt\" is not"), "{e}");
        let t = format!(
            "{MINIMAL}[detect]\nbackend = \"onnxruntime\"\nonnxruntime = \"/nonexistent/libonnxruntime.so.1.31.1\"\n"
        );
        let e = Config::parse(Path::new("c.toml"), &t, &env()).unwrap_err();
        assert!(e.to_string().contains("no file at /nonexistent/libonnxruntime.so.1.31.1"), "{e}");
        // Off, it does not matter.
        let t = t.replace("[detect]\n", "[detect]\nenabled = false\n");
        assert!(Config::parse(Path::new("c.toml"), &t, &env()).is_ok());
    }

    #[test]
    fn type_errors_are_reported_with_unknown_keys_seen_before_them() {
        let text = "typo = 1\n[detect]\nworkers = \"two\"\n";
        let e = Config::parse(Path::new("x.toml"), text, &env()).unwrap_err();
        assert_eq!(e.problems[0].key, "typo");
        assert!(e.problems[1].message.contains("invalid type"), "{e}");
    }

    #[test]
    fn secrets_come_from_credentials_and_are_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mqtt-password"), "s3cret\n").unwrap();
        let e = FakeEnv(HashMap::from([("CREDENTIALS_DIRECTORY".into(), dir.path().display().to_string())]));
        let text = r#"
gateway_id = "line1"
[mqtt]
broker = "mqtt://10.0.0.1"
username = "gw"
password_file = "mqtt-password"
[replicate]
brokers = "k:9092"
"#;
        let c = Config::parse(Path::new("t"), text, &e).unwrap();
        let pw = c.mqtt.password.as_ref().unwrap();
        assert_eq!(pw.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        // As the shipped unit loads the credentials directory.
        std::fs::remove_file(dir.path().join("mqtt-password")).unwrap();
        std::fs::write(dir.path().join("credentials_mqtt-password"), "dir-s3cret\n").unwrap();
        let c = Config::parse(Path::new("t"), text, &e).unwrap();
        assert_eq!(c.mqtt.password.as_ref().unwrap().expose(), "dir-s3cret");
    }

    #[test]
    fn missing_secret_env_and_bad_topics_are_problems() {
        let text = r#"
gateway_id = "bad id!"
[mqtt]
broker = "mqtts://broker:8883"
topics = ["cameras/#"]
password_env = "NOPE"
[replicate]
brokers = "k"
chunk_bytes = "10MiB"
"#;
        let e = Config::parse(Path::new("t"), text, &env()).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in
            ["gateway_id", "mqtt.topics", "mqtt.password_env", "mqtt.tls", "replicate.brokers", "replicate.chunk_bytes"]
        {
            assert!(keys.contains(&k), "{k} missing from {e}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/gateway.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        let c = Config::parse(&p, &text, &env()).unwrap();
        assert_eq!(c.log.when_full, WhenFull::Block);
    }
}
