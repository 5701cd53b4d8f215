//! End-to-end: camera fixtures replayed through real mosquitto, the real
//! gateway binary with the bundled model, into a real Kafka-protocol broker
//! (tansu with sqlite storage), and images reassembled from the topic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{
    exe, fixtures, header, kafka_annotations, long_camera, Gateway, Mosquitto, Persistence, Settings, Tansu, TOPICS,
};
use gateway::records::FrameAnnotation;
use rdkafka::Message;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use testkit::replay::{load_cameras, replay};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A 3 MB JPEG of noise (it compresses to about its size).
fn big_jpeg(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("big-cam");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("camera.toml"), "camera = \"big-cam\"\nfps = 5.0\n").unwrap();
    let mut x: u64 = 12345;
    let img = image::RgbImage::from_fn(1600, 1200, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&img).unwrap();
    assert!(bytes.len() > 2_500_000, "{}", bytes.len());
    std::fs::write(d.join("0.jpg"), &bytes).unwrap();
    d
}

#[test]
fn fixtures_reach_kafka_once_in_order_and_sampled_images_reassemble_byte_identical() {
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.kafka = tansu.brokers();
    s.max_frame_bytes = "8MiB";
    s.extra = "[sample]\nevery_nth = 2\n".into();
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();

    let mut cameras = load_cameras(&fixtures().join("cameras")).unwrap();
    cameras.extend(load_cameras(&big_jpeg(dir.path())).unwrap());
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();
    rt().block_on(replay(&cameras, &mq.addr(), Some(20.0), false)).unwrap();
    gw.wait_for("every annotation acknowledged by Kafka", Duration::from_secs(300), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= total as f64
    })
    .unwrap();
    let sampled = gw.metric("vision_gateway_images_sampled_total");
    gw.wait_for("every sampled image acknowledged", Duration::from_secs(60), |m| {
        m.get("vision_gateway_replicated_total{kind=\"image\"}").copied().unwrap_or(0.0) >= sampled
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");

    let anns = kafka_annotations(&tansu);
    let ids: BTreeSet<&str> = anns.iter().map(|a| a.frame_id.as_str()).collect();
    assert_eq!(anns.len(), total, "exactly one annotation per frame");
    assert_eq!(ids.len(), total, "no duplicates without a crash");
    let mut per_cam: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in &anns {
        per_cam.entry(a.camera.as_str()).or_default().push(a.camera_seq.unwrap());
    }
    for cam in &cameras {
        assert_eq!(per_cam[cam.id.as_str()], (0..cam.frames.len() as u64).collect::<Vec<_>>(), "{} in order", cam.id);
    }

    let out = tempfile::tempdir().unwrap();
    let report = rt()
        .block_on(gateway::replicate::reassemble::reassemble(
            &tansu.brokers(),
            "vision.images",
            "e2e-reasm",
            out.path(),
            Duration::from_secs(5),
        ))
        .unwrap();
    assert!(report.corrupt.is_empty() && report.incomplete.is_empty(), "{report:?}");
    assert_eq!(report.written.len() as f64, sampled);
    // Each reassembled file is byte-identical to the fixture it came from.
    let by_id: BTreeMap<&str, &FrameAnnotation> = anns.iter().map(|a| (a.frame_id.as_str(), a)).collect();
    let mut checked_big = false;
    for f in &report.written {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let a = by_id[name.as_str()];
        assert!(a.sampled.is_some());
        let cam = cameras.iter().find(|c| c.id == a.camera).unwrap();
        let original = std::fs::read(&cam.frames[a.camera_seq.unwrap() as usize]).unwrap();
        let got = std::fs::read(f).unwrap();
        assert_eq!(Sha256::digest(&got), Sha256::digest(&original), "{}", f.display());
        checked_big |= a.camera == "big-cam";
    }
    assert!(checked_big, "the 3 MB image was chunked and reassembled");
    let chunks = tansu.consume_all("vision.images", Duration::from_secs(3));
    assert!(chunks.iter().any(|m| header(m, "chunk_count").as_deref() == Some("4")), "3 MB at 900 KiB = 4 chunks");
    println!(
        "replicate e2e: {total} annotations, {} images reassembled ({} chunks)",
        report.written.len(),
        chunks.len()
    );
}

#[test]
fn kafka_down_for_the_middle_third_with_a_gateway_restart_loses_nothing() {
    let mq = Mosquitto::start().unwrap();
    let mut tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.kafka = tansu.brokers();
    s.extra = "[sample]\nevery_nth = 0\nerrors = false\n".into();
    let cfg = s.write(&dir.path().join("g.toml"));
    let n = 60;
    let cams = load_cameras(&long_camera(dir.path(), "outage-cam", "line1-cam1", n, 6.0)).unwrap();

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let rt = rt();
    let publisher = {
        let (addr, cams) = (mq.addr(), cams.clone());
        rt.spawn(async move { replay(&cams, &addr, None, false).await })
    };
    let third = (n / 3) as f64;
    gw.wait_for("a third replicated", Duration::from_secs(120), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= third
    })
    .unwrap();
    tansu.stop();
    gw.wait_for("more frames annotated during the outage", Duration::from_secs(120), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= 2.0 * third
    })
    .unwrap();
    // Restart the gateway while Kafka is still down.
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.metric("vision_gateway_kafka_connected"), 0.0);
    tansu.restart();
    rt.block_on(publisher).unwrap().unwrap();
    let log_done = |m: &std::collections::HashMap<String, f64>| {
        m.get("vision_gateway_log_records{area=\"annotations\"}").copied() == Some(0.0)
            && m.get("vision_gateway_log_records{area=\"frames\"}").copied() == Some(0.0)
            && m.get("vision_gateway_log_next_seq").copied() == Some(n as f64)
    };
    gw.wait_for("the backlog drained after Kafka returned", Duration::from_secs(300), log_done).unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");

    let anns = kafka_annotations(&tansu);
    let gaps = tansu.consume_all("vision.gaps", Duration::from_secs(2));
    let seqs: BTreeSet<u64> = anns.iter().map(|a| a.camera_seq.unwrap()).collect();
    assert!(gaps.is_empty(), "no drops with a roomy log");
    assert_eq!(seqs, (0..n as u64).collect::<BTreeSet<_>>(), "every frame accounted for");
    println!("outage e2e: {n} frames, {} annotation records in Kafka ({} re-sent)", anns.len(), anns.len() - n);
}

/// Twelve frames for the model, then one payload that is not an image, on
/// another camera, while the model is still behind: the dead letter (written
/// at intake) must not carry the replicate cursor past the frames below it.
/// With `hold` the frames wait unannotated; once detect runs, everything
/// arrives. Kafka must hold 12 annotations and 1 dead letter either way.
fn bad_frame_while_the_model_is_behind(hold_first: bool) {
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.kafka = tansu.brokers();
    s.detect = !hold_first;
    let good = load_cameras(&long_camera(dir.path(), "camA", "line1-cam1", 12, 100.0)).unwrap();
    let bad_dir = dir.path().join("camB");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join("camera.toml"), "camera = \"camB\"\nfps = 1.0\n").unwrap();
    std::fs::write(bad_dir.join("0.bin"), b"this is not an image").unwrap();
    let bad = load_cameras(&bad_dir).unwrap();

    let mut gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    let rt = rt();
    rt.block_on(replay(&good, &mq.addr(), Some(0.0), false)).unwrap();
    rt.block_on(replay(&bad, &mq.addr(), Some(0.0), false)).unwrap();
    gw.wait_for("13 records acknowledged", Duration::from_secs(60), |m| {
        let stored = m.get("vision_gateway_frames_acked_total").copied().unwrap_or(0.0);
        stored >= 13.0
    })
    .unwrap();
    if hold_first {
        // Held: nothing may go up, the dead letter included, since it is
        // above frames the model has not seen.
        let (ok, log) = gw.terminate().unwrap();
        assert!(ok, "{log}");
        assert!(
            tansu.consume_all("vision.dead-letters", Duration::from_secs(3)).is_empty(),
            "dead letter sent past held frames"
        );
        s.detect = true;
        gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    }
    gw.wait_for("12 annotations and 1 dead letter in Kafka", Duration::from_secs(300), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 12.0
            && m.get("vision_gateway_replicated_total{kind=\"dead_letter\"}").copied().unwrap_or(0.0) >= 1.0
    })
    .unwrap();
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "{log}");
    let anns = kafka_annotations(&tansu);
    let cam_a: Vec<u64> =
        anns.iter().filter(|a| a.camera == "camA").map(|a| a.camera_seq.unwrap_or(u64::MAX)).collect();
    assert_eq!(cam_a, (0..12).collect::<Vec<_>>(), "all 12 annotations, once, in order");
    let dead = tansu.consume_all("vision.dead-letters", Duration::from_secs(3));
    assert_eq!(dead.len(), 1, "one dead letter");
    println!(
        "bad frame while the model is behind ({}): {} annotations, {} dead letter in tansu",
        if hold_first { "hold, then detect on" } else { "model working" },
        cam_a.len(),
        dead.len()
    );
}

#[test]
fn a_bad_frame_while_the_model_is_behind_hides_no_good_frame() {
    bad_frame_while_the_model_is_behind(false);
}

#[test]
fn a_bad_frame_under_hold_waits_for_the_frames_below_it() {
    bad_frame_while_the_model_is_behind(true);
}

/// The images topic does not exist (a site forgot to create it): after
/// bounded retries each sampled image is given up with an `undeliverable`
/// gap record saying why, and every annotation still reaches Kafka, in
/// order. Before, the whole batch was re-sent every ≤ 30 s forever.
#[test]
fn a_missing_images_topic_does_not_stop_annotations() {
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&["vision.annotations", "vision.gaps", "vision.dead-letters"]);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.kafka = tansu.brokers();
    s.when_disabled = "forward";
    // Fail fast on the missing topic (librdkafka waits 30 s by default).
    s.extra =
        "[sample]\nevery_nth = 2\n[replicate.librdkafka]\n\"topic.metadata.propagation.max.ms\" = \"500\"\n".into();
    let n = 6;
    let cams = load_cameras(&long_camera(dir.path(), "camI", "line1-cam1", n, 100.0)).unwrap();
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    rt().block_on(replay(&cams, &mq.addr(), Some(0.0), false)).unwrap();
    gw.wait_for("every annotation in Kafka, every image given up", Duration::from_secs(180), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= n as f64
            && m.get("vision_gateway_replicate_undeliverable_total{kind=\"image\"}").copied().unwrap_or(0.0)
                >= (n / 2) as f64
            && m.get("vision_gateway_replicated_total{kind=\"gap\"}").copied().unwrap_or(0.0) >= (n / 2) as f64
    })
    .unwrap();
    let refusals = gw.metric("vision_gateway_replicate_topic_refusals_total");
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "{log}");
    let anns = kafka_annotations(&tansu);
    let mut first: Vec<u64> = Vec::new();
    for a in &anns {
        let c = a.camera_seq.unwrap();
        if !first.contains(&c) {
            first.push(c);
        }
    }
    assert_eq!(first, (0..n as u64).collect::<Vec<_>>(), "every annotation, in order");
    let sampled: Vec<u64> = anns.iter().filter(|a| a.sampled.is_some()).map(|a| a.seq).collect();
    let gaps: Vec<gateway::records::GapRecord> = tansu
        .consume_all("vision.gaps", Duration::from_secs(3))
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    let given_up: BTreeSet<u64> = gaps
        .iter()
        .filter(|g| g.reason == gateway::records::GapReason::Undeliverable && g.area == gateway::records::Area::Images)
        .map(|g| {
            assert!(g.detail.as_deref().unwrap_or("").contains("vision.images"), "{g:?}");
            g.from_seq
        })
        .collect();
    assert_eq!(given_up, sampled.iter().copied().collect::<BTreeSet<_>>(), "one gap per sampled image");
    println!(
        "missing images topic: {} annotations in Kafka, {} images given up with gap records, {refusals} topic refusals",
        first.len(),
        given_up.len()
    );
}

/// Frames of extreme shape (2000x1, 1x3000, 4096x48, 48x4096, 8000x8, 1x1,
/// each as PNG and as JPEG) published between good label frames, through
/// mosquitto, the real gateway with the bundled model, into tansu: the
/// process keeps its pid, every good frame is annotated without error, each
/// hostile frame is an annotation (an error where it cannot be read) or a
/// dead letter, and the peak RSS stays under 1.5 GB.
#[test]
// One scenario through the real service, told in order.
#[allow(clippy::too_many_lines)]
fn frames_of_extreme_shape_between_good_frames_keep_the_pipeline_going() {
    use image::ImageEncoder;
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.kafka = tansu.brokers();
    s.detect = true;
    s.max_frame_bytes = "4MiB";
    let cam = dir.path().join("mixed");
    std::fs::create_dir_all(&cam).unwrap();
    std::fs::write(cam.join("camera.toml"), "camera = \"mixed\"\nfps = 100.0\n").unwrap();
    let good: Vec<std::path::PathBuf> = {
        let mut v: Vec<_> = std::fs::read_dir(fixtures().join("cameras/line1-cam1"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        v.sort();
        v
    };
    let shapes = [(2000u32, 1u32), (1, 3000), (4096, 48), (48, 4096), (8000, 8), (1, 1)];
    let mut hostile = Vec::new();
    let mut n = 0;
    for (k, (w, h)) in shapes.iter().enumerate() {
        for png in [true, false] {
            std::fs::copy(&good[n % good.len()], cam.join(format!("{n:03}.jpg"))).unwrap();
            n += 1;
            let raw: Vec<u8> = (0..w * h * 3).map(|i| (i as usize * 31 + k) as u8).collect();
            let mut bytes = Vec::new();
            let name = if png {
                image::codecs::png::PngEncoder::new(&mut bytes)
                    .write_image(&raw, *w, *h, image::ExtendedColorType::Rgb8)
                    .unwrap();
                format!("{n:03}.png")
            } else {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80)
                    .encode(&raw, *w, *h, image::ExtendedColorType::Rgb8)
                    .unwrap();
                format!("{n:03}.jpg")
            };
            std::fs::write(cam.join(name), bytes).unwrap();
            hostile.push(n as u64);
            n += 1;
        }
    }
    std::fs::copy(&good[0], cam.join(format!("{n:03}.jpg"))).unwrap();
    n += 1;
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    let pid = gw.pid();
    rt().block_on(replay(&load_cameras(&cam).unwrap(), &mq.addr(), Some(0.0), false)).unwrap();
    gw.wait_for("every frame replicated", Duration::from_secs(600), |m| {
        let a = m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0);
        let d = m.get("vision_gateway_replicated_total{kind=\"dead_letter\"}").copied().unwrap_or(0.0);
        a + d >= n as f64
    })
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(gw.pid(), pid);
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "the gateway kept its pid and stops cleanly: {log}");
    let anns = kafka_annotations(&tansu);
    let dead: Vec<serde_json::Value> = tansu
        .consume_all("vision.dead-letters", Duration::from_secs(3))
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    let mut errors = 0;
    for i in 0..n as u64 {
        let a = anns.iter().find(|a| a.camera_seq == Some(i));
        let d = dead.iter().find(|d| d["camera_seq"].as_u64() == Some(i));
        if hostile.contains(&i) {
            assert!(a.is_some() || d.is_some(), "hostile frame {i} is neither annotated nor a dead letter");
            errors += usize::from(a.is_some_and(|a| a.annotation.error.is_some())) + usize::from(d.is_some());
        } else {
            let a = a.unwrap_or_else(|| panic!("good frame {i} was not annotated"));
            assert!(a.annotation.error.is_none(), "good frame {i}: {:?}", a.annotation.error);
        }
    }
    assert!(hwm_kb < 1_500_000, "peak RSS {} MiB", hwm_kb / 1024);
    println!(
        "extreme shapes e2e: {} good frames annotated, {} hostile frames ({} as errors or dead letters), peak RSS {} MiB",
        n - hostile.len(),
        hostile.len(),
        errors,
        hwm_kb / 1024
    );
}

/// Cameras keep publishing while the gateway is down; mosquitto queues the
/// frames for its persistent session and hands the whole queue over at once
/// when it returns (far beyond `receive_maximum`, more than the MQTT
/// client's request channel holds). Mid-burst the gateway is killed -9
/// (`Fault::Kill`) or mosquitto is restarted (`Fault::BrokerRestart`);
/// everything is redelivered. Every `(camera, camera_seq)` must reach Kafka
/// under exactly one `frame_id`.
enum Fault {
    Kill,
    BrokerRestart,
}

fn outage_burst_then(fault: Fault) {
    const PER_CAMERA: u64 = 7_500;
    let cameras = ["burst-a", "burst-b"];
    let total = PER_CAMERA * cameras.len() as u64;
    let mut mq = Mosquitto::start_with(Persistence::OnStop, 100_000).unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.when_disabled = "forward";
    s.kafka = tansu.brokers();
    s.extra = "[sample]\nevery_nth = 0\nerrors = false\n".into();
    let cfg = s.write(&dir.path().join("g.toml"));
    // The first start makes the persistent session; then the outage.
    let (ok, glog) = Gateway::start(exe(), &cfg, s.http_port).unwrap().terminate().unwrap();
    assert!(ok, "{glog}");
    let frames: Vec<(String, u64, Vec<u8>)> = (0..PER_CAMERA)
        .flat_map(|i| cameras.iter().map(move |c| (c.to_string(), i, crate::harness::small_jpeg(12, 12, i))))
        .collect();
    let sizes: BTreeMap<(String, u64), u64> =
        frames.iter().map(|(c, i, p)| ((c.clone(), *i), p.len() as u64)).collect();
    assert_eq!(crate::harness::publish_numbered(mq.port, frames), total as usize, "mosquitto took every frame");

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let cut = total * 3 / 4;
    gw.wait_for("most of the burst stored", Duration::from_secs(300), |m| {
        m.get("vision_gateway_frames_stored_total").copied().unwrap_or(0.0) >= cut as f64
    })
    .unwrap();
    let at_fault = gw.metrics();
    let pending = at_fault.get("vision_gateway_intake_acks_pending").copied().unwrap_or(f64::NAN);
    let stored_before = at_fault.get("vision_gateway_frames_stored_total").copied().unwrap_or(f64::NAN);
    let gw = match fault {
        Fault::Kill => {
            gw.kill9().unwrap();
            Gateway::start(exe(), &cfg, s.http_port).unwrap()
        }
        Fault::BrokerRestart => {
            mq.restart().unwrap();
            gw
        }
    };
    let drained = |m: &std::collections::HashMap<String, f64>| {
        m.get("vision_gateway_log_next_seq").copied().unwrap_or(0.0) >= total as f64
            && m.get("vision_gateway_log_records{area=\"frames\"}").copied() == Some(0.0)
            && m.get("vision_gateway_log_records{area=\"annotations\"}").copied() == Some(0.0)
            && m.get("vision_gateway_intake_acks_pending").copied().unwrap_or(0.0) == 0.0
    };
    gw.wait_for("the burst drained to Kafka", Duration::from_secs(600), drained).unwrap();
    let duplicates = gw.metric("vision_gateway_frames_duplicate_total");
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");

    let mut ids: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    let records = tansu.consume_to_end("vision.annotations");
    for m in &records {
        let fa: FrameAnnotation = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key = (fa.camera.clone(), fa.camera_seq.unwrap());
        assert_eq!(sizes.get(&key), Some(&fa.frame_bytes), "{} names the frame that was sent", fa.frame_id);
        ids.entry(key).or_default().insert(fa.frame_id);
    }
    let twice: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).take(5).collect();
    let twice_n = ids.values().filter(|v| v.len() > 1).count();
    assert_eq!(twice_n, 0, "{twice_n} camera frames under two frame ids, e.g. {twice:?}");
    assert_eq!(ids.len() as u64, total, "every camera frame in Kafka");
    assert!(tansu.consume_to_end("vision.dead-letters").is_empty());
    println!(
        "outage burst + {}: {total} frames queued at the broker, {stored_before} stored at the fault with \
         {pending} PUBACKs queued; {} annotation records, {} distinct frame ids, 0 under two ids; \
         {duplicates} redeliveries recognised after the fault",
        match fault {
            Fault::Kill => "kill -9",
            Fault::BrokerRestart => "mosquitto restart",
        },
        records.len(),
        ids.values().map(BTreeSet::len).sum::<usize>(),
    );
}

#[test]
fn an_outage_burst_then_kill_9_gives_every_camera_frame_one_frame_id() {
    outage_burst_then(Fault::Kill);
}

#[test]
fn an_outage_burst_then_a_broker_restart_gives_every_camera_frame_one_frame_id() {
    outage_burst_then(Fault::BrokerRestart);
}
