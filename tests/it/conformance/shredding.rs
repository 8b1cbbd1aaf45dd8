//! Crypto-shredding (`encryption: perItem`): no object holds an item's data in clear, reads
//! open it, and once the item's key is destroyed every version of it is gone (`Erased`) while
//! other items read on.

use chronos::engine::{Error, ItemId, VersionTarget};
use serde_json::json;

use super::fixtures::{LATEST, coll, obj, who};
use crate::support::Harness;

/// Every object of the payload store whose bytes contain `marker`.
pub(super) async fn objects_holding(h: &Harness, marker: &str) -> Vec<String> {
    h.engine.flush_ledger().await.unwrap();
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = h.payloads.list("", after.as_deref(), 1000).await.unwrap();
        for k in &keys {
            let bytes = h.payloads.get(k).await.unwrap().unwrap_or_default();
            if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                found.push(k.clone());
            }
        }
        match keys.last() {
            Some(last) if keys.len() == 1000 => after = Some(last.clone()),
            _ => return found,
        }
    }
}

pub async fn encrypted_items_are_sealed_readable_and_gone_once_shredded(h: &Harness) {
    // `settings` makes `things` encrypted per item, indexing only `kind`.
    let e = &h.engine;
    let marker = format!("MARKER-{}", uuid::Uuid::now_v7().simple());
    let (a, _) = e
        .create(
            &coll(),
            None,
            obj(json!({"kind": "person", "secret": marker, "v": 0})),
            &who(),
        )
        .await
        .unwrap();
    e.update(
        &coll(),
        &a,
        obj(json!({"kind": "person", "secret": marker, "v": 1})),
        None,
        &who(),
    )
    .await
    .unwrap();
    let (b, _) = e
        .create(
            &coll(),
            None,
            obj(json!({"kind": "person", "secret": "keep me"})),
            &who(),
        )
        .await
        .unwrap();

    assert_eq!(
        objects_holding(h, &marker).await,
        Vec::<String>::new(),
        "no object holds it in clear"
    );
    let head = h.meta.head(&coll(), &a).await.unwrap().unwrap();
    assert!(head.inline.is_none(), "no clear copy inline in the head");
    let latest = e.get_latest(&coll(), &a, LATEST).await.unwrap();
    assert_eq!((latest.ov, latest.data["secret"].as_str()), (1, Some(marker.as_str())));
    let first = e.get_at(&coll(), &a, VersionTarget::Ov(0), LATEST).await.unwrap();
    assert_eq!(first.data["v"], 0);

    assert!(e.shred_item_key(&coll(), &a).await.unwrap());
    assert!(!e.shred_item_key(&coll(), &a).await.unwrap(), "the key is gone");
    for read in [
        e.get_latest(&coll(), &a, LATEST).await,
        e.get_at(&coll(), &a, VersionTarget::Ov(0), LATEST).await,
        e.get_at(&coll(), &a, VersionTarget::Ov(1), LATEST).await,
    ] {
        assert!(matches!(read, Err(Error::Erased(_))), "{read:?}");
    }
    assert_eq!(objects_holding(h, &marker).await, Vec::<String>::new());
    let other = e.get_latest(&coll(), &b, LATEST).await.unwrap();
    assert_eq!(other.data["secret"], "keep me", "other items keep their keys");

    // A later write gets a new key; the versions sealed under the old one stay erased.
    e.update(
        &coll(),
        &a,
        obj(json!({"kind": "person", "secret": "new"})),
        None,
        &who(),
    )
    .await
    .unwrap();
    assert_eq!(e.get_latest(&coll(), &a, LATEST).await.unwrap().data["secret"], "new");
    assert!(matches!(
        e.get_at(&coll(), &a, VersionTarget::Ov(1), LATEST).await,
        Err(Error::Erased(_))
    ));
    let missing: ItemId = "never-written".parse().unwrap();
    assert!(!e.shred_item_key(&coll(), &missing).await.unwrap());
}
