//! Telemetry: logs, and (with the operations issue) metrics and health.
//!
//! Owns how the gateway reports on itself: the local HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`) and a rate limiter for per-frame
//! warnings, so a camera sending garbage at 30 fps cannot flood the journal.

pub mod http;
mod ratelimit;

pub use ratelimit::RateLimiter;
