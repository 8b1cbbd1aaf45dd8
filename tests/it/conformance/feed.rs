//! The change feed: the store reads it stands on (the version index in cv order, where the
//! history begins after retention) and the engine's delivery of every committed version once, in
//! cv order, without stalling on cvs that were taken and never committed.

use chronos::engine::store::HistoryStart;
use serde_json::json;

use super::fixtures::{coll, keep_last, obj, who};
use crate::support::Harness;

/// `versions_after` reads every item's versions in cv order, pages by cv, and agrees with each
/// item's own history.
pub async fn the_index_reads_in_cv_order(h: &Harness) {
    let e = &h.engine;
    let mut written = Vec::new();
    for round in 0..3 {
        for name in ["b", "a", "c"] {
            let id = name.parse().unwrap();
            let outcome = if round == 0 {
                e.create(&coll(), Some(id), obj(json!({"n": round})), &who())
                    .await
                    .unwrap()
                    .1
            } else {
                e.update(&coll(), &id, obj(json!({"n": round})), None, &who())
                    .await
                    .unwrap()
            };
            written.push((name.to_owned(), outcome.ov, outcome.cv));
        }
    }
    let all = h.meta.versions_after(&coll(), 0, 100).await.unwrap();
    let seen: Vec<(String, u64, u64)> = all.iter().map(|v| (v.id.to_string(), v.ov, v.cv)).collect();
    assert_eq!(seen, written, "every version, in cv order");
    assert!(all.iter().all(|v| v.meta.get("n").is_some()), "with indexed metadata");

    let third = written[2].2;
    let page = h.meta.versions_after(&coll(), third, 4).await.unwrap();
    let cvs: Vec<u64> = page.iter().map(|v| v.cv).collect();
    assert_eq!(
        cvs,
        written[3..7].iter().map(|w| w.2).collect::<Vec<_>>(),
        "after a cv, limited"
    );
    let last = written.last().unwrap().2;
    assert!(h.meta.versions_after(&coll(), last, 10).await.unwrap().is_empty());
    let other: chronos::engine::CollectionName = "others".parse().unwrap();
    assert!(
        h.meta.versions_after(&other, 0, 10).await.unwrap().is_empty(),
        "per collection"
    );
}

/// Retention raises the collection's pruned-through mark to the highest cv it removed (the
/// feed's 410 rests on it), the oldest cv follows what is left, and a counter reset touches
/// neither.
pub async fn history_start_follows_retention(h: &Harness) {
    let e = &h.engine;
    assert_eq!(h.meta.history_start(&coll()).await.unwrap(), HistoryStart::default());
    let a = "a".parse().unwrap();
    let b = "b".parse().unwrap();
    e.create(&coll(), Some(a), obj(json!({"v": 0})), &who()).await.unwrap(); // cv 1
    e.create(&coll(), Some(b), obj(json!({"v": 0})), &who()).await.unwrap(); // cv 2
    let a = "a".parse().unwrap();
    let b = "b".parse().unwrap();
    let mut cvs = Vec::new();
    for v in 1..=2 {
        cvs.push(
            e.update(&coll(), &a, obj(json!({"v": v})), None, &who())
                .await
                .unwrap()
                .cv,
        );
    }
    let b_last = e
        .update(&coll(), &b, obj(json!({"v": 1})), None, &who())
        .await
        .unwrap()
        .cv;
    let before = h.meta.history_start(&coll()).await.unwrap();
    assert_eq!(before.pruned_through, 0);
    let first_cv = before.oldest_cv.unwrap();

    let report = e.prune_versions(&coll(), &keep_last(1), false).await.unwrap();
    assert_eq!(report.versions_pruned, 3, "a's first two, b's first");
    let after = h.meta.history_start(&coll()).await.unwrap();
    // a's versions at cv 1 and cvs[0] went, and b's at cv 2: the highest removed is cvs[0].
    assert_eq!(after.pruned_through, cvs[0]);
    assert_eq!(after.oldest_cv, Some(cvs[1].min(b_last)));
    assert!(after.oldest_cv > Some(first_cv));

    h.meta.reset_counters(&coll()).await.unwrap();
    assert_eq!(
        h.meta.history_start(&coll()).await.unwrap(),
        after,
        "a counter reset leaves it"
    );
    assert_eq!(
        e.prune_versions(&coll(), &keep_last(1), false)
            .await
            .unwrap()
            .versions_pruned,
        0
    );
    assert_eq!(h.meta.history_start(&coll()).await.unwrap(), after, "never lowered");
}

/// A restore by reference takes cvs like a write, so it is fenced like one: with no grace at all
/// every append comes too late and nothing is committed (a retryable `Unavailable`), through the
/// store, an item restore and a collection restore alike. The feed's bound on how long a taken cv
/// can stay invisible rests on this.
pub async fn a_restore_by_reference_too_late_for_the_orphan_grace_is_not_committed(h: &Harness) {
    use chronos::engine::{EngineSettings, Error, HistoryPoint, Timestamp, VersionTarget};
    // Written by a replica with the default grace: the harness's own engine has none.
    let writer = h.replica_with(EngineSettings::default());
    let id: chronos::engine::ItemId = "r".parse().unwrap();
    let first = writer
        .create(&coll(), Some(id.clone()), obj(json!({"v": 0})), &who())
        .await
        .unwrap()
        .1;
    writer
        .update(&coll(), &id, obj(json!({"v": 1})), None, &who())
        .await
        .unwrap();
    let before = h.meta.versions_after(&coll(), 0, 100).await.unwrap();

    let late = h
        .engine
        .restore_object(&coll(), &id, VersionTarget::Ov(0), None, &who())
        .await;
    assert!(matches!(late, Err(Error::Unavailable { .. })), "item restore: {late:?}");
    let late = h
        .engine
        .restore_collection(&coll(), HistoryPoint::Cv(first.cv), false, &who(), |_, _| {})
        .await;
    assert!(
        matches!(late, Err(Error::Unavailable { .. })),
        "collection restore: {late:?}"
    );

    let head = h.meta.head(&coll(), &id).await.unwrap().unwrap();
    let write = chronos::engine::RefWrite {
        expected_ov: head.ov,
        version: chronos::engine::VersionEntry {
            ov: head.ov + 1,
            write_id: uuid::Uuid::now_v7().simple().to_string(),
            ..before[0].clone()
        },
        keep_inline: false,
        source: Some(0),
    };
    let late = h
        .meta
        .append_by_reference(&coll(), vec![write], Timestamp::UNIX_EPOCH)
        .await;
    assert!(matches!(late, Err(Error::Unavailable { .. })), "store: {late:?}");

    assert_eq!(
        h.meta.versions_after(&coll(), 0, 100).await.unwrap(),
        before,
        "nothing was appended"
    );
    assert_eq!(
        h.meta.head(&coll(), &id).await.unwrap().unwrap(),
        head,
        "the head did not move"
    );
    assert_eq!(
        writer
            .get_latest(&coll(), &id, super::fixtures::LATEST)
            .await
            .unwrap()
            .data["v"],
        1
    );
}
