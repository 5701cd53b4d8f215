//! `replay`: publishes recorded camera fixtures to an MQTT broker, as the
//! cameras would.
//!
//! Owns the fixture directory format:
//!
//! ```text
//! <camera-dir>/camera.toml   camera = "line1-cam1"   (default: folder name)
//!                            topic  = "cameras/line1-cam1/frames"
//!                            fps    = 5.0
//! <camera-dir>/*.jpg|*.jpeg|*.png|*.bin   frames, published in name order
//! ```
//!
//! A directory without `camera.toml` whose subfolders have one is replayed
//! as several cameras at once. Frames go out with QoS 1 and MQTT 5 user
//! properties `captured_at_ms` and `camera_seq` (the frame's index), and the
//! content type; the replay ends when the broker acknowledged every frame.

use anyhow::{bail, Context, Result};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `camera.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraFixture {
    /// Camera id (default: the folder name).
    pub camera: Option<String>,
    /// Topic to publish to (default `cameras/{camera}/frames`).
    pub topic: Option<String>,
    /// Recorded frame rate.
    pub fps: f64,
}

/// One camera to replay.
#[derive(Debug, Clone)]
pub struct Camera {
    /// Camera id.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Frames per second.
    pub fps: f64,
    /// Frame files in publish order.
    pub frames: Vec<PathBuf>,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Frames published.
    pub published: u64,
    /// PUBACKs received from the broker.
    pub acked: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Reads the cameras in `dir` (one camera, or a folder of cameras).
///
/// # Errors
/// Unreadable or invalid `camera.toml`, or no frames.
pub fn load_cameras(dir: &Path) -> Result<Vec<Camera>> {
    if dir.join("camera.toml").is_file() {
        return Ok(vec![load_camera(dir)?]);
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("camera.toml").is_file())
        .collect();
    subs.sort();
    if subs.is_empty() {
        bail!("{} has no camera.toml, and no subfolder has one", dir.display());
    }
    subs.iter().map(|d| load_camera(d)).collect()
}

fn load_camera(dir: &Path) -> Result<Camera> {
    let p = dir.join("camera.toml");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let f: CameraFixture = toml::from_str(&text).with_context(|| format!("invalid {}", p.display()))?;
    let id = f.camera.unwrap_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "jpeg" | "png" | "bin")))
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!("{} has no frames (*.jpg, *.jpeg, *.png, *.bin)", dir.display());
    }
    if f.fps.is_nan() || f.fps <= 0.0 {
        bail!("{}: fps must be above 0", p.display());
    }
    Ok(Camera { topic: f.topic.unwrap_or_else(|| format!("cameras/{id}/frames")), id, fps: f.fps, frames })
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Publishes every frame of `cameras` to `broker` (`host:port`), each
/// camera at its own rate (or `rate` frames/s if given; 0 = as fast as
/// possible), the cameras evenly out of phase, and waits for every PUBACK.
///
/// # Errors
/// Unreadable frames, an unreachable broker, or a broker that does not
/// acknowledge within 60 s of the last publish.
pub async fn replay(cameras: &[Camera], broker: &str, rate: Option<f64>, progress: bool) -> Result<ReplayReport> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .with_context(|| format!("{broker:?} is not host:port"))?;
    let mut o = MqttOptions::new(format!("vision-gateway-replay-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(true);
    o.set_max_packet_size(Some(256 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 64);

    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();
    let bar = progress_bar(progress, total);

    let start = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    let n_cams = cameras.len().max(1) as u32;
    for (k, cam) in cameras.iter().cloned().enumerate() {
        let client = client.clone();
        let fps = rate.unwrap_or(cam.fps);
        publishers.spawn(publish_camera(client, cam, fps, k as u32, n_cams));
    }

    let mut report = ReplayReport::default();
    let mut done_publishing = false;
    let mut last_progress = Instant::now();
    while report.acked < total as u64 {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    report.acked += 1;
                    last_progress = Instant::now();
                    bar.inc(1);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => report.published += 1,
                Ok(_) => {}
                Err(e) => bail!("MQTT connection to {broker} failed: {e}"),
            },
            Some(r) = publishers.join_next(), if !done_publishing => {
                report.bytes += r.context("publisher task failed")??;
                done_publishing = publishers.is_empty();
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if last_progress.elapsed() > Duration::from_secs(60) {
                    bail!("the broker acknowledged {} of {total} frames and then nothing for 60 s", report.acked);
                }
            }
        }
    }
    while let Some(r) = publishers.join_next().await {
        report.bytes += r.context("publisher task failed")??;
    }
    bar.finish_and_clear();
    report.seconds = start.elapsed().as_secs_f64();
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    Ok(report)
}

/// A bar of acknowledged frames on a terminal, nothing elsewhere.
fn progress_bar(shown: bool, total: usize) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} frames acked [{bar:40}] {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Publishes one camera's frames at `fps` (0: as fast as the client
/// takes them), camera `k` of `n` starting `k/n` of a period late so that
/// cameras at the same rate do not publish in bursts. Returns the bytes sent.
async fn publish_camera(client: AsyncClient, cam: Camera, fps: f64, k: u32, n: u32) -> Result<u64> {
    let mut bytes = 0u64;
    let period = if fps > 0.0 { Duration::from_secs_f64(1.0 / fps) } else { Duration::ZERO };
    let t0 = tokio::time::Instant::now() + period * k / n;
    tokio::time::sleep_until(t0).await;
    for (i, path) in cam.frames.iter().enumerate() {
        let payload = tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?;
        bytes += payload.len() as u64;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let props = PublishProperties {
            user_properties: vec![("captured_at_ms".into(), now_ms.to_string()), ("camera_seq".into(), i.to_string())],
            content_type: Some(content_type(path).into()),
            ..Default::default()
        };
        client
            .publish_with_properties(cam.topic.clone(), QoS::AtLeastOnce, false, payload, props)
            .await
            .context("MQTT client stopped")?;
        if !period.is_zero() {
            tokio::time::sleep_until(t0 + period * (i as u32 + 1)).await;
        }
    }
    Ok(bytes)
}
