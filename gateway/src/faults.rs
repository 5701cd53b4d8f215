//! Fault injection for tests and chaos runs, from `VISION_GATEWAY_FAULTS`.
//!
//! Owns nothing in production: with the variable unset (the only supported
//! way to run the service) every fault is off. It exists so that the
//! end-to-end tests can make the real binary fail in ways real inputs
//! cannot be made to on demand. The value is a comma-separated list:
//!
//! - `panic_camera=<id>`: the model run panics on frames of that camera;
//! - `replicate_fail`: the replicate stage fails for good as it starts;
//! - `detect_delay_ms=<n>`: every model run takes `n` ms longer (a slow
//!   model, so the log fills behind detect);
//! - `replicate_unbounded`: replicate is no longer bounded by the detect
//!   cursor. This puts back the bug of issue 12 (a dead letter lets
//!   replicate skip frames the model has not annotated yet) so the chaos
//!   checker can show that it finds it.

/// The faults switched on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Frames of this camera make the model run panic.
    pub panic_camera: Option<String>,
    /// The replicate stage fails permanently.
    pub replicate_fail: bool,
    /// Extra time per model run, in ms.
    pub detect_delay_ms: u64,
    /// Replicate reads up to the durable seq, ignoring the detect cursor.
    pub replicate_unbounded: bool,
}

impl Faults {
    /// Parses `VISION_GATEWAY_FAULTS` (unknown entries are ignored with a
    /// warning).
    pub fn from_env() -> Self {
        std::env::var("VISION_GATEWAY_FAULTS").map(|v| Self::parse(&v)).unwrap_or_default()
    }

    fn parse(v: &str) -> Self {
        let mut f = Faults::default();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("panic_camera", id)) => f.panic_camera = Some(id.to_owned()),
                Some(("detect_delay_ms", ms)) if ms.parse::<u64>().is_ok() => {
                    f.detect_delay_ms = ms.parse().unwrap_or(0);
                }
                None if item == "replicate_fail" => f.replicate_fail = true,
                None if item == "replicate_unbounded" => f.replicate_unbounded = true,
                _ => tracing::warn!(fault = item, "unknown entry in VISION_GATEWAY_FAULTS ignored"),
            }
        }
        if f != Faults::default() {
            tracing::warn!(faults = ?f, "fault injection is on (VISION_GATEWAY_FAULTS): this is for tests only");
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        let f = Faults::parse("panic_camera=camP, replicate_fail,bogus,detect_delay_ms=250,detect_delay_ms=x");
        assert_eq!(
            f,
            Faults {
                panic_camera: Some("camP".into()),
                replicate_fail: true,
                detect_delay_ms: 250,
                replicate_unbounded: false
            }
        );
        assert!(Faults::parse("replicate_unbounded").replicate_unbounded);
        assert_eq!(Faults::parse(""), Faults::default());
    }
}
