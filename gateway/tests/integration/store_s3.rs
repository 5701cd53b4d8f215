//! The claim check's store client against a real S3 server (SeaweedFS from
//! its wheel, SigV4 enforced): idempotent puts, conflicts, refusals and an
//! outage, each as the store answers them.

use gateway::config::{ClaimCheckConfig, Secret};
use gateway::replicate::{Store, StoreError, Stored};
use std::time::Duration;
use testkit::seaweedfs::{Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY};

fn config(s: &Seaweed, secret: &str) -> ClaimCheckConfig {
    ClaimCheckConfig {
        endpoint: s.endpoint(),
        allow_http: true,
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        prefix: "site/line".into(),
        min_bytes: 1,
        access_key_id: Secret::new(ACCESS_KEY.into()),
        secret_access_key: Secret::new(secret.into()),
        ca_file: None,
        max_in_flight: 4,
        max_bytes_per_second: 0,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_are_idempotent_conflicts_are_kept_and_refusals_named() {
    let mut s = Seaweed::start();
    let store = Store::new(&config(&s, SECRET_KEY), "gw-1").unwrap();
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha(&image);
    let key = store.key("cam/01 west", 42, &digest, "image/jpeg");
    assert_eq!(key.as_ref(), format!("site/line/gw-1/cam%2F01 west/00000000000000000042-{}.jpg", &digest[..16]));

    assert_eq!(store.put_once(&key, image.clone(), &digest).await.unwrap(), Stored::Created);
    // The same bytes again (a run cut short between upload and reference).
    assert_eq!(store.put_once(&key, image.clone(), &digest).await.unwrap(), Stored::AlreadyThere);
    assert_eq!(store.get(key.as_ref(), 8 << 20).await.unwrap(), image);

    // Different bytes at the key: a conflict, and the object is not overwritten.
    let other = b"not the same image".to_vec();
    match store.put_once(&key, other.clone(), &sha(&other)).await {
        Err(StoreError::Conflict { found, expected, .. }) => {
            // Larger than the image offered: told by its size, not read.
            assert_eq!((found.as_str(), expected), ("an object of 3000000 bytes", sha(&other)));
        }
        r => panic!("expected a conflict, got {r:?}"),
    }
    assert_eq!(store.get(key.as_ref(), 8 << 20).await.unwrap(), image, "never overwritten");
    // Same size, different bytes: told by its sha256.
    let mut same_size = image.clone();
    same_size[0] ^= 1;
    match store.put_once(&key, same_size.clone(), &sha(&same_size)).await {
        Err(StoreError::Conflict { found, .. }) => assert_eq!(found, digest),
        r => panic!("expected a conflict, got {r:?}"),
    }
    // A download over its bound is refused before its body is read.
    assert!(matches!(store.get(key.as_ref(), 1000).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(store.get("site/line/nothing-here", 1000).await, Err(StoreError::Missing(_))));

    // A wrong secret: refused (SigV4 is checked), named, never shown.
    let wrong = Store::new(&config(&s, "wrong-secret"), "gw-1").unwrap();
    let k2 = store.key("cam", 43, &digest, "image/jpeg");
    let e = wrong.put_once(&k2, image.clone(), &digest).await.unwrap_err();
    assert!(matches!(e, StoreError::Refused(_)), "{e:?}");
    let shown = e.to_string();
    assert!(shown.contains("refused the gateway's credentials") && !shown.contains("wrong-secret"), "{shown}");

    // The store killed: unavailable (retried by the lane), then back with
    // its data.
    s.kill();
    let e = store.put_once(&k2, image.clone(), &digest).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    s.restart();
    assert_eq!(store.put_once(&key, image.clone(), &digest).await.unwrap(), Stored::AlreadyThere);
    assert_eq!(store.put_once(&k2, image, &digest).await.unwrap(), Stored::Created);
}
