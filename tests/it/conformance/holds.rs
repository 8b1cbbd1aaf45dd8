//! Holds: a legal hold (or a collection's retention hold) keeps an item from retention and from
//! erasure, and the side records that keep holds behave alike on every store.

use chronos::engine::store::sidecar::SideKind;
use chronos::engine::{Error, ItemId};
use serde_json::json;

use super::fixtures::{LATEST, coll, keep_last, obj, who};
use crate::support::Harness;

/// An item with `n` versions.
async fn item_with_versions(h: &Harness, n: u64) -> ItemId {
    let e = &h.engine;
    let (id, _) = e.create(&coll(), None, obj(json!({"v": 0})), &who()).await.unwrap();
    for v in 1..n {
        e.update(&coll(), &id, obj(json!({"v": v})), None, &who())
            .await
            .unwrap();
    }
    id
}

async fn versions(h: &Harness, id: &ItemId) -> usize {
    h.engine.history(&coll(), id, None, 100, LATEST).await.unwrap().len()
}

pub async fn held_items_survive_retention_and_refuse_erasure(h: &Harness) {
    let e = &h.engine;
    let held = item_with_versions(h, 4).await;
    let free = item_with_versions(h, 4).await;

    let hold = e.set_hold(&coll(), &held, "case 42", Some("legal")).await.unwrap();
    assert_eq!((hold.reason.as_str(), hold.by.as_deref()), ("case 42", Some("legal")));
    assert!(e.is_held(&coll(), &held).await.unwrap());
    assert!(!e.is_held(&coll(), &free).await.unwrap());
    match e.refuse_if_held(&coll(), &held).await {
        Err(Error::Held(what, reason)) => {
            assert!(what.ends_with(held.as_str()), "{what}");
            assert!(reason.contains("case 42"), "{reason}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    e.refuse_if_held(&coll(), &free).await.unwrap();

    let report = e.prune_versions(&coll(), &keep_last(1), false).await.unwrap();
    assert_eq!(
        (report.items_examined, report.items_held, report.versions_pruned),
        (2, 1, 3),
        "the held item is skipped and reported, the other pruned"
    );
    assert_eq!(versions(h, &held).await, 4, "a held item keeps every version");
    assert_eq!(versions(h, &free).await, 1);

    assert!(e.release_hold(&coll(), &held).await.unwrap());
    assert!(
        !e.release_hold(&coll(), &held).await.unwrap(),
        "releasing twice finds none"
    );
    assert!(!e.is_held(&coll(), &held).await.unwrap());
    let report = e.prune_versions(&coll(), &keep_last(1), false).await.unwrap();
    assert_eq!((report.items_held, report.versions_pruned), (0, 3));
    assert_eq!(versions(h, &held).await, 1, "released, it is pruned like the rest");

    let missing: ItemId = "no-such-item".parse().unwrap();
    assert!(matches!(
        e.set_hold(&coll(), &missing, "x", None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.set_hold(&coll(), &held, " ", None).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn a_collection_retention_hold_keeps_recent_items(h: &Harness) {
    // `settings` gives the collection `hold: {mode: GOVERNANCE, days: 1}`.
    let e = &h.engine;
    let id = item_with_versions(h, 3).await;
    let why = e.held_because(&coll(), &id).await.unwrap().expect("held by the rule");
    assert!(why.starts_with("GOVERNANCE retention until "), "{why}");
    let report = e.prune_versions(&coll(), &keep_last(1), false).await.unwrap();
    assert_eq!((report.items_held, report.versions_pruned), (1, 0));
    assert_eq!(versions(h, &id).await, 3);
    assert!(matches!(e.refuse_if_held(&coll(), &id).await, Err(Error::Held(..))));
}

pub async fn side_records_keep_one_record_per_item_and_kind(h: &Harness) {
    let (m, c) = (&h.meta, coll());
    let a: ItemId = "a".parse().unwrap();
    let b: ItemId = "b".parse().unwrap();
    assert_eq!(m.side(&c, SideKind::Hold, &a).await.unwrap(), None);
    m.put_side(&c, SideKind::Hold, &a, "one").await.unwrap();
    m.put_side(&c, SideKind::Hold, &a, "two").await.unwrap();
    assert_eq!(
        m.side(&c, SideKind::Hold, &a).await.unwrap().as_deref(),
        Some("two"),
        "put replaces"
    );
    assert_eq!(
        m.side(&c, SideKind::DataKey, &a).await.unwrap(),
        None,
        "kinds are apart"
    );
    assert_eq!(m.side(&c, SideKind::Hold, &b).await.unwrap(), None, "items are apart");
    let other: chronos::engine::CollectionName = "others".parse().unwrap();
    assert_eq!(
        m.side(&other, SideKind::Hold, &a).await.unwrap(),
        None,
        "collections are apart"
    );

    // Racing creators all end up with the first record.
    let (cr, br) = (&c, &b);
    let made: Vec<String> = futures::future::join_all((0..8).map(|i| async move {
        m.create_side(cr, SideKind::DataKey, br, &format!("key{i}"))
            .await
            .unwrap()
    }))
    .await;
    let stored = m.side(&c, SideKind::DataKey, &b).await.unwrap().expect("created");
    assert!(made.iter().all(|r| *r == stored), "{made:?} vs {stored}");

    assert!(m.delete_side(&c, SideKind::DataKey, &b).await.unwrap());
    assert!(!m.delete_side(&c, SideKind::DataKey, &b).await.unwrap());
    assert_eq!(m.side(&c, SideKind::DataKey, &b).await.unwrap(), None);
    assert_eq!(m.side(&c, SideKind::Hold, &a).await.unwrap().as_deref(), Some("two"));
}
