//! Listing: filters, pages and `at` time travel, and the collection maps that index and require
//! properties.

use chronos::engine::{Error, ItemId, ListOptions};
use serde_json::{Value, json};

use super::fixtures::{LATEST, coll, obj, who};
use crate::support::Harness;

fn ids(page: &chronos::engine::ListPage) -> Vec<String> {
    page.records.iter().map(|r| r.id.to_string()).collect()
}

fn list(filter: Value, limit: usize) -> ListOptions {
    ListOptions {
        filter,
        limit,
        ..Default::default()
    }
}

pub async fn list_filters_pages_and_travels_in_time(h: &Harness) {
    let e = &h.engine;
    for i in 0..25u64 {
        let id: ItemId = format!("item-{i:02}").parse().unwrap();
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let data = obj(json!({"n": i, "kind": kind, "tags": [format!("t{}", i % 3)], "big": {"nested": true}}));
        e.create(&coll(), Some(id), data, &who()).await.unwrap();
    }
    let before_changes = e
        .get_latest(&coll(), &"item-24".parse().unwrap(), LATEST)
        .await
        .unwrap()
        .system
        .updated_at;
    // Versions carry millisecond times: let the clock pass T so the changes below come after it.
    while chronos::engine::model::now() <= before_changes {
        tokio::task::yield_now().await;
    }
    e.delete(&coll(), &"item-00".parse().unwrap(), None, &who())
        .await
        .unwrap();
    e.update(
        &coll(),
        &"item-02".parse().unwrap(),
        obj(json!({"n": 2, "kind": "odd"})),
        None,
        &who(),
    )
    .await
    .unwrap();

    // Equality, paged: the pages join up to exactly the matching ids, in order.
    let mut seen = Vec::new();
    let mut opts = list(json!({"kind": "even"}), 4);
    loop {
        let page = e.list(&coll(), &opts).await.unwrap();
        assert!(page.records.len() <= 4);
        assert!(page.records.iter().all(|r| r.data["kind"] == "even"));
        seen.extend(ids(&page));
        match page.next_after_id {
            Some(next) => opts.after_id = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (4..25).step_by(2).map(|i| format!("item-{i:02}")).collect();
    assert_eq!(seen, expected, "deleted item-00 and changed item-02 are excluded");

    let page = e
        .list(&coll(), &list(json!({"n": {"$gte": 10, "$lt": 14}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-10", "item-11", "item-12", "item-13"]);
    let page = e
        .list(
            &coll(),
            &list(json!({"n": {"$in": [1, 3, 99]}, "kind": {"$ne": "even"}}), 100),
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-01", "item-03"]);
    let page = e
        .list(&coll(), &list(json!({"tags": "t0", "n": {"$nin": [3, 6, 9]}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-12", "item-15", "item-18", "item-21", "item-24"]);
    let page = e
        .list(&coll(), &list(json!({"tags": {"$exists": false}}), 100))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["item-02"], "item-02 lost its tags");

    let mut desc = list(Value::Null, 3);
    desc.descending = true;
    let page = e.list(&coll(), &desc).await.unwrap();
    assert_eq!(ids(&page), ["item-24", "item-23", "item-22"]);
    desc.after_id = page.next_after_id;
    assert_eq!(
        ids(&e.list(&coll(), &desc).await.unwrap()),
        ["item-21", "item-20", "item-19"]
    );

    let mut with_deleted = list(json!({"n": 0}), 10);
    assert!(e.list(&coll(), &with_deleted).await.unwrap().records.is_empty());
    with_deleted.include_deleted = true;
    let page = e.list(&coll(), &with_deleted).await.unwrap();
    assert_eq!(ids(&page), ["item-00"]);
    assert!(page.records[0].system.deleted);

    let mut projected = list(json!({"n": 5}), 10);
    projected.fields = Some(vec!["kind".into()]);
    let page = e.list(&coll(), &projected).await.unwrap();
    assert_eq!(page.records[0].data, obj(json!({"kind": "odd"})));

    // As of a time before the delete and the update: item-00 and item-02 as they were.
    let mut past = list(json!({"kind": "even", "n": {"$lte": 4}}), 10);
    past.at = Some(before_changes);
    let page = e.list(&coll(), &past).await.unwrap();
    assert_eq!(ids(&page), ["item-00", "item-02", "item-04"]);
    assert_eq!(page.records[1].data["kind"], "even");
    assert_eq!(page.records[1].ov, 0);

    for bad in [
        json!({"$where": "true"}),
        json!({"n": {"$regex": "1"}}),
        json!({"n": {"$gt": [1]}}),
    ] {
        let err = e.list(&coll(), &list(bad.clone(), 10)).await.unwrap_err();
        assert!(matches!(err, Error::Validation { .. }), "{bad}: {err:?}");
    }
    assert!(matches!(
        e.list(&coll(), &list(Value::Null, 1001)).await,
        Err(Error::Validation { .. })
    ));
}

pub async fn collection_maps_index_and_require(h: &Harness) {
    let e = &h.engine;
    let err = e.create(&coll(), None, obj(json!({"n": 1})), &who()).await.unwrap_err();
    match err {
        Error::Validation { reason, .. } => assert!(reason.contains("kind"), "{reason}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let err = e
        .create(&coll(), None, obj(json!({"kind": {"x": 1}})), &who())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
    let (a, _) = e
        .create(&coll(), None, obj(json!({"kind": "a", "n": 1, "other": 5})), &who())
        .await
        .unwrap();
    e.create(&coll(), None, obj(json!({"kind": "b", "n": 2})), &who())
        .await
        .unwrap();
    let page = e.list(&coll(), &list(json!({"kind": "a"}), 10)).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, a);
    assert_eq!(page.records[0].data["other"], 5, "unindexed data is still stored");
    let err = e.list(&coll(), &list(json!({"other": 5}), 10)).await.unwrap_err();
    assert!(err.to_string().contains("not an indexed property"), "{err}");
}
