//! The claim check's object store: an S3-compatible bucket reached with
//! `object_store` (SigV4 on ring, HTTPS on rustls).
//!
//! # Promises
//!
//! - **Credentials only from the config's secrets**: a static credential
//!   provider is always set, so the client never walks a credential chain
//!   and never asks an instance-metadata service (an edge box must not
//!   probe 169.254.169.254).
//! - **Idempotent, never overwriting**: [`Store::put_once`] PUTs with
//!   `If-None-Match: *` and `x-amz-checksum-sha256`. An object already at
//!   the key with the same sha256 is success ([`Stored::AlreadyThere`], the
//!   upload of a run cut short); a different one is a
//!   [`StoreError::Conflict`], reported and never overwritten.
//! - **Bounded**: a download is refused past the caller's byte limit
//!   before its body is read.
//! - The gateway never deletes objects (the bucket's lifecycle rule does).

use crate::config::ClaimCheckConfig;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::path::Path;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    StaticCredentialProvider,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// An upload that did not happen.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A different object is already at the key: it is kept, the image is
    /// reported undeliverable.
    #[error(
        "a different object is already at {key} (sha256 {found}, the image's is {expected}); it is not overwritten"
    )]
    Conflict {
        /// The object's key.
        key: String,
        /// What is there (sha256, or its size if too large to read).
        found: String,
        /// The image's sha256.
        expected: String,
    },
    /// The store refused the gateway's credentials or its access to the
    /// bucket: retried, as an outage, until an operator fixes it.
    #[error("the object store refused the gateway's credentials or access to the bucket: {0}; check replicate.claim_check.access_key_id_file, secret_access_key_file and the bucket's policy")]
    Refused(String),
    /// No object at the key.
    #[error("no object in the store: {0}")]
    Missing(String),
    /// Unreachable, slow, or failing: retried with backoff.
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot make a client (a bad URL or CA file).
    #[error("object store client: {0}")]
    Config(String),
}

impl StoreError {
    /// The label of `vision_gateway_store_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::Refused(_) => "refused",
            StoreError::Unavailable(_) | StoreError::Config(_) | StoreError::Missing(_) => "unavailable",
        }
    }

    fn from_object_store(e: object_store::Error) -> Self {
        match e {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StoreError::Refused(e.to_string())
            }
            object_store::Error::NotFound { .. } => StoreError::Missing(e.to_string()),
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// What [`Store::put_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The object was written now.
    Created,
    /// The same bytes were already there (an earlier upload).
    AlreadyThere,
}

/// The object store of the claim check.
#[derive(Clone)]
pub struct Store {
    s3: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    /// This gateway's id (a part of every key).
    gateway_id: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({}/{})", self.bucket, self.prefix)
    }
}

impl Store {
    /// A client for `cfg`'s bucket. Nothing is sent until the first request.
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL or CA file the client refuses.
    pub fn new(cfg: &ClaimCheckConfig, gateway_id: &str) -> Result<Self, StoreError> {
        Self::connect(
            cfg,
            gateway_id,
            RetryConfig { max_retries: 2, retry_timeout: cfg.timeout.saturating_mul(2), ..RetryConfig::default() },
        )
    }

    fn connect(cfg: &ClaimCheckConfig, gateway_id: &str, retry: RetryConfig) -> Result<Self, StoreError> {
        // reqwest is built on the workspace's rustls without a provider of
        // its own: ring, as for MQTT TLS (already installed is fine).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_timeout(cfg.timeout)
            .with_connect_timeout(cfg.connect_timeout)
            .with_pool_idle_timeout(Duration::from_secs(30));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| StoreError::Config(format!("{}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| StoreError::Config(format!("{}: {e}", ca.display())))?;
            options = options.with_root_certificate(cert);
        }
        let credential = AwsCredential {
            key_id: cfg.access_key_id.expose().to_owned(),
            secret_key: cfg.secret_access_key.expose().to_owned(),
            token: None,
        };
        let s3 = AmazonS3Builder::new()
            .with_endpoint(cfg.endpoint.trim_end_matches('/'))
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(cfg.allow_http)
            .with_credentials(Arc::new(StaticCredentialProvider::new(credential)))
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self {
            s3: Arc::new(s3),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            gateway_id: gateway_id.to_owned(),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The deterministic key of an image:
    /// `{prefix}/{gateway_id}/{camera}/{seq}-{sha256[..16]}.{ext}` (each
    /// part percent-encoded where S3 keys need it).
    pub fn key(&self, camera: &str, seq: u64, sha256_hex: &str, content_type: &str) -> Path {
        let ext = match content_type {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            _ => "bin",
        };
        let file = format!("{seq:020}-{}.{ext}", sha256_hex.get(..16).unwrap_or(sha256_hex));
        let camera = if camera.is_empty() { "_" } else { camera };
        Path::from_iter(self.prefix.split('/').chain([self.gateway_id.as_str(), camera, file.as_str()]))
    }

    /// Stores `bytes` at `key` unless something is there already (see the
    /// module's promise).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] for different bytes at the key; otherwise
    /// what the store answered.
    pub async fn put_once(&self, key: &Path, bytes: Vec<u8>, sha256_hex: &str) -> Result<Stored, StoreError> {
        let len = bytes.len();
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.s3.put_opts(key, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(Stored::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let found = match self.get(key.as_ref(), len).await {
                    Ok(there) => hex::encode(Sha256::digest(&there)),
                    Err(StoreError::Conflict { found, .. }) => found,
                    Err(e) => return Err(e),
                };
                if found == sha256_hex {
                    Ok(Stored::AlreadyThere)
                } else {
                    Err(StoreError::Conflict { key: key.to_string(), found, expected: sha256_hex.to_owned() })
                }
            }
            Err(e) => Err(StoreError::from_object_store(e)),
        }
    }

    /// The object at `key`, at most `max` bytes.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] (with its size as `found`) when it is larger
    /// than `max`; otherwise what the store answered.
    pub async fn get(&self, key: &str, max: usize) -> Result<Vec<u8>, StoreError> {
        let path = Path::parse(key).map_err(|e| StoreError::Config(format!("{key:?} is not an object key: {e}")))?;
        let got = self.s3.get(&path).await.map_err(StoreError::from_object_store)?;
        if got.meta.size > max as u64 {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                found: format!("an object of {} bytes", got.meta.size),
                expected: format!("at most {max} bytes"),
            });
        }
        Ok(got.bytes().await.map_err(StoreError::from_object_store)?.to_vec())
    }
}
