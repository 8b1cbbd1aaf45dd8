//! Counters: every write counted exactly once, and totals that survive retention.

use chronos::engine::{ListOptions, Op, VersionTarget};
use serde_json::{Value, json};

use super::fixtures::{WITH_DELETED, coll, keep_last, obj, who};
use crate::support::Harness;

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
