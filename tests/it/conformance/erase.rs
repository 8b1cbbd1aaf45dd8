//! Erasure: after an item is erased, no byte of it is left in any store — payloads, content,
//! manifests, the ledger, every metadata document or row, the queue — reads answer 410 `erased`,
//! and no restore, rebuild or queued retry brings it back; other items, the counters and the
//! history's integrity are untouched. By filter, an item is found by any of its versions; an
//! erasure cut short is finished by asking again.

use std::sync::atomic::Ordering;

use chronos::engine::store::HistoryPoint;
use chronos::engine::{
    EraseRequest, EraseTarget, ErasureStatus, Error, ItemId, PayloadStore, Submitted, VersionTarget, WriteRequest,
};
use serde_json::json;

use super::fixtures::{LATEST, WITH_DELETED, all_ids, coll, enrichment, keep_last, keyed, obj, unique_key, who};
use crate::support::Harness;

/// Every object of a store whose key or bytes contain `marker`.
async fn objects_with(store: &dyn PayloadStore, marker: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = store.list("", after.as_deref(), 1000).await.unwrap();
        let Some(last) = keys.last().cloned() else { break };
        for k in keys {
            let body = store.get(&k).await.unwrap().unwrap_or_default();
            if k.contains(marker) || String::from_utf8_lossy(&body).contains(marker) {
                hits.push(k);
            }
        }
        after = Some(last);
    }
    hits
}

/// Where `marker` is still found: objects of the payload and aux (backups + content) stores,
/// and the raw metadata and queue.
async fn traces(h: &Harness, marker: &str) -> Vec<String> {
    let mut hits = objects_with(h.payloads.as_ref(), marker).await;
    hits.extend(objects_with(h.aux().as_ref(), marker).await);
    let text = h.metadata_text().await;
    hits.extend(
        text.lines()
            .filter(|l| l.contains(marker))
            .map(|l| format!("metadata: {}", &l[..l.len().min(200)])),
    );
    hits
}

fn is_erased<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Erased(_)))
}

fn request(target: EraseTarget) -> EraseRequest {
    EraseRequest {
        target,
        actor: Some("dpo".into()),
        reason: "GDPR art. 17 request 42".into(),
    }
}

pub async fn an_erased_item_leaves_no_trace_and_nothing_brings_it_back(h: &Harness, fresh: &Harness) {
    let e = &h.engine;
    let marker = format!("MARKER{}", uuid::Uuid::now_v7().simple());
    let victim: ItemId = "victim".parse().unwrap();
    let bystander: ItemId = "bystander".parse().unwrap();
    let (_, created) = e
        .create(
            &coll(),
            Some(victim.clone()),
            obj(json!({"subject": marker, "n": 1, "body": format!("a long text about {marker}")})),
            &who(),
        )
        .await
        .unwrap();
    e.create(
        &coll(),
        Some(bystander.clone()),
        obj(json!({"subject": "bob", "n": 1})),
        &who(),
    )
    .await
    .unwrap();
    e.update(
        &coll(),
        &victim,
        obj(json!({"subject": marker, "n": 6})),
        None,
        &keyed(&unique_key("up")),
    )
    .await
    .unwrap();
    e.enrich(
        &coll(),
        &victim,
        &[obj(json!({"tag": marker}))],
        &enrichment("tagger"),
        &who(),
    )
    .await
    .unwrap();
    e.update(
        &coll(),
        &bystander,
        obj(json!({"subject": "bob", "n": 2})),
        None,
        &who(),
    )
    .await
    .unwrap();
    // Restored by reference to its first version, then written again: retention prunes its
    // oldest versions into a manifest, keeping the payload the restore refers to.
    e.restore_object(&coll(), &victim, VersionTarget::Ov(0), None, &who())
        .await
        .unwrap();
    e.update(
        &coll(),
        &victim,
        obj(json!({"subject": "renamed", "n": 7})),
        None,
        &who(),
    )
    .await
    .unwrap();
    let pruned = e.prune_versions(&coll(), &keep_last(2), false).await.unwrap();
    assert!(pruned.versions_pruned >= 3, "{pruned:?}");
    // A write kept by the retry queue while S3 was down holds the data in its body.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let queued = e
        .submit(
            &coll(),
            WriteRequest::Update {
                id: victim.clone(),
                data: obj(json!({"subject": marker, "n": 8})),
                expected_ov: None,
            },
            &who(),
        )
        .await
        .unwrap();
    assert!(matches!(queued, Submitted::Queued(_)), "{queued:?}");
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    e.flush_ledger().await.unwrap();
    assert!(!traces(h, &marker).await.is_empty(), "the workload wrote the marker");
    let totals = e.totals(&coll()).await.unwrap();
    let bystander_before = e.get_latest(&coll(), &bystander, LATEST).await.unwrap();
    let victim_head = h.meta.head(&coll(), &victim).await.unwrap().unwrap();

    let erasure = e
        .erase(&coll(), &request(EraseTarget::Item(victim.clone())))
        .await
        .unwrap();
    assert_eq!(erasure.status, ErasureStatus::Done);
    assert_eq!(erasure.items.len(), 1);
    assert_eq!(
        erasure.versions, 2,
        "the versions the index held (keep_last 2): {erasure:?}"
    );
    assert!(erasure.objects >= 4, "payloads and content: {erasure:?}");
    assert_eq!(erasure.sha256.len(), 64);
    // The record is kept in the metadata store too.
    let stored = h.meta.erasure_records().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].contains(&erasure.id) && stored[0].contains(r#""status":"done""#),
        "{stored:?}"
    );

    // No byte of it anywhere.
    assert_eq!(traces(h, &marker).await, Vec::<String>::new());
    // Others untouched; the counters count the erased versions as what they were.
    assert_eq!(
        e.get_latest(&coll(), &bystander, LATEST).await.unwrap(),
        bystander_before
    );
    assert_eq!(e.totals(&coll()).await.unwrap(), totals);

    // Reads: 410 for the item, every version (indexed or pruned), its history and its proofs.
    assert!(is_erased(e.get_latest(&coll(), &victim, WITH_DELETED).await));
    for ov in 0..=victim_head.ov {
        let r = e.get_at(&coll(), &victim, VersionTarget::Ov(ov), WITH_DELETED).await;
        assert!(matches!(r, Err(Error::Erased(_))), "v{ov}: {r:?}");
    }
    assert!(is_erased(
        e.get_at(&coll(), &victim, VersionTarget::At(created.at), WITH_DELETED)
            .await
    ));
    assert!(is_erased(e.history(&coll(), &victim, None, 100, WITH_DELETED).await));
    assert!(is_erased(e.proof(&coll(), &victim, victim_head.ov).await));
    let listed = all_ids(e).await;
    assert_eq!(listed, vec![bystander.clone()]);
    // Tombstones keep the numbering: the head keeps its ov, the id stays taken.
    let head = h.meta.head(&coll(), &victim).await.unwrap().unwrap();
    assert!(head.erased() && head.ov == victim_head.ov && head.meta.is_empty() && head.inline.is_none());
    assert!(matches!(
        e.create(&coll(), Some(victim.clone()), obj(json!({"n": 1})), &who())
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(is_erased(
        e.update(&coll(), &victim, obj(json!({"n": 1})), None, &who()).await
    ));
    assert!(is_erased(
        e.erase(&coll(), &request(EraseTarget::Item(victim.clone()))).await
    ));

    // Nothing brings it back: a restore of the item or of the collection, the queue, a rebuild.
    assert!(is_erased(
        e.restore_object(&coll(), &victim, VersionTarget::Ov(0), None, &who())
            .await
    ));
    e.restore_collection(&coll(), HistoryPoint::At(created.at), false, &who(), |_, _| {})
        .await
        .unwrap();
    assert!(is_erased(e.get_latest(&coll(), &victim, WITH_DELETED).await));
    assert_eq!(e.drain_queue(2).await.unwrap(), 0, "its queued write is gone");
    e.flush_ledger().await.unwrap();
    let rebuilt = h.over(fresh.meta.clone());
    rebuilt.rebuild(&Default::default(), &|_| {}).await.unwrap();
    assert!(is_erased(rebuilt.get_latest(&coll(), &victim, WITH_DELETED).await));
    assert!(is_erased(
        rebuilt
            .get_at(&coll(), &victim, VersionTarget::Ov(0), WITH_DELETED)
            .await
    ));
    assert_eq!(traces(h, &marker).await, Vec::<String>::new(), "and no trace came back");
    assert_eq!(
        fresh.meta.erasure_records().await.unwrap(),
        stored,
        "the rebuild brought the record"
    );
    let rebuilt_text = fresh.metadata_text().await;
    assert!(!rebuilt_text.contains(&marker), "the rebuilt store holds none of it");

    // The rebuilt store answers the others as the original does, counts the same, and the
    // history's integrity holds on both.
    assert_eq!(
        rebuilt
            .get_latest(&coll(), &bystander, WITH_DELETED)
            .await
            .unwrap()
            .data,
        e.get_latest(&coll(), &bystander, WITH_DELETED).await.unwrap().data
    );
    assert_eq!(rebuilt.totals(&coll()).await.unwrap(), e.totals(&coll()).await.unwrap());
    let checked = e.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(checked.intact(), "{checked:?}");
    let checked = rebuilt.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(checked.intact(), "{checked:?}");
}

pub async fn erase_by_filter_finds_every_version_and_a_cut_short_erasure_finishes(h: &Harness, _fresh: &Harness) {
    let e = &h.engine;
    let subject = format!("S{}", uuid::Uuid::now_v7().simple());
    let (a, b, c): (ItemId, ItemId, ItemId) = ("a".parse().unwrap(), "b".parse().unwrap(), "c".parse().unwrap());
    e.create(
        &coll(),
        Some(a.clone()),
        obj(json!({"subject": subject, "n": 1})),
        &who(),
    )
    .await
    .unwrap();
    // The subject id changed later: the item is still found by its first version.
    e.update(
        &coll(),
        &a,
        obj(json!({"subject": "someone-else", "n": 2})),
        None,
        &who(),
    )
    .await
    .unwrap();
    e.create(
        &coll(),
        Some(b.clone()),
        obj(json!({"subject": subject, "n": 3})),
        &who(),
    )
    .await
    .unwrap();
    e.create(
        &coll(),
        Some(c.clone()),
        obj(json!({"subject": "other", "n": 4})),
        &who(),
    )
    .await
    .unwrap();
    e.flush_ledger().await.unwrap();
    let filter = json!({"subject": subject});
    assert!(matches!(
        e.erase(&coll(), &request(EraseTarget::Matching(json!({})))).await,
        Err(Error::Validation { .. })
    ));

    // The ledger can't be rewritten now: the erasure stops after the item's data went, and its
    // record stays `started`.
    h.faults
        .fail_puts_containing
        .lock()
        .unwrap()
        .push("chronos-ledger".into());
    assert!(
        e.erase(&coll(), &request(EraseTarget::Matching(filter.clone())))
            .await
            .is_err()
    );
    let records = e.erasures(Some(&coll())).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, ErasureStatus::Started);
    let ids: Vec<&ItemId> = records[0].items.iter().map(|i| &i.id).collect();
    assert_eq!(ids, vec![&a, &b]);
    assert!(
        !records[0]
            .to_owned()
            .filter_sha256
            .unwrap_or_default()
            .contains(&subject)
    );
    assert!(is_erased(e.get_latest(&coll(), &a, LATEST).await));

    // Asked again, the same erasure finishes (no second record); a resume then has nothing to do.
    h.faults.fail_puts_containing.lock().unwrap().clear();
    let done = e.erase(&coll(), &request(EraseTarget::Matching(filter))).await.unwrap();
    assert_eq!(
        (done.id.as_str(), done.status),
        (records[0].id.as_str(), ErasureStatus::Done)
    );
    assert_eq!(done.versions, 3);
    assert!(e.resume_erasures().await.unwrap().is_empty());
    assert_eq!(e.erasures(None).await.unwrap().len(), 1);
    assert!(traces(h, &subject).await.is_empty(), "{:?}", traces(h, &subject).await);
    assert_eq!(e.get_latest(&coll(), &c, LATEST).await.unwrap().data["n"], 4);
    // Scrub leaves the erasure records alone (they are not payloads, nor unrecognised keys).
    let scrubbed = e
        .scrub(&chronos::engine::ScrubOptions {
            grace: std::time::Duration::ZERO,
            delete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(scrubbed.unrecognized.is_empty(), "{scrubbed:?}");
    assert_eq!(e.erasures(None).await.unwrap().len(), 1);
    let checked = e.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(checked.intact(), "{checked:?}");
}

/// A process killed midway through an erasure (here: its task dropped while it lists the item's
/// objects, after the metadata went) leaves a started record; the next engine finishes it.
pub async fn an_erasure_killed_midway_is_finished_by_the_next_engine(h: &Harness, _fresh: &Harness) {
    let e = h.engine.clone();
    let marker = format!("MARKER{}", uuid::Uuid::now_v7().simple());
    let victim: ItemId = "victim".parse().unwrap();
    e.create(&coll(), Some(victim.clone()), obj(json!({"subject": marker})), &who())
        .await
        .unwrap();
    e.update(&coll(), &victim, obj(json!({"subject": marker, "n": 2})), None, &who())
        .await
        .unwrap();
    e.flush_ledger().await.unwrap();
    // The erasure lists the payload bucket twice before it deletes: its records, then the
    // item's objects. The second listing never returns.
    h.faults.hold_listing.store(2, Ordering::SeqCst);
    let task = tokio::spawn({
        let (e, victim) = (e.clone(), victim.clone());
        async move { e.erase(&coll(), &request(EraseTarget::Item(victim))).await }
    });
    h.faults.until_holding(1).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let records = e.erasures(Some(&coll())).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, ErasureStatus::Started);
    assert!(
        is_erased(e.get_latest(&coll(), &victim, WITH_DELETED).await),
        "its metadata went first"
    );
    assert!(!traces(h, &marker).await.is_empty(), "its objects are still there");

    let next = h.replica();
    let finished = next.resume_erasures().await.unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(
        (finished[0].id.as_str(), finished[0].status),
        (records[0].id.as_str(), ErasureStatus::Done)
    );
    assert_eq!(finished[0].versions, 2);
    assert_eq!(traces(h, &marker).await, Vec::<String>::new());
    let checked = next.verify(std::time::Duration::ZERO).await.unwrap();
    assert!(checked.intact(), "{checked:?}");
}

pub async fn a_held_item_is_not_erased_until_its_hold_is_released(h: &Harness, _fresh: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"n": 1, "kind": "k"})), &who())
        .await
        .unwrap();
    e.set_hold(&coll(), &id, "litigation 7", Some("legal")).await.unwrap();
    let refused = e.erase(&coll(), &request(EraseTarget::Item(id.clone()))).await;
    assert!(matches!(refused, Err(Error::Held(..))), "{refused:?}");
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data["n"],
        1,
        "nothing erased"
    );
    e.release_hold(&coll(), &id).await.unwrap();
    e.erase(&coll(), &request(EraseTarget::Item(id.clone()))).await.unwrap();
    let gone = e.get_latest(&coll(), &id, LATEST).await;
    assert!(matches!(gone, Err(Error::Erased(_))), "{gone:?}");
}
