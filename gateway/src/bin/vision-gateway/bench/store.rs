//! `bench store`: the claim check's uploads next to a bare `object_store`
//! PUT loop on the same store (SeaweedFS from its wheel, on loopback), the
//! same images and the same number of requests in flight, in one run.
//!
//! Three rows: the bare loop (plain PUTs, no condition, no checksum), the
//! gateway's client (`Store::put_once`: `If-None-Match: *` and
//! `x-amz-checksum-sha256`), and the whole image lane (the replicate stage
//! from a filled log: upload, reference to librdkafka's mock cluster, image
//! freed), each with its ratio to the bare loop.

use super::Throughput;
use futures::StreamExt;
use gateway::log::{Cursor, DurableLog, LogOptions};
use gateway::records::{Area, FrameRecord};
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::frames::synthetic_jpeg;
use testkit::seaweedfs::{Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY};
use tokio_util::sync::CancellationToken;

/// What `bench store` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBench {
    /// Images per row.
    pub images: u64,
    /// Bytes per image.
    pub image_bytes: usize,
    /// Requests in flight (the lane's `max_in_flight`).
    pub in_flight: usize,
    /// Bare PUT loop.
    pub bare: Throughput,
    /// The gateway's client.
    pub client: Throughput,
    /// The image lane, log to store to Kafka.
    pub lane: Throughput,
}

impl std::fmt::Display for StoreBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "claim check uploads: {} images of {} bytes, {} in flight, SeaweedFS on loopback (same run)",
            self.images, self.image_bytes, self.in_flight
        )?;
        for t in [&self.bare, &self.client, &self.lane] {
            writeln!(
                f,
                "  {:<58} {:>8.1} MB/s {:>7.1} images/s  x{:.2}",
                t.what,
                t.mb_per_s(),
                t.records_per_s(),
                t.mb_per_s() / self.bare.mb_per_s().max(f64::MIN_POSITIVE)
            )?;
        }
        Ok(())
    }
}

/// Runs the three rows on `images` images of `image_bytes` bytes.
///
/// # Errors
/// The store, the mock cluster or the log failing.
pub async fn store_throughput(
    dir: &Path,
    images: u64,
    image_bytes: usize,
    in_flight: usize,
) -> anyhow::Result<StoreBench> {
    testkit::seaweedfs::binary().map_err(anyhow::Error::msg)?;
    let store = tokio::task::spawn_blocking(Seaweed::start).await?;
    let payloads: Vec<Vec<u8>> = (0..images).map(|i| synthetic_jpeg(image_bytes, i)).collect();
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();

    // Warm-up: the bucket is made by its first PUT, connections open.
    let bare_client = store.client();
    bare_client.put(&object_store::path::Path::from("warm/up"), PutPayload::from(b"x".to_vec())).await?;

    let t_bare = bare_loop(&bare_client, &payloads, in_flight, "bare").await?;

    let cfg = config(dir, &store, in_flight)?;
    let Some(cc) = cfg.replicate.claim_check.clone() else { anyhow::bail!("claim check off in the bench config") };
    let client = gateway::replicate::Store::new(&cc, "bench-client")?;
    let t = Instant::now();
    let puts = payloads.iter().enumerate().map(|(i, p)| {
        let (c, body) = (&client, p.clone());
        async move {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
            let key = c.key("cam", i as u64, &sha, "image/jpeg");
            c.put_once(&key, body, &sha).await
        }
    });
    let results: Vec<_> = futures::stream::iter(puts).buffer_unordered(in_flight).collect().await;
    for r in results {
        r?;
    }
    let client = Throughput::new("gateway client (If-None-Match, sha256 checksum)".into(), images, bytes, t.elapsed());

    let lane = lane(dir, &cfg, &payloads).await?;
    // The store grows as the rows run (new volumes): the bare loop runs
    // again last, and its slower run is the baseline.
    let again = bare_loop(&bare_client, &payloads, in_flight, "bare-again").await?;
    let bare =
        Throughput::new("bare object_store PUT loop (slower of two runs)".into(), images, bytes, t_bare.max(again));
    Ok(StoreBench { images, image_bytes, in_flight, bare, client, lane })
}

/// The bare loop: plain PUTs of `payloads` under `prefix`, `in_flight` at
/// a time; its wall time.
async fn bare_loop(
    client: &object_store::aws::AmazonS3,
    payloads: &[Vec<u8>],
    in_flight: usize,
    prefix: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let puts = payloads.iter().enumerate().map(|(i, p)| {
        let path = object_store::path::Path::from(format!("{prefix}/{i}.jpg"));
        let body = PutPayload::from(p.clone());
        async move { client.put(&path, body).await }
    });
    let results: Vec<_> = futures::stream::iter(puts).buffer_unordered(in_flight).collect().await;
    for r in results {
        r?;
    }
    Ok(t.elapsed())
}

/// The bench's gateway config: the mock cluster is set later; the claim
/// check on `store`, every image over the threshold.
fn config(dir: &Path, store: &Seaweed, in_flight: usize) -> anyhow::Result<gateway::config::Config> {
    let (id, key) = (dir.join("s3-id"), dir.join("s3-key"));
    std::fs::write(&id, ACCESS_KEY)?;
    std::fs::write(&key, SECRET_KEY)?;
    let text = format!(
        "gateway_id = \"bench\"\n[mqtt]\nbroker = \"127.0.0.1:1\"\n[replicate]\nbrokers = \"127.0.0.1:1\"\n\
         [replicate.claim_check]\nenabled = true\nendpoint = {:?}\nallow_http = true\nbucket = {BUCKET:?}\n\
         min_bytes = 1\nmax_in_flight = {in_flight}\naccess_key_id_file = {:?}\nsecret_access_key_file = {:?}\n",
        store.endpoint(),
        id.display(),
        key.display()
    );
    gateway::config::Config::parse(Path::new("bench"), &text, &gateway::config::ProcessEnv)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The image lane draining a log of sampled images to the store, with
/// references to librdkafka's mock cluster.
async fn lane(dir: &Path, cfg: &gateway::config::Config, payloads: &[Vec<u8>]) -> anyhow::Result<Throughput> {
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    for t in gateway::records::header::ALL_TOPICS {
        mock.create_topic(t, 1, 1)?;
    }
    let mut rcfg = cfg.replicate.clone();
    rcfg.brokers = mock.bootstrap_servers();
    let mut o = LogOptions::new(dir.join("store-lane"), "bench");
    o.max_bytes = u64::MAX / 2;
    let log = DurableLog::open(o)?;
    let mut b = log.batch();
    for (i, p) in payloads.iter().enumerate() {
        let f = FrameRecord {
            camera: format!("cam-{}", i % 4),
            content_type: "image/jpeg".into(),
            received_at_ms: i as u64,
            captured_at_ms: None,
            camera_seq: Some(i as u64),
            payload: p.clone(),
        };
        let seq = log.append_frame(&f)?.seq;
        let fa = super::bench_annotation(&log, seq, &f, true, gateway::detect::not_annotated());
        b.put_blob(Area::Annotations, seq, &serde_json::to_vec(&fa)?);
        b.put_frame(Area::Images, seq, &f);
    }
    let end = log.counts().next_seq;
    b.set_cursor(Cursor::Detect, end);
    log.apply(b)?;
    log.flush().await?;
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let producer = gateway::replicate::producer(&rcfg)?;
    let stage = gateway::replicate::Replicate::new(log.clone(), rcfg, producer);
    let stop = CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(stage.run(stop.clone()));
    while log.cursor(Cursor::ReplicateImages)? < end {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the image lane did not drain within 10 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    stop.cancel();
    task.await??;
    Ok(Throughput::new("image lane: log -> store -> reference (mock Kafka)".into(), payloads.len() as u64, bytes, took))
}
