//! Holds and crypto-shredding over HTTP: the hold routes and their errors, retention reporting
//! held items, and 410 `erased` for an item whose key was destroyed.

use std::collections::BTreeMap;

use chronos::client::{Client, Version, WriteOptions};
use chronos::engine::{CollectionMap, Encryption, EngineSettings};
use serde_json::json;

use crate::api::start;
use crate::support;

#[tokio::test]
async fn holds_and_shredded_items_over_http() {
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "people".into(),
        CollectionMap {
            indexed_props: Some(vec!["kind".into()]),
            encryption: Encryption::PerItem,
            ..Default::default()
        },
    );
    settings.encryption_key = Some(crate::conformance::test_kek());
    let h = support::memory(settings);
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    let c = Client::new(&server.url, None).unwrap();
    let opts = WriteOptions::default();
    let data = |v: u64| json!({"kind": "note", "v": v}).as_object().unwrap().clone();

    let w = c.create("t1", "notes", Some("n1"), &data(0), &opts).await.unwrap();
    c.update("t1", "notes", "n1", &data(1), &opts).await.unwrap();
    let state = c.set_hold("t1", "notes", "n1", "case 17").await.unwrap();
    assert_eq!(
        (state["held"].as_bool(), state["legalHold"]["reason"].as_str()),
        (Some(true), Some("case 17"))
    );
    assert_eq!(
        c.hold("t1", "notes", "n1").await.unwrap()["reason"],
        "legal hold: case 17"
    );

    let prune = |body| {
        let http = server.http.clone();
        let url = format!("{}/v1/t1/notes/prune", server.url);
        async move { http.post(url).json(&body).send().await.unwrap() }
    };
    let report: serde_json::Value = prune(json!({"keepLast": 1})).await.json().await.unwrap();
    assert_eq!(
        (report["itemsHeld"].as_u64(), report["versionsPruned"].as_u64()),
        (Some(1), Some(0))
    );

    let state = c.release_hold("t1", "notes", "n1").await.unwrap();
    assert_eq!(state["held"].as_bool(), Some(false));
    let report: serde_json::Value = prune(json!({"keepLast": 1})).await.json().await.unwrap();
    assert_eq!(
        (report["itemsHeld"].as_u64(), report["versionsPruned"].as_u64()),
        (Some(0), Some(1))
    );

    let code = |e: chronos::client::Error| match e {
        chronos::client::Error::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other}"),
    };
    let missing = c.set_hold("t1", "notes", "nope", "x").await.unwrap_err();
    assert_eq!(code(missing), (404, "not_found".to_owned()));
    let blank = c.set_hold("t1", "notes", "n1", " ").await.unwrap_err();
    assert_eq!(code(blank), (422, "validation_failed".to_owned()));
    assert_eq!(w.ov, 0);

    c.create("t1", "people", Some("p1"), &data(0), &opts).await.unwrap();
    assert_eq!(
        c.get("t1", "people", "p1", &Version::Latest, false).await.unwrap()["v"],
        0
    );
    let people: chronos::engine::CollectionName = "people".parse().unwrap();
    assert!(h.engine.shred_item_key(&people, &"p1".parse().unwrap()).await.unwrap());
    let gone = c.get("t1", "people", "p1", &Version::Ov(0), false).await.unwrap_err();
    assert_eq!(code(gone), (410, "erased".to_owned()));
}
