//! Tenant isolation of object keys (issue 14, finding H1): two logical databases on one MongoDB
//! backend and the same three buckets never read, overwrite or scrub each other's objects —
//! pruned history included.

use std::sync::Arc;

use chronos::config::Config;
use chronos::connect::{self, Connections};
use chronos::engine::backends::LocalPayloadStore;
use chronos::engine::backends::MemoryQueue;
use chronos::engine::backends::S3PayloadStore;
use chronos::engine::backends::SqliteMetaStore;
use chronos::engine::backends::SqliteQueue;
use chronos::engine::backends::{MemoryMetaStore, MemoryPayloadStore};
use chronos::engine::store::queue::QueueStore;
use chronos::engine::{
    Attribution, CollectionName, Engine, EngineSettings, Error, ItemId, MetaStore, PayloadStore, PrunePolicy,
    ReadOptions, ScrubOptions, Stores, Timestamp, VersionTarget,
};
use serde_json::json;

use crate::support::{self, env, unique};

fn data(owner: &str, n: u64) -> serde_json::Map<String, serde_json::Value> {
    json!({"owner": owner, "n": n}).as_object().unwrap().clone()
}

fn far_future() -> Timestamp {
    "2100-01-01T00:00:00Z".parse().unwrap()
}

/// Every version 0..=3 of `o1` in `engine` is `owner`'s.
async fn reads_own_history(engine: &Engine, owner: &str) {
    let (c, id) = (coll(), o1());
    for ov in 0..=3 {
        let r = engine
            .get_at(&c, &id, VersionTarget::Ov(ov), ReadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{owner} v{ov}: {e}"));
        assert_eq!(
            (r.data["owner"].as_str(), r.data["n"].as_u64()),
            (Some(owner), Some(ov))
        );
    }
    let latest = engine
        .get_at(&c, &id, VersionTarget::At(far_future()), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(latest.data["owner"], owner);
}

fn coll() -> CollectionName {
    "orders".parse().unwrap()
}

fn o1() -> ItemId {
    "o1".parse().unwrap()
}

/// Write `o1` four times in `engine` as `owner`, then keep only its last version in the index.
async fn write_and_prune(engine: &Engine, owner: &str) {
    let who = Attribution::default();
    engine.create(&coll(), Some(o1()), data(owner, 0), &who).await.unwrap();
    for n in 1..=3 {
        engine.update(&coll(), &o1(), data(owner, n), None, &who).await.unwrap();
    }
    let policy = PrunePolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    let report = engine.prune_versions(&coll(), &policy, false).await.unwrap();
    assert_eq!(report.versions_pruned, 3, "{owner}");
}

/// `o1` is not in `engine`'s database: not by ov, not by time.
async fn finds_no_o1(engine: &Engine) {
    let by_ov = engine
        .get_at(&coll(), &o1(), VersionTarget::Ov(0), ReadOptions::default())
        .await;
    assert!(matches!(by_ov, Err(Error::NotFound(_))), "?ov=0 gave {by_ov:?}");
    let by_at = engine
        .get_at(&coll(), &o1(), VersionTarget::At(far_future()), ReadOptions::default())
        .await;
    assert!(matches!(by_at, Err(Error::NotFound(_))), "?at= gave {by_at:?}");
}

/// The scenario of H1 on two engines of different logical databases that share their buckets.
pub async fn databases_sharing_buckets_stay_apart(a: Arc<Engine>, b: Arc<Engine>) {
    write_and_prune(&a, "a").await;
    reads_own_history(&a, "a").await;

    // B has no o1: neither its pruned versions nor a time lookup may find A's.
    finds_no_o1(&b).await;

    // B's own o1, pruned the same way, leaves A's manifest and A's reads alone.
    write_and_prune(&b, "b").await;
    reads_own_history(&b, "b").await;
    reads_own_history(&a, "a").await;

    // Scrub with no grace and --delete on either side takes nothing of the other's.
    let opts = ScrubOptions {
        grace: std::time::Duration::ZERO,
        delete: true,
        page_size: 3,
        ..ScrubOptions::default()
    };
    for (engine, name) in [(&a, "a"), (&b, "b")] {
        let report = engine.scrub(&opts).await.unwrap();
        assert_eq!(
            (report.scanned, report.committed, report.pruned, report.deleted),
            (4, 1, 3, 0),
            "scrub of {name}: {report:?}"
        );
    }
    reads_own_history(&a, "a").await;
    reads_own_history(&b, "b").await;
}

/// Two routed databases, `a` and `b`, on the one mongod (their own MongoDB databases) and the
/// same three buckets (the backend's, as the configuration gives them by default).
#[tokio::test]
async fn routed_databases_sharing_buckets_on_mongo_s3() {
    let run = unique("iso");
    let bucket = |role: &str| format!("{run}-{role}");
    for role in ["json", "content", "backups"] {
        S3PayloadStore::new(support::s3_connection().client(), bucket(role))
            .ensure_bucket()
            .await
            .unwrap();
    }
    let db = run.replace('-', "_");
    let yaml = format!(
        "mongoUris: [{{env: CHRONOS_TEST_MONGO_URI}}]\nspacesConns:\n  - {{endpoint: '{}', region: us-east-1, \
         accessKey: {{env: CHRONOS_TEST_S3_ACCESS_KEY}}, secretKey: {{env: CHRONOS_TEST_S3_SECRET_KEY}}, \
         jsonBucket: {}, contentBucket: {}, backupsBucket: {}}}\ndatabases:\n  \
         - {{key: a, mongo: 0, spaces: 0, dbName: {db}_a}}\n  - {{key: b, mongo: 0, spaces: 0, dbName: {db}_b}}\n",
        env("CHRONOS_TEST_S3_ENDPOINT"),
        bucket("json"),
        bucket("content"),
        bucket("backups"),
    );
    let config = Config::parse(&yaml).unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let mut databases = connect::open_all(&config, std::path::Path::new("unused"), &Connections::default())
        .await
        .unwrap();
    let (a, b) = (databases.remove("a").unwrap(), databases.remove("b").unwrap());
    databases_sharing_buckets_stay_apart(a, b).await;
}

/// Two databases' stores for [`databases_sharing_buckets_stay_apart`]: their own metadata store
/// and queue, the same three buckets.
fn sharing(
    meta: [Arc<dyn MetaStore>; 2],
    queues: [Arc<dyn QueueStore>; 2],
    buckets: [Arc<dyn PayloadStore>; 3],
) -> (Arc<Engine>, Arc<Engine>) {
    let [meta_a, meta_b] = meta;
    let [queue_a, queue_b] = queues;
    let open = |key: &str, meta, queue| {
        let stores = Stores {
            meta,
            payloads: buckets[0].clone(),
            backups: buckets[1].clone(),
            content: buckets[2].clone(),
            queue,
        };
        Arc::new(Engine::for_database(key, stores, EngineSettings::default()).unwrap())
    };
    (open("a", meta_a, queue_a), open("b", meta_b, queue_b))
}

#[tokio::test]
async fn databases_sharing_buckets_in_memory() {
    let buckets: [Arc<dyn PayloadStore>; 3] = std::array::from_fn(|_| Arc::new(MemoryPayloadStore::new()) as _);
    let (a, b) = sharing(
        [Arc::new(MemoryMetaStore::new()), Arc::new(MemoryMetaStore::new())],
        [Arc::new(MemoryQueue::new()), Arc::new(MemoryQueue::new())],
        buckets,
    );
    databases_sharing_buckets_stay_apart(a, b).await;
}

#[tokio::test]
async fn databases_sharing_directories_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let buckets: [Arc<dyn PayloadStore>; 3] = ["payloads", "backups", "content"]
        .map(|d| Arc::new(LocalPayloadStore::open(&dir.path().join(d)).unwrap()) as _);
    let [meta_a, meta_b] = ["a.db", "b.db"].map(|f| SqliteMetaStore::open(&dir.path().join(f)).unwrap());
    let queues: [Arc<dyn QueueStore>; 2] = [
        Arc::new(SqliteQueue::new(meta_a.clone())),
        Arc::new(SqliteQueue::new(meta_b.clone())),
    ];
    let (a, b) = sharing([Arc::new(meta_a), Arc::new(meta_b)], queues, buckets);
    databases_sharing_buckets_stay_apart(a, b).await;
}

/// Even where keys are not kept apart (two engines on the same stores without prefixes), an item
/// that does not exist in a database has no pruned versions there: the manifests are asked only
/// for items with a head.
#[tokio::test]
async fn pruned_versions_are_read_only_for_items_of_this_database() {
    let payloads: Arc<dyn PayloadStore> = Arc::new(MemoryPayloadStore::new());
    let backups: Arc<dyn PayloadStore> = Arc::new(MemoryPayloadStore::new());
    let engine = || {
        Engine::new(
            Arc::new(MemoryMetaStore::new()),
            payloads.clone(),
            EngineSettings::default(),
        )
        .with_backups(backups.clone())
    };
    let (a, b) = (engine(), engine());
    write_and_prune(&a, "a").await;
    reads_own_history(&a, "a").await;
    finds_no_o1(&b).await;
}

/// A manifest names its database: where another database's manifest turns up under an item's
/// key (stores mixed up, no prefixes), it is refused, never read as this database's history.
#[tokio::test]
async fn a_manifest_of_another_database_is_refused() {
    let backups: Arc<dyn PayloadStore> = Arc::new(MemoryPayloadStore::new());
    let engine = |key: &str| {
        Engine::new(
            Arc::new(MemoryMetaStore::new()),
            Arc::new(MemoryPayloadStore::new()),
            EngineSettings::default(),
        )
        .with_database(key)
        .with_backups(backups.clone())
    };
    let (a, b) = (engine("a"), engine("b"));
    write_and_prune(&a, "a").await;
    let who = Attribution::default();
    b.create(&coll(), Some(o1()), data("b", 0), &who).await.unwrap();
    let err = b
        .get_at(&coll(), &o1(), VersionTarget::Ov(2), ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains("manifest") && m.contains("belongs to a/")),
        "{err:?}"
    );
}
