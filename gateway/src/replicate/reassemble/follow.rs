//! Following a claim-check reference (header `claim_check = s3`): the
//! object is fetched from the store `reassemble` was given, bounded by
//! [`MAX_REFERENCED_BYTES`], and checked against the reference's size and
//! sha256 before it is handed on like a reassembled image. Promise: a
//! reference that cannot be resolved now is an error (the run stops before
//! committing past it); one whose object is missing or differs is corrupt.

use super::{header, image_path, Image, Outcome};
use crate::records::header as h;
use crate::replicate::{Reference, Store, StoreError};
use rdkafka::message::Message;
use sha2::{Digest, Sha256};

/// The largest object a reference may name (a frame is at most 64 MiB).
pub const MAX_REFERENCED_BYTES: usize = 64 << 20;

/// The largest reference record read.
const MAX_REFERENCE_RECORD: usize = 64 << 10;

/// Fetches the object a reference record names and checks it: the image
/// (relative path and bytes), or why it is corrupt.
///
/// # Errors
/// The reference cannot be resolved now (no store, store unreachable):
/// the caller stops before committing past it.
pub(super) async fn follow(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    store: Option<&Store>,
) -> anyhow::Result<Outcome> {
    let payload = msg.payload().unwrap_or_default();
    let frame_id = header(msg, h::FRAME_ID).unwrap_or_default();
    if payload.len() > MAX_REFERENCE_RECORD {
        return Ok(Outcome::Inconsistent(frame_id));
    }
    let Ok(r) = serde_json::from_slice::<Reference>(payload) else { return Ok(Outcome::Inconsistent(frame_id)) };
    let Some(store) = store else {
        anyhow::bail!(
            "{} is a reference to s3 bucket {} key {}: give reassemble the store (--config with [replicate.claim_check])",
            r.frame_id,
            r.bucket,
            r.key
        );
    };
    anyhow::ensure!(
        r.bucket == store.bucket(),
        "{} is in bucket {}, the store given is bucket {}",
        r.frame_id,
        r.bucket,
        store.bucket()
    );
    let bytes = match store.get(&r.key, MAX_REFERENCED_BYTES).await {
        Ok(b) => b,
        Err(StoreError::Missing(_) | StoreError::Conflict { .. }) => {
            tracing::warn!(frame_id = %r.frame_id, key = %r.key, "the object of a reference is missing or too large");
            return Ok(Outcome::Corrupt(r.frame_id));
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", r.frame_id)),
    };
    if hex::encode(Sha256::digest(&bytes)) != r.sha256 || bytes.len() as u64 != r.size {
        return Ok(Outcome::Corrupt(r.frame_id));
    }
    let path = image_path(&r.camera, &r.frame_id, &r.content_type);
    Ok(Outcome::Whole(Image { path, bytes, frame_id: r.frame_id }))
}
