//! What `vision-gateway check-config` prints for a valid file: what the
//! gateway would run with, the runtime it would pick included (so a box
//! without ONNX Runtime shows `tract` before it starts).

use super::Config;
use crate::util::units::format_size;
use inference::engine::{Backend, EngineKind};
use std::fmt::Write;

/// The summary of a valid config, one setting per line.
pub fn summary(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}: OK", c.source.display());
    let _ = writeln!(o, "  gateway_id   {}", c.gateway_id);
    let budget = format_size(c.log.max_bytes);
    let _ = writeln!(o, "  log          {} (budget {budget}, when full: {:?})", c.log.path.display(), c.log.when_full);
    let b = &c.mqtt.broker;
    let tls = if b.tls { " (TLS)" } else { "" };
    let _ = writeln!(o, "  mqtt         {}:{}{tls} topics {:?}", b.host, b.port, c.mqtt.topics);
    let _ = writeln!(o, "  model        {}", c.detect.model.display());
    let _ = writeln!(o, "  runtime      {}", runtime(c));
    if c.fields.is_empty() {
        let _ = writeln!(o, "  fields       none ([[fields]] declares label fields)");
    }
    for f in &c.fields {
        let required = if f.spec.required { " (required)" } else { "" };
        let on = if f.cameras.is_empty() { String::new() } else { format!(" on {}", f.cameras.join(", ")) };
        let _ = writeln!(o, "  field        {} = {}{required}{on}", f.spec.name, f.spec.format);
    }
    let _ = writeln!(o, "  kafka        {}", c.replicate.brokers);
    let _ = writeln!(o, "  security     {}", c.replicate.security);
    match &c.replicate.claim_check {
        Some(cc) => writeln!(o, "  claim check  {}", cc.summary()),
        None => writeln!(o, "  claim check  off (sampled images go to Kafka in chunks)"),
    }
    .ok();
    let _ = writeln!(o, "  telemetry    http://{}", c.telemetry.listen);
    o
}

/// The engine the model would run on, and why when `auto` chose it.
fn runtime(c: &Config) -> String {
    if !c.detect.enabled {
        return "none (detect.enabled = false)".into();
    }
    let manifest = std::fs::read_to_string(c.detect.model.join("model.toml"))
        .map_err(|e| e.to_string())
        .and_then(|t| inference::Manifest::parse(&t, &c.detect.model).map_err(|e| e.to_string()));
    let m = match manifest {
        Ok(m) => m,
        Err(e) => return format!("unknown: {e}"),
    };
    let choice = c.detect.backend.over(m.backend);
    let kind = choice.resolve(&c.detect.onnxruntime);
    let library = c.detect.onnxruntime.display();
    let why = match choice {
        Backend::Auto if kind == EngineKind::Tract => format!(" (auto: no ONNX Runtime library at {library})"),
        Backend::Auto => format!(" (auto: {library})"),
        _ => String::new(),
    };
    format!("{}{why}", kind.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_without_onnx_runtime_is_told_it_runs_tract() {
        let text = format!(
            "gateway_id = \"edge-1\"\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n[replicate]\nbrokers = \"127.0.0.1:9092\"\n\
             [detect]\nmodel = \"{}/../models/ppocr-v6\"\nonnxruntime = \"/nonexistent/libonnxruntime.so\"\n\
             [[fields]]\nname = \"lot\"\nformat = 'LOT <L\\d{{4}}>'\ncameras = [\"line1-*\"]\n",
            env!("CARGO_MANIFEST_DIR")
        );
        let c = Config::parse(std::path::Path::new("t.toml"), &text, &super::super::ProcessEnv).unwrap();
        let s = summary(&c);
        assert!(s.starts_with("t.toml: OK\n"), "{s}");
        assert!(s.contains("  gateway_id   edge-1\n"), "{s}");
        assert!(s.contains("  mqtt         127.0.0.1:1883 topics [\"cameras/+/frames\"]\n"), "{s}");
        assert!(s.contains("(auto: no ONNX Runtime library at /nonexistent/libonnxruntime.so)"), "{s}");
        assert!(s.contains("  field        lot = LOT <L\\d{4}> (required) on line1-*\n"), "{s}");
        assert!(s.contains("  kafka        127.0.0.1:9092\n"), "{s}");
    }

    #[test]
    fn a_disabled_model_has_no_runtime() {
        let text =
            "gateway_id = \"e\"\n[mqtt]\nbroker = \"h:1\"\n[replicate]\nbrokers = \"k:9\"\n[detect]\nenabled = false\n";
        let c = Config::parse(std::path::Path::new("t.toml"), text, &super::super::ProcessEnv).unwrap();
        let s = summary(&c);
        assert!(s.contains("  runtime      none (detect.enabled = false)\n"), "{s}");
        assert!(s.contains("  fields       none"), "{s}");
    }
}
