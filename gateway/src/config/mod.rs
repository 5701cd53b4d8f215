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

mod claim_check;
mod codes;
mod detect;
mod fields;
mod kafka_security;
mod log;
mod mqtt;
mod replicate;
mod sample;
mod secret;
mod summary;
mod telemetry;
#[cfg(test)]
mod tests;
mod validator;

pub use claim_check::{ClaimCheckConfig, RawClaimCheck};
pub use codes::RawCodes;
pub use detect::{DetectConfig, RawDetect, RawText};
pub use fields::{glob, FieldConfig, RawField};
pub use kafka_security::{KafkaSecurity, Protocol};
pub use log::{LogConfig, RawLog};
pub use mqtt::{parse_broker, BrokerAddr, MqttConfig, RawMqtt, RawTls, TlsConfig};
pub use replicate::{forbidden_option, RawReplicate, ReplicateConfig};
pub use sample::{RawSample, SampleConfig};
pub use secret::Secret;
pub use summary::summary;
pub use telemetry::{LogFormat, RawTelemetry, TelemetryConfig};

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use validator::{host_name, parse_host_port, Validator};

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

    /// Validates a raw config: each section by its own module, then the
    /// checks across sections.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn from_raw(path: &Path, raw: RawConfig, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut v = Validator { problems: Vec::new(), env };
        let gateway_id = gateway_id(&mut v, raw.gateway_id);
        let log = log::validate(&mut v, raw.log);
        let mqtt = mqtt::validate(&mut v, raw.mqtt, &gateway_id, &log);
        let detect = detect::validate(&mut v, raw.detect);
        let sample = sample::validate(&mut v, raw.sample);
        let fields = fields::validate(&mut v, raw.fields);
        if !fields.is_empty() && !detect.enabled {
            v.problem(
                "fields",
                "label fields are read by the model, and detect.enabled is false (enable it or remove [[fields]])"
                    .into(),
            );
        }
        if detect.codes.is_none() {
            for (i, f) in fields.iter().enumerate().filter(|(_, f)| f.spec.verify.is_some()) {
                v.problem(
                    &format!("fields[{i}].verify"),
                    format!(
                        "field {:?} is checked against a code, and codes are not read (add [detect.codes])",
                        f.spec.name
                    ),
                );
            }
        }
        let replicate = replicate::validate(&mut v, raw.replicate);
        let telemetry = telemetry::validate(&mut v, raw.telemetry);
        if v.problems.is_empty() {
            Ok(Config { source: path.to_owned(), gateway_id, log, mqtt, detect, sample, fields, replicate, telemetry })
        } else {
            Err(ConfigError { path: path.to_owned(), problems: v.problems })
        }
    }
}

/// `gateway_id`, or the host name.
fn gateway_id(v: &mut Validator<'_>, raw: Option<String>) -> String {
    match raw.or_else(host_name) {
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
    let parsed: Result<RawConfig, _> = serde_ignored::deserialize(toml::Deserializer::new(text), |p| {
        // serde_ignored writes `?` for an optional table's level.
        unknown.push(p.to_string().replace(".?.", "."))
    });
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

/// What `annotate --config` takes from a config file.
#[derive(Debug, Clone)]
pub struct LabelConfig {
    /// `[[fields]]`.
    pub fields: Vec<FieldConfig>,
    /// `[detect.text]`.
    pub text: inference::ocr::TextFilter,
    /// `[detect.codes]` (`None`: not read).
    pub codes: Option<inference::codes::CodeOptions>,
}

impl Config {
    /// Only the `[[fields]]`, `[detect.text]` and `[detect.codes]` of a
    /// config file, checked (for `vision-gateway annotate --config`, which
    /// needs no broker).
    ///
    /// # Errors
    /// Unreadable file, TOML errors, unknown keys, and every problem of
    /// those three sections.
    pub fn load_fields(path: &Path) -> Result<LabelConfig, ConfigError> {
        let (raw, problems) = raw_config(&read_file(path)?);
        let Some(raw) = raw else { return Err(ConfigError { path: path.to_owned(), problems }) };
        let env = ProcessEnv;
        let mut v = Validator { problems, env: &env };
        let text = detect::text_filter(&mut v, &raw.detect.text);
        let codes = codes::validate(&mut v, raw.detect.codes);
        let fields = fields::validate(&mut v, raw.fields);
        if v.problems.is_empty() {
            Ok(LabelConfig { fields, text, codes })
        } else {
            Err(ConfigError { path: path.to_owned(), problems: v.problems })
        }
    }
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
    pub sample: SampleConfig,
    /// `[[fields]]`.
    pub fields: Vec<FieldConfig>,
    /// `[replicate]`.
    pub replicate: ReplicateConfig,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
}
