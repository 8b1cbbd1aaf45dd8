//! Idempotency keys and the retry queue over HTTP, on real MongoDB + S3 (S3 failures injected
//! in process; the fault campaign stops a real S3 connection).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chronos::client::{Client, Error as ClientError, WriteOptions};
use serde_json::{Value, json};

use crate::api::start;
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_and_queued_writes_over_http() {
    let h = support::mongo_s3(chronos::engine::EngineSettings {
        queue: chronos::engine::QueueSettings {
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    let items = format!("{}/v1/t1/notes/items", server.url);

    // A retried create with the same key answers with the first item, marked as replayed.
    let post = |key: &'static str, body: Value| {
        server
            .http
            .post(&items)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = post("create-1", json!({"t": "a"})).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotency-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = post("create-1", json!({"t": "a"})).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    let reused = post("create-1", json!({"t": "b"})).await.unwrap();
    assert_eq!(reused.status(), 409, "a key reused for another request is refused");
    let bad = post("has space", json!({})).await.unwrap();
    assert_eq!(bad.status(), 400);

    // S3 down: 202 with an operation to poll; nothing lost, nothing visible yet.
    let id = first["id"].as_str().unwrap().to_owned();
    let c = Client::new(&server.url, None).unwrap();
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let opts = WriteOptions {
        idempotency_key: Some("update-1".into()),
        ..Default::default()
    };
    let data = json!({"t": "queued"}).as_object().unwrap().clone();
    let queued = c.update("t1", "notes", &id, &data, &opts).await;
    let Err(ClientError::Queued {
        operation_id,
        id: queued_id,
    }) = queued
    else {
        panic!("expected 202, got {queued:?}")
    };
    assert_eq!(queued_id, id);
    let raw = server
        .http
        .put(format!("{items}/{id}"))
        .json(&json!({"t": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 202);
    let location = raw.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/v1/t1/_operations/"), "{location}");
    let op = c.operation("t1", &operation_id).await.unwrap();
    assert_eq!(
        (op.status.as_str(), op.op.as_str(), op.attempts),
        ("pending", "update", 0)
    );
    assert_eq!(c.queue_stats("t1").await.unwrap().pending, 2);
    let pending = c.list_operations("t1", "pending", None, 10).await.unwrap();
    assert_eq!(pending.operations.len(), 2);
    // The second one is cancelled while it waits.
    let second = location.rsplit('/').next().unwrap();
    assert_eq!(c.cancel_operation("t1", second).await.unwrap().status, "cancelled");
    let again = c.cancel_operation("t1", second).await.unwrap_err();
    assert_eq!(again.status(), Some(422));

    // Back up: the worker lands the write once; the client's own retry is answered from it.
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    let op = h.engine.operation(&operation_id.parse().unwrap()).await.unwrap();
    while chronos::engine::model::now() <= op.due_at {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.engine.drain_queue(2).await.unwrap(), 1);
    let done = c.operation("t1", &operation_id).await.unwrap();
    assert_eq!(done.status, "succeeded");
    assert_eq!(done.result.as_ref().unwrap()["ov"], 1);
    let retried = c.update("t1", "notes", &id, &data, &opts).await.unwrap();
    assert_eq!(retried.ov, 1, "the client's retry with its key is the same write");
    let item = c
        .get("t1", "notes", &id, &chronos::client::Version::Latest, false)
        .await
        .unwrap();
    assert_eq!(
        (item["t"].clone(), item["_system"]["ov"].clone()),
        (json!("queued"), json!(1))
    );
    assert_eq!(
        c.retry_operation("t1", &operation_id).await.unwrap_err().status(),
        Some(422)
    );
    assert_eq!(c.operation("t1", "0123").await.unwrap_err().status(), Some(400));
    assert_eq!(
        c.operation("t1", "0123456789abcdef0123456789abcdef")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // Collections named like the queue routes are still plain collections.
    for coll in ["operations", "queue"] {
        let w = c
            .create(
                "t1",
                coll,
                Some("items"),
                &json!({"x": 1}).as_object().unwrap().clone(),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        let r = c
            .get("t1", coll, &w.id, &chronos::client::Version::Latest, false)
            .await
            .unwrap();
        assert_eq!(r["x"], 1);
    }
}
