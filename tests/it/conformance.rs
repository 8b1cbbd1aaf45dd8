//! The conformance suite: every rule of the versioning core, checked against a backend pair.
//! `conformance_suite!(make)` instantiates each check as a test for one backend, where
//! `make(EngineSettings)` builds a fresh, empty [`Harness`] (sync or async).

use std::collections::BTreeMap;

use chronos::engine::{
    Attribution, CollectionName, Enrichment, Error, ItemId, ListOptions, Op, ReadOptions, State, VersionTarget,
};
use serde_json::{Map, Value, json};

use crate::support::Harness;

#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            create_and_read_latest, create_with_taken_id_fails, update_bumps_ov_and_cv,
            stale_expected_ov_conflicts, writes_to_missing_items_fail, delete_is_logical_and_hidden,
            version_reads_never_cross_items, as_of_reads_follow_time, history_is_ordered_and_paged,
            system_fields_cannot_be_injected, oversized_payloads_are_refused,
            cold_payloads_are_read_from_the_payload_store, a_payload_of_another_item_is_never_served,
            racing_writers_lose_cleanly, racing_creates_of_one_id_have_one_winner,
            cv_orders_all_writes_of_a_collection,
            list_filters_pages_and_travels_in_time, collection_maps_index_and_require,
            enrichment_merges_and_records_provenance, concurrent_enrichments_lose_nothing,
            restore_object_appends_the_old_version, restore_collection_plans_then_restores,
            counters_count_every_write_exactly_once, tiering_moves_cold_payloads_out_of_the_metadata_store,
            retention_prunes_the_index_but_old_versions_stay_readable, content_properties_live_in_the_content_store,
            content_references_name_exactly_their_own_object, idempotent_writes_happen_once, concurrent_retries_with_one_key_write_once,
            queued_writes_land_exactly_once, queue_claims_are_exclusive,
            restore_by_reference_copies_no_payload, writes_after_a_restore_by_reference_work,
            restore_by_reference_never_serves_another_items_data, retention_keeps_payloads_restored_versions_use,
            restore_during_concurrent_writes_overwrites_nothing,
            restore_after_retention_brings_back_pruned_versions,
            retention_never_deletes_a_payload_a_concurrent_restore_uses, counters_stay_true_after_retention,
            a_write_too_late_for_the_orphan_grace_is_not_committed);
    };
    (@tests $make:expr; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let settings = $crate::conformance::settings(stringify!($name));
            #[allow(clippy::redundant_closure_call)]
            let harness = $crate::conformance::ready(($make)(settings)).await;
            $crate::conformance::$name(&harness).await;
        }
    )*};
}

/// Settings per check: the cold-payload check keeps nothing inline.
pub fn settings(check: &str) -> chronos::engine::EngineSettings {
    let mut s = chronos::engine::EngineSettings::default();
    if check == "cold_payloads_are_read_from_the_payload_store" || check == "a_payload_of_another_item_is_never_served"
    {
        s.inline_max_bytes = 0;
    }
    if check == "collection_maps_index_and_require" {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                indexed_props: Some(vec!["kind".into(), "n".into()]),
                required_indexed: vec!["kind".into()],
                ..Default::default()
            },
        );
    }
    if check == "content_properties_live_in_the_content_store"
        || check == "content_references_name_exactly_their_own_object"
    {
        s.collection_maps.insert(
            "things".into(),
            chronos::engine::CollectionMap {
                content_props: [
                    ("photo".to_owned(), chronos::engine::ContentKind::Binary),
                    ("body".to_owned(), chronos::engine::ContentKind::Text),
                ]
                .into(),
                ..Default::default()
            },
        );
    }
    if check == "counters_count_every_write_exactly_once" || check == "counters_stay_true_after_retention" {
        s.counter_rules.insert(
            "things".into(),
            vec![chronos::engine::CounterRule {
                name: "big".into(),
                when: json!({"n": {"$gte": 5}}),
                on: vec![Op::Create, Op::Update],
            }],
        );
    }
    if check == "queued_writes_land_exactly_once" {
        s.queue = chronos::engine::QueueSettings {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(4),
            lease: std::time::Duration::from_secs(30),
        };
    }
    if check == "restore_during_concurrent_writes_overwrites_nothing" {
        // Small pages, so the restore and the writers interleave over many pages.
        s.restore_page = 7;
    }
    if check == "a_write_too_late_for_the_orphan_grace_is_not_committed" {
        // No time at all between a write id and its commit: every commit comes too late.
        s.orphan_grace = std::time::Duration::ZERO;
    }
    if check == "oversized_payloads_are_refused" {
        s.max_payload_bytes = 1000;
    }
    s
}

/// Lets the macro accept both sync and async harness constructors.
pub async fn ready(h: impl IntoHarness) -> Harness {
    h.into_harness().await
}

pub trait IntoHarness {
    fn into_harness(self) -> impl std::future::Future<Output = Harness>;
}
impl IntoHarness for Harness {
    async fn into_harness(self) -> Harness {
        self
    }
}
impl<F: std::future::Future<Output = Harness>> IntoHarness for F {
    async fn into_harness(self) -> Harness {
        self.await
    }
}

fn coll() -> CollectionName {
    "things".parse().unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn who() -> Attribution {
    Attribution::new("tester", "conformance")
}

const LATEST: ReadOptions = ReadOptions { include_deleted: false };
const WITH_DELETED: ReadOptions = ReadOptions { include_deleted: true };

pub async fn create_and_read_latest(h: &Harness) {
    let e = &h.engine;
    let data = obj(json!({"z": 1, "a": {"nested": [1, 2, {"x": null}]}, "s": "text"}));
    let (id, out) = e.create(&coll(), None, data.clone(), &who()).await.unwrap();
    assert_eq!(out.ov, 0);
    assert!(out.cv >= 1);
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.id, id);
    assert_eq!((r.ov, r.cv), (0, out.cv));
    assert_eq!(r.data, data);
    assert_eq!(r.data.keys().collect::<Vec<_>>(), ["z", "a", "s"], "key order is kept");
    assert_eq!(r.system.inserted_at, out.at);
    assert_eq!(r.system.updated_at, out.at);
    assert!(!r.system.deleted && r.system.deleted_at.is_none());
    assert_eq!(r.system.state, State::New);
    assert!(r.system.function_ids.is_empty());

    let chosen: ItemId = "order-42".parse().unwrap();
    let (id2, _) = e
        .create(&coll(), Some(chosen.clone()), obj(json!({"n": 2})), &who())
        .await
        .unwrap();
    assert_eq!(id2, chosen);
    assert_ne!(id, id2);
    assert_eq!(
        e.get_latest(&coll(), &chosen, LATEST).await.unwrap().data,
        obj(json!({"n": 2}))
    );
}

pub async fn create_with_taken_id_fails(h: &Harness) {
    let e = &h.engine;
    let id: ItemId = "dup".parse().unwrap();
    e.create(&coll(), Some(id.clone()), obj(json!({"v": 1})), &who())
        .await
        .unwrap();
    let err = e
        .create(&coll(), Some(id.clone()), obj(json!({"v": 2})), &who())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"v": 1}))
    );
}

pub async fn update_bumps_ov_and_cv(h: &Harness) {
    let e = &h.engine;
    let (id, c) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    let u1 = e
        .update(&coll(), &id, obj(json!({"v": 1})), Some(0), &who())
        .await
        .unwrap();
    assert_eq!(u1.ov, 1);
    assert!(u1.cv > c.cv);
    assert!(u1.at >= c.at);
    // Without an expected ov the last writer wins, still one version per write.
    let u2 = e
        .update(&coll(), &id, obj(json!({"v": 2})), None, &who())
        .await
        .unwrap();
    assert_eq!(u2.ov, 2);
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!((r.ov, r.cv), (2, u2.cv));
    assert_eq!(r.data, obj(json!({"v": 2})));
    assert_eq!(r.system.inserted_at, c.at, "insertedAt is the create's time");
    assert_eq!(r.system.updated_at, u2.at);
}

pub async fn stale_expected_ov_conflicts(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    e.update(&coll(), &id, obj(json!({"v": 1})), Some(0), &who())
        .await
        .unwrap();
    let err = e
        .update(&coll(), &id, obj(json!({"v": 9})), Some(0), &who())
        .await
        .unwrap_err();
    match err {
        Error::VersionConflict { expected, current, .. } => assert_eq!((expected, current), (0, 1)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let err = e.delete(&coll(), &id, Some(5), &who()).await.unwrap_err();
    assert!(matches!(err, Error::VersionConflict { current: 1, .. }), "{err:?}");
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"v": 1}))
    );
}

pub async fn writes_to_missing_items_fail(h: &Harness) {
    let e = &h.engine;
    let ghost: ItemId = "ghost".parse().unwrap();
    assert!(matches!(
        e.update(&coll(), &ghost, obj(json!({})), None, &who()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.delete(&coll(), &ghost, None, &who()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.get_latest(&coll(), &ghost, WITH_DELETED).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.get_version(&coll(), &ghost, 0, WITH_DELETED).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.history(&coll(), &ghost, None, 10, WITH_DELETED).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn delete_is_logical_and_hidden(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"keep": "me"})), &who())
        .await
        .unwrap();
    let d = e
        .delete(&coll(), &id, Some(0), &Attribution::new("alice", "gdpr"))
        .await
        .unwrap();
    assert_eq!(d.ov, 1);

    assert!(matches!(
        e.get_latest(&coll(), &id, LATEST).await,
        Err(Error::NotFound(_))
    ));
    let r = e.get_latest(&coll(), &id, WITH_DELETED).await.unwrap();
    assert!(r.system.deleted);
    assert_eq!(r.system.deleted_at, Some(d.at));
    assert_eq!(
        r.data,
        obj(json!({"keep": "me"})),
        "a logical delete keeps the last data"
    );

    // The delete version is hidden unless asked for; the earlier version stays readable.
    assert!(matches!(
        e.get_version(&coll(), &id, 1, LATEST).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        e.get_version(&coll(), &id, 1, WITH_DELETED)
            .await
            .unwrap()
            .system
            .deleted
    );
    assert_eq!(
        e.get_version(&coll(), &id, 0, LATEST).await.unwrap().data,
        obj(json!({"keep": "me"}))
    );
    assert!(matches!(
        e.get_as_of(&coll(), &id, d.at, LATEST).await,
        Err(Error::NotFound(_))
    ));

    assert!(matches!(
        e.history(&coll(), &id, None, 10, LATEST).await,
        Err(Error::NotFound(_))
    ));
    let hist = e.history(&coll(), &id, None, 10, WITH_DELETED).await.unwrap();
    assert_eq!(hist.iter().map(|v| v.op).collect::<Vec<_>>(), [Op::Create, Op::Delete]);
    assert_eq!(hist[1].actor.as_deref(), Some("alice"));
    assert_eq!(hist[1].reason.as_deref(), Some("gdpr"));

    // A deleted item can't be updated or deleted again, and its id stays taken.
    assert!(matches!(
        e.update(&coll(), &id, obj(json!({})), None, &who()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.delete(&coll(), &id, None, &who()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.create(&coll(), Some(id.clone()), obj(json!({})), &who()).await,
        Err(Error::AlreadyExists(_))
    ));
}

pub async fn version_reads_never_cross_items(h: &Harness) {
    // The original's getItem({ov}) ignored the item id. Two items with the same ovs must never mix.
    let e = &h.engine;
    let (a, _) = e
        .create(&coll(), None, obj(json!({"item": "a", "n": 0})), &who())
        .await
        .unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"item": "b", "n": 0})), &who())
        .await
        .unwrap();
    for n in 1..=3 {
        e.update(&coll(), &a, obj(json!({"item": "a", "n": n})), None, &who())
            .await
            .unwrap();
        e.update(&coll(), &b, obj(json!({"item": "b", "n": n})), None, &who())
            .await
            .unwrap();
    }
    for ov in 0..=3u64 {
        let ra = e.get_version(&coll(), &a, ov, LATEST).await.unwrap();
        let rb = e.get_version(&coll(), &b, ov, LATEST).await.unwrap();
        assert_eq!((ra.id.clone(), ra.ov), (a.clone(), ov));
        assert_eq!(ra.data, obj(json!({"item": "a", "n": ov})));
        assert_eq!(rb.data, obj(json!({"item": "b", "n": ov})));
    }
    assert!(matches!(
        e.get_version(&coll(), &a, 4, LATEST).await,
        Err(Error::NotFound(_))
    ));
    // Another collection with the same ids is another world.
    let other: CollectionName = "others".parse().unwrap();
    assert!(matches!(
        e.get_version(&other, &a, 0, LATEST).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn as_of_reads_follow_time(h: &Harness) {
    let e = &h.engine;
    let (a, c) = e.create(&coll(), None, obj(json!({"n": 0})), &who()).await.unwrap();
    // Another item written in between must never be what an as-of read of `a` returns.
    e.create(&coll(), None, obj(json!({"other": true})), &who())
        .await
        .unwrap();
    let mut outcomes = vec![c];
    for n in 1..=4 {
        outcomes.push(e.update(&coll(), &a, obj(json!({"n": n})), None, &who()).await.unwrap());
    }
    for o in &outcomes {
        // The latest version at or before that instant (several writes may share a millisecond).
        let expected = outcomes.iter().filter(|x| x.at <= o.at).map(|x| x.ov).max().unwrap();
        let r = e.get_as_of(&coll(), &a, o.at, LATEST).await.unwrap();
        assert_eq!(r.id, a);
        assert_eq!(r.ov, expected);
        assert_eq!(r.data, obj(json!({"n": expected})));
    }
    let before = c.at.checked_sub(jiff::SignedDuration::from_millis(1)).unwrap();
    assert!(matches!(
        e.get_as_of(&coll(), &a, before, LATEST).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn history_is_ordered_and_paged(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"n": 0})), &Attribution::new("bob", "first"))
        .await
        .unwrap();
    for n in 1..=6 {
        e.update(&coll(), &id, obj(json!({"n": n})), Some(n - 1), &who())
            .await
            .unwrap();
    }
    let all = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.ov).collect::<Vec<_>>(),
        (0..=6).collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].cv < w[1].cv && w[0].at <= w[1].at));
    assert_eq!(all[0].op, Op::Create);
    assert!(all[1..].iter().all(|v| v.op == Op::Update));
    assert_eq!(
        (all[0].actor.as_deref(), all[0].reason.as_deref()),
        (Some("bob"), Some("first"))
    );
    let page1 = e.history(&coll(), &id, None, 3, LATEST).await.unwrap();
    let page2 = e.history(&coll(), &id, Some(page1[2].ov), 3, LATEST).await.unwrap();
    let page3 = e.history(&coll(), &id, Some(page2[2].ov), 3, LATEST).await.unwrap();
    let paged: Vec<u64> = page1.iter().chain(&page2).chain(&page3).map(|v| v.ov).collect();
    assert_eq!(paged, (0..=6).collect::<Vec<_>>());
    assert!(matches!(
        e.history(&coll(), &id, None, 0, LATEST).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn system_fields_cannot_be_injected(h: &Harness) {
    let e = &h.engine;
    let forged = obj(json!({"v": 1, "_system": {"deleted": true, "state": "processed"}}));
    let (id, _) = e.create(&coll(), None, forged, &who()).await.unwrap();
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.data, obj(json!({"v": 1})));
    assert!(!r.system.deleted);
    assert_eq!(r.system.state, State::New);
}

pub async fn oversized_payloads_are_refused(h: &Harness) {
    let e = &h.engine;
    let big = obj(json!({"blob": "x".repeat(2000)}));
    let err = e.create(&coll(), None, big.clone(), &who()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 1000, .. }), "{err:?}");
    let (id, _) = e.create(&coll(), None, obj(json!({"small": 1})), &who()).await.unwrap();
    assert!(matches!(
        e.update(&coll(), &id, big, None, &who()).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().ov,
        0,
        "nothing was written"
    );
    assert_eq!(h.payloads.list("", None, 100).await.unwrap().len(), 1);
}

pub async fn cold_payloads_are_read_from_the_payload_store(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"cold": [1, 2, 3]})), &who())
        .await
        .unwrap();
    e.update(&coll(), &id, obj(json!({"cold": [4]})), Some(0), &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"cold": [4]}))
    );
    e.delete(&coll(), &id, Some(1), &who()).await.unwrap();
    let r = e.get_latest(&coll(), &id, WITH_DELETED).await.unwrap();
    assert_eq!(
        r.data,
        obj(json!({"cold": [4]})),
        "delete carried the cold data forward"
    );
    let keys = h.payloads.list(&format!("things/{id}/"), None, 100).await.unwrap();
    assert_eq!(keys.len(), 3, "one payload per version: {keys:?}");
}

pub async fn a_payload_of_another_item_is_never_served(h: &Harness) {
    let e = &h.engine;
    let (a, _) = e
        .create(&coll(), None, obj(json!({"secret": "a"})), &who())
        .await
        .unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"secret": "b"})), &who())
        .await
        .unwrap();
    let key_a = h
        .payloads
        .list(&format!("things/{a}/"), None, 10)
        .await
        .unwrap()
        .remove(0);
    let key_b = h
        .payloads
        .list(&format!("things/{b}/"), None, 10)
        .await
        .unwrap()
        .remove(0);
    // Simulate a mix-up in the bucket: a's key now holds b's payload.
    let body_b = h.payloads.get(&key_b).await.unwrap().unwrap();
    h.payloads.put(&key_a, body_b).await.unwrap();
    let err = e.get_latest(&coll(), &a, LATEST).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "served instead of refused: {err:?}");
    let err = e.get_version(&coll(), &a, 0, LATEST).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    h.payloads.delete(&key_a).await.unwrap();
    assert!(matches!(
        e.get_latest(&coll(), &a, LATEST).await,
        Err(Error::Corrupt(_))
    ));
}

/// 8 writers create the same id at once, from one engine and from a second one on the same
/// stores: exactly one wins, every other is told the id is taken (never a backend error), and
/// the item holds the winner's data.
pub async fn racing_creates_of_one_id_have_one_winner(h: &Harness) {
    let id: ItemId = "contested".parse().unwrap();
    let engines = [h.engine.clone(), h.replica()];
    let results = futures::future::join_all((0..8u64).map(|w| {
        let e = engines[w as usize % 2].clone();
        let id = id.clone();
        tokio::spawn(async move { (w, e.create(&coll(), Some(id), obj(json!({"w": w})), &who()).await) })
    }))
    .await;
    let mut winners = Vec::new();
    for r in results {
        match r.expect("writer task") {
            (w, Ok(_)) => winners.push(w),
            (_, Err(Error::AlreadyExists(_))) => {}
            (w, Err(other)) => panic!("writer {w}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let latest = h.engine.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(latest.data["w"], winners[0]);
    assert_eq!(h.engine.history(&coll(), &id, None, 10, LATEST).await.unwrap().len(), 1);
}

/// 16 writers update one item with expected-ov-and-retry: exactly one wins each ov, the ov
/// sequence is gapless, and every version holds what its writer sent.
pub async fn racing_writers_lose_cleanly(h: &Harness) {
    const WRITERS: u64 = 16;
    const EACH: u64 = 4;
    let (id, _) = h
        .engine
        .create(&coll(), None, obj(json!({"w": -1})), &who())
        .await
        .unwrap();
    // Spawned, so the writers run on several threads at once.
    let results = futures::future::join_all((0..WRITERS).map(|w| {
        let e = h.engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0u64;
            let mut seq = 0;
            while seq < EACH {
                let current = e.get_latest(&coll(), &id, LATEST).await.unwrap().ov;
                let data = obj(json!({"w": w, "seq": seq}));
                match e.update(&coll(), &id, data.clone(), Some(current), &who()).await {
                    Ok(o) => {
                        assert_eq!(o.ov, current + 1);
                        won.push((o.ov, data));
                        seq += 1;
                    }
                    Err(Error::VersionConflict { .. } | Error::Contended(_)) => conflicts += 1,
                    Err(other) => panic!("writer {w}: unexpected {other:?}"),
                }
            }
            (won, conflicts)
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("writer task"))
    .collect::<Vec<_>>();

    let mut by_ov: BTreeMap<u64, Map<String, Value>> = BTreeMap::new();
    for (won, _) in &results {
        for (ov, data) in won {
            assert!(
                by_ov.insert(*ov, data.clone()).is_none(),
                "two writers were told they won ov {ov}"
            );
        }
    }
    let total = WRITERS * EACH;
    assert_eq!(by_ov.len() as u64, total);
    assert!(
        results.iter().map(|(_, c)| c).sum::<u64>() > 0,
        "the writers never actually raced"
    );
    let latest = h.engine.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(latest.ov, total, "final ov equals the number of successful updates");

    let mut history = Vec::new();
    let mut after = None;
    loop {
        let page = h.engine.history(&coll(), &id, after, 1000, LATEST).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.ov);
        history.extend(page);
    }
    assert_eq!(
        history.iter().map(|v| v.ov).collect::<Vec<_>>(),
        (0..=total).collect::<Vec<_>>(),
        "gapless"
    );
    for (ov, data) in &by_ov {
        let r = h.engine.get_version(&coll(), &id, *ov, LATEST).await.unwrap();
        assert_eq!(&r.data, data, "version {ov} holds what its writer sent");
    }
    // Losers left nothing behind: exactly one payload per version.
    let keys = h.payloads.list(&format!("things/{id}/"), None, 1000).await.unwrap();
    assert_eq!(keys.len() as u64, total + 1, "orphaned payloads: {keys:?}");
}

pub async fn cv_orders_all_writes_of_a_collection(h: &Harness) {
    let outcomes = futures::future::join_all((0..20).map(|i| {
        let e = h.engine.clone();
        tokio::spawn(async move {
            let (id, c) = e.create(&coll(), None, obj(json!({"i": i})), &who()).await.unwrap();
            let u = e
                .update(&coll(), &id, obj(json!({"i": i, "u": 1})), Some(0), &who())
                .await
                .unwrap();
            vec![c.cv, u.cv]
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("writer task"))
    .collect::<Vec<_>>();
    let mut cvs: Vec<u64> = outcomes.iter().flatten().copied().collect();
    assert!(
        outcomes.iter().all(|o| o[0] < o[1]),
        "cv increases along each item's history"
    );
    cvs.sort();
    let before = cvs.len();
    cvs.dedup();
    assert_eq!(cvs.len(), before, "every write has its own cv");
}

fn ids(page: &chronos::engine::ListPage) -> Vec<String> {
    page.records.iter().map(|r| r.id.to_string()).collect()
}

fn list(filter: Value, limit: usize) -> ListOptions {
    ListOptions {
        filter,
        limit,
        ..Default::default()
    }
}

pub async fn list_filters_pages_and_travels_in_time(h: &Harness) {
    let e = &h.engine;
    for i in 0..25u64 {
        let id: ItemId = format!("item-{i:02}").parse().unwrap();
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let data = obj(json!({"n": i, "kind": kind, "tags": [format!("t{}", i % 3)], "big": {"nested": true}}));
        e.create(&coll(), Some(id), data, &who()).await.unwrap();
    }
    let before_changes = e
        .get_latest(&coll(), &"item-24".parse().unwrap(), LATEST)
        .await
        .unwrap()
        .system
        .updated_at;
    // Versions carry millisecond times: let the clock pass T so the changes below come after it.
    while chronos::engine::model::now() <= before_changes {
        tokio::task::yield_now().await;
    }
    e.delete(&coll(), &"item-00".parse().unwrap(), None, &who())
        .await
        .unwrap();
    e.update(
        &coll(),
        &"item-02".parse().unwrap(),
        obj(json!({"n": 2, "kind": "odd"})),
        None,
        &who(),
    )
    .await
    .unwrap();

    // Equality, paged: the pages join up to exactly the matching ids, in order.
    let mut seen = Vec::new();
    let mut opts = list(json!({"kind": "even"}), 4);
    loop {
        let page = e.list(&coll(), &opts).await.unwrap();
        assert!(page.records.len() <= 4);
        assert!(page.records.iter().all(|r| r.data["kind"] == "even"));
        seen.extend(ids(&page));
        match page.next_after_id {
            Some(next) => opts.after_id = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (4..25).step_by(2).map(|i| format!("item-{i:02}")).collect();
    assert_eq!(seen, expected, "deleted item-00 and changed item-02 are excluded");

    let page = e
        .list(&coll(), &list(json!({"n": {"$gte": 10, "$lt": 14}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-10", "item-11", "item-12", "item-13"]);
    let page = e
        .list(
            &coll(),
            &list(json!({"n": {"$in": [1, 3, 99]}, "kind": {"$ne": "even"}}), 100),
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-01", "item-03"]);
    let page = e
        .list(&coll(), &list(json!({"tags": "t0", "n": {"$nin": [3, 6, 9]}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-12", "item-15", "item-18", "item-21", "item-24"]);
    let page = e
        .list(&coll(), &list(json!({"tags": {"$exists": false}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-02"], "item-02 lost its tags");

    let mut desc = list(Value::Null, 3);
    desc.descending = true;
    let page = e.list(&coll(), &desc).await.unwrap();
    assert_eq!(ids(&page), ["item-24", "item-23", "item-22"]);
    desc.after_id = page.next_after_id;
    assert_eq!(
        ids(&e.list(&coll(), &desc).await.unwrap()),
        ["item-21", "item-20", "item-19"]
    );

    let mut with_deleted = list(json!({"n": 0}), 10);
    assert!(e.list(&coll(), &with_deleted).await.unwrap().records.is_empty());
    with_deleted.include_deleted = true;
    let page = e.list(&coll(), &with_deleted).await.unwrap();
    assert_eq!(ids(&page), ["item-00"]);
    assert!(page.records[0].system.deleted);

    let mut projected = list(json!({"n": 5}), 10);
    projected.fields = Some(vec!["kind".into()]);
    let page = e.list(&coll(), &projected).await.unwrap();
    assert_eq!(page.records[0].data, obj(json!({"kind": "odd"})));

    // As of a time before the delete and the update: item-00 and item-02 as they were.
    let mut past = list(json!({"kind": "even", "n": {"$lte": 4}}), 10);
    past.at = Some(before_changes);
    let page = e.list(&coll(), &past).await.unwrap();
    assert_eq!(ids(&page), ["item-00", "item-02", "item-04"]);
    assert_eq!(page.records[1].data["kind"], "even");
    assert_eq!(page.records[1].ov, 0);

    for bad in [
        json!({"$where": "true"}),
        json!({"n": {"$regex": "1"}}),
        json!({"n": {"$gt": [1]}}),
    ] {
        let err = e.list(&coll(), &list(bad.clone(), 10)).await.unwrap_err();
        assert!(matches!(err, Error::Validation { .. }), "{bad}: {err:?}");
    }
    assert!(matches!(
        e.list(&coll(), &list(Value::Null, 1001)).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn collection_maps_index_and_require(h: &Harness) {
    let e = &h.engine;
    let err = e.create(&coll(), None, obj(json!({"n": 1})), &who()).await.unwrap_err();
    match err {
        Error::Validation { reason, .. } => assert!(reason.contains("kind"), "{reason}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let err = e
        .create(&coll(), None, obj(json!({"kind": {"x": 1}})), &who())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
    let (a, _) = e
        .create(&coll(), None, obj(json!({"kind": "a", "n": 1, "other": 5})), &who())
        .await
        .unwrap();
    e.create(&coll(), None, obj(json!({"kind": "b", "n": 2})), &who())
        .await
        .unwrap();
    let page = e.list(&coll(), &list(json!({"kind": "a"}), 10)).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, a);
    assert_eq!(page.records[0].data["other"], 5, "unindexed data is still stored");
    let err = e.list(&coll(), &list(json!({"other": 5}), 10)).await.unwrap_err();
    assert!(err.to_string().contains("not an indexed property"), "{err}");
}

fn enrichment(function_id: &str) -> Enrichment {
    Enrichment {
        function_id: Some(function_id.into()),
        expected_ov: None,
    }
}

pub async fn enrichment_merges_and_records_provenance(h: &Harness) {
    let e = &h.engine;
    let base =
        obj(json!({"name": "n", "tags": ["a"], "addr": {"city": "X", "zip": "1"}, "people": [{"id": "p1", "age": 1}]}));
    let (id, _) = e.create(&coll(), None, base, &who()).await.unwrap();
    let patches = [
        obj(
            json!({"tags": ["b", "a"], "addr": {"zip": null, "street": "S"}, "people": [{"id": "p1", "age": 2}, {"id": "p2"}]}),
        ),
        obj(json!({"score": 7})),
    ];
    let out = e
        .enrich(&coll(), &id, &patches, &enrichment("geo"), &who())
        .await
        .unwrap();
    assert_eq!(out.ov, 1, "one version per call, however many patches");
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(
        r.data,
        obj(
            json!({"name": "n", "tags": ["a", "b"], "addr": {"city": "X", "zip": null, "street": "S"},
                   "people": [{"id": "p1", "age": 2}, {"id": "p2"}], "score": 7})
        )
    );
    assert_eq!(r.system.function_ids, ["geo"]);
    // Re-applying the same patches changes no data but is still a version; functionIds stay a set.
    e.enrich(&coll(), &id, &patches, &enrichment("geo"), &who())
        .await
        .unwrap();
    e.enrich(&coll(), &id, &[obj(json!({"x": 1}))], &enrichment("ner"), &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.ov, 3);
    assert_eq!(r.system.function_ids, ["geo", "ner"]);
    let v2 = e.get_version(&coll(), &id, 2, LATEST).await.unwrap();
    assert_eq!(v2.system.function_ids, ["geo"], "each version records its provenance");
    // A plain update keeps the provenance.
    e.update(&coll(), &id, obj(json!({"replaced": true})), None, &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().system.function_ids,
        ["geo", "ner"]
    );

    let stale = Enrichment {
        function_id: None,
        expected_ov: Some(0),
    };
    assert!(matches!(
        e.enrich(&coll(), &id, &patches, &stale, &who()).await,
        Err(Error::VersionConflict { current: 4, .. })
    ));
    assert!(matches!(
        e.enrich(&coll(), &id, &[], &stale, &who()).await,
        Err(Error::Validation { .. })
    ));
    e.delete(&coll(), &id, None, &who()).await.unwrap();
    assert!(matches!(
        e.enrich(&coll(), &id, &patches, &enrichment("geo"), &who()).await,
        Err(Error::NotFound(_))
    ));
}

/// Enrichments without an expected ov race, yet none of their additions is lost.
pub async fn concurrent_enrichments_lose_nothing(h: &Harness) {
    let (id, _) = h
        .engine
        .create(&coll(), None, obj(json!({"seen": []})), &who())
        .await
        .unwrap();
    let tasks = (0..8).map(|w| {
        let e = h.engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                let patch = obj(json!({"seen": [format!("{w}-{i}")]}));
                e.enrich(&coll(), &id, &[patch], &enrichment(&format!("f{w}")), &who())
                    .await
                    .unwrap();
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let r = h.engine.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(r.ov, 24);
    let mut seen: Vec<String> = r.data["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..8).flat_map(|w| (0..3).map(move |i| format!("{w}-{i}"))).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(r.system.function_ids.len(), 8);
}

pub async fn restore_object_appends_the_old_version(h: &Harness) {
    let e = &h.engine;
    let (id, first) = e
        .create(&coll(), None, obj(json!({"v": "original"})), &who())
        .await
        .unwrap();
    // Versions carry millisecond times: let the clock pass the create's before changing.
    while chronos::engine::model::now() <= first.at {
        tokio::task::yield_now().await;
    }
    e.update(&coll(), &id, obj(json!({"v": "changed"})), Some(0), &who())
        .await
        .unwrap();
    let r = e
        .restore_object(
            &coll(),
            &id,
            VersionTarget::Ov(0),
            Some(1),
            &Attribution::new("ops", "oops"),
        )
        .await
        .unwrap();
    assert_eq!(r.ov, 2, "restore appends");
    let latest = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!(latest.data, obj(json!({"v": "original"})));
    let hist = e.history(&coll(), &id, None, 10, LATEST).await.unwrap();
    assert_eq!(
        hist.iter().map(|v| v.op).collect::<Vec<_>>(),
        [Op::Create, Op::Update, Op::Restore]
    );
    assert_eq!(
        e.get_version(&coll(), &id, 1, LATEST).await.unwrap().data,
        obj(json!({"v": "changed"})),
        "history untouched"
    );

    // Restoring a deleted item undeletes it; by time works too.
    e.delete(&coll(), &id, Some(2), &who()).await.unwrap();
    let r = e
        .restore_object(&coll(), &id, VersionTarget::At(first.at), None, &who())
        .await
        .unwrap();
    assert_eq!(r.ov, 4);
    let latest = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert!(!latest.system.deleted);
    assert_eq!(latest.data, obj(json!({"v": "original"})));

    assert!(
        matches!(
            e.restore_object(&coll(), &id, VersionTarget::Ov(3), None, &who()).await,
            Err(Error::Validation { .. })
        ),
        "a delete version is no target"
    );
    assert!(matches!(
        e.restore_object(&coll(), &id, VersionTarget::Ov(99), None, &who())
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.restore_object(&coll(), &id, VersionTarget::Ov(0), Some(0), &who())
            .await,
        Err(Error::VersionConflict { .. })
    ));
}

pub async fn restore_collection_plans_then_restores(h: &Harness) {
    use chronos::engine::{HistoryPoint, RestoreCounts};
    let e = &h.engine;
    let id = |s: &str| -> ItemId { s.parse().unwrap() };
    for name in ["a", "b", "c", "e"] {
        e.create(&coll(), Some(id(name)), obj(json!({"name": name, "v": 0})), &who())
            .await
            .unwrap();
    }
    e.delete(&coll(), &id("e"), None, &who()).await.unwrap();
    let target = e.get_latest(&coll(), &id("e"), WITH_DELETED).await.unwrap();
    let point = HistoryPoint::Cv(target.cv);
    // After the target: a changed, b deleted, d created, e undeleted.
    e.update(&coll(), &id("a"), obj(json!({"name": "a", "v": 1})), None, &who())
        .await
        .unwrap();
    e.delete(&coll(), &id("b"), None, &who()).await.unwrap();
    e.create(&coll(), Some(id("d")), obj(json!({"name": "d"})), &who())
        .await
        .unwrap();
    e.restore_object(&coll(), &id("e"), VersionTarget::Ov(0), None, &who())
        .await
        .unwrap();

    let expected = RestoreCounts {
        examined: 5,
        restored: 2,
        deleted: 2,
        unchanged: 1,
    };
    let mut calls = Vec::new();
    let plan = e
        .restore_collection(&coll(), point, true, &who(), |c, total| calls.push((c.examined, total)))
        .await
        .unwrap();
    assert_eq!(plan, expected);
    assert_eq!(calls.last(), Some(&(5, 5)), "progress reports done and total");
    assert_eq!(
        e.get_latest(&coll(), &id("a"), LATEST).await.unwrap().data["v"],
        1,
        "a dry run writes nothing"
    );

    // Page by page, as a resumable job would.
    let mut sums = RestoreCounts::default();
    let mut after = None;
    loop {
        let page = e
            .restore_collection_page(&coll(), point, after, 2, false, &who())
            .await
            .unwrap();
        sums.add(&page.counts);
        match page.next_after_id {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(sums, expected);
    assert_eq!(
        e.get_latest(&coll(), &id("a"), LATEST).await.unwrap().data,
        obj(json!({"name": "a", "v": 0}))
    );
    let b = e.get_latest(&coll(), &id("b"), LATEST).await.unwrap();
    assert_eq!(
        (b.data["name"].as_str(), b.ov),
        (Some("b"), 2),
        "b came back as a new version"
    );
    assert!(
        matches!(e.get_latest(&coll(), &id("d"), LATEST).await, Err(Error::NotFound(_))),
        "d did not exist yet"
    );
    assert!(
        matches!(e.get_latest(&coll(), &id("e"), LATEST).await, Err(Error::NotFound(_))),
        "e was deleted then"
    );
    assert_eq!(
        e.get_latest(&coll(), &id("c"), LATEST).await.unwrap().ov,
        0,
        "c untouched"
    );
    let a_hist = e.history(&coll(), &id("a"), None, 10, LATEST).await.unwrap();
    assert_eq!(a_hist.last().unwrap().op, Op::Restore, "append-only");

    // Running it again (a resumed or repeated job) does nothing twice.
    let again = e
        .restore_collection(&coll(), point, false, &who(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        again,
        RestoreCounts {
            examined: 5,
            restored: 0,
            deleted: 0,
            unchanged: 5
        }
    );
}

/// A concurrent mixed workload, then totals compared with what the version histories show.
pub async fn counters_count_every_write_exactly_once(h: &Harness) {
    let tasks = (0..8u64).map(|w| {
        let e = h.engine.clone();
        tokio::spawn(async move {
            for i in 0..6u64 {
                let (id, _) = e
                    .create(&coll(), None, obj(json!({"n": i, "w": w})), &who())
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    e.update(&coll(), &id, obj(json!({"n": i + 3})), Some(0), &who())
                        .await
                        .unwrap();
                }
                if i % 3 == 0 {
                    e.delete(&coll(), &id, None, &who()).await.unwrap();
                    e.restore_object(&coll(), &id, VersionTarget::Ov(0), None, &who())
                        .await
                        .unwrap();
                }
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let totals = h.engine.totals(&coll()).await.unwrap();

    // What the histories say.
    let (mut ops, mut big) = (std::collections::HashMap::<Op, u64>::new(), 0u64);
    let mut opts = ListOptions {
        limit: 1000,
        include_deleted: true,
        ..Default::default()
    };
    let mut items = 0;
    loop {
        let page = h.engine.list(&coll(), &opts).await.unwrap();
        for r in &page.records {
            items += 1;
            for v in h
                .engine
                .history(&coll(), &r.id, None, 1000, WITH_DELETED)
                .await
                .unwrap()
            {
                *ops.entry(v.op).or_default() += 1;
                let n = v.meta.get("n").and_then(Value::as_u64).unwrap_or(0);
                if matches!(v.op, Op::Create | Op::Update) && n >= 5 {
                    big += 1;
                }
            }
        }
        match page.next_after_id {
            Some(next) => opts.after_id = Some(next),
            None => break,
        }
    }
    assert_eq!(items, 48);
    assert_eq!(totals.created, 48);
    assert_eq!(
        (totals.created, totals.updated, totals.deleted, totals.restored),
        (ops[&Op::Create], ops[&Op::Update], ops[&Op::Delete], ops[&Op::Restore])
    );
    assert_eq!((totals.updated, totals.deleted, totals.restored), (24, 16, 16));
    assert_eq!(totals.rules["big"], big);
    assert!(big > 0);

    let mark = h.engine.reset_totals(&coll()).await.unwrap();
    let after = h.engine.totals(&coll()).await.unwrap();
    assert_eq!((after.created, after.updated, after.since_cv), (0, 0, mark));
    assert_eq!(after.rules["big"], 0);
    h.engine
        .create(&coll(), None, obj(json!({"n": 9})), &who())
        .await
        .unwrap();
    let after = h.engine.totals(&coll()).await.unwrap();
    assert_eq!((after.created, after.rules["big"]), (1, 1));
}

pub async fn tiering_moves_cold_payloads_out_of_the_metadata_store(h: &Harness) {
    let e = &h.engine;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, _) = e
            .create(&coll(), None, obj(json!({"i": i, "text": "x".repeat(2000)})), &who())
            .await
            .unwrap();
        ids.push(id);
    }
    let last = e.get_latest(&coll(), &ids[2], LATEST).await.unwrap().system.updated_at;
    // The TTL is measured in milliseconds: let the clock pass the last write.
    while chronos::engine::model::now() <= last {
        tokio::task::yield_now().await;
    }
    let recent = e.mark_processed_by_ttl(&coll(), 1.0, false, |_| {}).await.unwrap();
    assert_eq!(recent.processed, 0, "nothing is an hour old");

    let plan = e.mark_processed_by_ttl(&coll(), 0.0, true, |_| {}).await.unwrap();
    assert_eq!((plan.processed, plan.dry_run), (3, true));
    assert_eq!(plan.bytes_after, plan.bytes_before);
    assert_eq!(
        e.get_latest(&coll(), &ids[0], LATEST).await.unwrap().system.state,
        State::New
    );

    let mut seen = Vec::new();
    let done = e
        .mark_processed_by_ttl(&coll(), 0.0, false, |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(done.processed, 3);
    println!("tiering report: {done:?}");
    assert_eq!(seen.last(), Some(&3));
    assert!(
        done.bytes_per_item_after + 2000 <= done.bytes_per_item_before,
        "the inline copy left the metadata store: {done:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = e.get_latest(&coll(), id, LATEST).await.unwrap();
        assert_eq!(r.system.state, State::Processed);
        assert_eq!(r.data["i"], i, "read back from the payload store");
    }
    assert_eq!(
        e.mark_processed_by_ttl(&coll(), 0.0, false, |_| {})
            .await
            .unwrap()
            .processed,
        0
    );

    // A write makes the item hot again; one item can be processed on demand.
    e.update(&coll(), &ids[0], obj(json!({"i": 0, "again": true})), None, &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &ids[0], LATEST).await.unwrap();
    assert_eq!((r.system.state, r.data["again"].as_bool()), (State::New, Some(true)));
    assert!(e.mark_item_processed(&coll(), &ids[0]).await.unwrap());
    assert!(
        !e.mark_item_processed(&coll(), &ids[0]).await.unwrap(),
        "already processed"
    );
    assert_eq!(
        e.get_latest(&coll(), &ids[0], LATEST).await.unwrap().data["again"],
        true
    );
    assert!(matches!(
        e.mark_item_processed(&coll(), &"ghost".parse().unwrap()).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn retention_prunes_the_index_but_old_versions_stay_readable(h: &Harness) {
    use chronos::engine::PrunePolicy;
    let e = &h.engine;
    let (a, first) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    // Versions carry millisecond times: keep them distinct so as-of reads have one answer.
    let mut last = first.at;
    for v in 1..=5 {
        while chronos::engine::model::now() <= last {
            tokio::task::yield_now().await;
        }
        last = e
            .update(&coll(), &a, obj(json!({"v": v})), None, &who())
            .await
            .unwrap()
            .at;
    }
    let (b, _) = e.create(&coll(), None, obj(json!({"v": "b"})), &who()).await.unwrap();
    let keep2 = keep_last(2);

    let plan = e.prune_versions(&coll(), &keep2, true).await.unwrap();
    assert_eq!((plan.items_examined, plan.versions_pruned), (2, 4));
    assert_eq!(
        e.history(&coll(), &a, None, 100, LATEST).await.unwrap().len(),
        6,
        "a dry run prunes nothing"
    );

    let done = e.prune_versions(&coll(), &keep2, false).await.unwrap();
    assert_eq!(done.versions_pruned, 4);
    let left: Vec<u64> = e
        .history(&coll(), &a, None, 100, LATEST)
        .await
        .unwrap()
        .iter()
        .map(|v| v.ov)
        .collect();
    assert_eq!(left, [4, 5], "the index keeps the last two");
    assert_eq!(
        e.history(&coll(), &b, None, 100, LATEST).await.unwrap().len(),
        1,
        "a single version stays"
    );
    for ov in 0..=5u64 {
        let r = e.get_version(&coll(), &a, ov, LATEST).await.unwrap();
        assert_eq!(
            (r.ov, r.data["v"].as_u64()),
            (ov, Some(ov)),
            "pruned versions stay readable"
        );
    }
    let r = e.get_as_of(&coll(), &a, first.at, LATEST).await.unwrap();
    assert_eq!(r.ov, 0, "as-of reads reach pruned versions too");
    assert_eq!(
        e.prune_versions(&coll(), &keep2, false).await.unwrap().versions_pruned,
        0,
        "idempotent"
    );

    // By age: everything but the latest is older than 0 days.
    let by_age = PrunePolicy {
        max_age_days: Some(0.0),
        ..Default::default()
    };
    assert_eq!(
        e.prune_versions(&coll(), &by_age, false).await.unwrap().versions_pruned,
        1
    );
    assert_eq!(e.get_version(&coll(), &a, 4, LATEST).await.unwrap().data["v"], 4);
    assert!(matches!(
        e.prune_versions(&coll(), &PrunePolicy::default(), false).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn content_properties_live_in_the_content_store(h: &Harness) {
    use chronos::engine::ContentMode;
    let e = &h.engine;
    let photo = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let body = "long text ".repeat(500);
    let (id, _) = e
        .create(
            &coll(),
            None,
            obj(json!({"title": "t", "photo": photo, "body": body})),
            &who(),
        )
        .await
        .unwrap();
    let mut r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    let reference = &r.data["photo"]["$content"];
    assert_eq!(reference["kind"], "binary");
    assert_eq!(reference["size"], 70, "decoded bytes, not base64");
    assert!(
        reference["key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("things/{id}/content/"))
    );
    assert!(r.data["body"]["$content"]["key"].as_str().unwrap().ends_with(".txt"));
    let size = e.history(&coll(), &id, None, 1, LATEST).await.unwrap()[0].size;
    assert!(
        size < 600,
        "the version JSON holds references, not the 5 KB of content: {size} bytes"
    );
    e.resolve_content(&coll(), &mut r, ContentMode::Inline).await.unwrap();
    assert_eq!(r.data["photo"], photo);
    assert_eq!(r.data["body"], body.as_str());

    // An update that keeps the same content stores it once (content-addressed) …
    e.update(
        &coll(),
        &id,
        obj(json!({"title": "t2", "photo": photo, "body": body})),
        None,
        &who(),
    )
    .await
    .unwrap();
    // … and a record read with references can be written back as it is.
    let as_read = e.get_latest(&coll(), &id, LATEST).await.unwrap().data;
    e.update(&coll(), &id, as_read, None, &who()).await.unwrap();
    let mut old = e.get_version(&coll(), &id, 0, LATEST).await.unwrap();
    e.resolve_content(&coll(), &mut old, ContentMode::Inline).await.unwrap();
    assert_eq!(old.data["body"], body.as_str());

    let bad = e
        .create(&coll(), None, obj(json!({"photo": "not base64!"})), &who())
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::Validation { .. }), "{bad:?}");
    let wrong_type = e
        .create(&coll(), None, obj(json!({"body": 5})), &who())
        .await
        .unwrap_err();
    assert!(matches!(wrong_type, Error::Validation { .. }), "{wrong_type:?}");
    // Nobody can point a reference at another item's content.
    let foreign = e.get_latest(&coll(), &id, LATEST).await.unwrap().data["body"].clone();
    let err = e
        .create(&coll(), None, obj(json!({"body": foreign})), &who())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
}

/// A content reference is exactly `<collection>/<id>/content/<sha256>.txt|bin` of its own item:
/// checked when written, and again when read (a value stored before the property became a
/// content property is never resolved or presigned unless it is one) — finding L5.
pub async fn content_references_name_exactly_their_own_object(h: &Harness) {
    use chronos::engine::ContentMode;
    let e = &h.engine;
    let body = "some text";
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let reference = |key: String| json!({"$content": {"kind": "text", "key": key, "size": body.len(), "sha256": sha}});
    let (other, _) = e
        .create(&coll(), None, obj(json!({"body": body})), &who())
        .await
        .unwrap();
    let own: ItemId = "own".parse().unwrap();
    // Written through the content property: a reference must be this item's exact key.
    for key in [
        format!("things/own/content/../../x/y/content/{sha}.txt"),
        format!("things/own/content/{sha}.txt.bak"),
        format!("things/own/content/{}.txt", sha.to_uppercase()),
        format!("things/own/content/{sha}.bin"),
        format!("things/own/content/sub/{sha}.txt"),
    ] {
        let err = e
            .create(
                &coll(),
                Some(own.clone()),
                obj(json!({"body": reference(key.clone())})),
                &who(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Validation { .. }), "{key}: {err:?}");
    }
    // Values written before `body` became a content property are not checked then …
    let before = h.replica_with(chronos::engine::EngineSettings::default());
    let foreign = format!("things/{other}/content/{sha}.txt");
    let dotted = format!("things/old/content/../../{other}/content/{sha}.txt");
    for (id, key) in [("old", foreign.clone()), ("dotted", dotted.clone())] {
        before
            .create(
                &coll(),
                Some(id.parse().unwrap()),
                obj(json!({"body": reference(key)})),
                &who(),
            )
            .await
            .unwrap();
    }
    // … but are refused at read, never resolved to another item's content or presigned.
    for id in ["old", "dotted"] {
        let id: ItemId = id.parse().unwrap();
        for mode in [
            ContentMode::Inline,
            ContentMode::Presigned(std::time::Duration::from_secs(60)),
        ] {
            let mut r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
            let err = e.resolve_content(&coll(), &mut r, mode).await.unwrap_err();
            assert!(matches!(err, Error::Corrupt(_)), "{id} {mode:?}: {err:?}");
        }
    }
    // The item's own reference still resolves.
    let mut r = e.get_latest(&coll(), &other, LATEST).await.unwrap();
    e.resolve_content(&coll(), &mut r, ContentMode::Inline).await.unwrap();
    assert_eq!(r.data["body"], body);
}

fn keyed(key: &str) -> Attribution {
    Attribution {
        request_key: Some(key.parse().unwrap()),
        ..who()
    }
}

fn unique_key(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

pub async fn idempotent_writes_happen_once(h: &Harness) {
    let e = &h.engine;
    let k = unique_key("create");
    let (id, first) = e.create(&coll(), None, obj(json!({"n": 1})), &keyed(&k)).await.unwrap();
    assert!(!first.replayed);
    let (again_id, again) = e.create(&coll(), None, obj(json!({"n": 1})), &keyed(&k)).await.unwrap();
    assert_eq!((again_id.clone(), again.ov, again.cv), (id.clone(), first.ov, first.cv));
    assert!(again.replayed, "a retry is answered from the first write");
    assert_eq!(
        e.count_items(&coll()).await.unwrap(),
        1,
        "a retried create makes no second item"
    );

    let k = unique_key("update");
    let u = e
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    let u2 = e
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((u2.ov, u2.cv, u2.replayed), (u.ov, u.cv, true));
    // Another replica of the same database knows the key too.
    let u3 = h
        .replica()
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((u3.ov, u3.replayed), (u.ov, true));
    assert_eq!(e.get_latest(&coll(), &id, LATEST).await.unwrap().ov, u.ov);
    // The same key for another request is refused, not answered with the wrong outcome.
    let reused = e.update(&coll(), &id, obj(json!({"n": 3})), None, &keyed(&k)).await;
    assert!(matches!(reused, Err(Error::IdempotencyKeyReused(_))), "{reused:?}");

    let k = unique_key("enrich");
    let patch = [obj(json!({"tags": ["a"]}))];
    let en = Enrichment::default();
    let a = e.enrich(&coll(), &id, &patch, &en, &keyed(&k)).await.unwrap();
    let b = e.enrich(&coll(), &id, &patch, &en, &keyed(&k)).await.unwrap();
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let k = unique_key("restore");
    let a = e
        .restore_object(&coll(), &id, VersionTarget::Ov(0), None, &keyed(&k))
        .await
        .unwrap();
    let b = e
        .restore_object(&coll(), &id, VersionTarget::Ov(0), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let k = unique_key("delete");
    let a = e.delete(&coll(), &id, None, &keyed(&k)).await.unwrap();
    let b = e
        .delete(&coll(), &id, None, &keyed(&k))
        .await
        .expect("a retried delete is not a 404");
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let history = e.history(&coll(), &id, None, 100, WITH_DELETED).await.unwrap();
    let ovs: Vec<u64> = history.iter().map(|v| v.ov).collect();
    assert_eq!(ovs, [0, 1, 2, 3, 4], "each keyed write made exactly one version");
}

pub async fn concurrent_retries_with_one_key_write_once(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), Some("hot".parse().unwrap()), obj(json!({"n": 0})), &who())
        .await
        .unwrap();
    let k = unique_key("same");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            // Half through a second replica: the key holds across engines.
            let engine = if i % 2 == 0 { h.engine.clone() } else { h.replica() };
            let (id, k) = (id.clone(), k.clone());
            tokio::spawn(async move {
                engine
                    .update(&coll(), &id, obj(json!({"n": 1})), None, &keyed(&k))
                    .await
            })
        })
        .collect();
    let mut ovs = Vec::new();
    for t in tasks {
        ovs.push(t.await.unwrap().expect("every retry gets the first outcome").ov);
    }
    assert!(ovs.iter().all(|ov| *ov == 1), "{ovs:?}");
    let history = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(history.len(), 2, "one update, however many retries raced");

    let k = unique_key("create-race");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (engine, k) = (h.replica(), k.clone());
            tokio::spawn(async move { engine.create(&coll(), None, obj(json!({"c": 1})), &keyed(&k)).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("created or replayed").0);
    }
    assert_eq!(ids.len(), 1, "racing creates with one key make one item: {ids:?}");
    assert_eq!(e.count_items(&coll()).await.unwrap(), 2);
}

/// Wait (without sleeping) until an operation's next attempt is due.
async fn until_due(h: &Harness, id: &chronos::engine::OperationId) {
    let due = h.engine.operation(id).await.unwrap().due_at;
    while chronos::engine::model::now() <= due {
        tokio::task::yield_now().await;
    }
}

fn queued(s: chronos::engine::Submitted) -> chronos::engine::Operation {
    match s {
        chronos::engine::Submitted::Queued(op) => *op,
        other => panic!("expected the write to be queued, got {other:?}"),
    }
}

pub async fn queued_writes_land_exactly_once(h: &Harness) {
    use chronos::engine::{OperationStatus, Submitted, WriteRequest};
    use std::sync::atomic::Ordering;
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), Some("q".parse().unwrap()), obj(json!({"n": 0})), &who())
        .await
        .unwrap();

    // S3 down: the write is kept, not lost and not half-made.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let update = |n: i64, expected_ov: Option<u64>| WriteRequest::Update {
        id: id.clone(),
        data: obj(json!({"n": n})),
        expected_ov,
    };
    let op = queued(e.submit(&coll(), update(1, None), &who()).await.unwrap());
    assert_eq!(op.status, OperationStatus::Pending);
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().ov,
        0,
        "nothing visible yet"
    );
    let created = queued(
        e.submit(
            &coll(),
            WriteRequest::Create {
                id: "q2".parse().unwrap(),
                id_generated: false,
                data: obj(json!({"n": 9})),
            },
            &who(),
        )
        .await
        .unwrap(),
    );
    // Still down: the attempt fails and is retried later.
    until_due(h, &op.job.id).await;
    until_due(h, &created.job.id).await;
    // One run each (a drain would retry them again and again while they are due so soon).
    assert!(e.run_queued_once().await.unwrap() && e.run_queued_once().await.unwrap());
    let after = e.operation(&op.job.id).await.unwrap();
    assert_eq!((after.status, after.attempts), (OperationStatus::Pending, 1));
    assert!(after.last_error.unwrap().contains("injected fault"));
    assert_eq!(e.queue_stats().await.unwrap().pending, 2);

    // Back up: both land, once.
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    until_due(h, &op.job.id).await;
    until_due(h, &created.job.id).await;
    assert_eq!(e.drain_queue(4).await.unwrap(), 2);
    let done = e.operation(&op.job.id).await.unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert_eq!(done.result.as_ref().unwrap().ov, 1);
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"n": 1}))
    );
    let q2 = e.get_latest(&coll(), &"q2".parse().unwrap(), LATEST).await.unwrap();
    assert_eq!((q2.ov, q2.data), (0, obj(json!({"n": 9}))));
    assert_eq!(e.queue_stats().await.unwrap(), Default::default());

    // A worker that made the write but died before recording it: the next run replays.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(2, None), &who()).await.unwrap());
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    until_due(h, &op.job.id).await;
    let lease = std::time::Duration::from_millis(1);
    let (claimed, stale_token) = h
        .queue
        .claim(chronos::engine::model::now(), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.job.id, op.job.id);
    let crashed_worker = Attribution {
        request_key: Some(claimed.job.request_key.clone()),
        ..who()
    };
    let (_, made) = e.apply(&coll(), &claimed.job.request, &crashed_worker).await.unwrap();
    let lease_end = chronos::engine::model::now() + jiff::SignedDuration::from_millis(2);
    while chronos::engine::model::now() <= lease_end {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        h.replica().drain_queue(2).await.unwrap(),
        1,
        "another worker takes the expired lease"
    );
    let done = e.operation(&op.job.id).await.unwrap();
    assert_eq!(
        (done.status, done.result.unwrap().ov),
        (OperationStatus::Succeeded, made.ov)
    );
    assert!(
        !h.queue
            .settle(
                &op.job.id,
                &stale_token,
                chronos::engine::store::queue::Settlement::Dead { error: "late".into() },
                chronos::engine::model::now()
            )
            .await
            .unwrap(),
        "a worker that lost its lease can't settle the job"
    );
    let history = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.ov).collect::<Vec<_>>(),
        [0, 1, 2],
        "the update made one version"
    );

    // A write that can never succeed becomes a dead letter, which can be retried or cancelled.
    // (A precondition that fails at once is refused at once, even while S3 is down; this one
    // only fails once another write overtakes the queued one.)
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(3, Some(2)), &who()).await.unwrap());
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    e.update(&coll(), &id, obj(json!({"n": 30})), Some(2), &who())
        .await
        .unwrap();
    until_due(h, &op.job.id).await;
    e.drain_queue(1).await.unwrap();
    let dead = e.operation(&op.job.id).await.unwrap();
    assert_eq!(dead.status, OperationStatus::Dead);
    assert!(dead.last_error.unwrap().contains("version conflict"));
    let listed = e.list_operations(OperationStatus::Dead, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|o| &o.job.id).collect::<Vec<_>>(), [&op.job.id]);
    assert_eq!(e.queue_stats().await.unwrap().dead, 1);
    let revived = e.retry_dead_letter(&op.job.id).await.unwrap();
    assert_eq!((revived.status, revived.attempts), (OperationStatus::Pending, 0));
    let cancelled = e.cancel_operation(&op.job.id).await.unwrap();
    assert_eq!(cancelled.status, OperationStatus::Cancelled);
    assert!(e.cancel_operation(&op.job.id).await.is_err(), "cancelled already");
    assert!(e.retry_dead_letter(&op.job.id).await.is_err(), "not a dead letter");
    assert_eq!(e.drain_queue(1).await.unwrap(), 0, "cancelled operations never run");
    assert_eq!(e.get_latest(&coll(), &id, LATEST).await.unwrap().ov, 3);

    // Out of attempts while the outage lasts: a dead letter too.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(4, None), &who()).await.unwrap());
    loop {
        let current = e.operation(&op.job.id).await.unwrap();
        if current.status == OperationStatus::Dead {
            assert_eq!(current.attempts, h.engine.settings().queue.max_attempts);
            break;
        }
        until_due(h, &op.job.id).await;
        e.drain_queue(1).await.unwrap();
    }
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    // Not queueable: a client mistake is refused at once.
    let refused = e.submit(&coll(), update(5, Some(99)), &who()).await;
    assert!(matches!(refused, Err(Error::VersionConflict { .. })), "{refused:?}");
    assert!(matches!(
        e.submit(&coll(), update(5, None), &who()).await,
        Ok(Submitted::Done { .. })
    ));
}

pub async fn queue_claims_are_exclusive(h: &Harness) {
    use chronos::engine::store::queue::{Job, Operation, OperationResult, Settlement};
    use chronos::engine::{OperationId, OperationStatus, WriteRequest};
    let now = chronos::engine::model::now();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..40 {
        let id = OperationId::generate();
        ids.insert(id.clone());
        let op = Operation {
            job: Job {
                id: id.clone(),
                collection: coll(),
                request: WriteRequest::Delete {
                    id: format!("i{i}").parse().unwrap(),
                    expected_ov: None,
                },
                actor: None,
                reason: None,
                request_key: format!("op:{id}").parse().unwrap(),
                created_at: now,
            },
            status: OperationStatus::Pending,
            attempts: 0,
            due_at: now,
            last_error: None,
            result: None,
            updated_at: now,
        };
        h.queue.enqueue(&op).await.unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let queue = h.queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let lease = std::time::Duration::from_secs(60);
                while let Some((op, token)) = queue.claim(chronos::engine::model::now(), lease).await.unwrap() {
                    let result = OperationResult {
                        id: op.job.request.id().clone(),
                        ov: 0,
                        cv: 0,
                        at: op.job.created_at,
                    };
                    assert!(
                        queue
                            .settle(
                                &op.job.id,
                                &token,
                                Settlement::Succeeded(result),
                                chronos::engine::model::now()
                            )
                            .await
                            .unwrap()
                    );
                    mine.push(op.job.id);
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    claimed.sort();
    assert_eq!(claimed.len(), 40, "every operation was claimed exactly once");
    assert_eq!(claimed.into_iter().collect::<std::collections::BTreeSet<_>>(), ids);
    let done = h.queue.list(OperationStatus::Succeeded, None, 100).await.unwrap();
    assert!(done.iter().all(|o| o.attempts == 1), "no operation ran twice");
    assert_eq!(h.queue.stats().await.unwrap(), Default::default());
}
/// Every payload object key of an item.
async fn payload_keys(h: &Harness, id: &ItemId) -> Vec<String> {
    h.payloads.list(&format!("things/{id}/v"), None, 1000).await.unwrap()
}

/// Items created, updated, then restored to before the updates: the restored versions read back
/// equal to their targets, and no payload object was written (nor read) for them.
pub async fn restore_by_reference_copies_no_payload(h: &Harness) {
    use chronos::engine::HistoryPoint;
    let e = &h.engine;
    let ids: Vec<ItemId> = (0..5).map(|n| format!("r{n}").parse().unwrap()).collect();
    let mut point = 0;
    for (n, id) in ids.iter().enumerate() {
        let (_, out) = e
            .create(&coll(), Some(id.clone()), obj(json!({"n": n, "v": "old"})), &who())
            .await
            .unwrap();
        point = point.max(out.cv);
    }
    let (late, _) = e
        .create(&coll(), None, obj(json!({"late": true})), &who())
        .await
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        e.update(&coll(), id, obj(json!({"n": n, "v": "new"})), Some(0), &who())
            .await
            .unwrap();
    }
    let before: Vec<Vec<String>> = futures::future::join_all(ids.iter().map(|id| payload_keys(h, id))).await;
    let late_before = payload_keys(h, &late).await;

    let counts = e
        .restore_collection(&coll(), HistoryPoint::Cv(point), false, &who(), |_, _| {})
        .await
        .unwrap();
    assert_eq!((counts.restored, counts.deleted, counts.unchanged), (5, 1, 0));
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            payload_keys(h, id).await,
            before[n],
            "no payload object written for {id}"
        );
        let target = e.get_version(&coll(), id, 0, LATEST).await.unwrap();
        let restored = e.get_version(&coll(), id, 2, LATEST).await.unwrap();
        assert_eq!(restored.data, target.data, "the restored version equals its target");
        assert_eq!(restored.data, obj(json!({"n": n, "v": "old"})));
        let latest = e.get_latest(&coll(), id, LATEST).await.unwrap();
        assert_eq!((latest.ov, &latest.data), (2, &target.data));
        let entry = e.history(&coll(), id, Some(1), 10, LATEST).await.unwrap().remove(0);
        assert_eq!((entry.op, entry.ov, entry.cv), (Op::Restore, 2, latest.cv));
        assert_eq!(
            entry.checksum,
            e.history(&coll(), id, None, 1, LATEST).await.unwrap()[0].checksum
        );
        // The version's `_system` is its own, not the referenced envelope's.
        assert_eq!(restored.system.updated_at, entry.at);
        assert_eq!(
            (
                restored.system.updated_at,
                restored.system.deleted,
                &restored.system.function_ids
            ),
            (latest.system.updated_at, false, &latest.system.function_ids),
            "version read and head agree"
        );
        assert_eq!(restored.system.inserted_at, target.system.inserted_at);
    }
    // Created after the point: deleted, by reference to its current payload.
    assert_eq!(payload_keys(h, &late).await, late_before);
    assert!(matches!(
        e.get_latest(&coll(), &late, LATEST).await,
        Err(Error::NotFound(_))
    ));
    let gone = e.get_latest(&coll(), &late, WITH_DELETED).await.unwrap();
    assert!(gone.system.deleted);
    assert_eq!(gone.data, obj(json!({"late": true})));
    let del = e.get_version(&coll(), &late, 1, WITH_DELETED).await.unwrap();
    assert_eq!((del.system.deleted, &del.data), (true, &gone.data));
    assert_eq!(del.system.deleted_at, Some(del.system.updated_at));

    // Idempotent: a second run finds everything at its target.
    let again = e
        .restore_collection(&coll(), HistoryPoint::Cv(point), false, &who(), |_, _| {})
        .await
        .unwrap();
    assert_eq!((again.examined, again.unchanged), (6, 6));

    // Item restore takes the same path: no payload object either.
    let r = e
        .restore_object(&coll(), &ids[0], VersionTarget::Ov(1), Some(2), &who())
        .await
        .unwrap();
    assert_eq!(r.ov, 3);
    assert_eq!(payload_keys(h, &ids[0]).await, before[0]);
    assert_eq!(
        e.get_latest(&coll(), &ids[0], LATEST).await.unwrap().data,
        obj(json!({"n": 0, "v": "new"}))
    );
    // A restore of a restored version points at the original payload, not at another reference.
    let r = e
        .restore_object(&coll(), &ids[0], VersionTarget::Ov(2), None, &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_version(&coll(), &ids[0], r.ov, LATEST).await.unwrap().data,
        obj(json!({"n": 0, "v": "old"}))
    );
}

/// Every kind of write, tiering and time travel keep working on an item whose latest version
/// was appended by reference — including reads of its own payload after a later write.
pub async fn writes_after_a_restore_by_reference_work(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    e.update(&coll(), &id, obj(json!({"v": 1})), Some(0), &who())
        .await
        .unwrap();
    e.restore_object(&coll(), &id, VersionTarget::Ov(0), Some(1), &who())
        .await
        .unwrap();
    // Enrichment merges over the referenced data.
    e.enrich(&coll(), &id, &[obj(json!({"e": true}))], &enrichment("f1"), &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!((r.ov, &r.data), (3, &obj(json!({"v": 0, "e": true}))));
    assert_eq!(r.system.function_ids, ["f1"]);

    // Restore again, then a delete carries the referenced data forward.
    e.restore_object(&coll(), &id, VersionTarget::Ov(1), Some(3), &who())
        .await
        .unwrap();
    let restored = e.get_version(&coll(), &id, 4, LATEST).await.unwrap();
    assert_eq!(
        restored.system.function_ids,
        ["f1"],
        "provenance of the item, not of the target"
    );
    e.delete(&coll(), &id, Some(4), &who()).await.unwrap();
    let gone = e.get_latest(&coll(), &id, WITH_DELETED).await.unwrap();
    assert_eq!((gone.ov, &gone.data), (5, &obj(json!({"v": 1}))));
    // Undelete by restore, then an ordinary update.
    e.restore_object(&coll(), &id, VersionTarget::Ov(3), Some(5), &who())
        .await
        .unwrap();
    e.update(&coll(), &id, obj(json!({"v": 7})), Some(6), &who())
        .await
        .unwrap();
    // Cold now: the head's data comes from its own payload, whatever the restore left behind.
    assert!(e.mark_item_processed(&coll(), &id).await.unwrap());
    let r = e.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!((r.ov, &r.data), (7, &obj(json!({"v": 7}))));
    let expect = [
        json!({"v": 0}),
        json!({"v": 1}),
        json!({"v": 0}),
        json!({"v": 0, "e": true}),
        json!({"v": 1}),
        json!({"v": 1}),
        json!({"v": 0, "e": true}),
        json!({"v": 7}),
    ];
    for (ov, want) in expect.iter().enumerate() {
        let r = e.get_version(&coll(), &id, ov as u64, WITH_DELETED).await.unwrap();
        assert_eq!(r.data, obj(want.clone()), "v{ov}");
        let at = e
            .get_as_of(&coll(), &id, r.system.updated_at, WITH_DELETED)
            .await
            .unwrap();
        assert!(at.ov >= ov as u64);
    }
    let ops: Vec<Op> = e
        .history(&coll(), &id, None, 10, LATEST)
        .await
        .unwrap()
        .iter()
        .map(|v| v.op)
        .collect();
    use Op::*;
    assert_eq!(ops, [Create, Update, Restore, Update, Restore, Delete, Restore, Update]);
    // Every single write made its payload object; the restores none.
    assert_eq!(
        payload_keys(h, &id).await.len(),
        5,
        "create, update, enrich, delete, update"
    );
}

/// The envelope check holds for references: a referenced object that is not exactly the
/// version it should be (here: another item's payload) is refused, never served.
pub async fn restore_by_reference_never_serves_another_items_data(h: &Harness) {
    use chronos::engine::HistoryPoint;
    let e = &h.engine;
    let (a, out) = e
        .create(&coll(), None, obj(json!({"secret": "a"})), &who())
        .await
        .unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"secret": "b"})), &who())
        .await
        .unwrap();
    e.update(&coll(), &a, obj(json!({"secret": "a2"})), Some(0), &who())
        .await
        .unwrap();
    e.restore_collection(&coll(), HistoryPoint::Cv(out.cv), false, &who(), |_, _| {})
        .await
        .unwrap();
    let ok = e.get_version(&coll(), &a, 2, LATEST).await.unwrap();
    assert_eq!(ok.data, obj(json!({"secret": "a"})));
    let key_a0 = payload_keys(h, &a).await.remove(0);
    assert!(key_a0.starts_with(&format!("things/{a}/v0/")), "{key_a0}");
    let key_b = payload_keys(h, &b).await.remove(0);
    let body_b = h.payloads.get(&key_b).await.unwrap().unwrap();
    h.payloads.put(&key_a0, body_b).await.unwrap();
    for r in [
        e.get_version(&coll(), &a, 2, LATEST).await,
        e.get_latest(&coll(), &a, LATEST).await,
    ] {
        assert!(matches!(r, Err(Error::Corrupt(_))), "served instead of refused: {r:?}");
    }
    // Another version of the same item is refused too (checked by ov and write id).
    let key_a1 = payload_keys(h, &a).await.remove(1);
    let body_a1 = h.payloads.get(&key_a1).await.unwrap().unwrap();
    h.payloads.put(&key_a0, body_a1).await.unwrap();
    let r = e.get_version(&coll(), &a, 2, LATEST).await;
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
}

/// Pruning the index (and even the payloads) of old versions never takes away the payload
/// a kept version was restored by reference from; pruned restored versions stay readable.
pub async fn retention_keeps_payloads_restored_versions_use(h: &Harness) {
    use chronos::engine::PrunePolicy;
    let e = &h.engine;
    // a: v0 create, v1 update, v2 restore of v0 (latest).
    let (a, _) = e.create(&coll(), None, obj(json!({"v": "a0"})), &who()).await.unwrap();
    e.update(&coll(), &a, obj(json!({"v": "a1"})), Some(0), &who())
        .await
        .unwrap();
    e.restore_object(&coll(), &a, VersionTarget::Ov(0), Some(1), &who())
        .await
        .unwrap();
    // b: v0 create, v1 update, v2 restore of v0, v3 update (latest).
    let (b, _) = e.create(&coll(), None, obj(json!({"v": "b0"})), &who()).await.unwrap();
    e.update(&coll(), &b, obj(json!({"v": "b1"})), Some(0), &who())
        .await
        .unwrap();
    e.restore_object(&coll(), &b, VersionTarget::Ov(0), Some(1), &who())
        .await
        .unwrap();
    e.update(&coll(), &b, obj(json!({"v": "b3"})), Some(2), &who())
        .await
        .unwrap();

    // Index only: the pruned restore version of b is read through its manifest entry.
    let keep1 = keep_last(1);
    assert_eq!(
        e.prune_versions(&coll(), &keep1, false).await.unwrap().versions_pruned,
        5
    );
    let r = e.get_version(&coll(), &b, 2, LATEST).await.unwrap();
    assert_eq!(
        r.data,
        obj(json!({"v": "b0"})),
        "a pruned restored version stays readable"
    );
    assert_eq!(
        e.get_version(&coll(), &a, 2, LATEST).await.unwrap().data,
        obj(json!({"v": "a0"}))
    );

    // With the payloads: a's v1 object goes, its v0 object stays for the kept restore version.
    let (c, _) = e.create(&coll(), None, obj(json!({"v": "c0"})), &who()).await.unwrap();
    e.update(&coll(), &c, obj(json!({"v": "c1"})), Some(0), &who())
        .await
        .unwrap();
    e.restore_object(&coll(), &c, VersionTarget::Ov(0), Some(1), &who())
        .await
        .unwrap();
    let with_payloads = PrunePolicy {
        keep_last: Some(1),
        delete_payloads: true,
        ..Default::default()
    };
    assert_eq!(
        e.prune_versions(&coll(), &with_payloads, false)
            .await
            .unwrap()
            .versions_pruned,
        2
    );
    let keys = payload_keys(h, &c).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with(&format!("things/{c}/v0/")), "{keys:?}");
    assert_eq!(
        e.get_latest(&coll(), &c, LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
    assert_eq!(
        e.get_version(&coll(), &c, 2, LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
    assert!(e.mark_item_processed(&coll(), &c).await.is_ok());
    assert_eq!(
        e.get_latest(&coll(), &c, LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
}

/// A collection restore racing with writers: every acknowledged write stays in history with its
/// data, histories stay gapless, and every restored version equals its target. Whichever order
/// things happen in, nothing is overwritten.
pub async fn restore_during_concurrent_writes_overwrites_nothing(h: &Harness) {
    use chronos::engine::HistoryPoint;
    const ITEMS: usize = 40;
    const WRITERS: usize = 4;
    let e = &h.engine;
    let ids: Vec<ItemId> = (0..ITEMS).map(|n| format!("k{n:03}").parse().unwrap()).collect();
    let mut point = 0;
    for id in &ids {
        let (_, out) = e
            .create(&coll(), Some(id.clone()), obj(json!({"v": "target"})), &who())
            .await
            .unwrap();
        point = point.max(out.cv);
    }
    for id in &ids {
        e.update(&coll(), id, obj(json!({"v": "changed"})), Some(0), &who())
            .await
            .unwrap();
    }
    let writers = (0..WRITERS).map(|w| {
        let (e, ids) = (e.clone(), ids.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..3 {
                for id in ids.iter().skip(w).step_by(WRITERS) {
                    let data = obj(json!({"v": format!("w{w}r{round}")}));
                    let out = e.update(&coll(), id, data.clone(), None, &who()).await.unwrap();
                    acked.push((id.clone(), out.ov, data));
                }
            }
            acked
        })
    });
    let writers: Vec<_> = writers.collect();
    let counts = e
        .restore_collection(&coll(), HistoryPoint::Cv(point), false, &who(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(counts.examined, ITEMS as u64, "every item examined once: {counts:?}");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert_eq!(acked.len(), ITEMS * 3);
    for (id, ov, data) in &acked {
        let r = e.get_version(&coll(), id, *ov, LATEST).await.unwrap();
        assert_eq!(&r.data, data, "{id} v{ov}: an acknowledged write was overwritten");
    }
    for id in &ids {
        let hist = e.history(&coll(), id, None, 100, LATEST).await.unwrap();
        let ovs: Vec<u64> = hist.iter().map(|v| v.ov).collect();
        assert_eq!(ovs, (0..hist.len() as u64).collect::<Vec<_>>(), "{id}: gapless");
        assert!(hist.windows(2).all(|w| w[0].cv < w[1].cv), "{id}: cv increases");
        for v in hist.iter().filter(|v| v.op == Op::Restore) {
            let r = e.get_version(&coll(), id, v.ov, LATEST).await.unwrap();
            assert_eq!(r.data, obj(json!({"v": "target"})), "{id} v{}", v.ov);
        }
        assert!(
            hist.iter().filter(|v| v.op == Op::Restore).count() <= 1,
            "{id}: restored once"
        );
    }
}

/// A retention policy that keeps each item's last `n` versions.
fn keep_last(n: u64) -> chronos::engine::PrunePolicy {
    chronos::engine::PrunePolicy {
        keep_last: Some(n),
        ..Default::default()
    }
}

/// Wait until the clock has passed `t`: versions carry millisecond times, and as-of reads need
/// one answer per instant.
async fn after_instant(t: chronos::engine::Timestamp) {
    while chronos::engine::model::now() <= t {
        tokio::task::yield_now().await;
    }
}

/// Retention prunes an item's versions at a restore point: restores and `list ?at=` find them in
/// the manifests instead of taking the item for one created later.
pub async fn restore_after_retention_brings_back_pruned_versions(h: &Harness) {
    use chronos::engine::{HistoryPoint, RestoreCounts};
    let e = &h.engine;
    let id = |s: &str| -> ItemId { s.parse().unwrap() };
    // a: written 5 times; the point is after its second write. c: one version, before the point.
    let (_, mut last) = e
        .create(&coll(), Some(id("a")), obj(json!({"v": 0})), &who())
        .await
        .unwrap();
    e.create(&coll(), Some(id("c")), obj(json!({"v": "c"})), &who())
        .await
        .unwrap();
    let mut point = None;
    for v in 1..5 {
        after_instant(last.at).await;
        last = e
            .update(&coll(), &id("a"), obj(json!({"v": v})), None, &who())
            .await
            .unwrap();
        if v == 1 {
            point = Some(last);
        }
    }
    let point = point.unwrap();
    // b: created after the point.
    e.create(&coll(), Some(id("b")), obj(json!({"v": "b"})), &who())
        .await
        .unwrap();
    let keep1 = keep_last(1);
    assert_eq!(
        e.prune_versions(&coll(), &keep1, false).await.unwrap().versions_pruned,
        4
    );

    // list ?at= the point: a (from its manifest) and c; b did not exist yet.
    let listed = e
        .list(
            &coll(),
            &ListOptions {
                at: Some(point.at),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seen: Vec<(String, Value)> = listed
        .records
        .iter()
        .map(|r| (r.id.to_string(), r.data["v"].clone()))
        .collect();
    assert_eq!(seen, [("a".to_owned(), json!(1)), ("c".to_owned(), json!("c"))]);
    // Pages of one give the same, with cursors.
    let mut paged = Vec::new();
    let mut opts = ListOptions {
        at: Some(point.at),
        limit: 1,
        ..Default::default()
    };
    loop {
        let page = e.list(&coll(), &opts).await.unwrap();
        paged.extend(page.records.iter().map(|r| r.id.to_string()));
        match page.next_after_id {
            Some(next) => opts.after_id = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ["a", "c"]);

    // A collection restore to the point gives a its write 2 back instead of deleting it.
    let expected = RestoreCounts {
        examined: 3,
        restored: 1,
        deleted: 1,
        unchanged: 1,
    };
    let cv_point = HistoryPoint::Cv(point.cv);
    assert_eq!(
        e.restore_collection(&coll(), cv_point, true, &who(), |_, _| {})
            .await
            .unwrap(),
        expected
    );
    assert_eq!(
        e.restore_collection(&coll(), cv_point, false, &who(), |_, _| {})
            .await
            .unwrap(),
        expected
    );
    let a = e.get_latest(&coll(), &id("a"), LATEST).await.unwrap();
    assert_eq!((a.ov, a.data), (5, obj(json!({"v": 1}))));
    assert!(matches!(
        e.get_latest(&coll(), &id("b"), LATEST).await,
        Err(Error::NotFound(_))
    ));
    let unchanged = RestoreCounts {
        examined: 3,
        unchanged: 3,
        ..Default::default()
    };
    assert_eq!(
        e.restore_collection(&coll(), cv_point, false, &who(), |_, _| {})
            .await
            .unwrap(),
        unchanged,
        "rerunning changes nothing"
    );
    // By time, after pruning the restore's own versions too.
    assert_eq!(
        e.prune_versions(&coll(), &keep1, false).await.unwrap().versions_pruned,
        2
    );
    assert_eq!(
        e.restore_collection(&coll(), HistoryPoint::At(point.at), false, &who(), |_, _| {})
            .await
            .unwrap(),
        unchanged
    );

    // One item: pruned versions are restore targets, by ov and by time.
    e.restore_object(&coll(), &id("a"), VersionTarget::Ov(0), Some(5), &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id("a"), LATEST).await.unwrap().data,
        obj(json!({"v": 0}))
    );
    e.restore_object(&coll(), &id("a"), VersionTarget::At(point.at), Some(6), &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id("a"), LATEST).await.unwrap().data,
        obj(json!({"v": 1}))
    );
}

/// Retention with `deletePayloads` interleaved step by step with restores of the versions it
/// prunes: nothing it deletes is still used, and every head and version reads back.
pub async fn retention_never_deletes_a_payload_a_concurrent_restore_uses(h: &Harness) {
    use chronos::engine::PrunePolicy;
    let e = &h.engine;
    let (a, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    let mut cvs = Vec::new();
    for v in 1..=2 {
        cvs.push(
            e.update(&coll(), &a, obj(json!({"v": v})), None, &who())
                .await
                .unwrap()
                .cv,
        );
    }
    let policy = PrunePolicy {
        keep_last: Some(1),
        delete_payloads: true,
        ..Default::default()
    };
    // Retention scans a: v0 and v1 go, with their payloads.
    let plan = e
        .plan_item_prune(&coll(), &a, &policy)
        .await
        .unwrap()
        .expect("something to prune");
    assert_eq!(plan.versions(), 2);
    // A restore of v1 commits meanwhile: its new version uses v1's payload.
    e.restore_object(&coll(), &a, VersionTarget::Ov(1), Some(2), &who())
        .await
        .unwrap();
    let v0 = h.meta.version(&coll(), &a, 0).await.unwrap().unwrap();
    e.unindex_pruned(&plan).await.unwrap();
    // A restore that read v0's index entry before it went can't append a reference to it now.
    let write_id = "f".repeat(32);
    let stale = chronos::engine::RefWrite {
        expected_ov: 3,
        keep_inline: false,
        source: Some(0),
        version: chronos::engine::VersionEntry {
            id: a.clone(),
            ov: 4,
            cv: 0,
            op: Op::Restore,
            at: chronos::engine::model::now(),
            actor: None,
            reason: None,
            payload_ref: Some(chronos::engine::PayloadRef {
                of: write_id.clone(),
                ov: 0,
                write_id: v0.write_id.clone(),
                function_ids: vec![],
            }),
            write_id,
            size: v0.size,
            checksum: v0.checksum.clone(),
            meta: v0.meta.clone(),
            deleted: false,
            request: None,
        },
    };
    assert_eq!(h.meta.append_by_reference(&coll(), vec![stale]).await.unwrap(), None);
    // A restore of v0, now only in the manifest with its payload about to go.
    e.restore_object(&coll(), &a, VersionTarget::Ov(0), Some(3), &who())
        .await
        .unwrap();
    e.delete_pruned_payloads(plan).await.unwrap();

    let latest = e.get_latest(&coll(), &a, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data), (4, obj(json!({"v": 0}))));
    for (ov, v) in [(2, 2), (3, 1), (4, 0)] {
        assert_eq!(
            e.get_version(&coll(), &a, ov, LATEST).await.unwrap().data,
            obj(json!({"v": v})),
            "v{ov} reads back"
        );
    }
    let keys = payload_keys(h, &a).await;
    assert!(
        !keys.iter().any(|k| k.starts_with(&format!("things/{a}/v0/"))),
        "v0's payload, used by nothing, is deleted: {keys:?}"
    );

    // A collection restore to v1 copies its data (its manifest says its payload may be gone; it
    // is still there, as the restored v3 uses it).
    let point = chronos::engine::HistoryPoint::Cv(cvs[0]);
    let counts = e
        .restore_collection(&coll(), point, false, &who(), |_, _| {})
        .await
        .unwrap();
    assert_eq!((counts.restored, counts.deleted), (1, 0));
    let latest = e.get_latest(&coll(), &a, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data), (5, obj(json!({"v": 1}))));
    let v5 = h.meta.version(&coll(), &a, 5).await.unwrap().unwrap();
    assert_eq!(v5.payload().0, 5, "a copy, not a reference");
    // To v0, whose payload is gone: a clear 404, and the item stays as it was.
    let gone = e.restore_object(&coll(), &a, VersionTarget::Ov(0), None, &who()).await;
    assert!(
        matches!(&gone, Err(Error::NotFound(m)) if m.contains("pruned")),
        "{gone:?}"
    );
    assert_eq!(e.get_latest(&coll(), &a, LATEST).await.unwrap().ov, 5);
}

/// Counters are computed from the version index: what retention prunes is kept per counter, so
/// pruning changes no total (and a reset still starts them afresh).
pub async fn counters_stay_true_after_retention(h: &Harness) {
    let e = &h.engine;
    let mut last = None;
    for i in 0..3u64 {
        let (id, _) = e.create(&coll(), None, obj(json!({"n": i + 4})), &who()).await.unwrap();
        e.update(&coll(), &id, obj(json!({"n": i + 5})), Some(0), &who())
            .await
            .unwrap();
        e.delete(&coll(), &id, Some(1), &who()).await.unwrap();
        e.restore_object(&coll(), &id, VersionTarget::Ov(1), Some(2), &who())
            .await
            .unwrap();
        last = Some(id);
    }
    let id = last.unwrap();
    let before = e.totals(&coll()).await.unwrap();
    assert_eq!(
        (
            before.created,
            before.updated,
            before.deleted,
            before.restored,
            before.rules["big"]
        ),
        (3, 3, 3, 3, 5)
    );
    let keep1 = keep_last(1);
    assert_eq!(
        e.prune_versions(&coll(), &keep1, false).await.unwrap().versions_pruned,
        9
    );
    assert_eq!(e.totals(&coll()).await.unwrap(), before, "pruning changes no counter");

    // After a reset only versions written since count, pruned or not.
    let mark = e.reset_totals(&coll()).await.unwrap();
    for n in [9, 10] {
        e.update(&coll(), &id, obj(json!({"n": n})), None, &who())
            .await
            .unwrap();
    }
    assert_eq!(
        e.prune_versions(&coll(), &keep1, false).await.unwrap().versions_pruned,
        2
    );
    let after = e.totals(&coll()).await.unwrap();
    assert_eq!(
        (
            after.created,
            after.updated,
            after.deleted,
            after.restored,
            after.since_cv
        ),
        (0, 2, 0, 0, mark)
    );
    assert_eq!(after.rules["big"], 2);
}

/// A write must commit within the orphan grace of its write id, or scrub may already have
/// deleted its payload as an orphan and the commit would leave a head pointing at nothing
/// (review M4). A write that is too late — here every write is, the grace being zero — is not
/// committed, alone or in a group: it is redone with a fresh write id, then refused as
/// retryable. Nothing of it stays, neither a version nor a payload.
pub async fn a_write_too_late_for_the_orphan_grace_is_not_committed(h: &Harness) {
    let e = &h.engine;
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                let id: ItemId = format!("late-{i}").parse().unwrap();
                e.create(&coll(), Some(id), obj(json!({"n": i})), &who()).await
            })
        })
        .collect();
    for (i, w) in writes.into_iter().enumerate() {
        let outcome = w.await.unwrap();
        assert!(
            matches!(outcome, Err(Error::Unavailable { .. })),
            "write {i} is refused as retryable: {outcome:?}"
        );
        let id: ItemId = format!("late-{i}").parse().unwrap();
        assert!(matches!(
            e.get_latest(&coll(), &id, WITH_DELETED).await,
            Err(Error::NotFound(_))
        ));
    }
    let left = h.payloads.list("things/", None, 100).await.unwrap();
    assert!(left.is_empty(), "every attempt removed its payload: {left:?}");
}
