//! Reads: a version by number or by time never crosses items, history pages in order, and
//! payloads come from the payload store only when they are the item's own.

use chronos::engine::{Attribution, CollectionName, Error, Op, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, WITH_DELETED, coll, obj, who};
use crate::support::Harness;

pub async fn version_reads_never_cross_items(h: &Harness) {
    // The original's getItem({ov}) ignored the item id. Two items with the same ovs must never mix.
    let e = &h.engine;
    let (a, _) = e
        .create(&coll(), None, obj(json!({"item": "a", "n": 0})), &who())
        .await
        .unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"item": "b", "n": 0})), &who())
        .await
        .unwrap();
    for n in 1..=3 {
        e.update(&coll(), &a, obj(json!({"item": "a", "n": n})), None, &who())
            .await
            .unwrap();
        e.update(&coll(), &b, obj(json!({"item": "b", "n": n})), None, &who())
            .await
            .unwrap();
    }
    for ov in 0..=3u64 {
        let ra = e.get_at(&coll(), &a, VersionTarget::Ov(ov), LATEST).await.unwrap();
        let rb = e.get_at(&coll(), &b, VersionTarget::Ov(ov), LATEST).await.unwrap();
        assert_eq!((ra.id.clone(), ra.ov), (a.clone(), ov));
        assert_eq!(ra.data, obj(json!({"item": "a", "n": ov})));
        assert_eq!(rb.data, obj(json!({"item": "b", "n": ov})));
    }
    assert!(matches!(
        e.get_at(&coll(), &a, VersionTarget::Ov(4), LATEST).await,
        Err(Error::NotFound(_))
    ));
    // Another collection with the same ids is another world.
    let other: CollectionName = "others".parse().unwrap();
    assert!(matches!(
        e.get_at(&other, &a, VersionTarget::Ov(0), LATEST).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn as_of_reads_follow_time(h: &Harness) {
    let e = &h.engine;
    let (a, c) = e.create(&coll(), None, obj(json!({"n": 0})), &who()).await.unwrap();
    // Another item written in between must never be what an as-of read of `a` returns.
    e.create(&coll(), None, obj(json!({"other": true})), &who())
        .await
        .unwrap();
    let mut outcomes = vec![c];
    for n in 1..=4 {
        outcomes.push(e.update(&coll(), &a, obj(json!({"n": n})), None, &who()).await.unwrap());
    }
    for o in &outcomes {
        // The latest version at or before that instant (several writes may share a millisecond).
        let expected = outcomes.iter().filter(|x| x.at <= o.at).map(|x| x.ov).max().unwrap();
        let r = e.get_at(&coll(), &a, VersionTarget::At(o.at), LATEST).await.unwrap();
        assert_eq!(r.id, a);
        assert_eq!(r.ov, expected);
        assert_eq!(r.data, obj(json!({"n": expected})));
    }
    let before = c.at.checked_sub(jiff::SignedDuration::from_millis(1)).unwrap();
    assert!(matches!(
        e.get_at(&coll(), &a, VersionTarget::At(before), LATEST).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn history_is_ordered_and_paged(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"n": 0})), &Attribution::new("bob", "first"))
        .await
        .unwrap();
    for n in 1..=6 {
        e.update(&coll(), &id, obj(json!({"n": n})), Some(n - 1), &who())
            .await
            .unwrap();
    }
    let all = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.ov).collect::<Vec<_>>(),
        (0..=6).collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].cv < w[1].cv && w[0].at <= w[1].at));
    assert_eq!(all[0].op, Op::Create);
    assert!(all[1..].iter().all(|v| v.op == Op::Update));
    assert_eq!(
        (all[0].actor.as_deref(), all[0].reason.as_deref()),
        (Some("bob"), Some("first"))
    );
    let page1 = e.history(&coll(), &id, None, 3, LATEST).await.unwrap();
    let page2 = e.history(&coll(), &id, Some(page1[2].ov), 3, LATEST).await.unwrap();
    let page3 = e.history(&coll(), &id, Some(page2[2].ov), 3, LATEST).await.unwrap();
    let paged: Vec<u64> = page1.iter().chain(&page2).chain(&page3).map(|v| v.ov).collect();
    assert_eq!(paged, (0..=6).collect::<Vec<_>>());
    assert!(matches!(
        e.history(&coll(), &id, None, 0, LATEST).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn cold_payloads_are_read_from_the_payload_store(h: &Harness) {
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), None, obj(json!({"cold": [1, 2, 3]})), &who())
        .await
        .unwrap();
    e.update(&coll(), &id, obj(json!({"cold": [4]})), Some(0), &who())
        .await
        .unwrap();
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"cold": [4]}))
    );
    e.delete(&coll(), &id, Some(1), &who()).await.unwrap();
    let r = e.get_latest(&coll(), &id, WITH_DELETED).await.unwrap();
    assert_eq!(
        r.data,
        obj(json!({"cold": [4]})),
        "delete carried the cold data forward"
    );
    let stored = super::fixtures::stored_payloads(h, &id).await;
    assert_eq!(stored.len(), 3, "one payload per version: {stored:?}");
}

pub async fn a_payload_of_another_item_is_never_served(h: &Harness) {
    let e = &h.engine;
    let (a, _) = e
        .create(&coll(), None, obj(json!({"secret": "a"})), &who())
        .await
        .unwrap();
    let (b, _) = e
        .create(&coll(), None, obj(json!({"secret": "b"})), &who())
        .await
        .unwrap();
    let key_a = h
        .payloads
        .list(&format!("things/{a}/"), None, 10)
        .await
        .unwrap()
        .remove(0);
    let key_b = h
        .payloads
        .list(&format!("things/{b}/"), None, 10)
        .await
        .unwrap()
        .remove(0);
    // Simulate a mix-up in the bucket: a's key now holds b's payload.
    let body_b = h.payloads.get(&key_b).await.unwrap().unwrap();
    h.payloads.put(&key_a, body_b).await.unwrap();
    let err = e.get_latest(&coll(), &a, LATEST).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "served instead of refused: {err:?}");
    let err = e.get_at(&coll(), &a, VersionTarget::Ov(0), LATEST).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    h.payloads.delete(&key_a).await.unwrap();
    assert!(matches!(
        e.get_latest(&coll(), &a, LATEST).await,
        Err(Error::Corrupt(_))
    ));
}
