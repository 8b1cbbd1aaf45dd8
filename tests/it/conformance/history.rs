//! The buckets describe the history (issue 15): a verify of an untouched history finds nothing,
//! and finds exactly the object that was altered, deleted or forged behind the engine's back.

use std::time::Duration;

use bytes::Bytes;
use chronos::engine::{ItemId, VersionTarget};
use serde_json::json;

use super::fixtures::{coll, obj, payload_keys, who};
use crate::support::Harness;

/// A little of everything: creates, updates, a delete, an enrichment, an idempotent write, an
/// item restore by reference and a counter reset.
pub async fn mixed_workload(h: &Harness) -> Vec<ItemId> {
    let e = &h.engine;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (id, _) = e
            .create(&coll(), None, obj(json!({"n": n, "kind": "k"})), &who())
            .await
            .unwrap();
        ids.push(id);
    }
    e.update(&coll(), &ids[0], obj(json!({"n": 10})), Some(0), &who())
        .await
        .unwrap();
    e.update(&coll(), &ids[0], obj(json!({"n": 11})), Some(1), &who())
        .await
        .unwrap();
    e.delete(&coll(), &ids[1], None, &who()).await.unwrap();
    let patch = obj(json!({"extra": {"x": 1}}));
    e.enrich(&coll(), &ids[2], &[patch], &super::fixtures::enrichment("f1"), &who())
        .await
        .unwrap();
    let mut keyed = who();
    keyed.request_key = Some("key-1".parse().unwrap());
    e.update(&coll(), &ids[2], obj(json!({"n": 22})), None, &keyed)
        .await
        .unwrap();
    e.restore_object(&coll(), &ids[0], VersionTarget::Ov(0), None, &who())
        .await
        .unwrap();
    e.reset_totals(&coll()).await.unwrap();
    e.update(&coll(), &ids[0], obj(json!({"n": 12})), None, &who())
        .await
        .unwrap();
    ids
}

pub async fn verify_reports_exactly_what_changed_in_the_buckets(h: &Harness) {
    let e = &h.engine;
    let ids = mixed_workload(h).await;
    let told = std::sync::Mutex::new(Vec::new());
    let clean = e
        .verify_reporting(Duration::ZERO, &|done, so_far| {
            told.lock().unwrap().push((done, so_far.collections, so_far.versions))
        })
        .await
        .unwrap();
    // Progress after each collection, the last one with the report's figures.
    let told = told.into_inner().unwrap();
    let expected: Vec<u64> = (1..=clean.collections).collect();
    assert_eq!(told.iter().map(|t| t.0).collect::<Vec<_>>(), expected, "{told:?}");
    assert_eq!(
        told.last().map(|t| (t.1, t.2)),
        Some((clean.collections, clean.versions))
    );
    assert!(clean.intact(), "an untouched history verifies: {clean:?}");
    assert!(
        clean.unconfirmed.is_empty(),
        "every version is in the ledger: {clean:?}"
    );
    assert_eq!(clean.versions, 10, "{clean:?}");
    assert!(clean.segments >= 1);

    // One byte of one object.
    let key = payload_keys(h, &ids[0])
        .await
        .into_iter()
        .find(|k| k.contains("/v1."))
        .unwrap();
    let original = h.payloads.get(&key).await.unwrap().unwrap();
    let text = String::from_utf8(original.to_vec()).unwrap();
    let altered = text.replacen("\"n\":10", "\"n\":19", 1);
    assert_ne!(altered, text);
    h.payloads.put(&key, Bytes::from(altered)).await.unwrap();
    let r = e.verify(Duration::ZERO).await.unwrap();
    let keys = |f: &[chronos::engine::rebuild::verify::Finding]| f.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&r.altered), [key.as_str()], "{r:?}");
    assert!(
        r.missing.is_empty() && r.orphaned.is_empty() && r.dangling.is_empty(),
        "{r:?}"
    );
    h.payloads.put(&key, original).await.unwrap();

    // One object deleted.
    let gone = payload_keys(h, &ids[2])
        .await
        .into_iter()
        .find(|k| k.contains("/v0."))
        .unwrap();
    let kept = h.payloads.get(&gone).await.unwrap().unwrap();
    h.payloads.delete(&gone).await.unwrap();
    let r = e.verify(Duration::ZERO).await.unwrap();
    assert_eq!(keys(&r.missing), [gone.as_str()], "{r:?}");
    assert!(
        r.altered.is_empty() && r.orphaned.is_empty() && r.dangling.is_empty(),
        "{r:?}"
    );
    h.payloads.put(&gone, kept).await.unwrap();

    // One object forged: a version nobody wrote, under a key of the right shape, old enough not
    // to be a write in flight.
    let forged_id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_600_000_000, 0));
    let forged = format!("{}/{}/v7.{}.json", coll(), ids[2], forged_id.simple());
    h.payloads
        .put(&forged, Bytes::from_static(b"{\"chronos\":{}}"))
        .await
        .unwrap();
    let r = e.verify(Duration::from_secs(60)).await.unwrap();
    assert_eq!(keys(&r.orphaned), [forged.as_str()], "{r:?}");
    assert!(
        r.altered.is_empty() && r.missing.is_empty() && r.dangling.is_empty(),
        "{r:?}"
    );
    h.payloads.delete(&forged).await.unwrap();
    assert!(e.verify(Duration::ZERO).await.unwrap().intact());
}

pub async fn a_proof_ties_a_version_to_its_segment_root(h: &Harness) {
    let e = &h.engine;
    let ids = mixed_workload(h).await;
    for (id, ov) in [(&ids[0], 0), (&ids[0], 3), (&ids[2], 2)] {
        let proof = e.proof(&coll(), id, ov).await.unwrap();
        assert_eq!((&proof.record.id, proof.record.ov), (id, ov));
        proof.check().unwrap();
        let mut forged = proof.clone();
        forged.record.meta.insert("n".into(), json!(999));
        assert!(forged.check().is_err(), "a changed record no longer proves");
        let mut moved = proof.clone();
        moved.root = "00".repeat(32);
        assert!(moved.check().is_err(), "nor against another root");
    }
    let err = e.proof(&coll(), &ids[1], 9).await.unwrap_err();
    assert!(matches!(err, chronos::engine::Error::NotFound(_)), "{err}");
}

pub async fn verify_finds_a_changed_or_missing_ledger_segment(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"n": 0})), &who()).await.unwrap();
    for n in 1..=3 {
        e.flush_ledger().await.unwrap();
        e.update(&coll(), &id, obj(json!({"n": n})), None, &who())
            .await
            .unwrap();
    }
    e.flush_ledger().await.unwrap();
    let mut segments = h.payloads.list("chronos-ledger/", None, 100).await.unwrap();
    segments.sort();
    assert_eq!(segments.len(), 4, "one segment per flush: {segments:?}");
    assert!(e.verify(Duration::ZERO).await.unwrap().intact());

    // A record changed inside a segment: its root no longer holds.
    let original = h.payloads.get(&segments[1]).await.unwrap().unwrap();
    let text = String::from_utf8(original.to_vec()).unwrap();
    let changed = text.replacen("\"n\":1", "\"n\":7", 1);
    assert_ne!(changed, text);
    h.payloads.put(&segments[1], Bytes::from(changed)).await.unwrap();
    let r = e.verify(Duration::ZERO).await.unwrap();
    let altered: Vec<&str> = r.altered.iter().map(|f| f.key.as_str()).collect();
    assert!(altered.contains(&segments[1].as_str()), "{r:?}");
    h.payloads.put(&segments[1], original).await.unwrap();

    // A segment gone: the next one's chain breaks, and its versions are in no segment.
    h.payloads.delete(&segments[2]).await.unwrap();
    let r = e.verify(Duration::ZERO).await.unwrap();
    let altered: Vec<&str> = r.altered.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(altered, [segments[3].as_str()], "{r:?}");
    assert_eq!(r.unconfirmed.len(), 1, "{r:?}");
}

pub async fn a_ledger_segment_whose_put_failed_is_written_again(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"n": 0})), &who()).await.unwrap();
    h.faults
        .fail_puts_containing
        .lock()
        .unwrap()
        .push("chronos-ledger/".into());
    assert!(e.flush_ledger().await.is_err(), "the segment's PUT fails");
    h.faults.fail_puts_containing.lock().unwrap().clear();
    e.update(&coll(), &id, obj(json!({"n": 1})), None, &who())
        .await
        .unwrap();
    e.flush_ledger().await.unwrap();
    let segments = h.payloads.list("chronos-ledger/", None, 100).await.unwrap();
    assert_eq!(segments.len(), 2, "the kept segment and the next one: {segments:?}");
    let r = e.verify(Duration::ZERO).await.unwrap();
    assert!(r.intact() && r.unconfirmed.is_empty(), "the chain has no hole: {r:?}");
}
