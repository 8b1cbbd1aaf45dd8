//! The engine on a real MongoDB replica set and a real S3 server.

use chronos::engine::{Attribution, CollectionName, EngineSettings, ReadOptions, VersionTarget};
use serde_json::json;

use crate::support;

crate::conformance_suite!(support::mongo_s3);

/// The cost of each operation in MongoDB commands, measured with the driver's command monitoring.
#[tokio::test]
async fn mongo_commands_per_operation() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "counted".parse().unwrap();
    let who = Attribution::default();
    let data = || json!({"a": 1}).as_object().unwrap().clone();
    // The first write of a collection ensures its indexes, once per process.
    let (warm, _) = h.engine.create(&c, None, data(), &who).await.unwrap();
    assert!(h.take_commands().contains(&"createIndexes".to_owned()));
    h.engine.update(&c, &warm, data(), Some(0), &who).await.unwrap();
    assert!(
        !h.take_commands().contains(&"createIndexes".to_owned()),
        "indexes are never ensured per write"
    );

    let (id, _) = h.engine.create(&c, None, data(), &who).await.unwrap();
    let create = h.take_commands();
    h.engine.update(&c, &id, data(), Some(0), &who).await.unwrap();
    let update = h.take_commands();
    h.engine.update(&c, &id, data(), None, &who).await.unwrap();
    let blind_update = h.take_commands();
    h.engine.delete(&c, &id, Some(2), &who).await.unwrap();
    let delete = h.take_commands();
    h.engine.get_latest(&c, &warm, ReadOptions::default()).await.unwrap();
    let latest = h.take_commands();
    h.engine
        .get_at(&c, &warm, VersionTarget::Ov(0), ReadOptions::default())
        .await
        .unwrap();
    let version = h.take_commands();

    println!(
        "create: {create:?}\nupdate: {update:?}\ndelete: {delete:?}\ngetLatest: {latest:?}\ngetVersion: {version:?}"
    );
    assert_eq!(create, ["findAndModify", "insert", "insert", "commitTransaction"]);
    assert_eq!(
        update,
        ["findAndModify", "findAndModify", "insert", "commitTransaction"]
    );
    assert_eq!(blind_update, update);
    assert_eq!(delete, update);
    assert_eq!(latest, ["find"]);
    assert_eq!(version, ["find"]);
}

/// Presigned URLs for a version's payload and its content properties, fetched with a plain GET.
#[tokio::test]
async fn presigned_urls_serve_the_exact_bytes() {
    use chronos::engine::{CollectionMap, ContentKind};
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "docs".into(),
        CollectionMap {
            content_props: [("body".to_owned(), ContentKind::Text)].into(),
            ..Default::default()
        },
    );
    let h = support::mongo_s3(settings).await;
    let dbs = std::collections::BTreeMap::from([("t1".to_owned(), h.engine.clone())]);
    let server = crate::api::start(dbs, None, 1 << 20).await;
    let body = "the body ".repeat(100);
    let created: serde_json::Value = server
        .http
        .post(format!("{}/v1/t1/docs/items?id=d1", server.url))
        .json(&json!({"title": "t", "body": body}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["ov"], 0);
    let record: serde_json::Value = server
        .http
        .get(format!("{}/v1/t1/docs/items/d1?presign=true&ttlSeconds=60", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plain = reqwest::Client::new();
    let content_url = record["body"]["$content"]["url"].as_str().expect("a content URL");
    let fetched = plain.get(content_url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().await.unwrap(), body, "content bytes");
    let payload_url = record["_system"]["payloadUrl"].as_str().expect("a payload URL");
    let envelope: serde_json::Value = plain.get(payload_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(envelope["chronos"]["id"], "d1");
    assert_eq!(
        envelope["data"]["body"]["$content"]["key"],
        record["body"]["$content"]["key"]
    );
    // Without credentials and without a signature, the bucket says no.
    let unsigned = payload_url.split('?').next().unwrap();
    assert_eq!(plain.get(unsigned).send().await.unwrap().status(), 403);

    // Inline by default: the value itself.
    let inline: serde_json::Value = server
        .http
        .get(format!("{}/v1/t1/docs/items/d1", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inline["body"], body.as_str());
}

/// A NUL in a top-level key can't be a BSON field name. Such a key was taken into the indexed
/// metadata, MongoDB's driver refused the document, and the write was answered as a backend
/// outage (503, or queued until it became a dead letter) — and a whole group fell back to lone
/// writes. It is a client's data, not an outage: the key stays in the payload, out of the index.
#[tokio::test]
async fn a_nul_in_a_key_is_data_not_an_outage() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "nul".parse().unwrap();
    let who = Attribution::default();
    let data = json!({"a\u{0}b": "x", "plain": 1}).as_object().unwrap().clone();
    let (id, _) = h.engine.create(&c, None, data.clone(), &who).await.unwrap();
    let record = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert_eq!(record.data["a\u{0}b"], "x");
    assert_eq!(record.data["plain"], 1);
}

/// Whether a command's body asks for write concern majority.
fn majority_write(body: &mongodb::bson::Document) -> bool {
    body.get_document("writeConcern")
        .is_ok_and(|w| w.get_str("w").ok() == Some("majority"))
}

/// Every cv allocation — lone writes, a group's one `$inc`, a restore by reference — waits for a
/// majority (review M2): a `$inc` acknowledged by the primary alone can be lost in a failover,
/// and the new primary would hand the same cv out again while the old one's writer still uses it.
#[tokio::test]
async fn every_cv_allocation_waits_for_a_majority() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "cv-majority".parse().unwrap();
    let who = Attribution::default();
    let data = |v: usize| json!({"v": v}).as_object().unwrap().clone();
    let (id, _) = h.engine.create(&c, None, data(0), &who).await.unwrap();
    h.engine.update(&c, &id, data(1), Some(0), &who).await.unwrap();
    let writes: Vec<_> = (0..32)
        .map(|i| {
            let (engine, c, who) = (h.engine.clone(), c.clone(), who.clone());
            tokio::spawn(async move { engine.create(&c, None, data(i), &who).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    h.engine
        .restore_object(&c, &id, VersionTarget::Ov(0), None, &who)
        .await
        .unwrap();

    let allocations: Vec<_> = h
        .take_command_bodies()
        .into_iter()
        .filter(|(name, body)| {
            ["findAndModify", "update"].contains(&name.as_str()) && body.get_str(name).ok() == Some("chronos_sequences")
        })
        .collect();
    let taken = |body: &mongodb::bson::Document| {
        body.get_document("update")
            .and_then(|u| u.get_document("$inc"))
            .map(|inc| inc.get_i64("cv").unwrap_or(0))
            .unwrap_or(0)
    };
    assert!(
        allocations.iter().any(|(_, b)| taken(b) > 1),
        "a group took several cvs at once: {allocations:?}"
    );
    assert!(allocations.len() >= 4, "{allocations:?}");
    for (name, body) in &allocations {
        assert!(majority_write(body), "{name} without write concern majority: {body}");
    }
}

/// An idempotent replay — of a caller's retry, or of a queued job run again — reads the key's
/// version with read concern majority (review M3): a version only the primary has seen may still
/// be rolled back, and acknowledging it as the write's outcome would lose the write.
#[tokio::test]
async fn replays_read_only_majority_committed_versions() {
    use chronos::engine::{Submitted, WriteRequest};
    use std::sync::atomic::Ordering;
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "replay-majority".parse().unwrap();
    let keyed = Attribution {
        request_key: Some("replay-1".parse().unwrap()),
        ..Attribution::default()
    };
    let data = || json!({"v": 1}).as_object().unwrap().clone();
    let id: chronos::engine::ItemId = "r1".parse().unwrap();
    let (_, first) = h.engine.create(&c, Some(id.clone()), data(), &keyed).await.unwrap();
    let (_, again) = h.engine.create(&c, Some(id.clone()), data(), &keyed).await.unwrap();
    assert!(again.replayed && again.ov == first.ov);
    let replay_reads = |bodies: Vec<(String, mongodb::bson::Document)>, key: &str| -> Vec<mongodb::bson::Document> {
        bodies
            .into_iter()
            .filter(|(name, body)| {
                name == "find"
                    && body
                        .get_document("filter")
                        .is_ok_and(|f| f.get_str("requestId").ok() == Some(key))
            })
            .map(|(_, body)| body)
            .collect()
    };
    let majority = |body: &mongodb::bson::Document| {
        body.get_document("readConcern")
            .is_ok_and(|r| r.get_str("level").ok() == Some("majority"))
    };
    let reads = replay_reads(h.take_command_bodies(), "replay-1");
    assert!(reads.len() >= 2, "{reads:?}");
    for body in &reads {
        assert!(majority(body), "a replay read without read concern majority: {body}");
    }

    // The queue's worker replays under the job's key the same way.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let request = WriteRequest::Update {
        id: id.clone(),
        data: data(),
        expected_ov: None,
    };
    let op = match h.engine.submit(&c, request, &Attribution::default()).await.unwrap() {
        Submitted::Queued(op) => op,
        other => panic!("expected the write to be queued, got {other:?}"),
    };
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    h.take_commands();
    while !h.engine.run_queued_once().await.unwrap() {
        tokio::task::yield_now().await;
    }
    let reads = replay_reads(h.take_command_bodies(), op.job.request_key.as_str());
    assert!(!reads.is_empty(), "the job looked its key up");
    for body in &reads {
        assert!(
            majority(body),
            "a queued replay read without read concern majority: {body}"
        );
    }
}

/// An engine whose MongoDB traffic goes through a [`ReplyDropper`], with one item (`{"v": 0}`)
/// in collection `c`.
///
/// [`ReplyDropper`]: crate::mongo_proxy::ReplyDropper
async fn behind_a_reply_dropper(
    c: &str,
) -> (
    crate::mongo_proxy::ReplyDropper,
    support::Harness,
    CollectionName,
    chronos::engine::ItemId,
) {
    let proxy = crate::mongo_proxy::ReplyDropper::start().await;
    let h = support::mongo_s3_at(&proxy.uri(), EngineSettings::default()).await;
    let c: CollectionName = c.parse().unwrap();
    let data = json!({"v": 0}).as_object().unwrap().clone();
    let (id, _) = h.engine.create(&c, None, data, &Attribution::default()).await.unwrap();
    (proxy, h, c, id)
}

/// A restore whose commit outcome is unknown (the commit reached mongod, its reply was lost) is
/// reported as `OutcomeUnknown`, never as an outage (review L1): an outage would be queued under
/// a fresh key, and the worker would append the restore a second time.
#[tokio::test]
async fn a_restore_whose_commit_reply_is_lost_is_reported_as_unknown() {
    use chronos::engine::{Error, VersionTarget, WriteRequest};
    let (proxy, h, c, id) = behind_a_reply_dropper("restore-unknown").await;
    let who = Attribution::default();
    let data = json!({"v": 1}).as_object().unwrap().clone();
    h.engine.update(&c, &id, data, Some(0), &who).await.unwrap();

    proxy.drop_replies_to(b"commitTransaction\0".to_vec());
    let request = WriteRequest::Restore {
        id: id.clone(),
        target: VersionTarget::Ov(0),
        expected_ov: None,
    };
    let outcome = h.engine.submit(&c, request, &who).await;
    proxy.disarm();
    assert!(proxy.dropped() > 0, "the commit's reply was lost");
    assert!(
        matches!(outcome, Err(Error::OutcomeUnknown(_))),
        "without a key the caller learns the outcome is unknown: {outcome:?}"
    );
    // It did happen, once, and nothing is queued to make it again.
    let latest = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert_eq!((latest.ov, latest.data["v"].clone()), (2, json!(0)));
    assert!(!h.engine.run_queued_once().await.unwrap(), "nothing was queued");
}

/// A write that fails and whose enqueue's outcome is unknown (the insert reached mongod, its
/// reply was lost) answers `OutcomeUnknown`, not "nothing acknowledged" (review L4): the job is
/// in fact queued and will run, so a blind retry would write twice.
#[tokio::test]
async fn a_write_whose_enqueue_reply_is_lost_is_reported_as_unknown() {
    use chronos::engine::{Error, OperationStatus, WriteRequest};
    use std::sync::atomic::Ordering;
    let (proxy, h, c, id) = behind_a_reply_dropper("enqueue-unknown").await;
    let who = Attribution::default();

    h.faults.fail_puts.store(true, Ordering::SeqCst);
    proxy.drop_replies_to(crate::mongo_proxy::command_on("insert", "chronos_queue"));
    let request = WriteRequest::Update {
        id: id.clone(),
        data: json!({"v": 1}).as_object().unwrap().clone(),
        expected_ov: None,
    };
    let outcome = h.engine.submit(&c, request, &who).await;
    proxy.disarm();
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    assert!(proxy.dropped() > 0, "the insert's reply was lost");
    assert!(
        matches!(outcome, Err(Error::OutcomeUnknown(_))),
        "the caller learns the outcome is unknown: {outcome:?}"
    );
    let queued = h
        .engine
        .list_operations(OperationStatus::Pending, None, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "the job was stored after all");
}

/// A listing filtered on an indexed property walks that property's index in `_id` order, the
/// order it pages in: a page reads only the heads it returns instead of sorting every head with
/// that value. An index of the earlier shape (`{meta.status: 1}`) is replaced when the
/// collection's indexes are made.
#[tokio::test]
async fn a_filtered_page_reads_only_what_it_returns() {
    use chronos::engine::{CollectionMap, ListOptions};
    use futures::TryStreamExt;
    use mongodb::bson::{Document, doc};

    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "orders".into(),
        CollectionMap {
            indexed_props: Some(vec!["status".into()]),
            ..Default::default()
        },
    );
    let h = support::mongo_s3(settings).await;
    let Some(support::RawMeta::Mongo(client, db)) = h.raw.clone() else {
        panic!("a MongoDB harness")
    };
    let heads = client.database(&db).collection::<Document>("orders_head");
    heads
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"meta.status": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name("meta_status".to_owned())
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();

    let c: CollectionName = "orders".parse().unwrap();
    let who = Attribution::default();
    let writes = (0..300).map(|i| {
        let status = if i % 3 == 0 { "open" } else { "closed" };
        let data = json!({"status": status, "n": i}).as_object().unwrap().clone();
        let id = format!("o-{i:03}").parse().unwrap();
        let (e, c, who) = (&h.engine, &c, &who);
        async move { e.create(c, Some(id), data, who).await }
    });
    for written in futures::future::join_all(writes).await {
        written.unwrap();
    }
    let indexes: Vec<mongodb::IndexModel> = heads.list_indexes().await.unwrap().try_collect().await.unwrap();
    let status = indexes
        .iter()
        .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some("meta_status"))
        .expect("the status index");
    assert_eq!(status.keys.keys().collect::<Vec<_>>(), ["meta.status", "_id"]);

    h.take_commands();
    let page = h
        .engine
        .list(
            &c,
            &ListOptions {
                filter: json!({"status": "open"}),
                after_id: Some("o-150".parse().unwrap()),
                limit: 20,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ids: Vec<String> = page.records.iter().map(|r| r.id.to_string()).collect();
    let expected: Vec<String> = (153..300).step_by(3).take(20).map(|i| format!("o-{i:03}")).collect();
    assert_eq!(ids, expected);

    // What mongod does with the `find` the engine sent.
    let (_, find) = h
        .take_command_bodies()
        .into_iter()
        .find(|(name, _)| name == "find")
        .expect("the listing's find");
    let mut sent = doc! {"find": "orders_head"};
    for field in ["filter", "sort", "projection", "limit"] {
        if let Some(v) = find.get(field) {
            sent.insert(field, v.clone());
        }
    }
    let explained = client
        .database(&db)
        .run_command(doc! {"explain": sent, "verbosity": "executionStats"})
        .await
        .unwrap();
    let plan = explained
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert!(
        !format!("{plan}").contains("\"SORT\""),
        "a page sorts in memory: {plan}"
    );
    assert!(
        format!("{plan}").contains("meta_status"),
        "a page walks the status index: {plan}"
    );
    let stats = explained.get_document("executionStats").unwrap();
    let examined = |f: &str| {
        stats
            .get(f)
            .and_then(|v| v.as_i32().map(i64::from).or(v.as_i64()))
            .unwrap()
    };
    assert!(examined("totalKeysExamined") <= 21, "{stats}");
    assert!(examined("totalDocsExamined") <= 21, "{stats}");
}
