//! Group commit on a real MongoDB replica set: concurrent writes share their round trips, a
//! failing member takes no other with it, stragglers and late members are handled alone.

use chronos::engine::{Attribution, CollectionName, EngineSettings, ReadOptions, VersionTarget};
use serde_json::json;

use crate::support;

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
        let first = h
            .engine
            .get_at(&c, id, VersionTarget::Ov(0), ReadOptions::default())
            .await
            .unwrap();
        assert_eq!((first.data["n"].clone(), first.data["v"].clone()), (json!(i), json!(0)));
    }
}

/// An enrichment merges before it holds its item and is written as an update on the ov it read:
/// alone it costs the read plus an update's 4 commands, and concurrent enrichments of different
/// items join one group like updates do, instead of 5 commands each on the lone protocol.
#[tokio::test]
async fn concurrent_enrichments_share_a_groups_commands() {
    use chronos::engine::{Enrichment, ItemId};
    use futures::future::join_all;
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "grouped-enrich".parse().unwrap();
    let who = Attribution::default();
    let ids: Vec<ItemId> = (0..32).map(|i| format!("e-{i}").parse().unwrap()).collect();
    for (i, id) in ids.iter().enumerate() {
        let data = json!({"n": i, "tags": ["base"]}).as_object().unwrap().clone();
        h.engine.create(&c, Some(id.clone()), data, &who).await.unwrap();
    }
    let how = Enrichment {
        function_id: Some("tagger".into()),
        expected_ov: None,
    };
    let patch = |tag: &str| json!({"tags": [tag]}).as_object().unwrap().clone();
    h.take_commands();

    let lone = h
        .engine
        .enrich(&c, &ids[0], &[patch("lone")], &how, &who)
        .await
        .unwrap();
    assert_eq!(lone.ov, 1);
    let lone_commands = h.take_commands();
    assert_eq!(
        lone_commands,
        ["find", "findAndModify", "findAndModify", "insert", "commitTransaction"],
        "the head read, then an update's commands: cv, hold, entry, commit"
    );

    let grouped = [patch("grouped")];
    let enriched = join_all(ids.iter().map(|id| h.engine.enrich(&c, id, &grouped, &how, &who))).await;
    let commands = h.take_commands();
    let count = |name: &str| commands.iter().filter(|c| *c == name).count();
    println!(
        "lone enrich: {} commands; 32 concurrent enrichments: {} commands ({} finds, {} commits)",
        lone_commands.len(),
        commands.len(),
        count("find"),
        count("commitTransaction")
    );
    assert!(
        count("update") >= 1,
        "the enrichments were held as a group: {commands:?}"
    );
    assert!(
        count("commitTransaction") <= 32 / 2,
        "groups share their commits: {commands:?}"
    );
    assert!(commands.len() <= 2 * 32, "enrichments sent {commands:?}");

    for (i, id) in ids.iter().enumerate() {
        let expected_ov = if i == 0 { 2 } else { 1 };
        assert_eq!(enriched[i].as_ref().unwrap().ov, expected_ov, "{id}");
        let latest = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        let tags = if i == 0 {
            json!(["base", "lone", "grouped"])
        } else {
            json!(["base", "grouped"])
        };
        assert_eq!(
            (latest.data["n"].clone(), latest.data["tags"].clone()),
            (json!(i), tags),
            "{id}"
        );
        assert_eq!(latest.system.function_ids, ["tagger"], "{id}");
    }
}

/// An enrichment merges before it holds its item, so a writer can win the item between the
/// merge and the write. Here both contenders have read and merged ov 0 and are trying to hold the
/// item while another enrichment's upload keeps it: when that one commits, the enrichment without
/// an expected ov merges again into the new version (nothing lost), and the one that expected ov
/// 0 reports the conflict and writes nothing.
#[tokio::test]
async fn an_enrichment_that_loses_its_item_merges_again_into_the_winner() {
    use chronos::engine::{Enrichment, Error, ItemId};
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "enrich-race".parse().unwrap();
    let who = Attribution::default();
    let id: ItemId = "race".parse().unwrap();
    let base = json!({"tags": ["base"]}).as_object().unwrap().clone();
    h.engine.create(&c, Some(id.clone()), base, &who).await.unwrap();
    let enrich = |tag: &str, expected_ov: Option<u64>| {
        let (engine, c, id, who) = (h.engine.clone(), c.clone(), id.clone(), who.clone());
        let patch = json!({"tags": [tag]}).as_object().unwrap().clone();
        let how = Enrichment {
            function_id: Some(format!("enricher-{tag}")),
            expected_ov,
        };
        tokio::spawn(async move { engine.enrich(&c, &id, &[patch], &how, &who).await })
    };
    h.faults.hold_puts_containing.lock().unwrap().push("/race/".into());
    let winner = enrich("b", None);
    h.faults.until_holding(1).await;
    h.take_commands();
    let merges_again = enrich("c", None);
    let expects_0 = enrich("d", Some(0));
    // Both have read ov 0 and merged once they try to hold the item (the winner still has it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut trying = std::collections::HashSet::new();
    while trying.len() < 2 {
        for (name, body) in h.take_command_bodies() {
            let on_head = body.get_str("findAndModify").is_ok_and(|coll| coll.ends_with("_head"));
            let text = format!("{body:?}");
            for who in ["enricher-c", "enricher-d"] {
                if name == "findAndModify" && on_head && text.contains(who) {
                    trying.insert(who);
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both contenders try to hold the item: {trying:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    h.faults.hold_puts_containing.lock().unwrap().clear();
    h.faults.release_one();

    assert_eq!(winner.await.unwrap().unwrap().ov, 1);
    assert_eq!(merges_again.await.unwrap().unwrap().ov, 2);
    let conflict = expects_0.await.unwrap();
    assert!(
        matches!(conflict, Err(Error::VersionConflict { expected: 0, .. })),
        "{conflict:?}"
    );
    let latest = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert_eq!(latest.ov, 2, "the conflicting enrichment wrote nothing");
    assert_eq!(
        latest.data["tags"],
        json!(["base", "b", "c"]),
        "the winner's addition is kept"
    );
    assert_eq!(latest.system.function_ids, ["enricher-b", "enricher-c"]);
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

/// Update every item of `ids` (at ov 0) to `{"v": 1}`, concurrently.
fn concurrent_updates_from_ov_0(
    h: &support::Harness,
    c: &CollectionName,
    ids: &[chronos::engine::ItemId],
) -> Vec<tokio::task::JoinHandle<chronos::engine::Result<chronos::engine::WriteOutcome>>> {
    ids.iter()
        .map(|id| {
            let (engine, c, id) = (h.engine.clone(), c.clone(), id.clone());
            let data = json!({"v": 1}).as_object().unwrap().clone();
            tokio::spawn(async move { engine.update(&c, &id, data, Some(0), &Attribution::default()).await })
        })
        .collect()
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
    let mut tasks = concurrent_updates_from_ov_0(&h, &c, &ids);
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

/// The orphan-grace fence holds on every MongoDB commit path (review M4): a group's members and
/// a straggler that commits on its own are refused like a lone write when they are too late
/// (the grace here is zero), and every item stays as it was.
#[tokio::test]
async fn late_group_members_and_stragglers_are_not_committed() {
    use chronos::engine::{Engine, Error, ItemId};
    let late = EngineSettings {
        orphan_grace: std::time::Duration::ZERO,
        ..EngineSettings::default()
    };
    let h = support::mongo_s3(late).await;
    let on_time = Engine::new(h.meta.clone(), h.payloads.clone(), EngineSettings::default());
    let c: CollectionName = "late-groups".parse().unwrap();
    let who = Attribution::default();
    let data = |v: usize| json!({"v": v}).as_object().unwrap().clone();
    let ids: Vec<ItemId> = (0..12).map(|i| format!("i{i}").parse().unwrap()).collect();
    for id in &ids {
        on_time.create(&c, Some(id.clone()), data(0), &who).await.unwrap();
    }
    let before = h.payloads.list("late-groups/", None, 100).await.unwrap();
    h.take_commands();
    h.faults.hold_puts_containing.lock().unwrap().push("/i0/".into());
    let mut tasks = concurrent_updates_from_ov_0(&h, &c, &ids);
    let slow = tasks.remove(0);
    h.faults.until_holding(1).await;
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(matches!(outcome, Err(Error::Unavailable { .. })), "{outcome:?}");
    }
    assert!(
        h.take_commands().iter().any(|c| c == "update"),
        "the writes were held as groups"
    );
    h.faults.hold_puts_containing.lock().unwrap().clear();
    h.faults.release_one();
    let outcome = slow.await.unwrap();
    assert!(matches!(outcome, Err(Error::Unavailable { .. })), "{outcome:?}");
    for id in &ids {
        let latest = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        assert_eq!((latest.ov, latest.data["v"].clone()), (0, json!(0)), "{id}");
    }
    let after = h.payloads.list("late-groups/", None, 100).await.unwrap();
    assert_eq!(after, before, "no payload of a late attempt stays");
}
