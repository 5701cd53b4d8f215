//! A gateway config file for a test, a benchmark or the demo: typed
//! settings with the defaults a local run wants, rendered to TOML in one
//! place (the keys are the gateway's, `systemd/gateway.toml` documents
//! them).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The model, or none.
#[derive(Debug, Clone, PartialEq)]
pub enum Detect {
    /// `detect.enabled = false`, with `when_disabled` ("hold" keeps the raw
    /// frames in the log, "forward" sends them on not annotated).
    Off {
        /// `detect.when_disabled`.
        when_disabled: &'static str,
    },
    /// The model in `model`, run with ONNX Runtime from `onnxruntime` (or
    /// tract, as `backend` says).
    Model {
        /// Model folder.
        model: PathBuf,
        /// `detect.onnxruntime`.
        onnxruntime: PathBuf,
        /// `detect.backend`.
        backend: &'static str,
        /// `detect.workers`.
        workers: u32,
    },
}

/// A gateway config. Fields left `None` take the gateway's defaults.
#[derive(Debug, Clone)]
pub struct GatewayToml {
    /// `gateway_id`.
    pub gateway_id: String,
    /// `log.path`.
    pub log_path: PathBuf,
    /// `log.max_bytes`, as written (`"256MiB"` or a number of bytes).
    pub max_bytes: String,
    /// `log.when_full`.
    pub when_full: Option<String>,
    /// `mqtt.broker` is `127.0.0.1:<mqtt_port>`.
    pub mqtt_port: u16,
    /// `mqtt.client_id`.
    pub client_id: Option<String>,
    /// `mqtt.max_frame_bytes`.
    pub max_frame_bytes: Option<String>,
    /// `mqtt.receive_maximum`.
    pub receive_maximum: Option<u16>,
    /// `mqtt.reconnect_max_backoff`.
    pub reconnect_max_backoff: Option<String>,
    /// `[detect]`.
    pub detect: Detect,
    /// `replicate.brokers`.
    pub kafka: String,
    /// `replicate.live_lane_after`.
    pub live_lane_after: Option<u64>,
    /// More keys of `[replicate]`, as TOML lines.
    pub replicate_extra: String,
    /// `telemetry.listen` is `127.0.0.1:<http_port>`.
    pub http_port: Option<u16>,
    /// TOML appended at the end (other tables: `[sample]`, `[[fields]]`).
    pub extra: String,
}

impl GatewayToml {
    /// A gateway on the broker at `127.0.0.1:mqtt_port` with its log at
    /// `log_path`, no model (frames held), no reachable Kafka.
    pub fn new(gateway_id: &str, log_path: &Path, mqtt_port: u16) -> Self {
        Self {
            gateway_id: gateway_id.to_owned(),
            log_path: log_path.to_owned(),
            max_bytes: "1GiB".into(),
            when_full: None,
            mqtt_port,
            client_id: None,
            max_frame_bytes: None,
            receive_maximum: None,
            reconnect_max_backoff: None,
            detect: Detect::Off { when_disabled: "hold" },
            kafka: "127.0.0.1:9".into(),
            live_lane_after: None,
            replicate_extra: String::new(),
            http_port: None,
            extra: String::new(),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let q = |s: &str| format!("{s:?}");
        let _ = writeln!(o, "gateway_id = {}", q(&self.gateway_id));
        let _ = writeln!(o, "[log]\npath = {}", q(&self.log_path.display().to_string()));
        let max = &self.max_bytes;
        let _ = writeln!(o, "max_bytes = {}", if max.parse::<u64>().is_ok() { max.clone() } else { q(max) });
        opt(&mut o, "when_full", self.when_full.as_deref().map(q));
        let _ = writeln!(o, "[mqtt]\nbroker = \"127.0.0.1:{}\"", self.mqtt_port);
        opt(&mut o, "client_id", self.client_id.as_deref().map(q));
        opt(&mut o, "max_frame_bytes", self.max_frame_bytes.as_deref().map(q));
        opt(&mut o, "receive_maximum", self.receive_maximum.map(|n| n.to_string()));
        opt(&mut o, "reconnect_max_backoff", self.reconnect_max_backoff.as_deref().map(q));
        match &self.detect {
            Detect::Off { when_disabled } => {
                let _ = writeln!(o, "[detect]\nenabled = false\nwhen_disabled = {}", q(when_disabled));
            }
            Detect::Model { model, onnxruntime, backend, workers } => {
                let _ = writeln!(o, "[detect]\nmodel = {}", q(&model.display().to_string()));
                let _ = writeln!(o, "onnxruntime = {}", q(&onnxruntime.display().to_string()));
                let _ = writeln!(o, "backend = {}\nworkers = {workers}", q(backend));
            }
        }
        let _ = writeln!(o, "[replicate]\nbrokers = {}", q(&self.kafka));
        opt(&mut o, "live_lane_after", self.live_lane_after.map(|n| n.to_string()));
        if !self.replicate_extra.is_empty() {
            let _ = writeln!(o, "{}", self.replicate_extra);
        }
        if let Some(port) = self.http_port {
            let _ = writeln!(o, "[telemetry]\nlisten = \"127.0.0.1:{port}\"");
        }
        if !self.extra.is_empty() {
            let _ = writeln!(o, "{}", self.extra);
        }
        o
    }

    /// Writes the file at `path`; returns `path`.
    ///
    /// # Errors
    /// The write's.
    pub fn write(&self, path: &Path) -> std::io::Result<PathBuf> {
        std::fs::write(path, self.render())?;
        Ok(path.to_owned())
    }
}

fn opt(o: &mut String, key: &str, value: Option<String>) {
    if let Some(v) = value {
        let _ = writeln!(o, "{key} = {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_set_and_nothing_else() {
        let mut t = GatewayToml::new("gw-1", Path::new("/var/x/log"), 1883);
        t.when_full = Some("drop_oldest".into());
        t.http_port = Some(9464);
        t.live_lane_after = Some(8);
        let text = t.render();
        assert_eq!(
            text,
            "gateway_id = \"gw-1\"\n[log]\npath = \"/var/x/log\"\nmax_bytes = \"1GiB\"\nwhen_full = \"drop_oldest\"\n\
             [mqtt]\nbroker = \"127.0.0.1:1883\"\n[detect]\nenabled = false\nwhen_disabled = \"hold\"\n\
             [replicate]\nbrokers = \"127.0.0.1:9\"\nlive_lane_after = 8\n[telemetry]\nlisten = \"127.0.0.1:9464\"\n"
        );
        t.max_bytes = "4194304".into();
        assert!(t.render().contains("max_bytes = 4194304\n"));
    }
}
