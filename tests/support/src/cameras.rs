//! Camera folders in `replay`'s fixture format, made on the fly: longer
//! streams cycled from the committed fixtures, incompressible frames of a
//! given size, numbered publishes straight to a broker, small JPEGs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken fixture is a failed test, with the reason"
)]

use crate::net::free_port;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a camera fixture directory with `n` frames cycled from the JPEGs
/// of the fixture folder `from` (for longer streams).
pub fn long_camera(dir: &Path, camera: &str, from: &Path, n: usize, fps: f64) -> PathBuf {
    let d = camera_folder(dir, camera, fps);
    let src: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(from)
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
        let mut o = MqttOptions::new(format!("e2e-camera-{}", free_port().unwrap()), "127.0.0.1", port);
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
