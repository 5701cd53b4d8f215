//! Test harness for the end-to-end suite: a real mosquitto on a free
//! loopback port with its own config, the real `vision-gateway` binary with
//! a temp log, metrics scraping, and fixture helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gateway::log::{DurableLog, LogOptions};
use gateway::records::FrameRecord;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mosquitto broker process, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `persistence`, mosquitto saves its sessions and queued messages
    /// when stopped with SIGTERM, so [`restart`](Self::restart) keeps what
    /// it acknowledged to publishers (as a packaged broker does).
    pub fn start_with(persistence: bool) -> Self {
        // E2E_KEEP=1 keeps mosquitto's folder with a full protocol log.
        let keep = std::env::var_os("E2E_KEEP").is_some();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        if persistence {
            // mosquitto started as root drops to its own user, which must
            // be able to write its database here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let persist = if persistence {
            format!("persistence true\npersistence_location {}/\nautosave_interval 0\n", dir.path().display())
        } else {
            "persistence false\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persist}\
                 max_queued_messages 100000\nmax_queued_bytes 0\nlog_type {}\n",
                if keep { "all" } else { "error\nlog_type warning\nlog_type notice" }
            ),
        )
        .unwrap();
        let mut m = Self { port, child: None, dir, conf };
        m.spawn();
        if keep {
            eprintln!("mosquitto folder kept: {}", m.dir.path().display());
            let kept = std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap());
            let _ = kept.keep();
        }
        m
    }

    fn spawn(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed (the test command installs Debian's mosquitto: bash tests/run)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.conf.with_file_name("mosquitto.log"))
            .unwrap();
        let child = Command::new(bin).arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto");
    }

    /// Stops mosquitto with SIGTERM (it saves its state when persistent)
    /// and starts it again on the same port.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
            let _ = c.wait();
        }
        // The port must be free again before the new process binds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
                model: repo().join("models/ppocr-v4"),
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

/// The `vision-gateway run` process.
pub struct Gateway {
    child: Option<Child>,
    pub http_port: u16,
    pub stderr: PathBuf,
}

impl Gateway {
    /// Starts the gateway and waits until `/readyz` says it is subscribed.
    pub fn start(config: &Path, http_port: u16) -> Self {
        Self::start_env(config, http_port, &[])
    }

    /// As [`start`](Self::start), with extra environment. `WATCHDOG_PID`
    /// (which must name the gateway's own pid) is set by a shell that then
    /// execs the gateway, when `WATCHDOG_USEC` is among `env`.
    pub fn start_env(config: &Path, http_port: u16, env: &[(&str, &str)]) -> Self {
        let stderr = config.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let err = std::fs::File::create(&stderr).unwrap();
        let bin = env!("CARGO_BIN_EXE_vision-gateway");
        let mut cmd = if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"", bin]).arg(config);
            c
        } else {
            let mut c = Command::new(bin);
            c.args(["run", "--config"]).arg(config);
            c
        };
        let child =
            cmd.env("RUST_LOG", "info").envs(env.iter().copied()).stdout(Stdio::null()).stderr(err).spawn().unwrap();
        let g = Self { child: Some(child), http_port, stderr };
        g.wait_for("ready (subscribed)", Duration::from_secs(60), |_| g.get("/readyz").0 == 200);
        g
    }

    /// Starts the gateway and waits only until `/healthz` answers (for a
    /// service that starts on a full disk and cannot be ready).
    pub fn start_alive(config: &Path, http_port: u16) -> Self {
        let stderr = config.with_extension("alive.log");
        let err = std::fs::File::create(&stderr).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let g = Self { child: Some(child), http_port, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.get("/healthz").0 != 200 {
            assert!(g.running(), "the gateway exited:\n{}", g.log());
            assert!(Instant::now() < deadline, "no /healthz within 60 s:\n{}", g.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    /// True while the process has not exited.
    pub fn running(&self) -> bool {
        // A process that exited and was not waited for is a zombie (Z).
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).is_ok_and(|st| !st.contains(") Z "))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Status and body of a GET on the telemetry port ((0, "") if unreachable).
    pub fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http_port)) else { return (0, String::new()) };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
            return (0, String::new());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let r = String::from_utf8_lossy(&raw).into_owned();
        let code = r.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (code, body)
    }

    /// Every sample of `/metrics`, keyed by `name{labels}`.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v))))
            .collect()
    }

    pub fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(f64::NAN)
    }

    /// Polls until `pred` holds; panics with the gateway's log after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&HashMap<String, f64>) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if pred(&self.metrics()) {
                return;
            }
            if Instant::now() > deadline {
                let mut m: Vec<String> = self.metrics().into_iter().map(|(k, v)| format!("{k} {v}")).collect();
                m.sort();
                panic!("gave up waiting for {what}; metrics:\n{}\ngateway log:\n{}", m.join("\n"), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGSTOP: the process runs no further instruction (in particular it
    /// sends no PUBACK and issues no write or fsync) until killed. A power
    /// cut is `freeze`, then `LazyFs::clear_cache`, then `kill9`: had the
    /// process run on while the cache was dropped, it could acknowledge
    /// writes the cut already lost, which no real power cut allows.
    pub fn freeze(&self) {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM; returns whether it exited 0, and its log.
    pub fn terminate(self) -> (bool, String) {
        let (ok, log, _) = self.terminate_timed();
        (ok, log)
    }

    /// SIGTERM; returns whether it exited 0, its log, and how long it took.
    pub fn terminate_timed(mut self) -> (bool, String, Duration) {
        let mut c = self.child.take().unwrap();
        let t0 = Instant::now();
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let status = c.wait().unwrap();
        (status.success(), self.log(), t0.elapsed())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every frame in the log, in log order.
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

/// Writes a camera fixture directory with `n` frames cycled from the
/// committed fixtures of `from` (for longer streams).
pub fn long_camera(dir: &Path, camera: &str, from: &str, n: usize, fps: f64) -> PathBuf {
    let d = camera_folder(dir, camera, fps);
    let src: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("cameras").join(from))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        v.sort();
        v
    };
    for i in 0..n {
        std::fs::copy(&src[i % src.len()], d.join(format!("{i:05}.jpg"))).unwrap();
    }
    d
}

/// An empty camera fixture folder (`camera.toml` only) for `replay`.
pub fn camera_folder(dir: &Path, camera: &str, fps: f64) -> PathBuf {
    let d = dir.join(camera);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("camera.toml"),
        format!("camera = \"{camera}\"\ntopic = \"cameras/{camera}/frames\"\nfps = {fps}\n"),
    )
    .unwrap();
    d
}

/// A tansu broker (Kafka protocol, sqlite storage) on a free loopback port,
/// killed on drop. `TANSU_BIN` names the binary (tests/run builds and
/// caches it).
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Tansu {
    pub fn start() -> Self {
        let bin = std::env::var_os("TANSU_BIN").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/vision-gateway/tansu-0.6.0/bin/tansu")
        });
        assert!(bin.exists(), "tansu not found at {} (bash tests/run builds it once)", bin.display());
        let mut t = Self { port: free_port(), child: None, dir: tempfile::tempdir().unwrap(), bin };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log")).unwrap();
        let child = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "tansu");
        self.index_headers();
    }

    /// tansu 0.6.0's sqlite store has no index on its `header` table, so a
    /// fetch scans every header of the topic once per record: past about
    /// 10,000 records with headers a consumer from offset 0 gets nothing
    /// for minutes. Creates the index once tansu has made its tables
    /// (Python's sqlite3 module: python3 is on every machine the suite runs
    /// on).
    fn index_headers(&self) {
        let db = self.dir.path().join("tansu.db");
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], timeout=30)\n\
                      if c.execute(\"select 1 from sqlite_master where type = 'table' and name = 'header'\").fetchone() is None:\n\
                      \x20   sys.exit(3)\n\
                      c.execute('create index if not exists header_tp on header(topition, offset_id)')\n\
                      c.commit()\n";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = Command::new("python3").arg("-c").arg(script).arg(&db).status().unwrap();
            if st.success() {
                return;
            }
            assert!(Instant::now() < deadline, "tansu did not create its tables in {} ({st})", db.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (an outage); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Creates topics with one partition (tansu does not auto-create).
    pub fn create_topics(&self, names: &[&str]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", self.brokers()).create().unwrap();
        let topics: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
        let res = rt
            .block_on(
                admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))),
            )
            .unwrap();
        for r in res {
            if let Err((t, e)) = r {
                assert_eq!(e, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists, "creating {t}: {e}");
            }
        }
    }

    /// Every message of `topic` (from the beginning), until none arrived
    /// for `idle` after the first.
    pub fn consume_all(&self, topic: &str, idle: Duration) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let c: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("e2e-{topic}-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("fetch.message.max.bytes", "5242880")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            let first = Instant::now();
            loop {
                let wait = if out.is_empty() { Duration::from_secs(60).saturating_sub(first.elapsed()) } else { idle };
                match tokio::time::timeout(wait, c.recv()).await {
                    Ok(m) => out.push(m.unwrap().detach()),
                    Err(_) => break,
                }
            }
            out
        })
    }
}

impl Tansu {
    /// Every message of partition 0 of `topic`, from the beginning up to the
    /// high watermark read first (no idle wait: an empty topic returns at
    /// once).
    pub fn consume_to_end(&self, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message;
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("e2e-end-{topic}-{}", free_port()))
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "5242880")
            .create()
            .unwrap();
        let (_, high) = c.fetch_watermarks(topic, 0, Duration::from_secs(20)).unwrap();
        let mut out = Vec::new();
        if high <= 0 {
            return out;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while out.last().is_none_or(|m: &rdkafka::message::OwnedMessage| m.offset() + 1 < high) {
            assert!(Instant::now() < deadline, "{topic}: read {} of {high} messages in 120 s", out.len());
            match c.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => out.push(m.detach()),
                Some(Err(e)) => panic!("consuming {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A header of a Kafka message as text.
pub fn header(m: &rdkafka::message::OwnedMessage, k: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    let h = m.headers()?;
    h.iter().find(|x| x.key == k).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Loads `url` in headless Chromium (Debian's `chromium`, installed by
/// tests/run) and returns the path of a PNG screenshot. Chromium is kept off
/// the network but for loopback: no background services, no QUIC.
pub fn screenshot(url: &str, dir: &Path) -> PathBuf {
    let out = dir.join("screenshot.png");
    let profile = dir.join("chromium-profile");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
            "--window-size=1400,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", out.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (Debian package `chromium`) must be installed: tests/run installs it");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish the screenshot within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium failed: {status}");
    assert!(out.exists(), "chromium wrote no screenshot");
    out
}

/// A LazyFS mount (a FUSE file system that keeps every write in its own
/// cache until it is fsynced, and drops the unsynced rest on
/// `lazyfs::clear-cache`, which is what a power cut does), unmounted on drop.
///
/// `LAZYFS_BIN` names the binary (tests/run builds it from
/// `../shared/lazyfs`); without it, the build cache is looked at. Needs root
/// and `/dev/fuse`: [`LazyFs::unavailable`] says why it cannot run.
pub struct LazyFs {
    pub mnt: PathBuf,
    fifo: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl LazyFs {
    fn bin() -> Option<PathBuf> {
        if let Some(b) = std::env::var_os("LAZYFS_BIN") {
            return Some(PathBuf::from(b)).filter(|p| p.exists());
        }
        let cache = std::env::var_os("VISION_GATEWAY_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/vision-gateway")))?;
        Some(cache.join("lazyfs-a47a5ba/lazyfs/build/lazyfs")).filter(|p| p.exists())
    }

    /// Why power-cut tests cannot run here, if they cannot.
    pub fn unavailable() -> Option<String> {
        if Self::bin().is_none() {
            return Some("LazyFS is not built (bash tests/run builds it from ../shared/lazyfs)".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("/dev/fuse is missing".into());
        }
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.ok().as_deref() != Some("0") {
            return Some("not root (FUSE with allow_other)".into());
        }
        None
    }

    /// Whether power cuts can run here; if not, prints `context: why`.
    pub fn available(context: &str) -> bool {
        match Self::unavailable() {
            Some(why) => {
                println!("{context}: {why}");
                false
            }
            None => true,
        }
    }

    /// Mounts a fresh LazyFS and waits until it serves.
    pub fn mount() -> Self {
        let bin = Self::bin().expect("LazyFS binary");
        let dir = tempfile::tempdir().unwrap();
        let (mnt, root, fifo) = (dir.path().join("mnt"), dir.path().join("root"), dir.path().join("faults.fifo"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let conf = dir.path().join("lazyfs.toml");
        std::fs::write(
            &conf,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"4gb\"\n\
                 blocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("lazyfs.log")).unwrap();
        let child = Command::new(bin)
            .arg(&mnt)
            .arg("--config-path")
            .arg(&conf)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let me = Self { mnt, fifo, child: Some(child), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            if mounts.lines().any(|l| l.split_whitespace().nth(1) == me.mnt.to_str()) && me.fifo.exists() {
                break;
            }
            assert!(Instant::now() < deadline, "LazyFS did not mount at {}", me.mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    fn command(&self, c: &str) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).unwrap();
        writeln!(f, "{c}").unwrap();
        drop(f);
        // LazyFS applies the command on its own thread; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Drops every write that was not fsynced: the power cut.
    pub fn clear_cache(&self) {
        self.command("lazyfs::clear-cache");
    }

    /// Writes everything cached to disk (what writeback does to old data).
    pub fn checkpoint(&self) {
        self.command("lazyfs::cache-checkpoint");
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A camera folder of `n` distinct JPEG frames of about `bytes` each (noise,
/// so they do not compress; a COM segment makes every frame unique).
pub fn noise_camera(dir: &Path, camera: &str, n: usize, bytes: usize, seed: u64) -> PathBuf {
    use image::codecs::jpeg::JpegEncoder;
    let d = camera_folder(dir, camera, 1000.0);
    // About 2.7 bytes per pixel for noise at quality 95.
    let px = (bytes as f64 / 2.7).max(64.0);
    let w = (px.sqrt() * 1.33) as u32;
    let h = (px / f64::from(w)).max(8.0) as u32;
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let raw: Vec<u8> = (0..w * h * 3).map(|_| next() as u8).collect();
    let mut base = Vec::new();
    JpegEncoder::new_with_quality(&mut base, 95).encode(&raw, w, h, image::ExtendedColorType::Rgb8).unwrap();
    for i in 0..n {
        let tag = format!("{camera}/{i}/{}", next());
        let mut f = base[..2].to_vec();
        f.extend_from_slice(&[0xFF, 0xFE]);
        f.extend_from_slice(&((tag.len() + 2) as u16).to_be_bytes());
        f.extend_from_slice(tag.as_bytes());
        f.extend_from_slice(&base[2..]);
        std::fs::write(d.join(format!("{i:05}.jpg")), f).unwrap();
    }
    d
}

/// Publishes `frames` (camera, camera_seq, payload) with QoS 1 and the
/// `camera_seq` user property, as fast as the broker takes them, from one
/// client; returns how many the broker acknowledged.
pub fn publish_numbered(port: u16, frames: Vec<(String, u64, Vec<u8>)>) -> usize {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut o = MqttOptions::new(format!("e2e-camera-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(true);
        o.set_max_packet_size(Some(64 << 20));
        let (client, mut ev) = AsyncClient::new(o, 64);
        let n = frames.len();
        let publisher = tokio::spawn(async move {
            for (camera, seq, payload) in frames {
                let props = PublishProperties {
                    user_properties: vec![("camera_seq".into(), seq.to_string())],
                    ..Default::default()
                };
                let topic = format!("cameras/{camera}/frames");
                if client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props).await.is_err() {
                    break;
                }
            }
            client
        });
        let mut acked = 0;
        while acked < n {
            match tokio::time::timeout(Duration::from_secs(20), ev.poll()).await {
                Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publishing to 127.0.0.1:{port}: {e}"),
                Err(_) => break,
            }
        }
        let client = publisher.await.unwrap();
        let _ = client.disconnect().await;
        acked
    })
}

/// A small valid JPEG (`w` x `h`, grey noise from `seed`).
pub fn small_jpeg(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let raw: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode(&raw, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A tmpfs of `mib` MiB mounted on a fresh folder (a small file system to
/// fill), unmounted on drop; `None` with the reason when mounting is not
/// allowed here (not root).
pub struct TmpFs {
    pub dir: tempfile::TempDir,
}

impl TmpFs {
    pub fn mount(mib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(self.dir.path()).unwrap()
    }

    /// Another program's file takes every free byte: writes until ENOSPC.
    pub fn fill(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", p.display());
                break;
            }
        }
        // The last partial chunk: byte by byte is too slow; smaller writes.
        for size in [4096usize, 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
        p
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
