//! Scrub: orphaned payloads are reported (and deleted on request), committed and pruned ones
//! never are; on the real MongoDB + S3, on the embedded backends and in memory.

use bytes::Bytes;
use chronos::engine::{
    Attribution, CollectionName, EngineSettings, ItemId, PrunePolicy, ReadOptions, ScrubOptions, ScrubReport,
    VersionTarget,
};
use serde_json::json;

use crate::support::{self, Harness};

/// A write id (UUIDv7) whose write began `age_secs` ago.
fn write_id_aged(age_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, now.as_secs() - age_secs, 0);
    uuid::Uuid::new_v7(ts).simple().to_string()
}

/// A scrub in pages of 3, whose progress is told after every page: counts that only grow and
/// end at the report's.
async fn scrub(h: &Harness, grace_secs: u64, delete: bool) -> ScrubReport {
    let seen = std::sync::Mutex::new(Vec::new());
    let report = h
        .engine
        .scrub_reporting(
            &ScrubOptions {
                grace: std::time::Duration::from_secs(grace_secs),
                delete,
                // Small pages, so paging (and the per-item manifest cache across pages) is exercised.
                page_size: 3,
                ..ScrubOptions::default()
            },
            &|so_far| seen.lock().unwrap().push((so_far.scanned, so_far.orphans)),
        )
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.is_sorted(), "progress only grows: {seen:?}");
    assert_eq!(seen.last().copied().unwrap_or((0, 0)), (report.scanned, report.orphans));
    assert!(
        seen.len() as u64 >= report.scanned.div_ceil(3),
        "one report per page: {seen:?}"
    );
    report
}

async fn orphans_are_found_and_only_orphans(h: Harness) {
    let c: CollectionName = "scrubbed".parse().unwrap();
    let who = Attribution::default();
    let data = |n: i64| json!({"n": n}).as_object().unwrap().clone();
    let mut committed = 0;
    for item in ["a", "b"] {
        let id: ItemId = item.parse().unwrap();
        h.engine.create(&c, Some(id.clone()), data(0), &who).await.unwrap();
        for n in 1..=3 {
            h.engine.update(&c, &id, data(n), None, &who).await.unwrap();
        }
        committed += 4;
    }
    let clean = scrub(&h, 60, false).await;
    assert_eq!(
        (clean.scanned, clean.committed, clean.orphans),
        (committed, committed, 0)
    );

    // What a process killed between the payload PUT and the commit leaves behind: a payload for
    // an ov the index has under another write id, and one for an ov it doesn't have at all.
    let lost_race = format!("scrubbed/a/v2.{}.json", write_id_aged(3600));
    let never_committed = format!("scrubbed/b/v9.{}.json", write_id_aged(120));
    // A write that may still be in flight: too young to call an orphan.
    let in_flight = format!("scrubbed/b/v4.{}.json", write_id_aged(0));
    // Not a payload key at all: reported as unrecognised, never deleted.
    let stranger = "scrubbed/b/notes.txt".to_owned();
    for key in [&lost_race, &never_committed, &in_flight, &stranger] {
        h.payloads.put(key, Bytes::from_static(b"{}")).await.unwrap();
    }

    let found = scrub(&h, 60, false).await;
    let keys: Vec<&str> = found.orphan_keys.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, [lost_race.as_str(), never_committed.as_str()], "{found:?}");
    assert_eq!(found.orphans, 2);
    assert_eq!(found.young, 1);
    assert_eq!(found.committed, committed);
    assert_eq!(found.unrecognized, std::slice::from_ref(&stranger));
    assert_eq!(found.deleted, 0);
    assert!(found.orphan_keys[0].age_secs >= 3599);
    // With no grace at all, the young one counts too.
    assert_eq!(scrub(&h, 0, false).await.orphans, 3);

    let deleted = scrub(&h, 60, true).await;
    assert_eq!((deleted.orphans, deleted.deleted), (2, 2));
    assert!(deleted.orphan_keys.iter().all(|o| o.deleted));
    for key in [&lost_race, &never_committed] {
        assert!(h.payloads.get(key).await.unwrap().is_none(), "{key} still there");
    }
    assert!(h.payloads.get(&in_flight).await.unwrap().is_some());
    assert!(h.payloads.get(&stranger).await.unwrap().is_some());
    // Every committed version still reads.
    for item in ["a", "b"] {
        let id: ItemId = item.parse().unwrap();
        for ov in 0..=3 {
            let r = h
                .engine
                .get_at(&c, &id, VersionTarget::Ov(ov), ReadOptions::default())
                .await
                .unwrap();
            assert_eq!(r.data["n"], json!(ov));
        }
    }

    // Versions pruned from the index keep their payloads (readable through the manifests):
    // they are not orphans.
    let policy = PrunePolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    let pruned = h.engine.prune_versions(&c, &policy, false).await.unwrap();
    assert_eq!(pruned.versions_pruned, 6);
    let after = scrub(&h, 60, false).await;
    assert_eq!((after.committed, after.pruned, after.orphans), (2, 6, 0), "{after:?}");
}

#[tokio::test]
async fn scrub_on_mongo_s3() {
    orphans_are_found_and_only_orphans(support::mongo_s3(EngineSettings::default()).await).await;
}

#[tokio::test]
async fn scrub_on_embedded() {
    orphans_are_found_and_only_orphans(support::embedded(EngineSettings::default())).await;
}

#[tokio::test]
async fn scrub_in_memory() {
    orphans_are_found_and_only_orphans(support::memory(EngineSettings::default())).await;
}

/// `chronos scrub` on an embedded data directory, as an operator runs it.
#[test]
fn scrub_command_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
            .args(["scrub", "--data-dir"])
            .arg(dir.path())
            .args(["--output", "json"])
            .args(extra)
            .env_remove("CHRONOS_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let empty = run(&[]);
    assert_eq!(empty["scanned"], 0);
    let payloads = dir.path().join("payloads/default/notes/n1");
    std::fs::create_dir_all(&payloads).unwrap();
    std::fs::write(payloads.join(format!("v0.{}.json", write_id_aged(600))), "{}").unwrap();
    let found = run(&[]);
    assert_eq!(
        (found["scanned"].as_u64(), found["orphans"].as_u64()),
        (Some(1), Some(1)),
        "{found}"
    );
    assert_eq!(found["orphanKeys"][0]["id"], "n1");
    let deleted = run(&["--delete"]);
    assert_eq!(deleted["deleted"], 1);
    assert_eq!(run(&[])["scanned"], 0);
}

/// Two logical databases on one payload bucket (routed databases share their backend's buckets
/// by default): each one's objects are under its own key prefix, so each scrub sees only its own
/// payloads and takes none of the other's for orphans.
#[tokio::test]
async fn databases_sharing_a_bucket_scrub_only_their_own() {
    use chronos::engine::backends::MemoryPayloadStore;
    use chronos::engine::backends::MongoMetaStore;
    use chronos::engine::backends::MongoQueue;
    use chronos::engine::backends::S3PayloadStore;
    use chronos::engine::{Engine, PayloadStore, Stores};
    use std::sync::Arc;

    let bucket = support::unique("chronos-shared");
    let store = S3PayloadStore::new(support::s3_connection().client(), bucket.clone());
    store.ensure_bucket().await.unwrap();
    let payloads: Arc<dyn PayloadStore> = Arc::new(store);
    let client = support::mongo_client(Default::default()).await;
    let engine = |key: &str| {
        let db = support::unique(key).replace('-', "_");
        let stores = Stores {
            meta: Arc::new(MongoMetaStore::new(client.clone(), &db)),
            payloads: payloads.clone(),
            backups: Arc::new(MemoryPayloadStore::new()),
            content: Arc::new(MemoryPayloadStore::new()),
            queue: Arc::new(MongoQueue::new(client.clone(), &db)),
        };
        Engine::for_database(key, stores, EngineSettings::default()).unwrap()
    };
    let (one, two) = (engine("s1"), engine("s2"));
    let c: CollectionName = "shared".parse().unwrap();
    let who = Attribution::default();
    for (engine, id) in [(&one, "x"), (&two, "x"), (&two, "y")] {
        let data = json!({"by": id}).as_object().unwrap().clone();
        engine.create(&c, Some(id.parse().unwrap()), data, &who).await.unwrap();
    }
    let opts = ScrubOptions {
        grace: std::time::Duration::ZERO,
        delete: true,
        ..ScrubOptions::default()
    };
    let first = one.scrub(&opts).await.unwrap();
    assert_eq!((first.scanned, first.committed, first.orphans), (1, 1, 0), "{first:?}");
    let second = two.scrub(&opts).await.unwrap();
    assert_eq!(
        (second.scanned, second.committed, second.orphans),
        (2, 2, 0),
        "{second:?}"
    );
    assert_eq!(payloads.list("", None, 10).await.unwrap().len(), 3);
}

/// Retention prunes an item between two pages of a scrub that has already cached the item's
/// (then empty) manifest entries: the newly pruned versions on the later page are not taken for
/// orphans, and every version stays readable (finding L9).
async fn a_prune_between_scrub_pages_deletes_nothing_readable(h: Harness) {
    let engine = h.engine.clone();
    let (c, id): (CollectionName, ItemId) = ("scrubbed".parse().unwrap(), "a".parse().unwrap());
    let who = Attribution::default();
    let data = |n: u64| json!({"n": n}).as_object().unwrap().clone();
    engine.create(&c, Some(id.clone()), data(0), &who).await.unwrap();
    for n in 1..=3 {
        engine.update(&c, &id, data(n), None, &who).await.unwrap();
    }
    // An old orphan of v0 sorts first, so the first page (3 keys) caches a's pruned entries.
    let orphan = format!("scrubbed/a/v0.{}.json", write_id_aged(3600));
    h.payloads.put(&orphan, Bytes::from_static(b"{}")).await.unwrap();

    h.faults.hold_listing.store(2, std::sync::atomic::Ordering::SeqCst);
    let scrubbing = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .scrub(&ScrubOptions {
                    grace: std::time::Duration::ZERO,
                    delete: true,
                    page_size: 3,
                    ..ScrubOptions::default()
                })
                .await
                .unwrap()
        }
    });
    h.faults.until_holding(1).await;
    let policy = PrunePolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    assert_eq!(
        engine.prune_versions(&c, &policy, false).await.unwrap().versions_pruned,
        3
    );
    h.faults.release_one();
    let report = scrubbing.await.unwrap();
    assert_eq!((report.orphans, report.deleted), (1, 1), "{report:?}");
    assert_eq!(report.orphan_keys[0].key, orphan);
    for ov in 0..=3 {
        let r = engine
            .get_at(&c, &id, VersionTarget::Ov(ov), ReadOptions::default())
            .await;
        assert_eq!(r.map(|r| r.data["n"].clone()).ok(), Some(json!(ov)), "v{ov}");
    }
}

#[tokio::test]
async fn a_prune_between_scrub_pages_on_mongo_s3() {
    a_prune_between_scrub_pages_deletes_nothing_readable(support::mongo_s3(EngineSettings::default()).await).await;
}

#[tokio::test]
async fn a_prune_between_scrub_pages_on_embedded() {
    a_prune_between_scrub_pages_deletes_nothing_readable(support::embedded(EngineSettings::default())).await;
}

#[tokio::test]
async fn a_prune_between_scrub_pages_in_memory() {
    a_prune_between_scrub_pages_deletes_nothing_readable(support::memory(EngineSettings::default())).await;
}
