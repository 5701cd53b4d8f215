//! Kafka security on real listeners: tansu (SCRAM users in its sqlite
//! store, `--authentication`) behind Debian's stunnel4 (TLS, or mTLS with a
//! required client certificate), certificates made by openssl, and the real
//! gateway producing over SSL, mTLS and SASL_SSL with SCRAM-SHA-256 and
//! -512. Then the failures a site meets (a wrong password, a CA the brokers'
//! certificate does not chain to, the brokers' certificate expired, no
//! client certificate where one is required): each named in the log,
//! counted in `/metrics`, nothing lost.

use crate::harness::{exe, free_port, publish_numbered, small_jpeg, Gateway, Mosquitto, Settings, Tansu};
use gateway::records::header::{ALL_TOPICS, ANNOTATIONS_TOPIC};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::stunnel::{ClientCerts, Stunnel};
use testkit::tls::Certs;

const PASSWORD: &str = "edge-box-secret";

/// How the uplink is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tls,
    Mtls,
    Scram256,
    Scram512,
}

impl Mode {
    fn mechanism(self) -> Option<(&'static str, &'static str)> {
        match self {
            Mode::Scram256 => Some(("SCRAM-SHA-256", "scram256")),
            Mode::Scram512 => Some(("SCRAM-SHA-512", "scram512")),
            Mode::Tls | Mode::Mtls => None,
        }
    }
}

/// tansu behind stunnel, secured as `mode` says.
struct Uplink {
    tansu: Tansu,
    _tls: Stunnel,
}

/// librdkafka options of a client of `mode`, `ca` its trust, the password
/// inline (the test's own consumer) or left to a secret file (the gateway).
fn options(mode: Mode, certs: &Certs, ca: &Path, with_password: bool) -> Vec<(String, String)> {
    let mut o = vec![("ssl.ca.location".to_owned(), ca.display().to_string())];
    match mode.mechanism() {
        Some((m, _)) => {
            o.push(("security.protocol".into(), "sasl_ssl".into()));
            o.push(("sasl.mechanism".into(), m.into()));
            o.push(("sasl.username".into(), "gw".into()));
            if with_password {
                o.push(("sasl.password".into(), PASSWORD.into()));
            }
        }
        None => o.push(("security.protocol".into(), "ssl".into())),
    }
    if mode == Mode::Mtls {
        o.push(("ssl.certificate.location".into(), certs.client_cert.display().to_string()));
        o.push(("ssl.key.location".into(), certs.client_key.display().to_string()));
    }
    o
}

fn uplink(certs: &Certs, mode: Mode) -> Uplink {
    let tls_port = free_port();
    let mut tansu = Tansu::start_advertising(Some(tls_port));
    if let Some((_, m)) = mode.mechanism() {
        tansu.create_user(m, "gw", PASSWORD);
        tansu.require_authentication();
    }
    let clients = if mode == Mode::Mtls { ClientCerts::Required } else { ClientCerts::NotAsked };
    let tls = Stunnel::start(tls_port, tansu.port, certs, clients).unwrap();
    tansu.client = options(mode, certs, &certs.ca, true);
    tansu.create_topics(&ALL_TOPICS);
    Uplink { tansu, _tls: tls }
}

/// The gateway's `[replicate]` keys for `options`, the password in a file.
fn replicate_keys(dir: &Path, options: &[(String, String)], password: Option<&str>) -> String {
    let inline: Vec<String> = options.iter().map(|(k, v)| format!("{k:?} = {v:?}")).collect();
    let mut keys = format!("librdkafka = {{ {} }}\n", inline.join(", "));
    if let Some(pw) = password {
        let file = dir.join("kafka-password");
        std::fs::write(&file, format!("{pw}\n")).unwrap();
        keys.push_str(&format!("librdkafka_secret_files = {{ \"sasl.password\" = {:?} }}\n", file.display()));
    }
    keys
}

/// A gateway forwarding frames without a model, secured by `keys`.
fn settings(dir: &Path, mq: &Mosquitto, up: &Uplink, keys: String) -> Settings {
    let mut s = Settings::new(dir, mq.port);
    s.when_disabled = "forward";
    s.kafka = up.tansu.brokers();
    s.replicate_extra = keys;
    s
}

fn frames(camera: &str, n: u64) -> Vec<(String, u64, Vec<u8>)> {
    (0..n).map(|i| (camera.to_owned(), i, small_jpeg(64, 48, i))).collect()
}

fn check_config(config: &Path) -> String {
    let out = Command::new(exe()).args(["check-config", "--config"]).arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn annotations_reach_kafka_over_tls_mtls_and_sasl_scram() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path()).unwrap();
    let mq = Mosquitto::start().unwrap();
    for (i, mode) in [Mode::Tls, Mode::Mtls, Mode::Scram256, Mode::Scram512].into_iter().enumerate() {
        let up = uplink(&certs, mode);
        let work = tempfile::tempdir().unwrap();
        let opts = options(mode, &certs, &certs.ca, false);
        let pw = mode.mechanism().map(|_| PASSWORD);
        let s = settings(work.path(), &mq, &up, replicate_keys(work.path(), &opts, pw));
        let cfg = s.write(&work.path().join("g.toml"));
        let summary = check_config(&cfg);
        let line = summary.lines().find(|l| l.trim_start().starts_with("security")).unwrap().trim().to_owned();
        println!("{mode:?}: check-config: {line}");
        assert!(!summary.contains(PASSWORD), "{summary}");
        let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
        let camera = format!("sec-cam-{i}");
        assert_eq!(publish_numbered(mq.port, frames(&camera, 20)), 20);
        gw.wait_for("20 annotations acknowledged by Kafka", Duration::from_secs(60), |m| {
            m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 20.0
        })
        .unwrap();
        let failures = gw.metric("vision_gateway_kafka_auth_failures_total{kind=\"sasl\"}")
            + gw.metric("vision_gateway_kafka_auth_failures_total{kind=\"tls\"}");
        assert_eq!(failures, 0.0);
        let (ok, log) = gw.terminate().unwrap();
        assert!(ok, "{log}");
        assert!(!log.contains(PASSWORD), "the password is never logged");
        let got = up.tansu.consume_to_end(ANNOTATIONS_TOPIC);
        assert_eq!(got.len(), 20, "{mode:?}");
    }
}

/// Starts a gateway secured by `keys`, publishes 10 frames, and waits until
/// the client reports a `kind` failure; returns the error line it logged.
fn refused(mq: &Mosquitto, up: &Uplink, work: &Path, keys: String, kind: &str) -> (Settings, String) {
    let s = settings(work, mq, up, keys);
    let cfg = s.write(&work.join("g.toml"));
    let gw = Gateway::start(exe(), &cfg, s.http_port).unwrap();
    let camera = format!("{kind}-cam-{}", up.tansu.port);
    assert_eq!(publish_numbered(mq.port, frames(&camera, 10)), 10);
    let key = format!("vision_gateway_kafka_auth_failures_total{{kind=\"{kind}\"}}");
    gw.wait_for(&format!("a {kind} failure counted"), Duration::from_secs(60), |m| {
        m.get(&key).copied().unwrap_or(0.0) >= 1.0
            && m.get("vision_gateway_frames_acked_total").copied().unwrap_or(0.0) >= 10.0
    })
    .unwrap();
    assert_eq!(gw.metric("vision_gateway_replicated_total{kind=\"annotation\"}"), 0.0);
    // The 10 annotations (and any sampled image) wait in the log.
    assert!(gw.metric("vision_gateway_backlog_records{stage=\"replicate\"}") >= 10.0, "kept in the log");
    let (ok, log) = gw.terminate().unwrap();
    assert!(ok, "{log}");
    assert!(!log.contains(PASSWORD));
    let line = log.lines().find(|l| l.contains("ERROR") && l.contains("Kafka")).unwrap_or_default().to_owned();
    (s, line)
}

#[test]
fn a_wrong_password_an_unknown_ca_and_a_missing_client_certificate_are_named_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path()).unwrap();
    let mq = Mosquitto::start().unwrap();

    // A wrong password: refused, counted; with the right one, everything follows.
    let up = uplink(&certs, Mode::Scram512);
    let work = tempfile::tempdir().unwrap();
    let opts = options(Mode::Scram512, &certs, &certs.ca, false);
    let (s, line) = refused(&mq, &up, work.path(), replicate_keys(work.path(), &opts, Some("wrong")), "sasl");
    println!("wrong password: {line}");
    assert!(line.contains("Kafka refused the gateway's SASL credentials"), "{line}");
    let mut fixed = s;
    fixed.replicate_extra = replicate_keys(work.path(), &opts, Some(PASSWORD));
    let cfg = fixed.write(&work.path().join("g.toml"));
    let gw = Gateway::start(exe(), &cfg, fixed.http_port).unwrap();
    gw.wait_for("the 10 kept frames sent", Duration::from_secs(60), |m| {
        m.get("vision_gateway_replicated_total{kind=\"annotation\"}").copied().unwrap_or(0.0) >= 10.0
    })
    .unwrap();
    assert!(gw.terminate().unwrap().0);
    assert_eq!(up.tansu.consume_to_end(ANNOTATIONS_TOPIC).len(), 10);

    // A CA the brokers' certificate does not chain to.
    let up = uplink(&certs, Mode::Tls);
    let work = tempfile::tempdir().unwrap();
    let opts = options(Mode::Tls, &certs, &certs.other_ca, false);
    let (_, line) = refused(&mq, &up, work.path(), replicate_keys(work.path(), &opts, None), "tls");
    println!("unknown CA: {line}");
    assert!(line.contains("TLS handshake with a Kafka broker failed"), "{line}");

    // The brokers' certificate expired (the test's own client cannot make
    // topics through it either: none are needed to be refused).
    let tls_port = free_port();
    let tansu = Tansu::start_advertising(Some(tls_port));
    let expired = Certs { server_cert: certs.expired_server_cert.clone(), ..certs.clone() };
    let tls = Stunnel::start(tls_port, tansu.port, &expired, ClientCerts::NotAsked).unwrap();
    let up = Uplink { tansu, _tls: tls };
    let work = tempfile::tempdir().unwrap();
    let opts = options(Mode::Tls, &certs, &certs.ca, false);
    let (_, line) = refused(&mq, &up, work.path(), replicate_keys(work.path(), &opts, None), "tls");
    println!("expired certificate: {line}");
    // librdkafka's OpenSSL says "certificate verify failed" for an expired
    // certificate as for an unknown CA; the line names the dates to check.
    assert!(
        line.contains("TLS handshake with a Kafka broker failed") && line.contains("certificates' dates"),
        "{line}"
    );

    // mTLS required, no client certificate presented.
    let up = uplink(&certs, Mode::Mtls);
    let work = tempfile::tempdir().unwrap();
    let opts = options(Mode::Tls, &certs, &certs.ca, false);
    let (_, line) = refused(&mq, &up, work.path(), replicate_keys(work.path(), &opts, None), "tls");
    println!("no client certificate: {line}");
    assert!(line.contains("TLS handshake with a Kafka broker failed"), "{line}");
}
