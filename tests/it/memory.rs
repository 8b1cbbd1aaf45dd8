//! The conformance suite on the in-memory fakes (the reference the real backends must match).

use crate::support;

crate::conformance_suite!(support::memory);

/// A keyed retry whose first attempt is committed but not yet readable by the replay — MongoDB's
/// majority read behind the primary (review M3) — waits for it and answers with the first
/// outcome, instead of telling the client "already exists" about its own write.
#[tokio::test]
async fn a_keyed_retry_waits_for_its_first_attempt_to_be_readable() {
    use std::sync::Arc;

    use chronos::engine::backends::{MemoryMetaStore, MemoryPayloadStore};
    use chronos::engine::{Attribution, CollectionName, Engine, EngineSettings, Error};

    let meta = MemoryMetaStore::new();
    let engine = Engine::new(
        Arc::new(meta.clone()),
        Arc::new(MemoryPayloadStore::new()),
        EngineSettings::default(),
    );
    let orders: CollectionName = "orders".parse().unwrap();
    let keyed = Attribution {
        request_key: Some("order-1".parse().unwrap()),
        ..Default::default()
    };
    let data = || serde_json::json!({"total": 7}).as_object().unwrap().clone();
    let (id, first) = engine.create(&orders, None, data(), &keyed).await.unwrap();

    // The retry's lookups miss the key before its attempt, after it, and twice more.
    meta.lag_key_lookups(4);
    let (again_id, again) = engine.create(&orders, None, data(), &keyed).await.unwrap();
    assert_eq!((&again_id, again.ov, again.cv), (&id, first.ov, first.cv));
    assert!(again.replayed, "answered from the first attempt");
    assert_eq!(engine.count_items(&orders).await.unwrap(), 1, "no second item");

    // Never readable within the bound: unknown (a retry with the key is safe), not a conflict.
    meta.lag_key_lookups(usize::MAX);
    let err = engine.create(&orders, None, data(), &keyed).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err:?}");
    meta.lag_key_lookups(0);
}
