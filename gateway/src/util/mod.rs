//! Small helpers every layer may use; the bottom layer with `records`: it
//! imports nothing of the crate.
//!
//! - [`ratelimit`]: a rate limiter for per-frame warnings, so a camera
//!   sending garbage at 30 fps cannot flood the journal;
//! - [`units`]: sizes and durations as people write them (`2GiB`, `30s`);
//! - [`pem`]: certificates and keys for TLS, with errors naming the file;
//! - [`threads`]: this process's thread ids and their CPU time (`/proc`);
//! - [`now_ms`]: wall-clock time as the records carry it.

pub mod pem;
pub mod ratelimit;
pub mod threads;
pub mod units;

pub use ratelimit::RateLimiter;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
