//! End-to-end label verification: the code fixtures (`tests/fixtures/codes`)
//! over real mosquitto into the real binary with `[detect.codes]` and
//! fields checked against their GS1 code, annotations read back from tansu:
//! codes and cross-check in every annotation, every misprint flagged with
//! its field, sampled (reason `mismatch`), counted and warned; hostile
//! frames between them (a frame full of symbols, noise, extreme shapes)
//! keep the same process and leave the next labels read. (The budget is
//! generous here so that a busy CI machine cannot push a label over it;
//! the overrun path itself is the reader's unit test on a real decode.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{exe, fixtures, kafka_annotations, Gateway, Mosquitto, Settings, Tansu, TOPICS};
use gateway::records::SampleReason;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use testkit::replay::{load_cameras, replay};

/// A camera folder `id` with `files` in this order.
fn camera(dir: &Path, id: &str, files: &[(String, Vec<u8>)]) -> std::path::PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("camera.toml"), format!("camera = \"{id}\"\nfps = 20.0\n")).unwrap();
    for (i, (ext, bytes)) in files.iter().enumerate() {
        std::fs::write(d.join(format!("{i:03}.{ext}")), bytes).unwrap();
    }
    d
}

/// Hostile frames: a frame full of symbols, 1600x1200 noise, extreme
/// shapes; a label after each, which must still be read.
fn hostile_frames(label: &[u8]) -> Vec<(String, Vec<u8>)> {
    use image::ImageEncoder;
    let many = std::fs::read(fixtures().join("codes/hostile/many.jpg")).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise = image::RgbImage::from_fn(1600, 1200, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut noise_jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut noise_jpg, 85).encode_image(&noise).unwrap();
    let mut out = vec![("jpg".to_owned(), many), ("jpg".to_owned(), noise_jpg)];
    for (w, h) in [(2000u32, 1u32), (1, 3000), (8000, 8), (1, 1)] {
        let raw: Vec<u8> = (0..w * h * 3).map(|i| if (i / 3) % 2 == 0 { 0 } else { 255 }).collect();
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png).write_image(&raw, w, h, image::ExtendedColorType::Rgb8).unwrap();
        out.push(("png".to_owned(), png));
    }
    out.into_iter().flat_map(|f| [f, ("jpg".to_owned(), label.to_vec())]).collect()
}

#[test]
// One scenario through the real service, told in order.
#[allow(clippy::too_many_lines)]
fn misprinted_labels_reach_kafka_flagged_sampled_and_counted_and_hostile_frames_hold_nothing_up() {
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.kafka = tansu.brokers();
    s.max_frame_bytes = "8MiB";
    s.extra = format!(
        "[sample]\nevery_nth = 0\nreview = false\n{}",
        std::fs::read_to_string(fixtures().join("codes/fields.toml"))
            .unwrap()
            .replace("[detect.codes]\n", "[detect.codes]\nbudget = \"5s\"\n")
    );
    assert!(s.extra.contains("budget = \"5s\""), "{}", s.extra);
    let cfg = s.write(&dir.path().join("g.toml"));
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("codes/expected.json")).unwrap()).unwrap();
    let frames = expected["frames"].as_array().unwrap();
    let labels: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|f| ("jpg".to_owned(), std::fs::read(fixtures().join("codes").join(f["file"].as_str().unwrap())).unwrap()))
        .collect();
    let hostile = hostile_frames(&labels[0].1);
    let cams = [camera(dir.path(), "labels", &labels), camera(dir.path(), "hostile", &hostile)];
    let cameras: Vec<_> = cams.iter().flat_map(|c| load_cameras(c).unwrap()).collect();
    let total = labels.len() + hostile.len();

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let pid = gw.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cameras, &mq.addr(), Some(20.0), false)).unwrap();
    gw.wait_for("every frame replicated", Duration::from_secs(600), |m| {
        let a = m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0);
        let d = m.get("vision_gateway_replicated_total{kind=\"dead_letter\"}").copied().unwrap_or(0.0);
        a + d >= total as f64
    })
    .unwrap();
    let sampled = gw.metric("vision_gateway_images_sampled_total");
    gw.wait_for("every sampled image replicated", Duration::from_secs(60), |m| {
        m.get("vision_gateway_replicated_total{kind=\"image\"}").copied().unwrap_or(0.0) >= sampled
    })
    .unwrap();
    let m = gw.metrics();
    assert_eq!(gw.pid(), pid);
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "the gateway kept its pid and stops cleanly: {glog}");
    assert!(glog.contains("label print disagrees with its code"), "{glog}");

    let anns = kafka_annotations(&tansu);
    let (mut read, mut printed, mut flagged) = (0, 0, 0);
    for (i, f) in frames.iter().enumerate() {
        let a = anns
            .iter()
            .find(|a| a.camera == "labels" && a.camera_seq == Some(i as u64))
            .unwrap_or_else(|| panic!("label frame {i} not in Kafka"));
        let an = &a.annotation;
        let want: BTreeSet<&str> = f["codes"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        let got: BTreeSet<&str> = an.codes.iter().map(|c| c.text.as_str()).collect();
        assert!(got.is_subset(&want), "frame {i}: read {:?}, not printed", got.difference(&want));
        assert!(!an.codes_timeout && an.codes_error.is_none(), "frame {i}: {an:?}");
        read += got.len();
        printed += want.len();
        let misprint: Vec<&str> = f["misprint"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        assert_eq!(an.mismatches, misprint, "frame {i}");
        if misprint.is_empty() {
            assert_eq!(a.sampled, None, "frame {i}");
        } else {
            assert_eq!(a.sampled, Some(SampleReason::Mismatch), "frame {i}");
            let field = &an.fields[misprint[0]];
            assert_eq!(field.verified, Some(false));
            assert_eq!(field.code.as_deref(), f["coded"][misprint[0]].as_str(), "frame {i}");
            flagged += 1;
        }
        if f["label"].as_bool().unwrap() && !want.is_empty() {
            assert!(an.fields.values().filter(|v| v.verified == Some(true)).count() >= 2, "frame {i}: {an:?}");
        }
    }
    // Every label after a hostile frame is still read and verified: the
    // worker was not held past the hostile frame's budget.
    let mut hostile_timeouts = 0;
    for i in 0..hostile.len() as u64 {
        let a = anns.iter().find(|a| a.camera == "hostile" && a.camera_seq == Some(i));
        if i % 2 == 1 {
            let an = &a.unwrap_or_else(|| panic!("label {i} after a hostile frame not annotated")).annotation;
            assert!(an.mismatches.is_empty() && an.fields.len() == 3, "label {i}: {an:?}");
            assert!(an.fields.values().all(|v| v.verified == Some(true)), "label {i}: {an:?}");
        } else if let Some(a) = a {
            assert!(a.annotation.codes_error.is_none(), "hostile frame {i}: {:?}", a.annotation.codes_error);
            hostile_timeouts += usize::from(a.annotation.codes_timeout);
        }
    }
    assert_eq!(m.get("vision_gateway_label_mismatches_total"), Some(&(flagged as f64)), "{m:?}");
    assert_eq!(m.get("vision_gateway_fields_total{field=\"lot\",outcome=\"mismatch\"}"), Some(&2.0), "{m:?}");
    assert_eq!(m.get("vision_gateway_fields_total{field=\"expiry\",outcome=\"mismatch\"}"), Some(&2.0), "{m:?}");
    assert_eq!(m.get("vision_gateway_codes_errors_total"), Some(&0.0), "{m:?}");
    assert!(sampled >= flagged as f64);
    println!(
        "labels e2e: {read}/{printed} codes read, {flagged}/4 misprints flagged and sampled, \
         {} hostile frames ({hostile_timeouts} over the code budget), pid kept",
        hostile.len() / 2
    );
    assert_eq!(flagged, 4);
    assert!(read * 10 >= printed * 9, "{read} of {printed}");
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn frames_full_of_symbols_over_a_tight_budget_are_timeouts_and_hold_at_most_three_code_threads() {
    let mq = Mosquitto::start().unwrap();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.kafka = tansu.brokers();
    s.max_frame_bytes = "8MiB";
    // A frame full of 63 symbols takes this machine about 300 ms to read
    // whole: 20 ms cannot hold it, whatever the machine's speed. In
    // `labels` the decode starts after the model (a frame without text is
    // read whole), so the model's own time does not hide the overrun as
    // it may in `frame`, where a decode that ends before the model is
    // taken.
    s.extra = "[sample]\nevery_nth = 0\n[detect.codes]\nbudget = \"20ms\"\nregion = \"labels\"\n".into();
    let many = std::fs::read(fixtures().join("codes/hostile/many.jpg")).unwrap();
    let frames: Vec<(String, Vec<u8>)> = (0..8).map(|_| ("jpg".to_owned(), many.clone())).collect();
    let cams = load_cameras(&camera(dir.path(), "many", &frames)).unwrap();
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    let pid = gw.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cams, &mq.addr(), Some(0.0), false)).unwrap();
    let most = std::cell::Cell::new(0);
    gw.wait_for("every frame replicated", Duration::from_secs(600), |m| {
        most.set(most.get().max(threads_named(pid, "codes")));
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= frames.len() as f64
    })
    .unwrap();
    let m = gw.metrics();
    let most = most.get();
    assert_eq!(gw.pid(), pid);
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    assert!(glog.contains("code reading ran out of its budget"), "{glog}");
    let anns = kafka_annotations(&tansu);
    assert_eq!(anns.len(), frames.len());
    let timeouts = anns.iter().filter(|a| a.annotation.codes_timeout).count();
    assert_eq!(timeouts, frames.len(), "every frame over its budget says so");
    assert!(anns.iter().all(|a| a.annotation.codes_error.is_none() && a.annotation.error.is_none()));
    assert_eq!(m.get("vision_gateway_codes_timeouts_total"), Some(&(frames.len() as f64)), "{m:?}");
    println!("tight budget e2e: {timeouts}/{} frames full of symbols timed out at 20 ms; at most {most} code threads seen (cap 3)", frames.len());
    assert!(most <= 3, "{most} code threads alive at once");
}
