//! `[replicate.claim_check]`: sampled images at or over a size go to an
//! S3-compatible object store and Kafka gets a small reference record.
//!
//! Promises: off unless `enabled = true`; when on, every setting the store
//! client needs is checked here (endpoint, bucket, credentials from secret
//! files or the environment, never inline and never the instance-metadata
//! service), so a mistake is named before anything starts.

use super::{Secret, Validator};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[replicate.claim_check]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawClaimCheck {
    /// Turns the claim check on. Default false.
    pub enabled: Option<bool>,
    /// The store's URL, `https://s3.example:9000` (`http://` only with
    /// `allow_http = true`). Required when enabled.
    pub endpoint: Option<String>,
    /// Plain HTTP to the store (a store on the box's own network). Default
    /// false.
    pub allow_http: Option<bool>,
    /// The bucket. Required when enabled.
    pub bucket: Option<String>,
    /// Signing region. Default `"us-east-1"`.
    pub region: Option<String>,
    /// Key prefix. Default `"vision-gateway"`.
    pub prefix: Option<String>,
    /// Images of at least this size go to the store. Default: the chunk
    /// size (`replicate.chunk_bytes`).
    pub min_bytes: Option<toml::Value>,
    /// File holding the access key id (a relative path is a systemd
    /// credential).
    pub access_key_id_file: Option<PathBuf>,
    /// Environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// PEM file of a CA to trust for the store's certificate, besides the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// Uploads in flight at most. Default 4.
    pub max_in_flight: Option<u32>,
    /// Upload rate limit, bytes per second (`"2MiB"`); 0: none. Default 0.
    pub max_bytes_per_second: Option<toml::Value>,
    /// Time for one request, sized to the uplink. Default `"60s"`.
    pub timeout: Option<toml::Value>,
    /// Time to connect. Default `"10s"`.
    pub connect_timeout: Option<toml::Value>,
}

/// Validated `[replicate.claim_check]` (present only when enabled).
#[derive(Debug, Clone)]
pub struct ClaimCheckConfig {
    /// Store URL.
    pub endpoint: String,
    /// Plain HTTP allowed.
    pub allow_http: bool,
    /// Bucket.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Key prefix (no leading or trailing `/`).
    pub prefix: String,
    /// Images of at least this many bytes go to the store.
    pub min_bytes: u64,
    /// Access key id.
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Extra CA for the store's certificate.
    pub ca_file: Option<PathBuf>,
    /// Uploads in flight at most.
    pub max_in_flight: usize,
    /// Upload bytes per second; 0: unlimited.
    pub max_bytes_per_second: u64,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl ClaimCheckConfig {
    /// One line for `check-config` (no secret in it).
    pub fn summary(&self) -> String {
        let rate = match self.max_bytes_per_second {
            0 => "no rate limit".to_owned(),
            r => format!("at most {} B/s", r),
        };
        format!(
            "images >= {} B to {}/{}/{} ({} uploads in flight, {rate}, timeout {:?}), credentials from secrets",
            self.min_bytes,
            self.endpoint.trim_end_matches('/'),
            self.bucket,
            self.prefix,
            self.max_in_flight,
            self.timeout
        )
    }
}

/// Checks `[replicate.claim_check]`; `None` when it is off.
pub(super) fn validate(v: &mut Validator<'_>, r: Option<RawClaimCheck>, chunk_bytes: u64) -> Option<ClaimCheckConfig> {
    let r = r?;
    if !r.enabled.unwrap_or(false) {
        return None;
    }
    let key = |k: &str| format!("replicate.claim_check.{k}");
    let allow_http = r.allow_http.unwrap_or(false);
    let endpoint = r.endpoint.unwrap_or_default();
    if endpoint.is_empty() {
        v.problem(&key("endpoint"), "missing (for example \"https://s3.example:9000\")".into());
    } else if endpoint.starts_with("http://") && !allow_http {
        v.problem(&key("endpoint"), format!("{endpoint:?} is plain HTTP: use https, or set allow_http = true"));
    } else if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        v.problem(&key("endpoint"), format!("{endpoint:?} is not an http(s) URL"));
    } else if endpoint.contains('@') {
        v.problem(&key("endpoint"), "credentials do not go in the URL: use the secret files".into());
    }
    let bucket = r.bucket.unwrap_or_default();
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        v.problem(&key("bucket"), format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')"));
    }
    let prefix = r.prefix.unwrap_or_else(|| "vision-gateway".into()).trim_matches('/').to_owned();
    if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        v.problem(&key("prefix"), format!("{prefix:?}: no empty, '.' or '..' parts"));
    }
    let id = v.secret(&key("access_key_id"), r.access_key_id_file.as_deref(), r.access_key_id_env.as_deref());
    let secret =
        v.secret(&key("secret_access_key"), r.secret_access_key_file.as_deref(), r.secret_access_key_env.as_deref());
    for (name, s) in [("access_key_id", &id), ("secret_access_key", &secret)] {
        if s.is_none() && !v.problems.iter().any(|p| p.key.starts_with(&key(name))) {
            v.problem(
                &key(&format!("{name}_file")),
                "missing: the store's credentials come from a secret file or environment variable \
                 (the gateway never asks an instance-metadata service)"
                    .into(),
            );
        }
    }
    let min_bytes = v.size(&key("min_bytes"), r.min_bytes.as_ref(), chunk_bytes);
    if min_bytes == 0 {
        v.problem(&key("min_bytes"), "must be at least 1 byte".into());
    }
    let ca_file = r.ca_file.map(|p| v.credential_path(&p));
    let ca_file = v.existing_file(&key("ca_file"), ca_file, false);
    let max_in_flight = v.range(&key("max_in_flight"), r.max_in_flight, 4, 1..=32) as usize;
    let max_bytes_per_second = v.size(&key("max_bytes_per_second"), r.max_bytes_per_second.as_ref(), 0);
    let timeout = v.duration(&key("timeout"), r.timeout.as_ref(), Duration::from_secs(60));
    let connect_timeout = v.duration(&key("connect_timeout"), r.connect_timeout.as_ref(), Duration::from_secs(10));
    for (k, d) in [("timeout", timeout), ("connect_timeout", connect_timeout)] {
        if d.is_zero() {
            v.problem(&key(k), "must be more than 0".into());
        }
    }
    Some(ClaimCheckConfig {
        endpoint,
        allow_http,
        bucket,
        region: r.region.unwrap_or_else(|| "us-east-1".into()),
        prefix,
        min_bytes,
        access_key_id: id.unwrap_or_else(|| Secret::new(String::new())),
        secret_access_key: secret.unwrap_or_else(|| Secret::new(String::new())),
        ca_file,
        max_in_flight,
        max_bytes_per_second,
        timeout,
        connect_timeout,
    })
}
