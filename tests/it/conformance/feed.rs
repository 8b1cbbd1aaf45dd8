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
    let (a, b): (chronos::engine::ItemId, chronos::engine::ItemId) = ("a".parse().unwrap(), "b".parse().unwrap());
    e.create(&coll(), Some(a.clone()), obj(json!({"v": 0})), &who())
        .await
        .unwrap(); // cv 1
    e.create(&coll(), Some(b.clone()), obj(json!({"v": 0})), &who())
        .await
        .unwrap(); // cv 2
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

/// No filter: every op, every property.
fn everything(h: &Harness) -> chronos::engine::ChangeFilter {
    h.engine
        .change_filter(&coll(), &serde_json::Value::Null, vec![])
        .unwrap()
}

/// Page through the feed from `after` with pages of `limit` until it has nothing more at once.
async fn read_feed(
    h: &Harness,
    after: u64,
    limit: usize,
    filter: &chronos::engine::ChangeFilter,
) -> (Vec<chronos::engine::VersionEntry>, u64) {
    let mut got = Vec::new();
    let mut at = after;
    loop {
        let page = h.engine.changes(&coll(), at, limit, filter).await.unwrap();
        assert!(page.next >= at, "the cursor never goes back");
        got.extend(page.changes);
        at = page.next;
        if !page.full {
            return (got, at);
        }
    }
}

/// Every version, in cv order, through pages of any size; a filter on indexed metadata and
/// `ops` keep what they admit while the cursor still moves past the rest.
pub async fn the_feed_delivers_every_version_in_cv_order(h: &Harness) {
    use chronos::engine::Op;
    let e = &h.engine;
    for i in 0..5 {
        let id: chronos::engine::ItemId = format!("f{i}").parse().unwrap();
        e.create(&coll(), Some(id.clone()), obj(json!({"kind": "a", "n": i})), &who())
            .await
            .unwrap();
        e.update(&coll(), &id, obj(json!({"kind": "b", "n": i})), None, &who())
            .await
            .unwrap();
        if i % 2 == 0 {
            e.delete(&coll(), &id, None, &who()).await.unwrap();
        }
    }
    let index = h.meta.versions_after(&coll(), 0, 1000).await.unwrap();
    assert_eq!(index.len(), 13);
    for limit in [1, 2, 5, 1000] {
        let (got, next) = read_feed(h, 0, limit, &everything(h)).await;
        assert_eq!(got, index, "pages of {limit}: every version once, in cv order");
        assert_eq!(next, index.last().unwrap().cv);
    }
    let (tail, _) = read_feed(h, index[6].cv, 3, &everything(h)).await;
    assert_eq!(tail, index[7..], "resumes after a cv");
    let empty = e.changes(&coll(), index[12].cv, 10, &everything(h)).await.unwrap();
    assert!(empty.changes.is_empty() && empty.held_back.is_none() && !empty.full);
    assert_eq!(empty.next, index[12].cv, "nothing new: the cursor stays");

    let bs = e
        .change_filter(&coll(), &json!({"kind": "b", "n": {"$gte": 1}}), vec![])
        .unwrap();
    let (got, next) = read_feed(h, 0, 2, &bs).await;
    let want: Vec<_> = index
        .iter()
        .filter(|v| v.meta["kind"] == "b" && v.meta["n"].as_u64() >= Some(1))
        .cloned()
        .collect();
    assert_eq!(
        (got, next),
        (want, index[12].cv),
        "filtered, and the cursor passes the rest"
    );
    let deletes = e
        .change_filter(&coll(), &serde_json::Value::Null, vec![Op::Delete])
        .unwrap();
    let (got, _) = read_feed(h, 0, 4, &deletes).await;
    assert_eq!(
        got.iter().map(|v| v.id.to_string()).collect::<Vec<_>>(),
        ["f0", "f2", "f4"]
    );
    assert!(got.iter().all(|v| v.op == Op::Delete && v.deleted));

    assert!(matches!(
        e.change_filter(&coll(), &json!({"n": {"$where": 1}}), vec![]),
        Err(chronos::engine::Error::Validation { .. })
    ));
    for bad in [0, 1001] {
        assert!(matches!(
            e.changes(&coll(), 0, bad, &everything(h)).await,
            Err(chronos::engine::Error::Validation { .. })
        ));
    }
}

/// A cv taken by a write whose payload upload failed is never committed: the versions above it
/// wait for it, but no longer than the orphan grace (3 s here) after they were first seen.
pub async fn a_cv_taken_and_never_committed_holds_the_feed_only_for_the_grace(h: &Harness) {
    use std::sync::atomic::Ordering;
    let e = &h.engine;
    let a: chronos::engine::ItemId = "a".parse().unwrap();
    let first = e
        .create(&coll(), Some(a.clone()), obj(json!({"n": 0})), &who())
        .await
        .unwrap()
        .1;
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let failed = e.update(&coll(), &a, obj(json!({"n": 1})), None, &who()).await;
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    assert!(failed.is_err(), "the upload failed: {failed:?}");
    let b = e.create(&coll(), None, obj(json!({"n": 2})), &who()).await.unwrap().1;
    assert!(
        b.cv > first.cv + 1,
        "the failed write took a cv: {} then {}",
        first.cv,
        b.cv
    );

    let started = std::time::Instant::now();
    let page = e.changes(&coll(), 0, 10, &everything(h)).await.unwrap();
    assert_eq!(page.changes.iter().map(|v| v.cv).collect::<Vec<_>>(), [first.cv]);
    assert_eq!(page.next, first.cv, "the cursor stops below the gap");
    let wait = page.held_back.expect("the version above the gap is held back");
    assert!(wait <= std::time::Duration::from_secs(3), "{wait:?}");

    // Then it goes, within the grace (plus the time the reads take).
    let deadline = started + std::time::Duration::from_secs(15);
    loop {
        let page = e.changes(&coll(), first.cv, 10, &everything(h)).await.unwrap();
        if let Some(v) = page.changes.first() {
            assert_eq!((v.cv, page.next, page.held_back), (b.cv, b.cv, None));
            assert!(
                started.elapsed() >= std::time::Duration::from_millis(2900),
                "not before the grace"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the gap never settled");
        tokio::time::sleep(
            page.held_back
                .unwrap_or_default()
                .min(std::time::Duration::from_millis(200)),
        )
        .await;
    }
}

/// A version committed with a lower cv after a higher one was already visible (a straggler) is
/// delivered, before the higher one, never skipped.
pub async fn a_lower_cv_committed_after_a_higher_one_is_not_skipped(h: &Harness) {
    use chronos::engine::model::{Content, Op, VersionEntry, now};
    use chronos::engine::store::{HeadChange, Held, NewData};
    let begin = |name: &str| {
        let change = HeadChange {
            collection: coll(),
            id: name.parse().unwrap(),
            op: Op::Create,
            expected_ov: None,
            write_id: uuid::Uuid::now_v7().simple().to_string(),
            at: now(),
            data: Some(NewData {
                content: Content::from_json("{}".into()),
                meta: Default::default(),
                inline: true,
            }),
            function_id: None,
            request_key: None,
            commit_by: chronos::engine::Timestamp::MAX,
        };
        let meta = h.meta.clone();
        async move {
            let held: Held = meta.begin_write(change.clone()).await.unwrap();
            let entry = VersionEntry {
                id: change.id.clone(),
                ov: held.ov,
                cv: held.cv,
                op: Op::Create,
                at: change.at,
                actor: None,
                reason: None,
                write_id: change.write_id.clone(),
                size: 2,
                checksum: Content::from_json("{}".into()).checksum,
                meta: Default::default(),
                deleted: false,
                request: None,
                payload_ref: None,
            };
            (held, entry)
        }
    };
    h.meta.prepare_collection(&coll(), &[]).await.unwrap();
    let (early, early_entry) = begin("early").await;
    let (late, late_entry) = begin("late").await;
    assert!(early.cv < late.cv);
    late.write.commit(late_entry.clone()).await.unwrap();

    let page = h.engine.changes(&coll(), 0, 10, &everything(h)).await.unwrap();
    assert!(page.changes.is_empty(), "the higher cv waits: {:?}", page.changes);
    assert_eq!(page.next, early.cv - 1);
    assert!(page.held_back.is_some());

    early.write.commit(early_entry.clone()).await.unwrap();
    let page = h.engine.changes(&coll(), 0, 10, &everything(h)).await.unwrap();
    let cvs: Vec<u64> = page.changes.iter().map(|v| v.cv).collect();
    assert_eq!(cvs, [early.cv, late.cv], "both, in cv order");
    assert_eq!((page.next, page.held_back), (late.cv, None));
}

/// A resume point below a cv retention removed is refused (410 `history_pruned`) with where
/// the feed is complete again, never answered with a silent gap.
pub async fn a_resume_point_retention_cut_into_is_refused(h: &Harness) {
    use chronos::engine::Error;
    let e = &h.engine;
    let id: chronos::engine::ItemId = "p".parse().unwrap();
    e.create(&coll(), Some(id.clone()), obj(json!({"v": 0})), &who())
        .await
        .unwrap();
    let mut cvs = Vec::new();
    for v in 1..=3 {
        cvs.push(
            e.update(&coll(), &id, obj(json!({"v": v})), None, &who())
                .await
                .unwrap()
                .cv,
        );
    }
    e.prune_versions(&coll(), &keep_last(2), false).await.unwrap();
    for after in [0, cvs[0] - 1] {
        match e.changes(&coll(), after, 10, &everything(h)).await {
            Err(Error::HistoryPruned {
                after: a,
                oldest_cv,
                pruned_through,
            }) => {
                assert_eq!((a, oldest_cv, pruned_through), (after, Some(cvs[1]), cvs[0]));
            }
            other => panic!("after {after}: {other:?}"),
        }
    }
    let page = e.changes(&coll(), cvs[0], 10, &everything(h)).await.unwrap();
    assert_eq!(page.changes.iter().map(|v| v.cv).collect::<Vec<_>>(), cvs[1..]);
}

/// Collect a subscription's changes until it has delivered `cv` (or the deadline passes).
pub async fn follow_until(sub: &mut chronos::engine::Subscription, cv: u64) -> Vec<chronos::engine::VersionEntry> {
    let mut got = Vec::new();
    let deadline = std::time::Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        while sub.cursor() < cv {
            got.extend(sub.next().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("cv {cv} not delivered within {deadline:?}; cursor {}", sub.cursor()));
    got
}

/// Live subscriptions are woken by commits (of this engine and of another replica over the same
/// stores), deliver every version once in cv order, share the tail (one joining later from an
/// older cursor catches up on its own), apply their filters, and refuse a pruned resume point.
pub async fn subscriptions_follow_commits_in_cv_order(h: &Harness) {
    use chronos::engine::Error;
    let e = &h.engine;
    let everything_sub = e.subscribe(&coll(), 0, everything(h)).await.unwrap();
    let odd = e.change_filter(&coll(), &json!({"odd": true}), vec![]).unwrap();
    let odd_sub = e.subscribe(&coll(), 0, odd).await.unwrap();
    // Live while the writers write: each reader hands on what it gets as it gets it.
    let readers: Vec<_> = [everything_sub, odd_sub]
        .into_iter()
        .map(|mut sub| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    if tx.send(sub.next().await.unwrap()).is_err() {
                        return;
                    }
                }
            });
            (task, rx)
        })
        .collect();

    let other = h.replica();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let engine = if w % 2 == 0 { e.clone() } else { other.clone() };
            tokio::spawn(async move {
                let id: chronos::engine::ItemId = format!("w{w}").parse().unwrap();
                engine
                    .create(&coll(), Some(id.clone()), obj(json!({"odd": false})), &who())
                    .await
                    .unwrap();
                for n in 1..5 {
                    engine
                        .update(&coll(), &id, obj(json!({"odd": n % 2 == 1})), None, &who())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let index = h.meta.versions_after(&coll(), 0, 1000).await.unwrap();
    assert_eq!(index.len(), 20);
    let last = index.last().unwrap().cv;
    let odd: Vec<_> = index.iter().filter(|v| v.meta["odd"] == true).cloned().collect();

    for ((task, mut rx), want) in readers.into_iter().zip([index.clone(), odd.clone()]) {
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while got.len() < want.len() {
                got.extend(rx.recv().await.unwrap());
            }
        })
        .await
        .unwrap_or_else(|_| panic!("got {} of {} versions", got.len(), want.len()));
        assert_eq!(got, want, "every version (the filter admits) once, in cv order");
        task.abort();
    }

    let mut late = e.subscribe(&coll(), index[9].cv, everything(h)).await.unwrap();
    assert_eq!(
        follow_until(&mut late, last).await,
        index[10..],
        "a late joiner from an old cursor"
    );
    let mut all = e.subscribe(&coll(), 0, everything(h)).await.unwrap();
    assert_eq!(
        follow_until(&mut all, last).await,
        index,
        "from the start after the fact"
    );

    // One more commit wakes a subscriber waiting at the tail.
    let waiting = tokio::spawn(async move {
        let got = all.next().await.unwrap();
        (got, all)
    });
    let next = e
        .update(&coll(), &"w0".parse().unwrap(), obj(json!({"odd": true})), None, &who())
        .await
        .unwrap();
    let (got, _) = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.iter().map(|v| v.cv).collect::<Vec<_>>(), [next.cv]);

    e.prune_versions(&coll(), &keep_last(1), false).await.unwrap();
    assert!(matches!(
        e.subscribe(&coll(), 0, everything(h)).await,
        Err(Error::HistoryPruned { .. })
    ));
}
