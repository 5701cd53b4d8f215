//! Telemetry: how the gateway reports on itself.
//!
//! Owns the local HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, the
//! status page `/`), the renderers of the status page and the demo report
//! (`page`), the newest annotated frame per camera (`view`), the service
//! manager protocol (`systemd`: READY, STATUS, WATCHDOG), and a rate
//! limiter for per-frame warnings, so a camera sending garbage at 30 fps
//! cannot flood the journal.

pub mod http;
pub mod page;
mod ratelimit;
pub mod systemd;
pub mod view;

pub use ratelimit::RateLimiter;
