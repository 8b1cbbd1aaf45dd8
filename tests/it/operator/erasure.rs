//! ChronosErasure: an item erased by a declared resource, with its summary in the status; a
//! filter erasure; a spec that can't work fails with a reason, and the spec is immutable.

use super::*;
use chronos::operator::crd::ChronosErasure;

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_resource_erases_and_reports() {
    let mut k = Cluster::new().await;
    let (_, engine, _) = seeded(&k, 3).await;
    engine.flush_ledger().await.unwrap();
    k.start();
    let finished = |r: &ChronosErasure| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    };
    k.create::<ChronosErasure>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosErasure", "metadata": {"name": "forget-one"},
        "spec": {"database": "data", "collection": "notes", "itemId": "item-00", "reason": "GDPR request 1"}
    }))
    .await;
    k.create::<ChronosErasure>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosErasure", "metadata": {"name": "forget-n"},
        "spec": {"database": "data", "collection": "notes", "filter": "{\"n\": 1}", "reason": "GDPR request 2"}
    }))
    .await;
    k.create::<ChronosErasure>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosErasure", "metadata": {"name": "bad"},
        "spec": {"database": "data", "collection": "notes", "filter": "{}", "reason": "r"}
    }))
    .await;
    let erasures = k.api::<ChronosErasure>();
    let one = wait_for(&erasures, "forget-one", "finished", finished)
        .await
        .status
        .unwrap();
    assert_eq!(one.phase, Phase::Succeeded, "{:?}", one.message);
    let report = one.report.unwrap();
    assert_eq!((report.items, report.versions), (1, 2));
    assert_eq!(report.sha256.len(), 64);
    let n = wait_for(&erasures, "forget-n", "finished", finished)
        .await
        .status
        .unwrap();
    assert_eq!((n.phase, n.report.map(|r| r.items)), (Phase::Succeeded, Some(1)));
    let bad = wait_for(&erasures, "bad", "finished", finished).await.status.unwrap();
    assert_eq!(bad.phase, Phase::Failed);
    assert!(bad.message.unwrap().contains("spec.filter"));

    let c: CollectionName = "notes".parse().unwrap();
    for (id, erased) in [("item-00", true), ("item-01", true), ("item-02", false)] {
        let read = engine
            .get_latest(&c, &id.parse().unwrap(), ReadOptions::default())
            .await;
        assert_eq!(
            matches!(read, Err(chronos::engine::Error::Erased(_))),
            erased,
            "{id}: {read:?}"
        );
    }
    let records = engine.erasures(Some(&c)).await.unwrap();
    assert_eq!(records.len(), 2, "one record per resource");
    let err = erasures
        .patch(
            "forget-one",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"reason": "x"}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}
