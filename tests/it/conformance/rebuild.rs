//! Rebuilding the metadata from the buckets: what a rebuild loads into an empty store (heads,
//! version entries, sequences) serves every read exactly as the store it was taken from, and the
//! loads can be repeated when a rebuild resumes.
//!
//! The loaded state is read from the original store here; building it from the buckets is
//! `engine::rebuild`'s part, tested on its own.

use std::sync::Arc;

use chronos::engine::model::{Head, Record, RequestStamp, State};
use chronos::engine::store::RebuiltSequences;
use chronos::engine::{Engine, Error, HistoryPoint, ItemId, ListOptions, MetaStore, Op, VersionEntry, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, WITH_DELETED, all_ids, coll, keep_last, keyed, obj, unique_key, who};
use crate::support::Harness;

/// Everything a rebuild would find for the collection: every head, every indexed entry, and the
/// sequences.
struct Snapshot {
    heads: Vec<Head>,
    versions: Vec<VersionEntry>,
    sequences: RebuiltSequences,
}

async fn snapshot(meta: &Arc<dyn MetaStore>, engine: &Engine) -> Snapshot {
    let ids = all_ids(engine).await;
    let (mut heads, mut versions) = (vec![], vec![]);
    for id in &ids {
        heads.push(meta.head(&coll(), id).await.unwrap().unwrap());
        versions.extend(meta.versions(&coll(), id, None, 1000).await.unwrap());
    }
    let last_cv = versions.iter().map(|v| v.cv).max().unwrap_or(0);
    let sequences = RebuiltSequences {
        last_cv,
        counters_from: meta.counters_from(&coll()).await.unwrap(),
        pruned: meta.pruned_counts(&coll()).await.unwrap(),
        pruned_through: meta.history_start(&coll()).await.unwrap().pruned_through,
    };
    Snapshot {
        heads,
        versions,
        sequences,
    }
}

/// Load a snapshot the way a rebuild does: indexes first, entries in pages, then heads and
/// sequences.
async fn load(meta: &Arc<dyn MetaStore>, engine: &Engine, s: &Snapshot) {
    engine.ensure_indexes(&coll()).await.unwrap();
    for page in s.versions.chunks(3) {
        meta.load_versions(&coll(), page).await.unwrap();
    }
    meta.load_heads(&coll(), &s.heads).await.unwrap();
    meta.load_sequences(&coll(), &s.sequences).await.unwrap();
}

/// A mixed history: creates, updates, a delete, keyed writes, a counter reset, a collection
/// restore by reference, retention, and a write after it all.
async fn workload(e: &Engine, create_key: &str) -> ItemId {
    let big = "x".repeat(100);
    let (a, _) = e.create(&coll(), None, obj(json!({"n": 1})), &who()).await.unwrap();
    // Counters from here on: what retention prunes after the mark is kept as tallies.
    e.reset_totals(&coll()).await.unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"n": 7, "text": big})), &who())
        .await
        .unwrap();
    let (c, point) = e.create(&coll(), None, obj(json!({"n": 2})), &who()).await.unwrap();
    e.update(&coll(), &a, obj(json!({"n": 5})), Some(0), &who())
        .await
        .unwrap();
    e.update(&coll(), &b, obj(json!({"n": 8, "text": big})), None, &who())
        .await
        .unwrap();
    e.delete(&coll(), &c, None, &who()).await.unwrap();
    let (d, _) = e
        .create(&coll(), None, obj(json!({"n": 3})), &keyed(create_key))
        .await
        .unwrap();
    e.update(&coll(), &a, obj(json!({"n": 6})), None, &keyed(&unique_key("update")))
        .await
        .unwrap();
    e.update(&coll(), &b, obj(json!({"n": 9, "text": big})), None, &who())
        .await
        .unwrap();
    e.restore_collection(&coll(), HistoryPoint::Cv(point.cv), false, &who(), |_, _| {})
        .await
        .unwrap();
    e.prune_versions(&coll(), &keep_last(2), false).await.unwrap();
    e.update(&coll(), &a, obj(json!({"n": 10})), None, &who())
        .await
        .unwrap();
    d
}

/// Every read of the collection through `original` and through `rebuilt`: the same answers.
async fn assert_same_reads(original: &Engine, rebuilt: &Engine, s: &Snapshot) {
    assert_same_reads_as(original, rebuilt, s, |r| r).await;
}

/// A record without its cost tier: a head rebuilt from the buckets is `processed` (its data is
/// read from its object), which is the only thing a reader can tell apart.
fn untiered(mut r: Record) -> Record {
    r.system.state = State::New;
    r
}

/// [`assert_same_reads`], comparing records as `same` makes them.
async fn assert_same_reads_as(original: &Engine, rebuilt: &Engine, s: &Snapshot, same: fn(Record) -> Record) {
    for h in &s.heads {
        let id = &h.id;
        let (want, got) = (
            same(original.get_latest(&coll(), id, WITH_DELETED).await.unwrap()),
            same(rebuilt.get_latest(&coll(), id, WITH_DELETED).await.unwrap()),
        );
        assert_eq!(got, want, "latest of {id}");
        let (want, got) = (
            original.get_latest(&coll(), id, LATEST).await.ok().map(same),
            rebuilt.get_latest(&coll(), id, LATEST).await.ok().map(same),
        );
        assert_eq!(got, want, "latest of {id} without deleted ones");
        // Every ov, pruned ones included (read through the retention manifests).
        for ov in 0..=h.ov {
            let target = VersionTarget::Ov(ov);
            let (want, got) = (
                same(original.get_at(&coll(), id, target, WITH_DELETED).await.unwrap()),
                same(rebuilt.get_at(&coll(), id, target, WITH_DELETED).await.unwrap()),
            );
            assert_eq!(got, want, "{id} v{ov}");
        }
        let (want, got) = (
            original.history(&coll(), id, None, 1000, WITH_DELETED).await.unwrap(),
            rebuilt.history(&coll(), id, None, 1000, WITH_DELETED).await.unwrap(),
        );
        assert_eq!(got, want, "history of {id}");
    }
    for v in &s.versions {
        let target = VersionTarget::At(v.at);
        let (want, got) = (
            same(original.get_at(&coll(), &v.id, target, WITH_DELETED).await.unwrap()),
            same(rebuilt.get_at(&coll(), &v.id, target, WITH_DELETED).await.unwrap()),
        );
        assert_eq!(got, want, "{} as of {}", v.id, v.at);
    }
    let mut times: Vec<_> = s.versions.iter().map(|v| Some(v.at)).collect();
    times.push(None);
    for at in times {
        for include_deleted in [false, true] {
            let opts = ListOptions {
                limit: 1000,
                include_deleted,
                at,
                ..Default::default()
            };
            let (want, got) = (
                original
                    .list(&coll(), &opts)
                    .await
                    .unwrap()
                    .records
                    .into_iter()
                    .map(same)
                    .collect::<Vec<_>>(),
                rebuilt
                    .list(&coll(), &opts)
                    .await
                    .unwrap()
                    .records
                    .into_iter()
                    .map(same)
                    .collect::<Vec<_>>(),
            );
            assert_eq!(got, want, "list as of {at:?}, deleted included: {include_deleted}");
        }
    }
    assert_eq!(
        rebuilt.totals(&coll()).await.unwrap(),
        original.totals(&coll()).await.unwrap(),
        "totals"
    );
    assert_eq!(
        rebuilt.count_items(&coll()).await.unwrap(),
        original.count_items(&coll()).await.unwrap()
    );
}

pub async fn a_loaded_store_answers_every_read_as_the_original(original: &Harness, fresh: &Harness) {
    let create_key = unique_key("create");
    let d = workload(&original.engine, &create_key).await;
    let s = snapshot(&original.meta, &original.engine).await;
    // The workload left what the loads must carry: references, keys, a mark and tallies.
    assert!(
        s.heads.iter().any(|h| h.payload_ref.is_some()),
        "a head restored by reference"
    );
    assert!(s.versions.iter().any(|v| v.payload_ref.is_some()));
    assert!(s.versions.iter().filter(|v| v.request.is_some()).count() >= 2);
    assert!(s.heads.iter().any(|h| h.deleted()) && s.heads.iter().any(|h| h.inline.is_some()));
    assert!(s.heads.iter().any(|h| h.inline.is_none()));
    assert!(
        s.sequences.counters_from > 0 && !s.sequences.pruned.is_empty(),
        "{:?}",
        s.sequences
    );
    assert!(s.versions.iter().all(|v| v.ov > 0 || v.op == Op::Create));

    let rebuilt = original.over(fresh.meta.clone());
    assert!(!fresh.meta.holds_data().await.unwrap(), "a fresh store holds nothing");
    load(&fresh.meta, &rebuilt, &s).await;
    assert!(fresh.meta.holds_data().await.unwrap());
    // The store holds exactly what was loaded, inline data and references included.
    let loaded = snapshot(&fresh.meta, &rebuilt).await;
    assert_eq!(loaded.heads, s.heads);
    assert_eq!(loaded.versions, s.versions);
    assert_eq!(loaded.sequences, s.sequences);
    assert_same_reads(&original.engine, &rebuilt, &s).await;

    // An idempotent retry after the rebuild gets the first outcome, not a second item.
    let want = original
        .meta
        .version_by_request(&coll(), &create_key.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let (id, again) = rebuilt
        .create(&coll(), None, obj(json!({"n": 3})), &keyed(&create_key))
        .await
        .unwrap();
    assert!(again.replayed, "answered from the loaded key");
    assert_eq!((&id, again.ov, again.cv), (&d, want.ov, want.cv));

    // New writes take cvs above every loaded one.
    let (_, out) = rebuilt
        .create(&coll(), None, obj(json!({"n": 0})), &who())
        .await
        .unwrap();
    assert!(out.cv > s.sequences.last_cv, "{} after {}", out.cv, s.sequences.last_cv);
    let a = &s.heads[0];
    let next = rebuilt
        .update(&coll(), &a.id, obj(json!({"n": 11})), Some(a.ov), &who())
        .await;
    match (a.deleted(), next) {
        (false, Ok(out)) => assert!(out.cv > s.sequences.last_cv && out.ov == a.ov + 1),
        (true, Err(Error::NotFound(_))) => {}
        (deleted, other) => panic!("update of a loaded head (deleted: {deleted}): {other:?}"),
    }
}

pub async fn loads_are_idempotent_and_refuse_a_taken_key(original: &Harness, fresh: &Harness) {
    let e = &original.engine;
    let key = unique_key("keyed");
    let (a, _) = e
        .create(&coll(), None, obj(json!({"n": 1})), &keyed(&key))
        .await
        .unwrap();
    e.update(&coll(), &a, obj(json!({"n": 2})), None, &who()).await.unwrap();
    let s = snapshot(&original.meta, e).await;
    let rebuilt = original.over(fresh.meta.clone());
    rebuilt.ensure_indexes(&coll()).await.unwrap();
    assert!(
        !fresh.meta.holds_data().await.unwrap(),
        "indexes (and empty collections) are no data"
    );
    fresh.meta.load_versions(&coll(), &s.versions[..1]).await.unwrap();
    assert!(fresh.meta.holds_data().await.unwrap(), "a version entry alone is data");
    load(&fresh.meta, &rebuilt, &s).await;
    // A resumed rebuild loads everything again: nothing fails, nothing is doubled.
    load(&fresh.meta, &rebuilt, &s).await;
    fresh.meta.load_versions(&coll(), &s.versions).await.unwrap();
    assert_eq!(snapshot(&fresh.meta, &rebuilt).await.versions, s.versions);
    assert_same_reads(e, &rebuilt, &s).await;
    // A sequence already past the loaded cv stays there.
    let (_, out) = rebuilt
        .create(&coll(), None, obj(json!({"n": 3})), &who())
        .await
        .unwrap();
    fresh.meta.load_sequences(&coll(), &s.sequences).await.unwrap();
    let (_, after) = rebuilt
        .create(&coll(), None, obj(json!({"n": 4})), &who())
        .await
        .unwrap();
    assert!(after.cv > out.cv);

    // An entry carrying a key that another version holds is refused, and not loaded.
    let mut stolen = s.versions[1].clone();
    stolen.ov = 7;
    stolen.request = Some(RequestStamp {
        key: key.parse().unwrap(),
        fingerprint: "another request".into(),
    });
    let refused = fresh.meta.load_versions(&coll(), &[stolen]).await;
    assert!(matches!(refused, Err(Error::RequestKeyTaken(_))), "{refused:?}");
    assert!(fresh.meta.version(&coll(), &a, 7).await.unwrap().is_none());
}

pub async fn rebuild_progress_round_trips(_original: &Harness, fresh: &Harness) {
    let meta = &fresh.meta;
    assert_eq!(meta.rebuild_progress().await.unwrap(), None);
    meta.set_rebuild_progress(Some(r#"{"page": 1}"#)).await.unwrap();
    assert_eq!(
        meta.rebuild_progress().await.unwrap().as_deref(),
        Some(r#"{"page": 1}"#)
    );
    meta.set_rebuild_progress(Some("page 2")).await.unwrap();
    assert_eq!(meta.rebuild_progress().await.unwrap().as_deref(), Some("page 2"));
    assert!(!meta.holds_data().await.unwrap(), "progress is not data");
    meta.set_rebuild_progress(None).await.unwrap();
    assert_eq!(meta.rebuild_progress().await.unwrap(), None);
    meta.set_rebuild_progress(None).await.unwrap();
}

pub async fn a_rebuild_from_the_buckets_answers_every_read_as_before(original: &Harness, fresh: &Harness) {
    let create_key = unique_key("create");
    let d = workload(&original.engine, &create_key).await;
    let e = &original.engine;
    // More kinds of version, and more collections (a rebuild goes collection by collection).
    let s0 = snapshot(&original.meta, e).await;
    let a = &s0.heads[0].id;
    e.enrich(
        &coll(),
        a,
        &[obj(json!({"extra": {"x": 1}}))],
        &super::fixtures::enrichment("f1"),
        &who(),
    )
    .await
    .unwrap();
    e.restore_object(&coll(), a, VersionTarget::Ov(0), None, &who())
        .await
        .unwrap();
    for other in ["others", "more"] {
        let c: chronos::engine::CollectionName = other.parse().unwrap();
        let (id, _) = e.create(&c, None, obj(json!({"n": 1})), &who()).await.unwrap();
        e.update(&c, &id, obj(json!({"n": 2})), None, &who()).await.unwrap();
    }
    let s = snapshot(&original.meta, e).await;
    // What the engine wrote this second is in its ledger buffer: a stopping engine flushes it.
    e.flush_ledger().await.unwrap();

    // The metadata is gone: an engine over the same buckets and an empty store rebuilds it. The
    // first run dies after its first collection (as a killed process would), the second resumes.
    let rebuilt = original.over(fresh.meta.clone());
    let crash = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        rebuilt.rebuild(&Default::default(), &|p| {
            assert!(p.done_collections < 1, "killed after its first collection")
        }),
    ))
    .await;
    assert!(crash.is_err(), "the first run was cut short");
    let report = rebuilt.rebuild(&Default::default(), &|_| {}).await.unwrap();
    assert_eq!((report.collections, report.resumed_past), (3, 1), "{report:?}");
    assert!(report.unconfirmed == 0 && report.lost.is_empty(), "{report:?}");
    assert!(report.pruned > 0, "retention's versions stay pruned: {report:?}");
    // They are not in the rebuilt index, so the change feed's mark must come back with them, or
    // a feed resuming before them would skip them silently.
    let mark = original.meta.history_start(&coll()).await.unwrap().pruned_through;
    assert!(mark > 0);
    assert_eq!(fresh.meta.history_start(&coll()).await.unwrap().pruned_through, mark);

    assert_same_reads_as(e, &rebuilt, &s, untiered).await;
    for other in ["others", "more"] {
        let c: chronos::engine::CollectionName = other.parse().unwrap();
        let opts = ListOptions {
            limit: 10,
            ..Default::default()
        };
        let (want, got) = (
            e.list(&c, &opts)
                .await
                .unwrap()
                .records
                .into_iter()
                .map(untiered)
                .collect::<Vec<_>>(),
            rebuilt
                .list(&c, &opts)
                .await
                .unwrap()
                .records
                .into_iter()
                .map(untiered)
                .collect::<Vec<_>>(),
        );
        assert_eq!(got, want, "{other}");
    }
    let checked = rebuilt.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(checked.intact() && checked.unconfirmed.is_empty(), "{checked:?}");

    // Idempotency keys came back; the sequence goes on after every cv.
    let (id, again) = rebuilt
        .create(&coll(), None, obj(json!({"n": 3})), &keyed(&create_key))
        .await
        .unwrap();
    assert!(again.replayed && id == d, "answered from the rebuilt key");
    let (_, out) = rebuilt
        .create(&coll(), None, obj(json!({"n": 0})), &who())
        .await
        .unwrap();
    let last_cv = s.versions.iter().map(|v| v.cv).max().unwrap();
    assert!(out.cv > last_cv, "{} after {last_cv}", out.cv);

    // A store that holds data is refused, unless forced.
    let again = rebuilt.rebuild(&Default::default(), &|_| {}).await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");
    let forced = chronos::engine::rebuild::RebuildOptions {
        force: true,
        ..Default::default()
    };
    rebuilt.rebuild(&forced, &|_| {}).await.unwrap();
}

pub async fn unconfirmed_objects_are_left_out_unless_asked_for(original: &Harness, fresh: &Harness) {
    let e = &original.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"n": 0})), &who()).await.unwrap();
    e.update(&coll(), &id, obj(json!({"n": 1})), None, &who())
        .await
        .unwrap();
    // An engine process that dies after its commits and before its next ledger flush: its
    // buffer is never written (it is leaked, and its flush interval outlasts the test).
    let crashing = || {
        original.replica_with(chronos::engine::EngineSettings {
            ledger_flush: std::time::Duration::from_secs(3600),
            ..Default::default()
        })
    };
    let dies = crashing();
    dies.update(&coll(), &id, obj(json!({"n": 2})), None, &who())
        .await
        .unwrap();
    std::mem::forget(dies);
    // v3 is recorded and names v2 as its predecessor: v2 comes back from its object.
    e.update(&coll(), &id, obj(json!({"n": 3})), None, &who())
        .await
        .unwrap();
    e.flush_ledger().await.unwrap();
    // v4 is named by nothing: it may as well be a write that never committed.
    let dies = crashing();
    dies.update(&coll(), &id, obj(json!({"n": 4})), None, &who())
        .await
        .unwrap();
    std::mem::forget(dies);

    let rebuilt = original.over(fresh.meta.clone());
    let report = rebuilt.rebuild(&Default::default(), &|_| {}).await.unwrap();
    assert_eq!(
        (report.recovered_from_objects, report.unconfirmed),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(report.versions, 4, "{report:?}");
    let latest = rebuilt.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data["n"].as_i64()), (3, Some(3)));
    let v2 = rebuilt
        .get_at(&coll(), &id, VersionTarget::Ov(2), LATEST)
        .await
        .unwrap();
    assert_eq!(v2.data["n"].as_i64(), Some(2));
    let forced = chronos::engine::rebuild::RebuildOptions {
        force: true,
        accept_unconfirmed: true,
    };
    let report = rebuilt.rebuild(&forced, &|_| {}).await.unwrap();
    assert_eq!(report.accepted_unconfirmed, 1, "{report:?}");
    let latest = rebuilt.get_latest(&coll(), &id, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data["n"].as_i64()), (4, Some(4)));
}
