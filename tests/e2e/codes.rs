//! Golden test of the code reader and the label cross-check on
//! `tests/fixtures/codes` (made by `tests/fixtures/generate_codes.py`):
//! the gateway's reader (rxing, `inference::codes`) side by side with the
//! Python zxing-cpp 3.1.1 reader (`tests/reference/codes_reference.py`, in
//! the venv `tests/run` makes) on the same pixels, both against the codes
//! actually printed (`expected.json`); then the whole pipeline (PP-OCRv6
//! and the codes) flags every misprinted label with the right field and
//! no correct one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use inference::codes::{self, CodeOptions, CodeReader, Outcome, Symbology};
use inference::fields::FieldSpec;
use inference::{LoadOptions, Model};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = std::env::var_os("VISION_GATEWAY_REF_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/vision-gateway/venv-ref/bin/python")
    });
    assert!(p.exists(), "reference Python not found at {} (bash tests/run creates it)", p.display());
    p
}

#[derive(serde::Deserialize)]
struct Expected {
    frames: Vec<Frame>,
}

#[derive(serde::Deserialize)]
struct Frame {
    file: String,
    label: bool,
    codes: Vec<ExpectedCode>,
    fields: BTreeMap<String, String>,
    #[serde(default)]
    coded: BTreeMap<String, String>,
    misprint: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ExpectedCode {
    symbology: String,
    text: String,
}

#[derive(serde::Deserialize)]
struct RefFrame {
    ms: f64,
    codes: Vec<RefCode>,
}

#[derive(serde::Deserialize)]
struct RefCode {
    symbology: String,
    text: String,
}

fn expected() -> Expected {
    let dir = repo().join("tests/fixtures/codes");
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

#[test]
fn the_gateway_reads_the_codes_zxing_cpp_reads_and_nothing_else() {
    let dir = repo().join("tests/fixtures/codes");
    let exp = expected();
    // Both readers see the same pixels: the gateway's JPEG decoder's,
    // written as PNG for the reference.
    let tmp = tempfile::tempdir().unwrap();
    let mut pngs = Vec::new();
    let mut lumas = Vec::new();
    for f in &exp.frames {
        let bytes = std::fs::read(dir.join(&f.file)).unwrap();
        let bgr = inference::imageops::decode(&bytes, 50_000_000).unwrap();
        let luma = codes::luma(&bgr, [0, 0, bgr.width, bgr.height]);
        let png = tmp.path().join(f.file.replace(".jpg", ".png"));
        image::GrayImage::from_raw(bgr.width as u32, bgr.height as u32, luma.clone()).unwrap().save(&png).unwrap();
        pngs.push(png);
        lumas.push((luma, bgr.width as u32, bgr.height as u32));
    }
    let out =
        Command::new(python()).arg(repo().join("tests/reference/codes_reference.py")).args(&pngs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: BTreeMap<String, RefFrame> = serde_json::from_slice(&out.stdout).unwrap();

    let mut reader = CodeReader::new(CodeOptions { budget: Duration::from_secs(60), ..CodeOptions::default() });
    let (mut total, mut ours, mut theirs, mut gs1_checked) = (0, 0, 0, 0);
    let (mut our_ms, mut their_ms) = (0.0, 0.0);
    println!("{:<10} {:>7} {:>9} {:>8}", "frame", "printed", "zxing-cpp", "gateway");
    for ((f, png), (luma, w, h)) in exp.frames.iter().zip(&pngs).zip(lumas) {
        let printed: BTreeSet<(&str, &str)> = f.codes.iter().map(|c| (c.symbology.as_str(), c.text.as_str())).collect();
        let r = &reference[&png.display().to_string()];
        let their: BTreeSet<(&str, &str)> = r.codes.iter().map(|c| (c.symbology.as_str(), c.text.as_str())).collect();
        let t = std::time::Instant::now();
        let Outcome::Read(read) = reader.read(luma, w, h, [0.0; 2]) else { panic!("{}: not read", f.file) };
        our_ms += t.elapsed().as_secs_f64() * 1e3;
        their_ms += r.ms;
        let our: BTreeSet<(&str, &str)> = read.iter().map(|c| (c.symbology.name(), c.text.as_str())).collect();
        assert!(our.is_subset(&printed), "{}: the gateway read {:?}, not printed", f.file, our.difference(&printed));
        assert!(their.is_subset(&printed), "{}: zxing-cpp read {:?}, not printed", f.file, their.difference(&printed));
        for c in read.iter().filter(|c| c.symbology == Symbology::DataMatrix) {
            let gs1 = c.gs1.as_ref().unwrap_or_else(|| panic!("{}: GS1 DataMatrix not parsed: {c:?}", f.file));
            assert_eq!(gs1.get("10"), f.coded.get("lot"), "{}", f.file);
            assert_eq!(gs1.get("17"), f.coded.get("expiry"), "{}", f.file);
            assert_eq!(gs1.get("21"), f.coded.get("serial"), "{}", f.file);
            gs1_checked += 1;
        }
        println!("{:<10} {:>7} {:>9} {:>8}", f.file, printed.len(), their.len(), our.len());
        total += printed.len();
        ours += our.len();
        theirs += their.len();
    }
    let n = exp.frames.len() as f64;
    println!(
        "codes read: gateway {ours}/{total} ({:.1} ms a frame), zxing-cpp {theirs}/{total} ({:.1} ms a frame); \
         GS1 DataMatrix parsed and checked: {gs1_checked}",
        our_ms / n,
        their_ms / n
    );
    // The gateway reads at least 90% of the printed codes, and no more
    // than two fewer than the C++ reader on these frames.
    assert!(ours * 10 >= total * 9, "the gateway read {ours} of {total} codes");
    assert!(ours + 2 >= theirs, "the gateway read {ours}, zxing-cpp {theirs}");
    assert!(gs1_checked >= exp.frames.iter().filter(|f| !f.codes.is_empty()).count() * 9 / 10);
}

fn fields() -> Vec<FieldSpec> {
    let spec = |name: &str, format: &str, ai: &str| FieldSpec {
        name: name.into(),
        format: format.into(),
        required: true,
        min_score: inference::fields::DEFAULT_MIN_SCORE,
        verify: Some(codes::verify::Rule::Gs1(ai.into())),
    };
    // As tests/fixtures/codes/fields.toml.
    vec![
        spec("lot", r"LOT <\d{4}-\u>", "10"),
        spec("expiry", r"EXP <\d{4}-\d{2}-\d{2}>", "17"),
        spec("serial", r"SN <\d{6}>", "21"),
    ]
}

#[test]
fn every_misprinted_label_is_flagged_with_its_field_and_no_correct_one() {
    let dir = repo().join("tests/fixtures/codes");
    let library = repo().join("models/runtime").join(std::env::consts::ARCH).join("libonnxruntime.so.1.31.1");
    let backend = std::env::var("VISION_GATEWAY_GOLDEN_BACKEND").unwrap_or_else(|_| "onnxruntime".into());
    let backend = inference::engine::Backend::parse(&backend).unwrap();
    let opts = LoadOptions {
        codes: Some(CodeOptions { budget: Duration::from_secs(60), ..CodeOptions::default() }),
        ..LoadOptions::new(library, backend)
    };
    let mut m = Model::load(&repo().join("models/ppocr-v6"), &opts).unwrap();
    let specs = fields();
    let compiled = m.compile_fields(&specs).unwrap();
    let refs: Vec<&inference::fields::Field> = compiled.iter().collect();
    let (mut flagged, mut misprints, mut verified) = (0, 0, 0);
    for f in expected().frames {
        let a = m.annotate_with(&std::fs::read(dir.join(&f.file)).unwrap(), &refs).unwrap();
        let read: BTreeMap<&str, &str> = a.fields.iter().map(|(k, v)| (k.as_str(), v.value.as_str())).collect();
        let want: BTreeMap<&str, &str> = f.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(read, want, "{}: fields", f.file);
        let mut mism = a.mismatches.clone();
        mism.sort();
        assert_eq!(mism, f.misprint, "{}: mismatches (codes {:?})", f.file, a.codes);
        for name in &a.mismatches {
            let v = &a.fields[name];
            assert_eq!(v.verified, Some(false));
            assert_eq!(v.code.as_deref(), f.coded.get(name).map(String::as_str), "{}: {name}", f.file);
        }
        if f.codes.is_empty() && f.label {
            // A label without a code: its fields are unverified, never a mismatch.
            assert_eq!(a.unverified.len(), 3, "{}: {:?}", f.file, a.unverified);
        }
        verified += a.fields.values().filter(|v| v.verified == Some(true)).count();
        flagged += usize::from(!a.mismatches.is_empty());
        misprints += usize::from(!f.misprint.is_empty());
    }
    println!("misprinted labels flagged: {flagged} of {misprints}; fields verified against their code: {verified}");
    assert!(misprints >= 4 && verified > 0);
}
