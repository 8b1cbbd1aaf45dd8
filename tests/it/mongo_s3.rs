//! The engine on a real MongoDB replica set and a real S3 server.

use chronos::engine::{Attribution, CollectionName, EngineSettings, ReadOptions};
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
        .get_version(&c, &warm, 0, ReadOptions::default())
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

/// Concurrent writes to one collection share their round trips (group commit): far fewer than
/// the lone protocol's 4 commands per write, and every write still gets exactly its own outcome.
#[tokio::test]
async fn concurrent_writes_share_their_round_trips() {
    use chronos::engine::ItemId;
    use futures::future::join_all;
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "grouped".parse().unwrap();
    let who = Attribution::default();
    let data = |n: usize, v: usize| json!({"n": n, "v": v}).as_object().unwrap().clone();
    h.engine.create(&c, None, data(0, 0), &who).await.unwrap();
    h.take_commands();

    let ids: Vec<ItemId> = (0..32).map(|i| format!("item-{i}").parse().unwrap()).collect();
    let created = join_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| h.engine.create(&c, Some(id.clone()), data(i, 0), &who)),
    )
    .await;
    let creates = h.take_commands();
    let updated = join_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| h.engine.update(&c, id, data(i, 1), Some(0), &who)),
    )
    .await;
    let updates = h.take_commands();
    println!(
        "32 creates: {} commands; 32 updates: {} commands",
        creates.len(),
        updates.len()
    );
    assert!(creates.len() <= 2 * 32, "creates sent {creates:?}");
    assert!(updates.len() <= 2 * 32, "updates sent {updates:?}");

    let mut cvs = std::collections::BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (got_id, c0) = created[i].as_ref().unwrap();
        assert_eq!(got_id, id);
        assert_eq!(c0.ov, 0);
        let u = updated[i].as_ref().unwrap();
        assert_eq!(u.ov, 1);
        assert!(u.cv > c0.cv);
        assert!(
            cvs.insert(c0.cv) && cvs.insert(u.cv),
            "cvs are unique in the collection"
        );
        let latest = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        assert_eq!(latest.data["n"], i);
        assert_eq!(latest.data["v"], 1);
        assert_eq!(latest.cv, u.cv);
        let first = h.engine.get_version(&c, id, 0, ReadOptions::default()).await.unwrap();
        assert_eq!((first.data["n"].clone(), first.data["v"].clone()), (json!(i), json!(0)));
    }
}

/// In a group, a write whose PUT fails, one whose caller goes away mid-write and one with a
/// stale ov each end on their own; the others commit.
#[tokio::test]
async fn a_group_member_that_fails_takes_no_other_with_it() {
    use chronos::engine::{Error, ItemId};
    use std::sync::atomic::Ordering;
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "grouped-faults".parse().unwrap();
    let who = Attribution::default();
    let data = |v: usize| json!({"v": v}).as_object().unwrap().clone();
    let names = ["ok-1", "ok-2", "ok-3", "bad", "gone", "stale", "ok-4"];
    let ids: Vec<ItemId> = names.iter().map(|n| n.parse().unwrap()).collect();
    for id in &ids {
        h.engine.create(&c, Some(id.clone()), data(0), &who).await.unwrap();
    }
    h.take_commands();
    h.faults.fail_puts_containing.lock().unwrap().push("/bad/".into());
    h.faults.hold_puts.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (engine, c, id, who) = (h.engine.clone(), c.clone(), id.clone(), who.clone());
            let expected = if id.as_str() == "stale" { 5 } else { 0 };
            tokio::spawn(async move { engine.update(&c, &id, data(1), Some(expected), &who).await })
        })
        .collect();
    // Every write but the stale one reaches its PUT while holding its item.
    h.faults.until_holding(6).await;
    tasks[4].abort();
    h.faults.hold_puts.store(false, Ordering::SeqCst);
    for _ in 0..6 {
        h.faults.release_one();
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await);
    }
    let commands = h.take_commands();
    assert!(
        commands.iter().any(|c| c == "update"),
        "the writes were held as a group: {commands:?}"
    );

    for (i, name) in names.iter().enumerate() {
        let latest = h.engine.get_latest(&c, &ids[i], ReadOptions::default()).await.unwrap();
        match *name {
            "bad" => {
                let e = outcomes[i].as_ref().unwrap().as_ref().unwrap_err();
                assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
            }
            "gone" => assert!(outcomes[i].as_ref().unwrap_err().is_cancelled()),
            "stale" => {
                let e = outcomes[i].as_ref().unwrap().as_ref().unwrap_err();
                assert!(matches!(e, Error::VersionConflict { current: 0, .. }), "{e:?}");
            }
            _ => {
                assert_eq!(outcomes[i].as_ref().unwrap().as_ref().unwrap().ov, 1);
                assert_eq!((latest.ov, latest.data["v"].clone()), (1, json!(1)), "{name}");
                continue;
            }
        }
        // The ones that ended on their own left their item exactly as it was.
        assert_eq!((latest.ov, latest.data["v"].clone()), (0, json!(0)), "{name}");
        let history = h
            .engine
            .history(&c, &ids[i], None, 10, ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(history.len(), 1, "{name}: {history:?}");
    }
}

/// A group does not wait for ever for a member whose PUT is slow: it commits the others and
/// leaves the straggler behind with its head put back. The straggler then holds its item on its
/// own and commits — unless the item changed meanwhile, which it then reports like any write.
#[tokio::test]
async fn a_straggler_is_left_behind_and_commits_on_its_own() {
    use chronos::engine::{Error, ItemId};
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "grouped-stragglers".parse().unwrap();
    let who = Attribution::default();
    let data = |v: usize| json!({"v": v}).as_object().unwrap().clone();
    let names = ["a", "b", "c", "d", "e", "slow", "slow-changed"];
    let ids: Vec<ItemId> = names.iter().map(|n| n.parse().unwrap()).collect();
    for id in &ids {
        h.engine.create(&c, Some(id.clone()), data(0), &who).await.unwrap();
    }
    h.faults
        .hold_puts_containing
        .lock()
        .unwrap()
        .extend(["/slow/".to_owned(), "/slow-changed/".to_owned()]);
    let mut tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (engine, c, id, who) = (h.engine.clone(), c.clone(), id.clone(), who.clone());
            tokio::spawn(async move { engine.update(&c, &id, data(1), Some(0), &who).await })
        })
        .collect();
    let changed = tasks.pop().unwrap();
    let slow = tasks.pop().unwrap();
    h.faults.until_holding(2).await;
    // The others are acknowledged while the two stragglers are still uploading.
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().ov, 1);
    }
    for i in [5, 6] {
        let latest = h.engine.get_latest(&c, &ids[i], ReadOptions::default()).await.unwrap();
        assert_eq!(latest.ov, 0, "{}: its head was put back", names[i]);
    }
    // Someone else writes one straggler's item meanwhile (the item is not held).
    h.faults.hold_puts_containing.lock().unwrap().clear();
    h.engine.update(&c, &ids[6], data(2), Some(0), &who).await.unwrap();
    h.faults.release_one();
    h.faults.release_one();

    assert_eq!(slow.await.unwrap().unwrap().ov, 1);
    let latest = h.engine.get_latest(&c, &ids[5], ReadOptions::default()).await.unwrap();
    assert_eq!((latest.ov, latest.data["v"].clone()), (1, json!(1)));
    let e = changed.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::VersionConflict { current: 1, .. }), "{e:?}");
    let latest = h.engine.get_latest(&c, &ids[6], ReadOptions::default()).await.unwrap();
    assert_eq!(
        (latest.ov, latest.data["v"].clone()),
        (1, json!(2)),
        "the other write stands"
    );
    for i in [5, 6] {
        let history = h
            .engine
            .history(&c, &ids[i], None, 10, ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "{}: {history:?}", names[i]);
    }
}

/// A group that can't hold all its items (another replica holds one) is given up whole, and
/// every write — also one that failed its precondition on the group's snapshot — goes on alone
/// with its own change: each item ends with exactly what its own writer sent.
#[tokio::test]
async fn a_group_given_up_sends_every_write_on_alone_with_its_own_change() {
    use chronos::engine::{Error, ItemId};
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "grouped-given-up".parse().unwrap();
    let who = Attribution::default();
    let data = |name: &str, v: usize| json!({"name": name, "v": v}).as_object().unwrap().clone();
    let names = ["stale", "a", "b", "held", "c"];
    let ids: Vec<ItemId> = names.iter().map(|n| n.parse().unwrap()).collect();
    for (name, id) in names.iter().zip(&ids) {
        h.engine
            .create(&c, Some(id.clone()), data(name, 0), &who)
            .await
            .unwrap();
    }
    // Another replica holds `held` (its write is uploading).
    h.faults.hold_puts_containing.lock().unwrap().push("/held/".into());
    let replica = h.replica();
    let other = {
        let (c, id, who) = (c.clone(), ids[3].clone(), who.clone());
        tokio::spawn(async move { replica.update(&c, &id, data("held", 1), Some(0), &who).await })
    };
    h.faults.until_holding(1).await;
    h.take_commands();
    let tasks: Vec<_> = names
        .iter()
        .zip(&ids)
        .map(|(name, id)| {
            let (engine, c, id, who, name) = (h.engine.clone(), c.clone(), id.clone(), who.clone(), name.to_string());
            let expected = match name.as_str() {
                "stale" => Some(5),
                "held" => None,
                _ => Some(0),
            };
            tokio::spawn(async move { engine.update(&c, &id, data(&name, 2), expected, &who).await })
        })
        .collect();
    let mut tasks = tasks.into_iter();
    let stale = tasks.next().unwrap().await.unwrap();
    assert!(
        matches!(stale, Err(Error::VersionConflict { current: 0, .. })),
        "{stale:?}"
    );
    for name in ["a", "b"] {
        assert_eq!(tasks.next().unwrap().await.unwrap().unwrap().ov, 1, "{name}");
    }
    let mine_on_held = tasks.next().unwrap();
    assert_eq!(tasks.next().unwrap().await.unwrap().unwrap().ov, 1, "c");
    assert!(
        h.take_commands().iter().any(|c| c == "update"),
        "the writes first tried to hold their items as a group"
    );
    h.faults.hold_puts_containing.lock().unwrap().clear();
    h.faults.release_one();
    assert_eq!(other.await.unwrap().unwrap().ov, 1);
    assert_eq!(mine_on_held.await.unwrap().unwrap().ov, 2);

    for (i, name) in names.iter().enumerate() {
        let latest = h.engine.get_latest(&c, &ids[i], ReadOptions::default()).await.unwrap();
        assert_eq!(latest.data["name"], *name, "{name} holds its own writer's data");
        let expected_v = if *name == "stale" { 0 } else { 2 };
        assert_eq!(latest.data["v"], expected_v, "{name}");
    }
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
