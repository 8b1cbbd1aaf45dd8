//! S3 Object Lock on the real S3 server: what the probe finds, and that payloads of a collection
//! with a retention hold are written locked. What SeaweedFS 4.48 (the test server) was seen to do
//! is asserted here and written up in `docs/design.md`, "Holds and Object Lock": it enforces
//! GOVERNANCE and COMPLIANCE retention and legal holds on deletes naming a version id.

use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata;
use chronos::engine::backends::{MemoryMetaStore, S3PayloadStore};
use chronos::engine::store::ObjectLockStatus;
use chronos::engine::{CollectionMap, EngineSettings, HoldRule, LockMode, PayloadStore};
use serde_json::json;

use crate::support::{s3_connection, unique};

/// A fresh bucket, created with Object Lock when `locked`.
async fn bucket(locked: bool) -> S3PayloadStore {
    let store = S3PayloadStore::new(s3_connection().client(), unique("chronos-lock")).with_object_lock(locked);
    assert!(
        store.ensure_bucket().await.expect("S3 server reachable"),
        "bucket was new"
    );
    store
}

#[tokio::test]
async fn the_probe_reports_what_the_server_enforces() {
    let locked = bucket(true).await;
    assert_eq!(
        locked.object_lock_status().await.unwrap(),
        ObjectLockStatus::Enforced,
        "SeaweedFS 4.48 refuses (403 AccessDenied) a delete naming a GOVERNANCE-retained version"
    );
    let plain = bucket(false).await;
    assert_eq!(
        plain.object_lock_status().await.unwrap(),
        ObjectLockStatus::NotRequested
    );
    let asked_too_late = S3PayloadStore::new(s3_connection().client(), plain.bucket()).with_object_lock(true);
    assert_eq!(
        asked_too_late.object_lock_status().await.unwrap(),
        ObjectLockStatus::NotEnabled,
        "a bucket created without Object Lock has none"
    );
    // The probe cleans up after itself: its object went with a governance bypass.
    let client = s3_connection().client();
    let versions = client
        .list_object_versions()
        .bucket(locked.bucket())
        .send()
        .await
        .unwrap();
    assert!(versions.versions().is_empty(), "{:?}", versions.versions());
}

#[tokio::test]
async fn payloads_of_a_held_collection_are_locked_in_the_bucket() {
    let store = bucket(true).await;
    let name = store.bucket().to_owned();
    let aux = bucket(false).await;
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "cases".into(),
        CollectionMap {
            hold: Some(HoldRule {
                mode: LockMode::Compliance,
                days: 1,
            }),
            ..Default::default()
        },
    );
    let engine = chronos::engine::Engine::new(Arc::new(MemoryMetaStore::new()), Arc::new(store), settings)
        .with_backups(Arc::new(aux));
    let cases: chronos::engine::CollectionName = "cases".parse().unwrap();
    let who = chronos::engine::Attribution::new("tester", "object lock");
    let data = json!({"case": 1}).as_object().unwrap().clone();
    let (id, _) = engine.create(&cases, None, data, &who).await.unwrap();

    let checks = engine.validate().await;
    let lock = checks
        .iter()
        .find(|c| c.component == "objectLock")
        .expect("an objectLock check");
    assert!(lock.ok, "{lock:?}");

    let client = s3_connection().client();
    let prefix = format!("cases/{id}/");
    let listed = client
        .list_object_versions()
        .bucket(&name)
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    let version = listed.versions().first().expect("the payload object");
    let (key, vid) = (version.key().unwrap(), version.version_id().unwrap());
    let retention = client
        .get_object_retention()
        .bucket(&name)
        .key(key)
        .version_id(vid)
        .send()
        .await
        .unwrap();
    let retention = retention.retention().expect("retention set");
    assert_eq!(retention.mode().map(|m| m.as_str()), Some("COMPLIANCE"));
    let refused = client
        .delete_object()
        .bucket(&name)
        .key(key)
        .version_id(vid)
        .bypass_governance_retention(true)
        .send()
        .await
        .expect_err("a COMPLIANCE-retained version can't be deleted, not even with a bypass");
    assert_eq!(refused.code(), Some("AccessDenied"), "{refused:?}");
    assert!(engine.is_held(&cases, &id).await.unwrap());
}

#[tokio::test]
async fn a_legal_hold_locks_the_items_objects_until_released() {
    let store = bucket(true).await;
    let name = store.bucket().to_owned();
    let engine = chronos::engine::Engine::new(
        Arc::new(MemoryMetaStore::new()),
        Arc::new(store),
        EngineSettings::default(),
    );
    let notes: chronos::engine::CollectionName = "notes".parse().unwrap();
    let who = chronos::engine::Attribution::new("tester", "legal hold");
    let data = |v: u64| json!({"v": v}).as_object().unwrap().clone();
    let (id, _) = engine.create(&notes, None, data(0), &who).await.unwrap();
    engine.update(&notes, &id, data(1), None, &who).await.unwrap();
    engine.set_hold(&notes, &id, "case 9", None).await.unwrap();

    let client = s3_connection().client();
    let listed = client
        .list_object_versions()
        .bucket(&name)
        .prefix(format!("notes/{id}/"))
        .send()
        .await
        .unwrap();
    let versions: Vec<(String, String)> = listed
        .versions()
        .iter()
        .map(|v| (v.key().unwrap().to_owned(), v.version_id().unwrap().to_owned()))
        .collect();
    assert_eq!(versions.len(), 2, "both versions' objects");
    let delete = |key: String, vid: String| {
        let request = client.delete_object().bucket(&name).key(key).version_id(vid);
        async move { request.send().await.err().map(|e| e.code().map(str::to_owned)) }
    };
    for (key, vid) in &versions {
        let refused = delete(key.clone(), vid.clone()).await;
        assert_eq!(
            refused,
            Some(Some("AccessDenied".to_owned())),
            "a held version can't be deleted"
        );
    }
    engine.release_hold(&notes, &id).await.unwrap();
    for (key, vid) in versions {
        assert_eq!(delete(key, vid).await, None, "released, the version can be deleted");
    }
}
