//! The config's validation, seen from a file: every problem reported at
//! once, with its key.

use super::*;
use crate::log::WhenFull;
use std::collections::HashMap;

struct FakeEnv(HashMap<String, String>);
impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn env() -> FakeEnv {
    FakeEnv(HashMap::new())
}

const MINIMAL: &str = r#"
gateway_id = "line1"
[mqtt]
broker = "127.0.0.1:1883"
[replicate]
brokers = "127.0.0.1:9092"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(Path::new("t.toml"), MINIMAL, &env()).unwrap();
    assert_eq!(c.gateway_id, "line1");
    assert_eq!(c.log.max_bytes, 2 << 30);
    assert_eq!(c.log.when_full, WhenFull::Block);
    assert_eq!(c.mqtt.topics, vec!["cameras/+/frames".to_string()]);
    assert_eq!(c.mqtt.max_frame_bytes, 16 << 20);
    assert_eq!(c.mqtt.client_id, "vision-gateway-line1");
    assert_eq!(c.replicate.chunk_bytes, 900 << 10);
    assert_eq!(c.mqtt.broker, BrokerAddr { host: "127.0.0.1".into(), port: 1883, tls: false });
}

#[test]
fn three_mistakes_are_all_reported() {
    let text = r#"
gateway_id = "line1"
[log]
max_bytes = "2 gigs"
colour = "blue"
[replicate]
brokers = "127.0.0.1:9092"
"#;
    let e = Config::parse(Path::new("bad.toml"), text, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["log.colour", "log.max_bytes", "mqtt.broker"], "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("bad.toml: 3 problems:"), "{shown}");
}

#[test]
fn label_fields_are_checked_all_at_once() {
    let base = "gateway_id = \"g\"\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n[replicate]\nbrokers = \"127.0.0.1:9092\"\n";
    let good = format!(
        "{base}[detect.text]\nmin_score = 0.9\nmax_aspect_per_char = 0\n\
         [[fields]]\nname = \"lot\"\nformat = 'LOT <L\\d{{4}}[A-FX]>'\n\
         [[fields]]\nname = \"sn\"\nformat = 'SN <\\d{{8}}>'\nrequired = false\nmin_score = 0.7\ncameras = [\"line1-*\"]\n"
    );
    let c = Config::parse(Path::new("g.toml"), &good, &env()).unwrap();
    assert_eq!(c.fields.len(), 2);
    assert_eq!(c.fields[0].spec.format, r"LOT <L\d{4}[A-FX]>");
    assert!(c.fields[0].spec.required && !c.fields[1].spec.required);
    assert_eq!(c.fields[1].spec.min_score, 0.7);
    assert!(c.fields[1].applies("line1-cam2") && !c.fields[1].applies("line2-cam1") && c.fields[0].applies("x"));
    assert_eq!(c.detect.text.min_score, 0.9);
    assert!(c.detect.text.max_aspect_per_char.is_infinite(), "0 turns the rule off");
    assert_eq!(c.detect.text.min_chars, inference::ocr::TextFilter::default().min_chars);

    let bad = format!(
        "{base}[detect.text]\nmin_score = 2.0\n\
         [[fields]]\nname = \"Lot Number\"\nformat = 'LOT <\\d{{4}}'\n\
         [[fields]]\nname = \"sn\"\n\
         [[fields]]\nname = \"sn\"\nformat = '\\q'\nmin_score = -1\ncameras = [\"a/b\"]\ncolour = 1\n"
    );
    let e = Config::parse(Path::new("g.toml"), &bad, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "fields.2.colour",
            "detect.text.min_score",
            "fields[0].name",
            "fields[0].format",
            "fields[1].format",
            "fields[2].name",
            "fields[2].format",
            "fields[2].min_score",
            "fields[2].cameras",
        ],
        "{e}"
    );
    let shown = e.to_string();
    assert!(shown.contains("at column 5: this < is not closed by >"), "{shown}");
    assert!(shown.contains("unknown escape \\q"), "{shown}");
    assert!(shown.contains("declared twice"), "{shown}");

    let off = format!("{base}[detect]\nenabled = false\n[[fields]]\nname = \"a\"\nformat = 'A\\d'\n");
    let e = Config::parse(Path::new("g.toml"), &off, &env()).unwrap_err();
    assert!(e.to_string().contains("detect.enabled is false"), "{e}");
}

#[test]
fn globs() {
    assert!(glob("line1-*", "line1-cam2") && glob("*", "") && glob("a*b*c", "a12b34c") && glob("cam", "cam"));
    assert!(!glob("line1-*", "line2-cam1") && !glob("a*b", "ba") && !glob("ab*ba", "aba") && !glob("cam", "cam2"));
}

#[test]
fn librdkafka_options_that_break_order_delivery_or_idempotence_are_rejected() {
    let text = format!(
        "{MINIMAL}[replicate.librdkafka]\npartitioner = \"random\"\n\"delivery.report.only.error\" = \"true\"\n\
         \"transactional.id\" = \"x\"\n\"request.required.acks\" = \"1\"\n\"max.in.flight\" = \"100\"\n\
         \"security.protocol\" = \"ssl\"\n\"compression.type\" = \"lz4\"\n"
    );
    let e = Config::parse(Path::new("k.toml"), &text, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "replicate.librdkafka.delivery.report.only.error",
            "replicate.librdkafka.max.in.flight",
            "replicate.librdkafka.partitioner",
            "replicate.librdkafka.request.required.acks",
            "replicate.librdkafka.transactional.id",
        ],
        "{e}"
    );
    assert!(e.to_string().contains("break their order"), "{e}");
}

#[test]
fn combinations_that_loop_or_mislead_are_rejected_all_at_once() {
    let text = r#"
gateway_id = "line1"
[log]
max_bytes = "64MiB"
[mqtt]
broker = "user:pass@10.0.0.1:1883"
max_pixels = 0
keep_alive = "70000s"
quarantine_max_bytes = "1GiB"
[replicate]
brokers = "u:p@127.0.0.1:9092"
[detect]
batch = 4
ocr_side = 700
"#;
    let e = Config::parse(Path::new("c.toml"), text, &env()).unwrap_err();
    let mut keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "detect.ocr_side",
            "mqtt.broker",
            "mqtt.keep_alive",
            "mqtt.max_pixels",
            "mqtt.quarantine_max_bytes",
            "replicate.brokers"
        ],
        "{e}"
    );
    assert!(e.to_string().contains("700 is not a multiple of 32"), "{e}");
    assert!(e.to_string().contains("credentials do not go in the address"), "{e}");
    // A small log gets a smaller default quarantine, not an error.
    let small = format!("{MINIMAL}[log]\nmax_bytes = \"8MiB\"\n");
    let small = small.replacen("[mqtt]", "[mqtt]\nmax_frame_bytes = \"1MiB\"", 1);
    let c = Config::parse(Path::new("s.toml"), &small, &env()).unwrap();
    assert_eq!(c.mqtt.quarantine_max_bytes, 2 << 20);
}

#[test]
fn the_backend_is_checked_and_onnxruntime_needs_its_library() {
    let c = Config::parse(Path::new("c.toml"), MINIMAL, &env()).unwrap();
    assert_eq!(c.detect.backend, inference::engine::Backend::Auto);
    let t = format!("{MINIMAL}[detect]\nbackend = \"tract\"\n");
    assert_eq!(
        Config::parse(Path::new("c.toml"), &t, &env()).unwrap().detect.backend,
        inference::engine::Backend::Tract
    );
    let t = format!("{MINIMAL}[detect]\nbackend = \"tensorrt\"\n");
    let e = Config::parse(Path::new("c.toml"), &t, &env()).unwrap_err();
    assert_eq!(e.problems[0].key, "detect.backend", "{e}");
    assert!(e.to_string().contains("\"tensorrt\" is not"), "{e}");
    let t = format!(
        "{MINIMAL}[detect]\nbackend = \"onnxruntime\"\nonnxruntime = \"/nonexistent/libonnxruntime.so.1.31.1\"\n"
    );
    let e = Config::parse(Path::new("c.toml"), &t, &env()).unwrap_err();
    assert!(e.to_string().contains("no file at /nonexistent/libonnxruntime.so.1.31.1"), "{e}");
    // Off, it does not matter.
    let t = t.replace("[detect]\n", "[detect]\nenabled = false\n");
    assert!(Config::parse(Path::new("c.toml"), &t, &env()).is_ok());
}

#[test]
fn type_errors_are_reported_with_unknown_keys_seen_before_them() {
    let text = "typo = 1\n[detect]\nworkers = \"two\"\n";
    let e = Config::parse(Path::new("x.toml"), text, &env()).unwrap_err();
    assert_eq!(e.problems[0].key, "typo");
    assert!(e.problems[1].message.contains("invalid type"), "{e}");
}

#[test]
fn secrets_come_from_credentials_and_are_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mqtt-password"), "s3cret\n").unwrap();
    let e = FakeEnv(HashMap::from([("CREDENTIALS_DIRECTORY".into(), dir.path().display().to_string())]));
    let text = r#"
gateway_id = "line1"
[mqtt]
broker = "mqtt://10.0.0.1"
username = "gw"
password_file = "mqtt-password"
[replicate]
brokers = "k:9092"
"#;
    let c = Config::parse(Path::new("t"), text, &e).unwrap();
    let pw = c.mqtt.password.as_ref().unwrap();
    assert_eq!(pw.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    // As the shipped unit loads the credentials directory.
    std::fs::remove_file(dir.path().join("mqtt-password")).unwrap();
    std::fs::write(dir.path().join("credentials_mqtt-password"), "dir-s3cret\n").unwrap();
    let c = Config::parse(Path::new("t"), text, &e).unwrap();
    assert_eq!(c.mqtt.password.as_ref().unwrap().expose(), "dir-s3cret");
}

#[test]
fn missing_secret_env_and_bad_topics_are_problems() {
    let text = r#"
gateway_id = "bad id!"
[mqtt]
broker = "mqtts://broker:8883"
topics = ["cameras/#"]
password_env = "NOPE"
[replicate]
brokers = "k"
chunk_bytes = "10MiB"
"#;
    let e = Config::parse(Path::new("t"), text, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    for k in
        ["gateway_id", "mqtt.topics", "mqtt.password_env", "mqtt.tls", "replicate.brokers", "replicate.chunk_bytes"]
    {
        assert!(keys.contains(&k), "{k} missing from {e}");
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/gateway.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let c = Config::parse(&p, &text, &env()).unwrap();
    assert_eq!(c.log.when_full, WhenFull::Block);
}

/// A `[replicate]` with the given librdkafka options and secret files.
fn with_kafka(options: &str, secrets: &str) -> String {
    format!(
        "gateway_id = \"line1\"\n[mqtt]\nbroker = \"127.0.0.1:1883\"\n[replicate]\nbrokers = \"127.0.0.1:9093\"\n\
         librdkafka = {{ {options} }}\nlibrdkafka_secret_files = {{ {secrets} }}\n"
    )
}

#[test]
fn kafka_security_mistakes_are_named_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let text = with_kafka(
        &format!(
            "\"security.protocol\" = \"sasl_ssl\", \"sasl.mechanism\" = \"scram-sha-512\", \"ssl.ca.location\" = {:?}, \
             \"ssl.certificate.location\" = {:?}",
            not_pem.display(),
            not_pem.display()
        ),
        "",
    );
    let e = Config::parse(Path::new("k.toml"), &text, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "replicate.librdkafka.sasl.username",
            "replicate.librdkafka_secret_files.sasl.password",
            "replicate.librdkafka.ssl.ca.location",
            "replicate.librdkafka.ssl.key.location",
        ],
        "{e}"
    );
    assert!(e.to_string().contains("no PEM certificate found"), "{e}");
    let text = with_kafka("\"security.protocol\" = \"sasl-ssl\"", "");
    let e = Config::parse(Path::new("k.toml"), &text, &env()).unwrap_err();
    assert!(e.to_string().contains("use plaintext, ssl, sasl_plaintext or sasl_ssl"), "{e}");
}

#[test]
fn kafka_security_is_summarised_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("kafka-password");
    std::fs::write(&pw, "s3cret-value\n").unwrap();
    let text = with_kafka(
        "\"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-256\", \"sasl.username\" = \"gw\"",
        &format!("\"sasl.password\" = {:?}", pw.display()),
    );
    let c = Config::parse(Path::new("k.toml"), &text, &env()).unwrap();
    assert_eq!(c.replicate.security.protocol, Protocol::SaslSsl);
    let s = summary(&c);
    assert!(
        s.contains("security     SASL_SSL, SCRAM-SHA-256 as \"gw\" (password from a secret file), brokers' CA from the system store, no client certificate"),
        "{s}"
    );
    assert!(!s.contains("s3cret"), "{s}");
    assert!(!format!("{c:?}").contains("s3cret"));
}

fn with_claim_check(section: &str) -> String {
    format!("{MINIMAL}[replicate.claim_check]\nenabled = true\n{section}\n")
}

#[test]
fn claim_check_mistakes_are_named_and_credentials_must_be_secrets() {
    // Off by default, and off when not enabled even if written.
    let c = Config::parse(Path::new("t.toml"), MINIMAL, &env()).unwrap();
    assert!(c.replicate.claim_check.is_none());
    let off = format!("{MINIMAL}[replicate.claim_check]\nenabled = false\nbucket = \"x\"\n");
    assert!(Config::parse(Path::new("t.toml"), &off, &env()).unwrap().replicate.claim_check.is_none());
    let text = with_claim_check(
        "endpoint = \"http://127.0.0.1:8333\"\nbucket = \"Images_1\"\nprefix = \"a//b\"\nmax_in_flight = 0\naccess_key = \"AKIA\"",
    );
    let e = Config::parse(Path::new("c.toml"), &text, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "replicate.claim_check.access_key",
            "replicate.claim_check.endpoint",
            "replicate.claim_check.bucket",
            "replicate.claim_check.prefix",
            "replicate.claim_check.access_key_id_file",
            "replicate.claim_check.secret_access_key_file",
            "replicate.claim_check.max_in_flight",
        ],
        "{e}"
    );
    assert!(e.to_string().contains("never asks an instance-metadata service"), "{e}");
    assert!(e.to_string().contains("plain HTTP: use https, or set allow_http = true"), "{e}");
}

#[test]
fn claim_check_defaults_and_summary_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (id, key) = (dir.path().join("s3-id"), dir.path().join("s3-key"));
    std::fs::write(&id, "gateway\n").unwrap();
    std::fs::write(&key, "very-secret-key\n").unwrap();
    let text = with_claim_check(&format!(
        "endpoint = \"http://127.0.0.1:8333\"\nallow_http = true\nbucket = \"vision-images\"\n\
         access_key_id_file = {:?}\nsecret_access_key_file = {:?}",
        id.display(),
        key.display()
    ));
    let c = Config::parse(Path::new("c.toml"), &text, &env()).unwrap();
    let cc = c.replicate.claim_check.as_ref().unwrap();
    assert_eq!(cc.min_bytes, c.replicate.chunk_bytes, "the threshold defaults to the chunk size");
    assert_eq!((cc.max_in_flight, cc.max_bytes_per_second, cc.prefix.as_str()), (4, 0, "vision-gateway"));
    assert_eq!(cc.access_key_id.expose(), "gateway");
    let s = summary(&c);
    assert!(s.contains("claim check  images >= 921600 B to http://127.0.0.1:8333/vision-images/vision-gateway"), "{s}");
    assert!(!s.contains("very-secret") && !format!("{c:?}").contains("very-secret"), "{s}");
}

#[test]
fn a_camera_may_have_its_own_ocr_side() {
    let ok = format!("{MINIMAL}[detect]\nocr_side = 736\n[[detect.camera]]\nid = \"line1-cam1\"\nocr_side = 480\n");
    let c = Config::parse(Path::new("c.toml"), &ok, &env()).unwrap();
    assert_eq!(c.detect.ocr_side, 736);
    assert_eq!(c.detect.camera_sides.get("line1-cam1"), Some(&480));
    assert_eq!(c.detect.camera_sides.len(), 1);

    let bad = format!(
        "{MINIMAL}[[detect.camera]]\nocr_side = 480\n[[detect.camera]]\nid = \"a\"\nocr_side = 500\n\
         [[detect.camera]]\nid = \"a\"\nocr_side = 512\n[[detect.camera]]\nid = \"b\"\n"
    );
    let e = Config::parse(Path::new("c.toml"), &bad, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["detect.camera[0].id", "detect.camera[1].ocr_side", "detect.camera[2].id", "detect.camera[3]"],
        "{e}"
    );
    assert!(e.to_string().contains("500 is not a multiple of 32"), "{e}");
    assert!(e.to_string().contains("\"a\" is listed twice"), "{e}");
}

#[test]
fn codes_are_off_until_their_section_and_their_mistakes_are_named() {
    let c = Config::parse(Path::new("c.toml"), MINIMAL, &env()).unwrap();
    assert!(c.detect.codes.is_none());

    let on = format!(
        "{MINIMAL}[detect.codes]\n[[fields]]\nname = \"lot\"\nformat = 'LOT <\\d{{4}}>'\nverify = \"gs1:10\"\n"
    );
    let c = Config::parse(Path::new("c.toml"), &on, &env()).unwrap();
    assert_eq!(c.detect.codes, Some(inference::codes::CodeOptions::default()));
    assert_eq!(c.fields[0].spec.verify, Some(inference::codes::verify::Rule::Gs1("10".into())));

    let set = format!(
        "{MINIMAL}[detect.codes]\nsymbologies = [\"qr\", \"ean13\"]\nbudget = \"80ms\"\neffort = \"fast\"\nregion = \"labels\"\n"
    );
    let c = Config::parse(Path::new("c.toml"), &set, &env()).unwrap();
    let codes = c.detect.codes.unwrap();
    assert_eq!(codes.symbologies, [inference::codes::Symbology::Qr, inference::codes::Symbology::Ean13]);
    assert_eq!((codes.budget, codes.thorough), (std::time::Duration::from_millis(80), false));
    assert_eq!(codes.region, inference::codes::Region::Labels);

    let off = format!("{MINIMAL}[detect.codes]\nenabled = false\n");
    assert!(Config::parse(Path::new("c.toml"), &off, &env()).unwrap().detect.codes.is_none());

    let bad = format!(
        "{MINIMAL}[detect.codes]\nsymbologies = [\"qrcode\", \"qr\", \"qr\"]\nbudget = \"0s\"\neffort = \"max\"\nregion = \"roi\"\n"
    );
    let e = Config::parse(Path::new("c.toml"), &bad, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "detect.codes.symbologies",
            "detect.codes.symbologies",
            "detect.codes.budget",
            "detect.codes.effort",
            "detect.codes.region"
        ],
        "{e}"
    );
    assert!(e.to_string().contains("\"qrcode\" is not one of data_matrix, code128, qr"), "{e}");

    let unread = format!("{MINIMAL}[[fields]]\nname = \"lot\"\nformat = 'LOT <\\d{{4}}>'\nverify = \"gs1:10\"\n[[fields]]\nname = \"exp\"\nformat = 'EXP <\\d{{4}}>'\nverify = \"lot\"\n");
    let e = Config::parse(Path::new("c.toml"), &unread, &env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["fields[1].verify", "fields[0].verify"], "{e}");
    assert!(e.to_string().contains("add [detect.codes]"), "{e}");
}
