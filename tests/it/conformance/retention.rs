//! Retention: pruning the version index keeps old versions readable, and never deletes a payload
//! a restore (finished or concurrent) still uses.

use chronos::engine::{Error, ItemId, ListOptions, VersionTarget};
use serde_json::{Value, json};

use super::fixtures::{LATEST, coll, keep_last, obj, payload_keys, stale_restore, who};
use crate::support::Harness;

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
        let r = e.get_at(&coll(), &a, VersionTarget::Ov(ov), LATEST).await.unwrap();
        assert_eq!(
            (r.ov, r.data["v"].as_u64()),
            (ov, Some(ov)),
            "pruned versions stay readable"
        );
    }
    let r = e
        .get_at(&coll(), &a, VersionTarget::At(first.at), LATEST)
        .await
        .unwrap();
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
    assert_eq!(
        e.get_at(&coll(), &a, VersionTarget::Ov(4), LATEST).await.unwrap().data["v"],
        4
    );
    assert!(matches!(
        e.prune_versions(&coll(), &PrunePolicy::default(), false).await,
        Err(Error::Validation { .. })
    ));
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
    let r = e.get_at(&coll(), &b, VersionTarget::Ov(2), LATEST).await.unwrap();
    assert_eq!(
        r.data,
        obj(json!({"v": "b0"})),
        "a pruned restored version stays readable"
    );
    assert_eq!(
        e.get_at(&coll(), &a, VersionTarget::Ov(2), LATEST).await.unwrap().data,
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
    assert!(keys[0].starts_with(&format!("things/{c}/v0.")), "{keys:?}");
    assert_eq!(
        e.get_latest(&coll(), &c, LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
    assert_eq!(
        e.get_at(&coll(), &c, VersionTarget::Ov(2), LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
    assert!(e.mark_item_processed(&coll(), &c).await.is_ok());
    assert_eq!(
        e.get_latest(&coll(), &c, LATEST).await.unwrap().data,
        obj(json!({"v": "c0"}))
    );
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
    let stale = stale_restore(&v0, 3);
    assert_eq!(
        h.meta
            .append_by_reference(&coll(), vec![stale], chronos::engine::Timestamp::MAX)
            .await
            .unwrap(),
        None
    );
    // A restore of v0, now only in the manifest with its payload about to go.
    e.restore_object(&coll(), &a, VersionTarget::Ov(0), Some(3), &who())
        .await
        .unwrap();
    e.delete_pruned_payloads(plan).await.unwrap();

    let latest = e.get_latest(&coll(), &a, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data), (4, obj(json!({"v": 0}))));
    for (ov, v) in [(2, 2), (3, 1), (4, 0)] {
        assert_eq!(
            e.get_at(&coll(), &a, VersionTarget::Ov(ov), LATEST).await.unwrap().data,
            obj(json!({"v": v})),
            "v{ov} reads back"
        );
    }
    let keys = payload_keys(h, &a).await;
    assert!(
        !keys.iter().any(|k| k.starts_with(&format!("things/{a}/v0."))),
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
    assert_eq!(v5.payload().ov, 5, "a copy, not a reference");
    // To v0, whose payload is gone: a clear 404, and the item stays as it was.
    let gone = e.restore_object(&coll(), &a, VersionTarget::Ov(0), None, &who()).await;
    assert!(
        matches!(&gone, Err(Error::NotFound(m)) if m.contains("pruned")),
        "{gone:?}"
    );
    assert_eq!(e.get_latest(&coll(), &a, LATEST).await.unwrap().ov, 5);
}
