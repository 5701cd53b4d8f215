//! `[log]`: where the durable log lives and its byte budget.

use super::Validator;
use crate::log::WhenFull;
use serde::Deserialize;
use std::path::PathBuf;

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

/// Checks `[log]`; the default path is systemd's `$STATE_DIRECTORY/log`.
pub(super) fn validate(v: &mut Validator<'_>, raw: RawLog) -> LogConfig {
    let log = LogConfig {
        path: raw.path.unwrap_or_else(|| {
            v.env
                .var("STATE_DIRECTORY")
                .and_then(|s| s.split(':').next().map(|d| PathBuf::from(d).join("log")))
                .unwrap_or_else(|| PathBuf::from("/var/lib/vision-gateway/log"))
        }),
        max_bytes: v.size("log.max_bytes", raw.max_bytes.as_ref(), 2 << 30),
        when_full: match raw.when_full.as_deref() {
            None | Some("block") => WhenFull::Block,
            Some("drop_oldest") => WhenFull::DropOldest,
            Some(o) => {
                v.problem("log.when_full", format!("{o:?} is not a policy (use \"block\" or \"drop_oldest\")"));
                WhenFull::Block
            }
        },
        cache_bytes: v.size("log.cache", raw.cache.as_ref(), 64 << 20),
        reserve_bytes: v.size("log.reserve", raw.reserve.as_ref(), 16 << 20),
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
    log
}
