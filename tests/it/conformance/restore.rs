//! Restores: of one item and of a collection, by reference without copying payloads, and racing
//! with writers — an acknowledged write is never overwritten.

use chronos::engine::{Attribution, Error, ItemId, Op, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, WITH_DELETED, coll, enrichment, obj, payload_keys, stale_restore, who};
use crate::support::Harness;

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
        e.get_at(&coll(), &id, VersionTarget::Ov(1), LATEST).await.unwrap().data,
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
        let target = e.get_at(&coll(), id, VersionTarget::Ov(0), LATEST).await.unwrap();
        let restored = e.get_at(&coll(), id, VersionTarget::Ov(2), LATEST).await.unwrap();
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
    let del = e
        .get_at(&coll(), &late, VersionTarget::Ov(1), WITH_DELETED)
        .await
        .unwrap();
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
        e.get_at(&coll(), &ids[0], VersionTarget::Ov(r.ov), LATEST)
            .await
            .unwrap()
            .data,
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
    let restored = e.get_at(&coll(), &id, VersionTarget::Ov(4), LATEST).await.unwrap();
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
        let r = e
            .get_at(&coll(), &id, VersionTarget::Ov(ov as u64), WITH_DELETED)
            .await
            .unwrap();
        assert_eq!(r.data, obj(want.clone()), "v{ov}");
        let at = e
            .get_at(&coll(), &id, VersionTarget::At(r.system.updated_at), WITH_DELETED)
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
        super::fixtures::stored_payloads(h, &id).await.len(),
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
    let ok = e.get_at(&coll(), &a, VersionTarget::Ov(2), LATEST).await.unwrap();
    assert_eq!(ok.data, obj(json!({"secret": "a"})));
    let key_a0 = payload_keys(h, &a).await.remove(0);
    assert!(key_a0.starts_with(&format!("things/{a}/v0.")), "{key_a0}");
    let key_b = payload_keys(h, &b).await.remove(0);
    let body_b = h.payloads.get(&key_b).await.unwrap().unwrap();
    h.payloads.put(&key_a0, body_b).await.unwrap();
    for r in [
        e.get_at(&coll(), &a, VersionTarget::Ov(2), LATEST).await,
        e.get_latest(&coll(), &a, LATEST).await,
    ] {
        assert!(matches!(r, Err(Error::Corrupt(_))), "served instead of refused: {r:?}");
    }
    // Another version of the same item is refused too (checked by ov and write id).
    let key_a1 = payload_keys(h, &a).await.remove(1);
    let body_a1 = h.payloads.get(&key_a1).await.unwrap().unwrap();
    h.payloads.put(&key_a0, body_a1).await.unwrap();
    let r = e.get_at(&coll(), &a, VersionTarget::Ov(2), LATEST).await;
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
}

/// (Packed only: only a packed version's bytes ever move.) A restore that read a version's slot
/// before compaction (or a hold) moved the bytes can't commit a reference to the old place,
/// however late it comes: the old pack may be gone by then.
/// The append checks that its source entry still names the pack it copied; moved back, the same
/// append goes through and reads back.
pub async fn a_reference_to_a_slot_moved_meanwhile_is_not_committed(h: &Harness) {
    let e = &h.engine;
    let (a, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    e.update(&coll(), &a, obj(json!({"v": 1})), Some(0), &who())
        .await
        .unwrap();
    let v0 = h.meta.version(&coll(), &a, 0).await.unwrap().unwrap();
    assert!(v0.payload().pack.is_some(), "a check of the packed suite");
    let stale = stale_restore(&v0, 1);
    // Moved out of its pack, to an object of its own (as a hold does).
    let c = coll();
    assert!(h.move_payload(&c, &a, 0, None).await >= 1, "v0's entry moved");
    let append =
        |w: chronos::engine::RefWrite| h.meta.append_by_reference(&c, vec![w], chronos::engine::Timestamp::MAX);
    assert_eq!(
        append(stale.clone()).await.unwrap(),
        None,
        "the old slot is not committed"
    );
    assert_eq!(
        e.get_latest(&coll(), &a, LATEST).await.unwrap().ov,
        1,
        "nothing written"
    );

    assert!(h.move_payload(&c, &a, 0, v0.payload().pack).await >= 1, "moved back");
    assert!(append(stale).await.unwrap().is_some(), "the same slot again: committed");
    let latest = e.get_latest(&coll(), &a, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data), (2, obj(json!({"v": 0}))));
}

/// (Packed only.) Two movers of one payload race — compaction copying it into a new pack while a
/// hold moves it to its own object: the one that comes second copied from a place the versions no
/// longer name, and its repointing changes nothing, so the versions keep naming the bytes the
/// first mover put where they are (for a hold: the locked object).
pub async fn a_move_from_a_place_no_longer_named_changes_nothing(h: &Harness) {
    let e = &h.engine;
    let (a, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    let v0 = h.meta.version(&coll(), &a, 0).await.unwrap().unwrap();
    let packed = v0.payload().pack.cloned().expect("a check of the packed suite");
    let c = coll();
    assert_eq!(
        h.move_payload(&c, &a, 0, None).await,
        2,
        "v0 and the head moved to its own object"
    );
    let late = chronos::engine::store::Repoint {
        payload: (0, &v0.write_id),
        from: Some(&packed.key),
        to: Some(&chronos::engine::PackSlot {
            key: format!("{}.copy", packed.key),
            ..packed.clone()
        }),
    };
    assert_eq!(h.meta.repoint_payload(&c, &a, late).await.unwrap(), 0);
    let now = h.meta.version(&c, &a, 0).await.unwrap().unwrap();
    assert_eq!(now.payload().pack, None, "still its own object");
    let latest = e.get_latest(&c, &a, LATEST).await.unwrap();
    assert_eq!(latest.payload().pack, None);
    assert_eq!(latest.data, obj(json!({"v": 0})));
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
        let r = e.get_at(&coll(), id, VersionTarget::Ov(*ov), LATEST).await.unwrap();
        assert_eq!(&r.data, data, "{id} v{ov}: an acknowledged write was overwritten");
    }
    for id in &ids {
        let hist = e.history(&coll(), id, None, 100, LATEST).await.unwrap();
        let ovs: Vec<u64> = hist.iter().map(|v| v.ov).collect();
        assert_eq!(ovs, (0..hist.len() as u64).collect::<Vec<_>>(), "{id}: gapless");
        assert!(hist.windows(2).all(|w| w[0].cv < w[1].cv), "{id}: cv increases");
        for v in hist.iter().filter(|v| v.op == Op::Restore) {
            let r = e.get_at(&coll(), id, VersionTarget::Ov(v.ov), LATEST).await.unwrap();
            assert_eq!(r.data, obj(json!({"v": "target"})), "{id} v{}", v.ov);
        }
        assert!(
            hist.iter().filter(|v| v.op == Op::Restore).count() <= 1,
            "{id}: restored once"
        );
    }
}
