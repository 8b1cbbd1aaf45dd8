//! Scrub and packs: a pack is collected once nothing names it, kept while a restored version
//! or a manifest does, and compacted when mostly dead — also while a restore by reference races
//! it.

use chronos::engine::settings::PackWrites;
use chronos::engine::{Attribution, CollectionName, ItemId, ReadOptions, VersionTarget};
use serde_json::json;

use super::{all_keys, create_at_once, setup, stored, together, version_packs};
use crate::support;

/// Create 24 items at once (after a warm-up write) and return the pack with the most members,
/// with its members' items: at least 8 of them share it.
async fn a_shared_pack(h: &support::Harness, c: &CollectionName, word: &str) -> (String, Vec<ItemId>) {
    let warm = json!({"warm": 1}).as_object().unwrap().clone();
    h.engine.create(c, None, warm, &Attribution::default()).await.unwrap();
    create_at_once(h, c, 24, word).await;
    let stored = h.engine.stored_payloads(c).await.unwrap();
    let mut by_pack: std::collections::HashMap<String, Vec<ItemId>> = Default::default();
    for p in stored.iter().filter(|p| p.pack.is_some()) {
        by_pack
            .entry(p.pack.clone().unwrap().key)
            .or_default()
            .push(p.id.clone());
    }
    let (pack, members) = by_pack.into_iter().max_by_key(|(_, m)| m.len()).unwrap();
    assert!(members.len() >= 8, "a pack of {}", members.len());
    (pack, members)
}

/// A record `{"v": v}`.
fn data(v: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"v": v}).as_object().unwrap().clone()
}

/// A new item whose v0 is `{"v": "first"}` and v1 `{"v": "second"}`.
async fn first_then_second(h: &support::Harness, c: &CollectionName, who: &Attribution) -> ItemId {
    let (id, _) = h.engine.create(c, None, data("first"), who).await.unwrap();
    h.engine.update(c, &id, data("second"), Some(0), who).await.unwrap();
    id
}

/// A scrub of `c` with no grace: every pack is old enough to collect. `delete: false` only reports.
fn scrub_now(c: &CollectionName, delete: bool) -> chronos::engine::ScrubOptions {
    chronos::engine::ScrubOptions {
        collection: Some(c.clone()),
        grace: std::time::Duration::ZERO,
        delete,
        ..Default::default()
    }
}

/// Retention keeping each item's latest `n` versions, deleting the pruned ones' payloads or not.
async fn keep_last(h: &support::Harness, c: &CollectionName, n: u64, delete_payloads: bool) {
    let policy = chronos::engine::PrunePolicy {
        keep_last: Some(n),
        delete_payloads,
        ..Default::default()
    };
    h.engine.prune_versions(c, &policy, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_deletes_a_pack_once_no_version_names_it() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let id = first_then_second(&h, &c, &who).await;
    h.engine.update(&c, &id, data("third"), Some(1), &who).await.unwrap();
    let packs = version_packs(&h, &c, &id).await;
    let [first_pack, second_pack, _] = &packs[..] else {
        panic!("three versions: {packs:?}")
    };
    let scrub = |delete| scrub_now(&c, delete);
    // Every version is named: nothing to collect.
    let report = h.engine.scrub(&scrub(true)).await.unwrap();
    assert_eq!((report.packs.packs, report.packs.dead), (3, 0), "{report:?}");
    // v0 pruned with its payload kept: its manifest entry still names it.
    keep_last(&h, &c, 2, false).await;
    assert_eq!(h.engine.scrub(&scrub(true)).await.unwrap().packs.dead, 0);
    let old = h
        .engine
        .get_at(&c, &id, VersionTarget::Ov(0), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(old.data, data("first"));
    // v1 pruned with its payload: nothing names its pack any more.
    keep_last(&h, &c, 1, true).await;
    let report = h.engine.scrub(&scrub(false)).await.unwrap();
    assert_eq!(
        (report.packs.dead, report.packs.deleted),
        (1, 0),
        "a dry run: {report:?}"
    );
    let report = h.engine.scrub(&scrub(true)).await.unwrap();
    assert_eq!((report.packs.dead, report.packs.deleted), (1, 1), "{report:?}");
    assert!(!stored(&h, second_pack).await, "the dead pack is gone");
    assert!(stored(&h, first_pack).await, "the kept one stays");
    let old = h
        .engine
        .get_at(&c, &id, VersionTarget::Ov(0), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(old.data, data("first"));
    let latest = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert_eq!(latest.data, data("third"));
}

/// The packed form of `retention::retention_keeps_payloads_restored_versions_use`: a restore of
/// v0 names v0's slot; retention then prunes v0 and v1 with their payloads, and scrub collects
/// packs — v0's pack stays (the restored version reads from it), v1's goes, and the restored data
/// reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pack_a_restored_version_reads_from_outlives_retention_and_scrub() {
    let (h, c, who) = setup(PackWrites::Always).await;
    let id = first_then_second(&h, &c, &who).await;
    h.engine
        .restore_object(&c, &id, VersionTarget::Ov(0), Some(1), &who)
        .await
        .unwrap();
    let packs = version_packs(&h, &c, &id).await;
    let [first_pack, second_pack, restored_pack] = &packs[..] else {
        panic!("three versions: {packs:?}")
    };
    assert_eq!(restored_pack, first_pack, "restored by reference");

    keep_last(&h, &c, 1, true).await;
    let report = h.engine.scrub(&scrub_now(&c, true)).await.unwrap();
    assert!(report.packs.deleted >= 1, "{report:?}");
    assert!(!stored(&h, second_pack).await, "nothing names v1's pack");
    assert!(stored(&h, restored_pack).await, "the restored version's pack stays");
    let latest = h.engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
    assert_eq!((latest.ov, latest.data), (2, data("first")));
    // And again: a second scrub finds nothing more to collect.
    let again = h.engine.scrub(&scrub_now(&c, true)).await.unwrap();
    assert_eq!((again.packs.dead, again.packs.deleted), (0, 0), "{again:?}");
}

/// A pack whose named members hold less than half its bytes is compacted by scrub: the named
/// envelopes move to a new pack, their versions are repointed, the old pack goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_compacts_a_mostly_dead_pack() {
    let (h, c, who) = setup(PackWrites::Together).await;
    // The biggest pack, and all but two of its items moved on (their first versions pruned with
    // their payloads).
    let (pack, members) = a_shared_pack(&h, &c, "n").await;
    let (kept, moved) = members.split_at(2);
    for id in moved {
        let data = json!({"moved": id.as_str()}).as_object().unwrap().clone();
        h.engine.update(&c, id, data, Some(0), &who).await.unwrap();
    }
    keep_last(&h, &c, 1, true).await;
    let scrub = scrub_now(&c, true);
    let report = h.engine.scrub(&scrub).await.unwrap();
    assert!(report.packs.compacted >= 1, "{report:?}");
    assert!(!stored(&h, &pack).await, "the old pack is gone");
    for id in kept {
        let r = h.engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        assert_eq!(r.data["n"].as_u64(), Some(id.as_str()[5..].parse().unwrap()));
        assert_ne!(r.payload().pack.unwrap().key, pack, "repointed");
    }
    h.engine.flush_ledger().await.unwrap();
    let report = h.engine.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(report.intact(), "{report:?}");
    // A rebuild from the buckets names where the bytes are now, not where the ledger saw them.
    let fresh = support::mongo_s3(together()).await;
    let rebuilt = h.over(fresh.meta.clone());
    rebuilt.rebuild(&Default::default(), &|_| {}).await.unwrap();
    for id in kept {
        let r = rebuilt.get_latest(&c, id, ReadOptions::default()).await.unwrap();
        assert_eq!(r.data["n"].as_u64(), Some(id.as_str()[5..].parse().unwrap()));
    }
}

/// The packed form of `retention::retention_never_deletes_a_payload_a_concurrent_restore_uses`:
/// compaction racing a restore by reference. The restore read a version's slot in a mostly dead
/// pack; scrub then compacts that pack and deletes it; the restore's append of the old slot,
/// however late, is refused (never a head naming a deleted pack), and a restore made afresh
/// names the new pack and reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_racing_a_restore_by_reference_strands_nothing() {
    let (h, c, who) = setup(PackWrites::Together).await;
    let (pack, members) = a_shared_pack(&h, &c, "race").await;
    // `kept` moves on once (its v0 stays in the pack, indexed); the others twice, and retention
    // keeping two versions prunes their v0 with its payload: the pack is mostly dead.
    let (kept, moved) = (&members[0], &members[1..]);
    h.engine.update(&c, kept, data("kept-1"), Some(0), &who).await.unwrap();
    for id in moved {
        h.engine.update(&c, id, data("1"), Some(0), &who).await.unwrap();
        h.engine.update(&c, id, data("2"), Some(1), &who).await.unwrap();
    }
    keep_last(&h, &c, 2, true).await;

    // A restore of `kept` to v0 reads v0's entry, and stalls before its append.
    let v0 = h.meta.version(&c, kept, 0).await.unwrap().unwrap();
    assert_eq!(v0.payload().pack.map(|p| p.key.as_str()), Some(pack.as_str()));
    let n = kept.as_str()[5..].parse::<u64>().unwrap();
    let stale = crate::conformance::stale_restore(&v0, 1);

    let report = h.engine.scrub(&scrub_now(&c, true)).await.unwrap();
    assert!(report.packs.compacted >= 1, "{report:?}");
    assert!(!stored(&h, &pack).await, "the old pack is gone");
    let appended = h
        .meta
        .append_by_reference(&c, vec![stale], chronos::engine::Timestamp::MAX)
        .await
        .unwrap();
    assert_eq!(appended, None, "a slot in a deleted pack is never committed");
    let latest = h.engine.get_latest(&c, kept, ReadOptions::default()).await.unwrap();
    assert_eq!((latest.ov, latest.data), (1, data("kept-1")));

    h.engine
        .restore_object(&c, kept, VersionTarget::Ov(0), Some(1), &who)
        .await
        .unwrap();
    let restored = h.engine.get_latest(&c, kept, ReadOptions::default()).await.unwrap();
    assert_eq!(restored.ov, 2);
    assert_eq!(restored.data["n"].as_u64(), Some(n));
    assert_ne!(
        restored.payload().pack.map(|p| p.key.clone()),
        Some(pack),
        "the new pack"
    );
}

/// A mostly dead pack whose live members only a retention manifest names (pruned with their
/// payloads kept) is left as it is: the manifest is not repointed, so a compacted copy would be
/// named by nothing and collected again, scrub after scrub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pack_a_manifest_names_is_not_compacted_again_and_again() {
    let (h, c, who) = setup(PackWrites::Together).await;
    let (pack, members) = a_shared_pack(&h, &c, "pinned").await;
    // Every member moves on; the first two are pruned keeping their payloads (a manifest names
    // their slot), the others with their payloads deleted.
    for (n, id) in members.iter().enumerate() {
        let data = json!({"moved": id.as_str()}).as_object().unwrap().clone();
        h.engine.update(&c, id, data, Some(0), &who).await.unwrap();
        let policy = chronos::engine::PrunePolicy {
            keep_last: Some(1),
            delete_payloads: n >= 2,
            ..Default::default()
        };
        let plan = h.engine.plan_item_prune(&c, id, &policy).await.unwrap().unwrap();
        h.engine.unindex_pruned(&plan).await.unwrap();
        h.engine.delete_pruned_payloads(plan).await.unwrap();
    }
    let packs = || async {
        let keys = all_keys(&h).await;
        keys.into_iter()
            .filter(|k| k.contains("chronos-packs/"))
            .collect::<Vec<_>>()
    };
    let before = packs().await;
    assert!(before.iter().any(|k| k.ends_with(&pack)));
    for round in 0..2 {
        let report = h.engine.scrub(&scrub_now(&c, true)).await.unwrap();
        assert_eq!(
            (report.packs.compacted, report.packs.pinned),
            (0, 1),
            "round {round}: {report:?}"
        );
        assert_eq!(packs().await, before, "round {round}: no pack written or deleted");
    }
    for id in &members[..2] {
        let v0 = h
            .engine
            .get_at(&c, id, VersionTarget::Ov(0), ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(v0.data["n"].as_u64(), Some(id.as_str()[5..].parse().unwrap()));
    }
}
