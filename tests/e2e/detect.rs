//! End-to-end: fixtures replayed over real mosquitto into the real binary
//! with the bundled model; annotations land in the log, in order per
//! camera, and frames are freed once annotated.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::harness::{annotations, exe, fixtures, repo, Gateway, Mosquitto, Settings};
use gateway::records::Area;
use gateway::records::{FrameAnnotation, SCHEMA_VERSION};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::replay::{load_cameras, replay};

#[test]
fn every_frame_is_annotated_in_order_and_undecodable_frames_become_error_annotations() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();

    // A frame that passes intake's header checks but cannot be decoded.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("camera.toml"), "camera = \"broken-cam\"\nfps = 10.0\n").unwrap();
    std::fs::write(broken.join("0.jpg"), testkit::frames::synthetic_jpeg(5000, 1)).unwrap();

    let cameras = load_cameras(&fixtures().join("cameras")).unwrap();
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cameras, &mq.addr(), Some(20.0), false)).unwrap();
    rt.block_on(replay(&load_cameras(&broken).unwrap(), &mq.addr(), None, false)).unwrap();

    gw.wait_for("every frame annotated", Duration::from_secs(300), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= (total + 1) as f64
    })
    .unwrap();
    let m = gw.metrics();
    assert_eq!(m["vision_gateway_annotation_errors_total"], 1.0);
    assert_eq!(m["vision_gateway_detect_latency_seconds_count"], (total + 1) as f64);
    assert_eq!(gw.get("/readyz").0, 200);
    check_status_page(&gw, &cameras, dir.path());
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");

    let log = s.open_log();
    assert_eq!(log.area_stats(Area::Frames).records, 0, "annotated frames are freed");
    let manifest = inference::Manifest::load(&repo().join("models/ppocr-v6")).unwrap();
    let anns = annotations(&log);
    assert_eq!(anns.len(), total + 1, "one annotation per frame");
    let mut per_camera: BTreeMap<String, Vec<&FrameAnnotation>> = BTreeMap::new();
    for a in &anns {
        assert_eq!(a.schema, SCHEMA_VERSION);
        assert_eq!(a.frame_id, format!("e2e-gw:{}", a.seq));
        assert_eq!(a.annotation.model.hash, manifest.hash());
        per_camera.entry(a.camera.clone()).or_default().push(a);
    }
    let broken_ann = &per_camera["broken-cam"][0];
    assert!(
        broken_ann.annotation.error.as_deref().unwrap_or("").contains("decode"),
        "{:?}",
        broken_ann.annotation.error
    );
    let mut read = 0;
    for cam in &cameras {
        let got = &per_camera[&cam.id];
        let seqs: Vec<u64> = got.iter().map(|a| a.camera_seq.unwrap()).collect();
        assert_eq!(seqs, (0..cam.frames.len() as u64).collect::<Vec<_>>(), "camera {} in order", cam.id);
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join("cameras").join(&cam.id).join("expected.json")).unwrap(),
        )
        .unwrap();
        for (a, e) in got.iter().zip(expected["frames"].as_array().unwrap()) {
            assert!(a.annotation.error.is_none());
            let part = e["part"].as_bool().unwrap();
            assert_eq!(!a.annotation.items.is_empty(), part, "{} {}", cam.id, e["file"]);
            read += a.annotation.items.len();
        }
    }
    println!(
        "detect e2e: {} frames annotated, {read} texts read, 1 undecodable frame annotated with its error",
        anns.len()
    );
}

/// Issue 16: the real service on a box without ONNX Runtime. The config
/// points `detect.onnxruntime` at a file that does not exist and says
/// `auto`, as on armv7: the service runs tract, reads the labels of one
/// camera's frames, and every annotation says `tract`.
#[test]
fn without_the_onnxruntime_library_auto_runs_tract_and_reads_the_labels() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.onnxruntime = dir.path().join("no-such/libonnxruntime.so.1.31.1");
    let cfg = s.write(&dir.path().join("g.toml"));
    let text = check_config(&cfg);
    assert!(text.contains("runtime      tract 0.23.9 (auto: no ONNX Runtime library at"), "{text}");
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let cameras: Vec<_> =
        load_cameras(&fixtures().join("cameras")).unwrap().into_iter().filter(|c| c.id == "line1-cam1").collect();
    let total = cameras[0].frames.len();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cameras, &mq.addr(), Some(20.0), false)).unwrap();
    gw.wait_for("every frame annotated", Duration::from_secs(300), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= total as f64
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    let anns = annotations(&s.open_log());
    assert_eq!(anns.len(), total);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cameras/line1-cam1/expected.json")).unwrap()).unwrap();
    let norm = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let (mut lines, mut read) = (0, 0);
    for (a, e) in anns.iter().zip(expected["frames"].as_array().unwrap()) {
        assert_eq!(
            (a.annotation.model.backend.as_str(), a.annotation.model.backend_version.as_str()),
            ("tract", inference::engine::TRACT_VERSION)
        );
        assert!(a.annotation.error.is_none(), "{:?}", a.annotation.error);
        let got: Vec<String> = a.annotation.items.iter().filter_map(|i| i.text.as_deref().map(norm)).collect();
        for t in e["texts"].as_array().into_iter().flatten() {
            lines += 1;
            read += usize::from(got.contains(&norm(t.as_str().unwrap())));
        }
    }
    println!("tract e2e: {total} frames, label lines read exactly {read}/{lines}");
    assert!(lines > 0 && read as f64 >= 0.9 * lines as f64, "{read}/{lines}");
}

/// Issue 15, through the real service: `[[fields]]` in the config, two
/// fixture cameras and a camera of marks without a label replayed over
/// mosquitto. Every label field is read exactly; a required field scoped to
/// one camera that its labels never carry is `missing` there, and those
/// frames are sampled for review; the other camera is not affected; the
/// frames of marks give no text, no field and nothing missing.
#[test]
// One scenario through the real service, told in order.
#[allow(clippy::too_many_lines)]
fn declared_label_fields_are_read_and_missing_ones_are_sampled_for_review() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = true;
    s.extra = format!(
        "[sample]\nevery_nth = 0\n{}\n[[fields]]\nname = \"batch\"\nformat = 'BATCH <\\d{{3}}>'\ncameras = [\"line1-cam2\"]\n",
        std::fs::read_to_string(fixtures().join("fields.toml")).unwrap()
    );
    let cfg = s.write(&dir.path().join("g.toml"));
    let text = check_config(&cfg);
    assert!(text.contains("field        lot = LOT <L\\d{4}[A-FX]> (required)"), "{text}");
    assert!(text.contains("field        batch = BATCH <\\d{3}> (required) on line1-cam2"), "{text}");

    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let blank = dir.path().join("blank");
    std::fs::create_dir_all(&blank).unwrap();
    std::fs::write(blank.join("camera.toml"), "camera = \"blank-cam\"\nfps = 10.0\n").unwrap();
    for f in ["002.jpg", "004.jpg", "047.jpg", "048.jpg"] {
        std::fs::copy(fixtures().join("blank").join(f), blank.join(f)).unwrap();
    }
    let cameras: Vec<_> = load_cameras(&fixtures().join("cameras"))
        .unwrap()
        .into_iter()
        .filter(|c| c.id == "line1-cam1" || c.id == "line1-cam2")
        .collect();
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum::<usize>() + 4;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cameras, &mq.addr(), Some(20.0), false)).unwrap();
    rt.block_on(replay(&load_cameras(&blank).unwrap(), &mq.addr(), None, false)).unwrap();
    gw.wait_for("every frame annotated", Duration::from_secs(300), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= total as f64
    })
    .unwrap();
    let m = gw.metrics();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    assert!(glog.contains("label fields compiled"), "{glog}");
    assert!(glog.contains("required label field not read"), "{glog}");
    let anns = annotations(&s.open_log());
    assert_eq!(anns.len(), total);
    let prefixes = [("part_number", "PN "), ("lot", "LOT "), ("date", "DATE "), ("serial", "SN ")];
    let (mut fields, mut exact, mut reviewed) = (0, 0, 0);
    for cam in &cameras {
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join("cameras").join(&cam.id).join("expected.json")).unwrap(),
        )
        .unwrap();
        let got: Vec<&FrameAnnotation> = anns.iter().filter(|a| a.camera == cam.id).collect();
        for (a, e) in got.iter().zip(expected["frames"].as_array().unwrap()) {
            let an = &a.annotation;
            if !e["part"].as_bool().unwrap() {
                assert!(an.fields.is_empty() && an.missing.is_empty() && a.sampled.is_none(), "{a:?}");
                continue;
            }
            for t in e["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()) {
                for (name, prefix) in prefixes {
                    if let Some(want) = t.strip_prefix(prefix) {
                        fields += 1;
                        exact += usize::from(an.fields.get(name).is_some_and(|f| f.value == want));
                    }
                }
            }
            if cam.id == "line1-cam2" {
                assert_eq!(an.missing, vec!["batch".to_string()], "{a:?}");
                assert_eq!(a.sampled, Some(gateway::records::SampleReason::Review), "{a:?}");
                reviewed += 1;
            } else {
                assert!(an.missing.is_empty(), "{a:?}");
                assert!(an.fields.values().any(|f| f.uncertain) == a.sampled.is_some(), "{a:?}");
            }
        }
    }
    for a in anns.iter().filter(|a| a.camera == "blank-cam") {
        let an = &a.annotation;
        assert!(an.items.is_empty() && an.fields.is_empty() && an.missing.is_empty() && a.sampled.is_none(), "{a:?}");
    }
    assert_eq!(
        m.get("vision_gateway_fields_total{field=\"batch\",outcome=\"missing\"}"),
        Some(&(reviewed as f64)),
        "{m:?}"
    );
    assert_eq!(
        m.get("vision_gateway_fields_total{field=\"lot\",outcome=\"read\"}"),
        Some(&((fields / 4) as f64)),
        "{m:?}"
    );
    println!("fields e2e: {exact}/{fields} label fields exact; {reviewed} frames missing `batch` sampled for review; 4 frames of marks gave nothing");
    assert_eq!(exact, fields);
    assert!(fields >= 100 && reviewed > 0);
}

/// `vision-gateway check-config` on `cfg`, which must pass: what it printed.
fn check_config(cfg: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vision-gateway"))
        .args(["check-config", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The status page: every camera's newest frame with its boxes and text, as
/// HTML, as JSON, and as Chromium draws it (a screenshot, checked for the
/// box colour and kept for the docs).
fn check_status_page(gw: &Gateway, cameras: &[testkit::replay::Camera], dir: &std::path::Path) {
    use gateway::telemetry::page::BOX_RGB;
    let (code, html) = gw.get("/");
    assert_eq!(code, 200);
    let (code, json) = gw.get("/api/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let shown: Vec<&str> =
        status["cameras"].as_array().unwrap().iter().map(|c| c["camera"].as_str().unwrap()).collect();
    for cam in cameras {
        assert!(shown.contains(&cam.id.as_str()), "{} not on the page: {shown:?}", cam.id);
        assert!(html.contains(&format!("/cameras/{}/latest", cam.id)), "{} has no frame on the page", cam.id);
        let (code, img) = gw.get(&format!("/cameras/{}/latest", cam.id));
        assert_eq!(code, 200);
        assert!(!img.is_empty());
        // The newest frame of every fixture camera shows a label: its text
        // is on the page, drawn over the frame.
        let c = status["cameras"].as_array().unwrap().iter().find(|c| c["camera"] == cam.id.as_str()).unwrap();
        let items = c["latest"]["annotation"]["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{}: the newest fixture frame has a label", cam.id);
        let text = items[0]["text"].as_str().unwrap();
        let escaped = gateway::telemetry::page::esc(text);
        assert!(html.contains(&format!(">{escaped} ")), "{text:?} not drawn on the page");
        assert_eq!(c["frames"].as_u64().unwrap(), cam.frames.len() as u64);
    }
    assert!(html.contains("<polygon"));
    assert_eq!(status["frames_annotated"].as_u64(), status["frames_received"].as_u64());

    let shot = crate::harness::screenshot(&format!("http://127.0.0.1:{}/?refresh=0", gw.http_port), dir);
    let png = image::open(&shot).unwrap().to_rgb8();
    let boxed = png.pixels().filter(|p| p.0.iter().zip(BOX_RGB).all(|(a, b)| a.abs_diff(b) < 24)).count();
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::copy(&shot, &keep).unwrap();
    println!(
        "status page screenshot {}x{} with {boxed} box-coloured pixels: {}",
        png.width(),
        png.height(),
        keep.display()
    );
    assert!(boxed > 200, "no boxes drawn in the screenshot ({boxed} pixels of the box colour)");
}

/// No model on the box (armv7): every frame still goes upstream as a record
/// with an empty annotation, in order, and the log is freed.
#[test]
fn with_the_model_off_every_frame_is_forwarded_unannotated() {
    let mq = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new(dir.path(), mq.port);
    s.detect = false;
    s.when_disabled = "forward";
    s.extra = "[sample]\nevery_nth = 5\n".into();
    let gw = Gateway::start(exe(), &s.write(&dir.path().join("g.toml")), s.http_port).unwrap();
    let cameras = load_cameras(&fixtures().join("cameras")).unwrap();
    let total: usize = cameras.iter().map(|c| c.frames.len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(replay(&cameras, &mq.addr(), Some(50.0), false)).unwrap();
    gw.wait_for("every frame forwarded", Duration::from_secs(60), |m| {
        m.get("vision_gateway_frames_annotated_total").copied().unwrap_or(0.0) >= total as f64
    })
    .unwrap();
    let (ok, glog) = gw.terminate().unwrap();
    assert!(ok, "{glog}");
    assert!(glog.contains("forwarded upstream without annotations"), "{glog}");
    let log = s.open_log();
    assert_eq!(log.area_stats(Area::Frames).records, 0, "forwarded frames are freed");
    let anns = annotations(&log);
    assert_eq!(anns.len(), total);
    for cam in &cameras {
        let seqs: Vec<u64> = anns.iter().filter(|a| a.camera == cam.id).map(|a| a.camera_seq.unwrap()).collect();
        assert_eq!(seqs, (0..cam.frames.len() as u64).collect::<Vec<_>>());
    }
    assert!(anns.iter().all(|a| a.annotation.model.name == "none" && a.annotation.items.is_empty()));
    let sampled = anns.iter().filter(|a| a.sampled.is_some()).count();
    assert_eq!(log.area_stats(Area::Images).records as usize, sampled);
    assert!(sampled >= 9, "every 5th frame of each camera: {sampled}");
}
