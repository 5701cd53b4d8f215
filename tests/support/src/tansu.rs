//! tansu (a Kafka-protocol broker with sqlite storage) on a free loopback
//! port, with the index its sqlite store lacks, topic creation and
//! consumers that read a topic back for the replication tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken fixture is a failed test, with the reason"
)]

use crate::net::{free_port, wait_for_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu broker (Kafka protocol, sqlite storage) on a free loopback port,
/// killed on drop. `TANSU_BIN` names the binary (tests/run builds and
/// caches it).
pub struct Tansu {
    /// Its listener on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    /// Its sqlite store and log (`tansu.log`).
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it advertises in metadata (a TLS proxy's in front of it).
    pub advertised: u16,
    /// Whether clients must authenticate (SASL/SCRAM).
    authentication: bool,
    /// librdkafka options of the test's own clients (admin, consumers):
    /// TLS and SASL settings when it sits behind a proxy or requires them.
    pub client: Vec<(String, String)>,
}

impl Tansu {
    /// Starts tansu and indexes its store.
    pub fn start() -> Self {
        Self::start_advertising(None)
    }

    /// Starts tansu advertising `127.0.0.1:advertised` (a TLS proxy's port)
    /// instead of its own.
    pub fn start_advertising(advertised: Option<u16>) -> Self {
        let bin = std::env::var_os("TANSU_BIN").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/vision-gateway/tansu-0.6.0/bin/tansu")
        });
        assert!(bin.exists(), "tansu not found at {} (bash tests/run builds it once)", bin.display());
        let port = free_port().unwrap();
        let advertised = advertised.unwrap_or(port);
        let dir = tempfile::tempdir().unwrap();
        let mut t = Self { port, child: None, dir, bin, advertised, authentication: false, client: Vec::new() };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log")).unwrap();
        let child = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .args(self.authentication.then_some("--authentication"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "tansu", Duration::from_secs(20)).unwrap();
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

    /// `bootstrap.servers` for it (the advertised address).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// Creates a SCRAM user (`mechanism`: `scram256` or `scram512`), on its
    /// own listener.
    pub fn create_user(&self, mechanism: &str, name: &str, password: &str) {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        let out = Command::new(&self.bin)
            .args(["user", "create", "--broker", &broker, "--mechanism", mechanism, name, password])
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu user create: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Restarts it requiring SASL authentication from every client.
    pub fn require_authentication(&mut self) {
        self.authentication = true;
        self.restart();
    }

    /// A client config for it: bootstrap servers and [`client`](Self::client).
    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
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
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = self.client_config().create().unwrap();
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
        let c: StreamConsumer = self
            .client_config()
            .set("group.id", format!("e2e-{topic}-{}", free_port().unwrap()))
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
        let c: BaseConsumer = self
            .client_config()
            .set("group.id", format!("e2e-end-{topic}-{}", free_port().unwrap()))
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
