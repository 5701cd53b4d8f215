//! TLS for the MQTT connection: rustls with the `ring` provider, a CA file
//! and an optional client certificate and key (mutual TLS).

use super::IntakeError;
use crate::config::TlsConfig;
use crate::util::pem;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, IntakeError> {
    pem::certificates(p).map_err(IntakeError::Tls)
}

fn key(p: &Path) -> Result<PrivateKeyDer<'static>, IntakeError> {
    pem::private_key(p).map_err(IntakeError::Tls)
}

/// Builds the rustls client configuration.
///
/// # Errors
/// [`IntakeError::Tls`] naming the file that is unreadable or invalid.
pub fn client_config(t: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, IntakeError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&t.ca_file)? {
        roots.add(c).map_err(|e| IntakeError::Tls(format!("{}: {e}", t.ca_file.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IntakeError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match &t.client {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| IntakeError::Tls(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}
