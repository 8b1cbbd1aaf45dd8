//! Idempotency keys: a keyed write happens once, even when its retries race.

use chronos::engine::{Enrichment, Error, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, WITH_DELETED, coll, keyed, obj, unique_key, who};
use crate::support::Harness;

pub async fn idempotent_writes_happen_once(h: &Harness) {
    let e = &h.engine;
    let k = unique_key("create");
    let (id, first) = e.create(&coll(), None, obj(json!({"n": 1})), &keyed(&k)).await.unwrap();
    assert!(!first.replayed);
    let (again_id, again) = e.create(&coll(), None, obj(json!({"n": 1})), &keyed(&k)).await.unwrap();
    assert_eq!((again_id.clone(), again.ov, again.cv), (id.clone(), first.ov, first.cv));
    assert!(again.replayed, "a retry is answered from the first write");
    assert_eq!(
        e.count_items(&coll()).await.unwrap(),
        1,
        "a retried create makes no second item"
    );

    let k = unique_key("update");
    let u = e
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    let u2 = e
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((u2.ov, u2.cv, u2.replayed), (u.ov, u.cv, true));
    // Another replica of the same database knows the key too.
    let u3 = h
        .replica()
        .update(&coll(), &id, obj(json!({"n": 2})), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((u3.ov, u3.replayed), (u.ov, true));
    assert_eq!(e.get_latest(&coll(), &id, LATEST).await.unwrap().ov, u.ov);
    // The same key for another request is refused, not answered with the wrong outcome.
    let reused = e.update(&coll(), &id, obj(json!({"n": 3})), None, &keyed(&k)).await;
    assert!(matches!(reused, Err(Error::IdempotencyKeyReused(_))), "{reused:?}");

    let k = unique_key("enrich");
    let patch = [obj(json!({"tags": ["a"]}))];
    let en = Enrichment::default();
    let a = e.enrich(&coll(), &id, &patch, &en, &keyed(&k)).await.unwrap();
    let b = e.enrich(&coll(), &id, &patch, &en, &keyed(&k)).await.unwrap();
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let k = unique_key("restore");
    let a = e
        .restore_object(&coll(), &id, VersionTarget::Ov(0), None, &keyed(&k))
        .await
        .unwrap();
    let b = e
        .restore_object(&coll(), &id, VersionTarget::Ov(0), None, &keyed(&k))
        .await
        .unwrap();
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let k = unique_key("delete");
    let a = e.delete(&coll(), &id, None, &keyed(&k)).await.unwrap();
    let b = e
        .delete(&coll(), &id, None, &keyed(&k))
        .await
        .expect("a retried delete is not a 404");
    assert_eq!((b.ov, b.replayed), (a.ov, true));

    let history = e.history(&coll(), &id, None, 100, WITH_DELETED).await.unwrap();
    let ovs: Vec<u64> = history.iter().map(|v| v.ov).collect();
    assert_eq!(ovs, [0, 1, 2, 3, 4], "each keyed write made exactly one version");
}

pub async fn concurrent_retries_with_one_key_write_once(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), Some("hot".parse().unwrap()), obj(json!({"n": 0})), &who())
        .await
        .unwrap();
    let k = unique_key("same");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            // Half through a second replica: the key holds across engines.
            let engine = if i % 2 == 0 { h.engine.clone() } else { h.replica() };
            let (id, k) = (id.clone(), k.clone());
            tokio::spawn(async move {
                engine
                    .update(&coll(), &id, obj(json!({"n": 1})), None, &keyed(&k))
                    .await
            })
        })
        .collect();
    let mut ovs = Vec::new();
    for t in tasks {
        ovs.push(t.await.unwrap().expect("every retry gets the first outcome").ov);
    }
    assert!(ovs.iter().all(|ov| *ov == 1), "{ovs:?}");
    let history = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(history.len(), 2, "one update, however many retries raced");

    let k = unique_key("create-race");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (engine, k) = (h.replica(), k.clone());
            tokio::spawn(async move { engine.create(&coll(), None, obj(json!({"c": 1})), &keyed(&k)).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("created or replayed").0);
    }
    assert_eq!(ids.len(), 1, "racing creates with one key make one item: {ids:?}");
    assert_eq!(e.count_items(&coll()).await.unwrap(), 2);
}
