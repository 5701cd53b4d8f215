//! Telemetry: how the gateway reports on itself.
//!
//! Owns the local HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, the
//! status page `/`), the renderers of the status page and the demo report
//! (`page`) and the service manager protocol (`systemd`: READY, STATUS,
//! WATCHDOG). The newest annotated frame per camera it shows is detect's
//! (`detect::latest`).

pub mod http;
pub mod metrics;
pub mod page;
pub mod status;
pub mod systemd;
