//! The checks every section shares: one [`Validator`] collects every
//! problem with its key, so a file with three mistakes gets three lines;
//! sizes, durations, ranges, files, secrets and host names.

use super::{Env, Problem, Secret};
use crate::util::units::{parse_duration, parse_size};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Collects the problems of one file while its sections are checked.
pub(super) struct Validator<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) env: &'a dyn Env,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, key: &str, message: String) {
        self.problems.push(Problem { key: key.to_owned(), message });
    }

    pub(super) fn size(&mut self, key: &str, v: Option<&toml::Value>, default: u64) -> u64 {
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

    pub(super) fn duration(&mut self, key: &str, v: Option<&toml::Value>, default: Duration) -> Duration {
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

    pub(super) fn range(
        &mut self,
        key: &str,
        v: Option<u32>,
        default: u32,
        allowed: std::ops::RangeInclusive<u32>,
    ) -> u32 {
        let x = v.unwrap_or(default);
        let (lo, hi) = (*allowed.start(), *allowed.end());
        if !allowed.contains(&x) {
            self.problem(key, format!("{x} is out of range {lo}..={hi}"));
            return default;
        }
        x
    }

    /// A relative secret path is a systemd credential: `$CREDENTIALS_DIRECTORY/p`,
    /// or `$CREDENTIALS_DIRECTORY/credentials_p` as the shipped unit loads
    /// the whole of `/etc/vision-gateway/credentials/` under the id
    /// `credentials` (`LoadCredential=credentials:/etc/vision-gateway/credentials`).
    pub(super) fn credential_path(&self, p: &Path) -> PathBuf {
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

    pub(super) fn existing_file(&mut self, key: &str, p: Option<PathBuf>, required: bool) -> Option<PathBuf> {
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

    pub(super) fn secret(&mut self, key: &str, file: Option<&Path>, var: Option<&str>) -> Option<Secret> {
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

/// The machine's host name (the default gateway id).
pub(super) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `host:port` (a bare host with `default_port`), with no credentials in it.
pub(super) fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
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
