//! PEM files as TLS needs them: certificates and a private key, read with
//! an error that names the file (never its content). Used by the MQTT
//! client's TLS and by the config's checks of the Kafka client's files.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::BufReader;
use std::path::Path;

/// Every certificate of a PEM file (at least one).
///
/// # Errors
/// The file unreadable, not PEM, or without a certificate.
pub fn certificates(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", p.display()));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#1, PKCS#8 or SEC1).
///
/// # Errors
/// The file unreadable, or without an unencrypted private key.
pub fn private_key(p: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| format!("{}: {e}", p.display()))?
        .ok_or_else(|| format!("{}: no PEM private key found", p.display()))
}

/// Whether a PEM file holds an encrypted private key (PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or a legacy `Proc-Type: 4,ENCRYPTED` header),
/// which needs its passphrase to be read.
pub fn is_encrypted_key(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .is_ok_and(|t| t.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || t.contains("Proc-Type: 4,ENCRYPTED"))
}
