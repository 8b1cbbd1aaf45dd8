//! The `PayloadStore` contract, written from the trait's documented promises and run against every
//! payload store: memory, local files, S3 (the real server, a fresh bucket per test) and the
//! per-database prefix over memory. The checks are plain functions over `&dyn PayloadStore`, in
//! the style of object_store's `integration.rs`, so a new store only adds one line to the macro.
//!
//! Not checked, because the trait does not promise it: what `put` does to an existing key (keys
//! are unique per write attempt, so callers never overwrite), and presigned URLs of missing keys.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chronos::engine::PayloadStore;
use chronos::engine::backends::LocalPayloadStore;
use chronos::engine::backends::MemoryPayloadStore;
use chronos::engine::backends::S3PayloadStore;
use chronos::engine::namespace::{Prefixed, database_prefix};

use crate::support;

/// A store under test, and whether its bucket (directory) is still to be created.
pub struct Subject {
    pub store: Arc<dyn PayloadStore>,
    /// The bucket does not exist yet (memory has none: it always exists).
    pub missing: bool,
    _dir: Option<tempfile::TempDir>,
}

async fn memory() -> Subject {
    let store = Arc::new(MemoryPayloadStore::new());
    Subject {
        store,
        missing: false,
        _dir: None,
    }
}

async fn local() -> Subject {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path().join("payloads");
    let store = LocalPayloadStore::open(&root).expect("payload directory");
    // `open` creates the directory; remove it again so the bucket checks see it missing.
    std::fs::remove_dir(&root).expect("empty payload directory");
    Subject {
        store: Arc::new(store),
        missing: true,
        _dir: Some(dir),
    }
}

async fn s3() -> Subject {
    let store = S3PayloadStore::new(support::s3_connection().client(), support::unique("chronos-contract"));
    Subject {
        store: Arc::new(store),
        missing: true,
        _dir: None,
    }
}

/// Database `db` of a shared memory bucket that also holds the keys of neighbours whose names
/// sort right beside it (`da/`, `db0/`, `db-x/`): none of them may ever show through.
async fn prefixed_memory() -> Subject {
    let bucket = Arc::new(MemoryPayloadStore::new());
    for neighbour in ["da/p/a", "db0/p/a", "db-x/p/a", "db", "dc/p/a"] {
        bucket.put(neighbour, Bytes::from_static(b"other")).await.expect("put");
    }
    let prefix = database_prefix("db").expect("a database key");
    Subject {
        store: Arc::new(Prefixed::new(bucket, &prefix)),
        missing: false,
        _dir: None,
    }
}

/// A store ready for the key checks: its bucket exists, and keys go under a root of their own.
async fn ready(subject: &Subject) -> &dyn PayloadStore {
    subject.store.create().await.expect("create the bucket");
    subject.store.as_ref()
}

macro_rules! payload_contract {
    ($($backend:ident),*) => {$(
        mod $backend {
            payload_contract!(@checks $backend; put_get_delete, bodies_come_back_byte_for_byte,
                list_is_bounded_by_its_prefix, list_pages_with_start_after_and_limit,
                paging_visits_keys_of_mixed_depth_once,
                deleted_keys_leave_listings, concurrent_puts_of_distinct_keys_all_land, presigned_urls_get_the_body,
                location_names_the_store);
            #[tokio::test]
            async fn create_makes_the_bucket_exist_and_is_idempotent() {
                let subject = super::$backend().await;
                super::create_makes_the_bucket_exist_and_is_idempotent(&subject).await;
            }
        }
    )*};
    (@checks $backend:ident; $($check:ident),*) => {$(
        #[tokio::test]
        async fn $check() {
            let subject = super::$backend().await;
            super::$check(super::ready(&subject).await).await;
        }
    )*};
}

payload_contract!(memory, local, s3, prefixed_memory);

fn body(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// `create` makes a missing bucket exist; creating an existing one is fine.
pub async fn create_makes_the_bucket_exist_and_is_idempotent(subject: &Subject) {
    let s = subject.store.as_ref();
    assert_eq!(s.exists().await.unwrap(), !subject.missing, "exists before create");
    s.create().await.unwrap();
    assert!(s.exists().await.unwrap(), "exists after create");
    s.create().await.unwrap();
    assert!(s.exists().await.unwrap(), "exists after a second create");
    s.put("c/i/v0/w.json", body("{}")).await.unwrap();
    assert_eq!(s.get("c/i/v0/w.json").await.unwrap(), Some(body("{}")));
}

/// `get` of a missing key is `None`, not an error; deleting a missing key is not an error.
pub async fn put_get_delete(s: &dyn PayloadStore) {
    let key = "c/i.d:x/v3/w-1_a.json";
    assert_eq!(s.get(key).await.unwrap(), None);
    s.put(key, body(r#"{"a":1}"#)).await.unwrap();
    assert_eq!(s.get(key).await.unwrap(), Some(body(r#"{"a":1}"#)));
    s.delete(key).await.unwrap();
    assert_eq!(s.get(key).await.unwrap(), None);
    s.delete(key).await.unwrap();
    s.delete("never/was/there").await.unwrap();
}

/// Empty and binary bodies come back exactly (an empty object is not a missing one).
pub async fn bodies_come_back_byte_for_byte(s: &dyn PayloadStore) {
    let binary: Bytes = (0..=255u8).cycle().take(70_000).collect();
    s.put("b/empty", Bytes::new()).await.unwrap();
    s.put("b/binary", binary.clone()).await.unwrap();
    assert_eq!(s.get("b/empty").await.unwrap(), Some(Bytes::new()));
    assert_eq!(s.get("b/binary").await.unwrap(), Some(binary));
}

/// Listing returns exactly the keys under the prefix, also where a separator sorts after other
/// characters (`a-b`, `a.c` against `a/x`). Not in a promised order: AWS S3, memory and local files
/// list in byte order, SeaweedFS lists a "directory"'s keys before their siblings
/// (`l/a/x, l/a/y/z, l/a-b, l/a.c`); nothing in Chronos depends on the order, only on paging
/// visiting every key once (the next contract).
pub async fn list_is_bounded_by_its_prefix(s: &dyn PayloadStore) {
    let keys = ["l/a/x", "l/a-b", "l/a.c", "l/a/y/z", "l/ab", "l/b", "lz", "m/a"];
    for key in keys {
        s.put(key, body("x")).await.unwrap();
    }
    let sorted = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    assert_eq!(
        sorted(s.list("l/", None, 100).await.unwrap()),
        ["l/a-b", "l/a.c", "l/a/x", "l/a/y/z", "l/ab", "l/b"]
    );
    assert_eq!(
        sorted(s.list("l/a", None, 100).await.unwrap()),
        ["l/a-b", "l/a.c", "l/a/x", "l/a/y/z", "l/ab"]
    );
    assert_eq!(sorted(s.list("l/a/", None, 100).await.unwrap()), ["l/a/x", "l/a/y/z"]);
    assert_eq!(
        sorted(s.list("l", None, 100).await.unwrap()),
        ["l/a-b", "l/a.c", "l/a/x", "l/a/y/z", "l/ab", "l/b", "lz"]
    );
    assert!(s.list("l/c", None, 100).await.unwrap().is_empty());
    assert!(s.list("nothing/", None, 100).await.unwrap().is_empty());
}

/// `limit` bounds a page, `start_after` (a key or not) resumes after it: paging through visits
/// every key once, in order.
pub async fn list_pages_with_start_after_and_limit(s: &dyn PayloadStore) {
    let mut keys: Vec<String> = (0..25).map(|i| format!("p/{:02}/v0/w.json", i * 3)).collect();
    keys.sort();
    for key in &keys {
        s.put(key, body("x")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list("p/", after.as_deref(), 7).await.unwrap();
        assert!(page.len() <= 7, "a page of {}", page.len());
        let Some(last) = page.last().cloned() else { break };
        seen.extend(page);
        after = Some(last);
    }
    assert_eq!(seen, keys);
    assert!(s.list("p/", None, 0).await.unwrap().is_empty(), "limit 0");
    // A start between keys, and one before the prefix, and one after every key.
    assert_eq!(
        s.list("p/", Some("p/04"), 2).await.unwrap(),
        ["p/06/v0/w.json", "p/09/v0/w.json"]
    );
    assert_eq!(s.list("p/", Some("a"), 1).await.unwrap(), ["p/00/v0/w.json"]);
    assert!(s.list("p/", Some("p/99"), 10).await.unwrap().is_empty());
}

/// Paging through keys of mixed depth (where a "directory" sorts between files) visits every key
/// exactly once: scrub pages through whole buckets this way, and a key a page skips is never
/// looked at.
pub async fn paging_visits_keys_of_mixed_depth_once(s: &dyn PayloadStore) {
    let keys = ["m/a-b", "m/a.c", "m/a/x", "m/a/y/z", "m/ab", "m/b/c", "m/b0"];
    for key in keys {
        s.put(key, body("x")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list("m/", after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last().cloned() else { break };
        seen.extend(page);
        after = Some(last);
    }
    seen.sort();
    assert_eq!(seen, keys);
}

/// A deleted key is gone from listings too (a local store's emptied directories are no keys).
pub async fn deleted_keys_leave_listings(s: &dyn PayloadStore) {
    s.put("d/x/v0/w.json", body("x")).await.unwrap();
    s.put("d/y/v0/w.json", body("y")).await.unwrap();
    s.delete("d/x/v0/w.json").await.unwrap();
    assert_eq!(s.list("d/", None, 10).await.unwrap(), ["d/y/v0/w.json"]);
    s.delete("d/y/v0/w.json").await.unwrap();
    assert!(s.list("d/", None, 10).await.unwrap().is_empty());
}

/// Puts of distinct keys at once all land (the engine uploads many payloads in parallel).
pub async fn concurrent_puts_of_distinct_keys_all_land(s: &dyn PayloadStore) {
    let keys: Vec<String> = (0..32).map(|i| format!("k/{i:02}/v0/w.json")).collect();
    futures::future::join_all(keys.iter().map(|k| s.put(k, Bytes::from(k.clone()))))
        .await
        .into_iter()
        .collect::<chronos::engine::Result<Vec<()>>>()
        .unwrap();
    assert_eq!(s.list("k/", None, 100).await.unwrap(), keys);
    for key in &keys {
        assert_eq!(s.get(key).await.unwrap(), Some(Bytes::from(key.clone())));
    }
}

/// A presigned URL (where the store can presign at all) GETs the body without credentials.
pub async fn presigned_urls_get_the_body(s: &dyn PayloadStore) {
    s.put("s/x/v0/w.json", body(r#"{"signed":true}"#)).await.unwrap();
    let Some(url) = s.presign_get("s/x/v0/w.json", Duration::from_secs(60)).await.unwrap() else {
        return;
    };
    chronos::install_crypto_provider();
    let response = reqwest::get(&url).await.expect("GET the presigned URL");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    assert_eq!(response.bytes().await.unwrap(), body(r#"{"signed":true}"#));
}

/// `location` is for people: present, and never a secret.
pub async fn location_names_the_store(s: &dyn PayloadStore) {
    let location = s.location();
    assert!(!location.is_empty());
    if let Ok(secret) = std::env::var("CHRONOS_TEST_S3_SECRET_KEY") {
        assert!(!location.contains(&secret), "{location}");
    }
}
