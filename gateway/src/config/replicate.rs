//! `[replicate]`: the central Kafka cluster, the topics, and the
//! pass-through librdkafka options with the policy on which of them a site
//! may not set (the ones that would break order per camera, delivery
//! reports or idempotence).

use super::{parse_host_port, ClaimCheckConfig, KafkaSecurity, RawClaimCheck, Secret, Validator};
use crate::records::header;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[replicate]`: the uplink to Kafka.
#[derive(Debug, Default, Deserialize)]
pub struct RawReplicate {
    /// Kafka bootstrap servers, `"host:port[,host:port...]"`. Required.
    pub brokers: Option<String>,
    /// Topic for annotations. Default `"vision.annotations"`.
    pub annotations_topic: Option<String>,
    /// Topic for sampled images (chunked). Default `"vision.images"`.
    pub images_topic: Option<String>,
    /// Topic for gap records. Default `"vision.gaps"`.
    pub gaps_topic: Option<String>,
    /// Topic for quarantined input. Default `"vision.dead-letters"`.
    pub dead_letters_topic: Option<String>,
    /// Images larger than this are split into chunks. Default `"900KiB"`
    /// (under Kafka's default 1 MB `message.max.bytes`).
    pub chunk_bytes: Option<toml::Value>,
    /// Extra librdkafka producer options passed through as they are (SSL,
    /// SASL, ...), e.g. `{ "security.protocol" = "ssl" }`.
    pub librdkafka: Option<BTreeMap<String, String>>,
    /// librdkafka options whose values are read from files (secrets), e.g.
    /// `{ "sasl.password" = "kafka-password" }` with a systemd credential.
    pub librdkafka_secret_files: Option<BTreeMap<String, PathBuf>>,
    /// A backlog of more than this many records when the uplink (re)starts
    /// is sent behind a live lane: new records go first, the backlog
    /// follows with header `lane = backfill`. Default 1000; 0 keeps one
    /// lane (strict order per camera, live records wait for the backlog).
    pub live_lane_after: Option<u64>,
    /// `[replicate.claim_check]`: large sampled images to an object store.
    pub claim_check: Option<RawClaimCheck>,
}

/// Validated `[replicate]`.
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Annotation topic.
    pub annotations_topic: String,
    /// Image topic.
    pub images_topic: String,
    /// Gap topic.
    pub gaps_topic: String,
    /// Dead-letter topic.
    pub dead_letters_topic: String,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Pass-through librdkafka options.
    pub librdkafka: BTreeMap<String, String>,
    /// Pass-through librdkafka options holding secrets.
    pub librdkafka_secrets: BTreeMap<String, Secret>,
    /// Backlog (records) above which a live lane opens; 0: never.
    pub live_lane_after: u64,
    /// TLS and SASL, as read from the pass-through options.
    pub security: KafkaSecurity,
    /// The claim check, when enabled.
    pub claim_check: Option<ClaimCheckConfig>,
}

/// Checks `[replicate]`.
pub(super) fn validate(v: &mut Validator<'_>, r: RawReplicate) -> ReplicateConfig {
    let brokers = r.brokers.unwrap_or_else(|| {
        v.problem("replicate.brokers", "missing (for example \"kafka-1.example:9092,kafka-2.example:9092\")".into());
        String::new()
    });
    for b in brokers.split(',').filter(|b| !b.trim().is_empty()) {
        if let Err(e) = parse_host_port(b.trim(), None) {
            v.problem("replicate.brokers", e);
        }
    }
    let chunk_bytes = v.size("replicate.chunk_bytes", r.chunk_bytes.as_ref(), 900 << 10);
    if !(1024..=4 << 20).contains(&chunk_bytes) {
        v.problem("replicate.chunk_bytes", "must be between 1KiB and 4MiB".into());
    }
    let (librdkafka, librdkafka_secrets) =
        librdkafka(v, r.librdkafka.unwrap_or_default(), r.librdkafka_secret_files.unwrap_or_default());
    let security = super::kafka_security::validate(v, &librdkafka, &librdkafka_secrets);
    let claim_check = super::claim_check::validate(v, r.claim_check, chunk_bytes);
    ReplicateConfig {
        claim_check,
        security,
        brokers,
        annotations_topic: r.annotations_topic.unwrap_or_else(|| header::ANNOTATIONS_TOPIC.into()),
        images_topic: r.images_topic.unwrap_or_else(|| header::IMAGES_TOPIC.into()),
        gaps_topic: r.gaps_topic.unwrap_or_else(|| header::GAPS_TOPIC.into()),
        dead_letters_topic: r.dead_letters_topic.unwrap_or_else(|| header::DEAD_LETTERS_TOPIC.into()),
        chunk_bytes,
        librdkafka,
        librdkafka_secrets,
        live_lane_after: r.live_lane_after.unwrap_or(1000),
    }
}

/// The pass-through options, and those read from secret files, each
/// checked against [`forbidden_option`]; a secret written inline is refused.
fn librdkafka(
    v: &mut Validator<'_>,
    options: BTreeMap<String, String>,
    secret_files: BTreeMap<String, PathBuf>,
) -> (BTreeMap<String, String>, BTreeMap<String, Secret>) {
    let mut secrets = BTreeMap::new();
    for (k, p) in secret_files {
        let key = format!("replicate.librdkafka_secret_files.{k}");
        if let Some(s) = v.secret(&key, Some(&p), None) {
            secrets.insert(k, s);
        }
    }
    for (k, val) in &options {
        if let Some(why) = forbidden_option(k, val) {
            v.problem(&format!("replicate.librdkafka.{k}"), format!("{val:?} cannot be set: {why}"));
        }
    }
    for k in secrets.keys() {
        if let Some(why) = forbidden_option(k, "") {
            v.problem(&format!("replicate.librdkafka_secret_files.{k}"), format!("cannot be set: {why}"));
        }
    }
    for k in options.keys() {
        if k.contains("password") || k.contains("secret") {
            v.problem(
                &format!("replicate.librdkafka.{k}"),
                "looks like a secret: put it in a file and use replicate.librdkafka_secret_files".into(),
            );
        }
    }
    (options, secrets)
}

/// Why a pass-through librdkafka option cannot be allowed, if it cannot:
/// the options that would break order per camera, delivery reports or
/// idempotence, and the ones the gateway sets itself. The forced settings
/// (`enable.idempotence`, `acks`) are then applied over an option map
/// without any alias of them, so they win deterministically.
pub fn forbidden_option(key: &str, value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let num = v.parse::<i64>().ok();
    match key.trim() {
        "enable.idempotence" | "acks" | "request.required.acks" => {
            Some("is set by the gateway (enable.idempotence = true, acks = all): delivery depends on it".into())
        }
        "bootstrap.servers" | "metadata.broker.list" => Some("use replicate.brokers".into()),
        "transactional.id" => Some(
            "transactions are not used: the gateway's idempotent producer and cursors give exactly its guarantees"
                .into(),
        ),
        "partitioner" | "partitioner_cb" if v == "random" || key == "partitioner_cb" => {
            Some("would send one camera's records to several partitions and break their order".into())
        }
        "delivery.report.only.error" if v == "true" || v == "1" => {
            Some("the gateway moves its cursor on delivery reports; without them nothing is ever confirmed".into())
        }
        "queuing.strategy" if v != "fifo" => Some("would reorder records".into()),
        "max.in.flight.requests.per.connection" | "max.in.flight" if num.is_none_or(|n| n > 5) => {
            Some("must be 1..=5 with the idempotent producer (order and no duplicates)".into())
        }
        "retries" | "message.send.max.retries" if num.is_none_or(|n| n < 1) => {
            Some("must be at least 1 with the idempotent producer".into())
        }
        "dr_cb" | "dr_msg_cb" | "enable.gapless.guarantee" if v == "false" => {
            Some("is needed for delivery reports without gaps".into())
        }
        _ => None,
    }
}
