//! Writes: create, update, delete and their preconditions (ov/cv, taken ids, missing items,
//! injected system fields, oversized bodies), racing writers, and the orphan-grace deadline.

use std::collections::BTreeMap;

use chronos::engine::{Attribution, Error, ItemId, Op, State, VersionTarget};
use serde_json::{Map, Value, json};

use super::fixtures::{LATEST, WITH_DELETED, coll, obj, who};
use crate::support::Harness;

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
        e.get_at(&coll(), &ghost, VersionTarget::Ov(0), WITH_DELETED).await,
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
        e.get_at(&coll(), &id, VersionTarget::Ov(1), LATEST).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        e.get_at(&coll(), &id, VersionTarget::Ov(1), WITH_DELETED)
            .await
            .unwrap()
            .system
            .deleted
    );
    assert_eq!(
        e.get_at(&coll(), &id, VersionTarget::Ov(0), LATEST).await.unwrap().data,
        obj(json!({"keep": "me"}))
    );
    assert!(matches!(
        e.get_at(&coll(), &id, VersionTarget::At(d.at), LATEST).await,
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
        let r = h
            .engine
            .get_at(&coll(), &id, VersionTarget::Ov(*ov), LATEST)
            .await
            .unwrap();
        assert_eq!(&r.data, data, "version {ov} holds what its writer sent");
    }
    // Losers left nothing behind: exactly one payload per version (at its key or in a pack).
    let stored = super::fixtures::stored_payloads(h, &id).await;
    assert_eq!(stored.len() as u64, total + 1, "orphaned payloads: {stored:?}");
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
