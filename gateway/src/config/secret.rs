//! Secrets (passwords, keys) read from files or the environment.
//!
//! Promise: a [`Secret`]'s value is only reachable through
//! [`Secret::expose`]; `Debug` and `Display` print `[redacted]`.

use std::fmt;
use std::path::Path;

/// A secret string that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// Reads a secret file, trimming one trailing newline.
    ///
    /// # Errors
    /// A message naming the file (never its content).
    pub fn from_file(p: &Path) -> Result<Self, String> {
        let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read secret file {}: {e}", p.display()))?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        let s = s.strip_suffix('\r').unwrap_or(s);
        if s.is_empty() {
            return Err(format!("secret file {} is empty", p.display()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
