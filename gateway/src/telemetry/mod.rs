//! Telemetry: logs, and (with the operations issue) metrics and health.
//!
//! Owns how the gateway reports on itself. For now: a rate limiter for
//! per-frame warnings, so a camera sending garbage at 30 fps cannot flood
//! the journal.

mod ratelimit;

pub use ratelimit::RateLimiter;
