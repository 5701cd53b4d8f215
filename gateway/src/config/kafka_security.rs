//! How the gateway authenticates to Kafka, read from the pass-through
//! librdkafka options (`security.protocol`, `sasl.*`, `ssl.*`) and checked
//! before anything starts: a protocol librdkafka knows, a SASL mechanism
//! with its user and its password in a secret file, and certificate and key
//! files that exist and parse. `check-config` prints [`KafkaSecurity`]'s
//! [`Display`](std::fmt::Display) (never a secret).

use super::{Secret, Validator};
use crate::util::pem;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// No TLS, no SASL (librdkafka's default).
    #[default]
    Plaintext,
    /// TLS: the brokers' certificate is checked, a client certificate may
    /// be presented (mTLS).
    Ssl,
    /// SASL without TLS (the password crosses the network unencrypted
    /// for PLAIN; SCRAM does not send it).
    SaslPlaintext,
    /// SASL inside TLS.
    SaslSsl,
}

impl Protocol {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            "sasl_ssl" => Some(Self::SaslSsl),
            _ => None,
        }
    }

    /// Whether the connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// The name librdkafka uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }
}

/// The Kafka client's security settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// `security.protocol`.
    pub protocol: Protocol,
    /// `sasl.mechanism` (upper case), with SASL.
    pub mechanism: Option<String>,
    /// `sasl.username`, with SASL.
    pub username: Option<String>,
    /// `ssl.ca.location`: the CA the brokers' certificates must chain to
    /// (the system's store when unset).
    pub ca: Option<PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: the client
    /// certificate (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// SASL mechanisms librdkafka supports; the tested ones first.
const MECHANISMS: [&str; 5] = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "GSSAPI", "OAUTHBEARER"];

/// Reads and checks the security settings among the pass-through options.
pub(super) fn validate(
    v: &mut Validator<'_>,
    options: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, Secret>,
) -> KafkaSecurity {
    let key = |k: &str| format!("replicate.librdkafka.{k}");
    let get = |k: &str| options.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let protocol = match get("security.protocol") {
        None => Protocol::default(),
        Some(p) => Protocol::parse(&p).unwrap_or_else(|| {
            v.problem(&key("security.protocol"), format!("{p:?}: use plaintext, ssl, sasl_plaintext or sasl_ssl"));
            Protocol::default()
        }),
    };
    let mut s = KafkaSecurity { protocol, ..KafkaSecurity::default() };
    if protocol.sasl() {
        let mechanism = get("sasl.mechanism").or_else(|| get("sasl.mechanisms"));
        sasl(v, &mut s, mechanism, get("sasl.username"), secrets);
    } else if get("sasl.mechanism").is_some() || get("sasl.username").is_some() {
        v.problem(
            &key("sasl.mechanism"),
            format!("SASL is set up but security.protocol is {}: use sasl_ssl", protocol.name()),
        );
    }
    let ca = get("ssl.ca.location").map(PathBuf::from);
    let cert = get("ssl.certificate.location").map(PathBuf::from);
    let private = get("ssl.key.location").map(PathBuf::from);
    if !protocol.tls() && (ca.is_some() || cert.is_some() || private.is_some()) {
        v.problem(
            &key("security.protocol"),
            format!("ssl.* files are set but security.protocol is {}: use ssl or sasl_ssl", protocol.name()),
        );
    }
    if let Some(ca) = ca {
        if let Err(e) = pem::certificates(&ca) {
            v.problem(&key("ssl.ca.location"), e);
        }
        s.ca = Some(ca);
    }
    match (cert, private) {
        (None, None) => {}
        (Some(cert), Some(private)) => {
            if let Err(e) = pem::certificates(&cert) {
                v.problem(&key("ssl.certificate.location"), e);
            }
            let encrypted = pem::is_encrypted_key(&private);
            if !(encrypted && secrets.contains_key("ssl.key.password")) {
                if let Err(e) = pem::private_key(&private) {
                    let hint = if encrypted {
                        " (encrypted: its passphrase goes in replicate.librdkafka_secret_files.\"ssl.key.password\")"
                    } else {
                        ""
                    };
                    v.problem(&key("ssl.key.location"), format!("{e}{hint}"));
                }
            }
            s.client_cert = Some((cert, private));
        }
        (Some(_), None) => v.problem(&key("ssl.key.location"), "missing: the client certificate needs its key".into()),
        (None, Some(_)) => v.problem(&key("ssl.certificate.location"), "missing: the key needs its certificate".into()),
    }
    s
}

fn sasl(
    v: &mut Validator<'_>,
    s: &mut KafkaSecurity,
    mechanism: Option<String>,
    username: Option<String>,
    secrets: &BTreeMap<String, Secret>,
) {
    let Some(m) = mechanism.map(|m| m.to_ascii_uppercase()) else {
        v.problem(
            "replicate.librdkafka.sasl.mechanism",
            "missing: SCRAM-SHA-256 or SCRAM-SHA-512 (librdkafka would try GSSAPI, Kerberos)".into(),
        );
        return;
    };
    if !MECHANISMS.contains(&m.as_str()) {
        v.problem("replicate.librdkafka.sasl.mechanism", format!("{m:?}: use one of {}", MECHANISMS.join(", ")));
    }
    if matches!(m.as_str(), "SCRAM-SHA-256" | "SCRAM-SHA-512" | "PLAIN") {
        if username.is_none() {
            v.problem("replicate.librdkafka.sasl.username", format!("missing: {m} needs a user"));
        }
        if !secrets.contains_key("sasl.password") {
            v.problem(
                "replicate.librdkafka_secret_files.sasl.password",
                format!("missing: {m} needs the password, in a file (or a systemd credential)"),
            );
        }
    }
    s.mechanism = Some(m);
    s.username = username;
}

impl fmt::Display for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol.name())?;
        if let Some(m) = &self.mechanism {
            write!(f, ", {m}")?;
            if let Some(u) = &self.username {
                write!(f, " as {u:?} (password from a secret file)")?;
            }
        }
        if self.protocol.tls() {
            match &self.ca {
                Some(ca) => write!(f, ", brokers' CA {}", ca.display())?,
                None => f.write_str(", brokers' CA from the system store")?,
            }
            match &self.client_cert {
                Some((c, _)) => write!(f, ", client certificate {}", c.display())?,
                None => f.write_str(", no client certificate")?,
            }
        }
        Ok(())
    }
}
