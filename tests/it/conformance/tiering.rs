//! Tiering: cold payloads leave the metadata store and stay readable.

use chronos::engine::{Error, State};
use serde_json::json;

use super::fixtures::{LATEST, coll, obj, who};
use crate::support::Harness;

pub async fn tiering_moves_cold_payloads_out_of_the_metadata_store(h: &Harness) {
    let e = &h.engine;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, _) = e
            .create(&coll(), None, obj(json!({"i": i, "text": "x".repeat(2000)})), &who())
            .await
            .unwrap();
        ids.push(id);
    }
    let last = e.get_latest(&coll(), &ids[2], LATEST).await.unwrap().system.updated_at;
    // The TTL is measured in milliseconds: let the clock pass the last write.
    while chronos::engine::model::now() <= last {
        tokio::task::yield_now().await;
    }
    let recent = e.mark_processed_by_ttl(&coll(), 1.0, false, |_| {}).await.unwrap();
    assert_eq!(recent.processed, 0, "nothing is an hour old");

    let plan = e.mark_processed_by_ttl(&coll(), 0.0, true, |_| {}).await.unwrap();
    assert_eq!((plan.processed, plan.dry_run), (3, true));
    assert_eq!(plan.bytes_after, plan.bytes_before);
    assert_eq!(
        e.get_latest(&coll(), &ids[0], LATEST).await.unwrap().system.state,
        State::New
    );

    let mut seen = Vec::new();
    let done = e
        .mark_processed_by_ttl(&coll(), 0.0, false, |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(done.processed, 3);
    println!("tiering report: {done:?}");
    assert_eq!(seen.last(), Some(&3));
    assert!(
        done.bytes_per_item_after + 2000 <= done.bytes_per_item_before,
        "the inline copy left the metadata store: {done:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = e.get_latest(&coll(), id, LATEST).await.unwrap();
        assert_eq!(r.system.state, State::Processed);
        assert_eq!(r.data["i"], i, "read back from the payload store");
    }
    assert_eq!(
        e.mark_processed_by_ttl(&coll(), 0.0, false, |_| {})
            .await
            .unwrap()
            .processed,
        0
    );

    // A write makes the item hot again; one item can be processed on demand.
    e.update(&coll(), &ids[0], obj(json!({"i": 0, "again": true})), None, &who())
        .await
        .unwrap();
    let r = e.get_latest(&coll(), &ids[0], LATEST).await.unwrap();
    assert_eq!((r.system.state, r.data["again"].as_bool()), (State::New, Some(true)));
    assert!(e.mark_item_processed(&coll(), &ids[0]).await.unwrap());
    assert!(
        !e.mark_item_processed(&coll(), &ids[0]).await.unwrap(),
        "already processed"
    );
    assert_eq!(
        e.get_latest(&coll(), &ids[0], LATEST).await.unwrap().data["again"],
        true
    );
    assert!(matches!(
        e.mark_item_processed(&coll(), &"ghost".parse().unwrap()).await,
        Err(Error::NotFound(_))
    ));
}
