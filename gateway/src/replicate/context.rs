//! The Kafka client's context: where librdkafka's logs and client errors
//! go, and what a failure of the uplink's security (SASL refused, TLS
//! handshake failed) becomes: an error naming what to check, rate-limited,
//! and a count per kind for `/metrics`. The records stay in the log either
//! way; the stage retries as for any outage.

use futures::channel::oneshot;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::RateLimiter;

/// Failures of the uplink's security, counted as the client reports them.
#[derive(Debug, Default)]
pub struct SecurityFailures {
    /// The brokers refused the SASL credentials.
    pub sasl: AtomicU64,
    /// The TLS handshake failed (unknown CA, a name or date that does not
    /// match, a client certificate missing or refused).
    pub tls: AtomicU64,
}

/// Which part of the uplink's security failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityFailure {
    /// SASL.
    Sasl,
    /// TLS.
    Tls,
}

/// Whether a client error is a security failure, and which.
pub fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<SecurityFailure> {
    match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            return Some(SecurityFailure::Sasl)
        }
        Some(RDKafkaErrorCode::SSL) => return Some(SecurityFailure::Tls),
        _ => {}
    }
    if reason.contains("SASL authentication") {
        Some(SecurityFailure::Sasl)
    } else if ["SSL handshake failed", "SSL_HANDSHAKE", "SSL routines", "SSL alert"].iter().any(|m| reason.contains(m))
    {
        // A refused client certificate shows after the handshake under
        // TLS 1.3, as an alert on the first read.
        Some(SecurityFailure::Tls)
    } else {
        None
    }
}

/// Routes librdkafka's logs and client errors into `tracing`, rate-limited:
/// while the uplink is down librdkafka reports "all brokers down" on every
/// reconnect attempt, which would otherwise flood the journal. The stage's
/// own retry warnings say what matters (the batch stays on disk).
#[derive(Debug)]
pub struct KafkaContext {
    errors: RateLimiter,
    /// Security failures so far.
    pub security: Arc<SecurityFailures>,
    /// The configured security, as `check-config` prints it (no secret).
    setup: String,
}

impl KafkaContext {
    /// A context for a client set up as `setup` says (for the messages).
    pub fn new(setup: String) -> Self {
        Self { errors: RateLimiter::new(Duration::from_secs(60)), security: Arc::default(), setup }
    }

    fn security_failure(&self, kind: SecurityFailure, error: &KafkaError, reason: &str) {
        let (counter, what, check) = match kind {
            SecurityFailure::Sasl => (
                &self.security.sasl,
                "Kafka refused the gateway's SASL credentials",
                "check sasl.mechanism, sasl.username and the file of sasl.password \
                 (replicate.librdkafka_secret_files)",
            ),
            SecurityFailure::Tls => (
                &self.security.tls,
                "the TLS handshake with a Kafka broker failed",
                "check ssl.ca.location (the CA of the brokers' certificates), the broker names in \
                 replicate.brokers against their certificates, the certificates' dates, and \
                 ssl.certificate.location/ssl.key.location if the brokers require a client certificate",
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.errors.check(what) {
            tracing::error!(
                target: "vision_gateway::replicate",
                error = %error,
                security = %self.setup,
                suppressed = held,
                "{what}: {reason}; {check}. Frames stay in the log and are sent once it succeeds"
            );
        }
    }
}

impl rdkafka::ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                if let Some(held) = self.errors.check(fac) {
                    tracing::error!(target: "librdkafka", facility = fac, suppressed = held, "{log_message}");
                }
            }
            L::Warning => {
                if let Some(held) = self.errors.check(fac) {
                    tracing::warn!(target: "librdkafka", facility = fac, suppressed = held, "{log_message}");
                }
            }
            L::Notice | L::Info => tracing::info!(target: "librdkafka", facility = fac, "{log_message}"),
            L::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(kind) = classify(code, reason) {
            return self.security_failure(kind, &error, reason);
        }
        let key = code.map_or_else(|| "other".to_owned(), |c| format!("{c:?}"));
        if let Some(held) = self.errors.check(&key) {
            tracing::warn!(target: "librdkafka", error = %error, suppressed = held, "Kafka client: {reason}");
        }
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let _ = tx.send(match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_failures_are_told_from_outages() {
        use RDKafkaErrorCode as C;
        assert_eq!(classify(Some(C::Authentication), "SASL authentication error: x"), Some(SecurityFailure::Sasl));
        assert_eq!(
            classify(Some(C::SSL), "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed"),
            Some(SecurityFailure::Tls)
        );
        assert_eq!(
            classify(Some(C::BrokerTransportFailure), "Disconnected (after 3ms in state SSL_HANDSHAKE)"),
            Some(SecurityFailure::Tls)
        );
        let no_client_cert =
            "ssl://127.0.0.1:46427/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert \
                              certificate required: SSL alert number 116 (after 2ms in state APIVERSION_QUERY)";
        assert_eq!(classify(Some(C::BrokerTransportFailure), no_client_cert), Some(SecurityFailure::Tls));
        assert_eq!(classify(Some(C::AllBrokersDown), "1/1 brokers are down"), None);
        assert_eq!(classify(Some(C::BrokerTransportFailure), "Connection refused"), None);
    }
}
