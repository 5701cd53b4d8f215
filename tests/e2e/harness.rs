//! The end-to-end suite's own helpers: where the repository's files are,
//! a test gateway's settings, and reading its log back. Processes,
//! fixtures and frames come from the test-support crate (`testkit`),
//! shared with the demo and the benches.

use gateway::log::{DurableLog, LogOptions};
use gateway::records::FrameRecord;
use std::path::{Path, PathBuf};

pub use testkit::browser::screenshot;
pub use testkit::cameras::{camera_folder, noise_camera, publish_numbered, small_jpeg};
pub use testkit::gateway::Gateway;
pub use testkit::lazyfs::LazyFs;
pub use testkit::mosquitto::{Mosquitto, Persistence};
pub use testkit::tansu::{header, Tansu};
pub use testkit::tmpfs::TmpFs;

/// The `vision-gateway` binary cargo built for this test.
pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vision-gateway"))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    testkit::net::free_port().unwrap()
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ONNX Runtime library fetched by `models/fetch` for this machine.
pub fn onnxruntime() -> PathBuf {
    repo().join("models/runtime").join(std::env::consts::ARCH).join("libonnxruntime.so.1.31.1")
}

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// A camera folder of `n` frames cycled from the committed camera fixture
/// `from` (for longer streams).
pub fn long_camera(dir: &Path, camera: &str, from: &str, n: usize, fps: f64) -> PathBuf {
    testkit::cameras::long_camera(dir, camera, &fixtures().join("cameras").join(from), n, fps)
}

/// Settings of a test gateway's config file.
pub struct Settings {
    pub gateway_id: String,
    pub mqtt_port: u16,
    pub http_port: u16,
    pub log_dir: PathBuf,
    pub max_bytes: &'static str,
    pub when_full: &'static str,
    pub max_frame_bytes: &'static str,
    /// Kafka bootstrap servers (default: nothing listens there).
    pub kafka: String,
    /// Extra TOML appended to the config (e.g. a [sample] table).
    pub extra: String,
    /// Extra keys of the `[replicate]` table (e.g. `live_lane_after = 8`).
    pub replicate_extra: String,
    /// Run the bundled model (the intake tests keep raw frames instead).
    pub detect: bool,
    /// `detect.when_disabled` ("hold" keeps raw frames for the intake tests).
    pub when_disabled: &'static str,
    /// `detect.backend`.
    pub backend: &'static str,
    /// `detect.onnxruntime` (default: the fetched library).
    pub onnxruntime: PathBuf,
}

impl Settings {
    pub fn new(dir: &Path, mqtt_port: u16) -> Self {
        Self {
            gateway_id: "e2e-gw".into(),
            mqtt_port,
            http_port: free_port(),
            log_dir: dir.join("log"),
            max_bytes: "256MiB",
            when_full: "block",
            max_frame_bytes: "1MiB",
            detect: false,
            when_disabled: "hold",
            backend: "auto",
            onnxruntime: onnxruntime(),
            kafka: "127.0.0.1:9".into(),
            extra: String::new(),
            replicate_extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let mut t = testkit::config::GatewayToml::new(&self.gateway_id, &self.log_dir, self.mqtt_port);
        t.max_bytes = self.max_bytes.into();
        t.when_full = Some(self.when_full.into());
        t.max_frame_bytes = Some(self.max_frame_bytes.into());
        t.reconnect_max_backoff = Some("1s".into());
        t.detect = if self.detect {
            testkit::config::Detect::Model {
                model: repo().join("models/ppocr-v6"),
                onnxruntime: self.onnxruntime.clone(),
                backend: self.backend,
                workers: 1,
            }
        } else {
            testkit::config::Detect::Off { when_disabled: self.when_disabled }
        };
        t.kafka = self.kafka.clone();
        t.replicate_extra = self.replicate_extra.clone();
        t.http_port = Some(self.http_port);
        t.extra = self.extra.clone();
        t.render()
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.toml()).unwrap();
        path.to_owned()
    }

    pub fn open_log(&self) -> DurableLog {
        let mut o = LogOptions::new(&self.log_dir, &self.gateway_id);
        o.max_bytes = gateway::util::units::parse_size(self.max_bytes).unwrap();
        DurableLog::open(o).unwrap()
    }
}

/// Every frame in the log, in log order.
/// The gateway's four default topics, created on a test broker.
pub const TOPICS: [&str; 4] = ["vision.annotations", "vision.images", "vision.gaps", "vision.dead-letters"];

/// Every annotation record on the broker's annotations topic, each checked
/// against its `frame_id` header and its key (the camera).
pub fn kafka_annotations(t: &Tansu) -> Vec<gateway::records::FrameAnnotation> {
    use rdkafka::Message;
    t.consume_all("vision.annotations", std::time::Duration::from_secs(5))
        .iter()
        .map(|m| {
            let fa: gateway::records::FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(header(m, "frame_id").as_deref(), Some(fa.frame_id.as_str()));
            assert_eq!(m.key(), Some(fa.camera.as_bytes()));
            fa
        })
        .collect()
}

pub fn frames(log: &DurableLog) -> Vec<(u64, FrameRecord)> {
    log.read_frames(0, usize::MAX).unwrap()
}

/// Every annotation in the log, in log order, each checked against its key.
pub fn annotations(log: &DurableLog) -> Vec<gateway::records::FrameAnnotation> {
    log.read_blobs(gateway::records::Area::Annotations, 0, u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, b)| {
            let a: gateway::records::FrameAnnotation = serde_json::from_slice(&b).unwrap();
            assert_eq!(a.seq, seq, "annotation stored under its frame's sequence number");
            a
        })
        .collect()
}
