//! Erasure over HTTP (the two routes, their answers and errors, the records) and from the
//! command line (`chronos erase`, straight from the configuration), on the embedded backends.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::start;
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_routes_answer_with_the_record_and_reads_then_answer_410() {
    let h = support::embedded(Default::default());
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    let items = format!("{}/v1/t1/people/items", server.url);
    let post = |url: String, body: Value| server.http.post(url).json(&body).send();
    for (id, subject) in [("p1", "alice"), ("p2", "alice"), ("p3", "bob")] {
        let r = post(format!("{items}?id={id}"), json!({"subject": subject, "note": "hi"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    let r = post(format!("{items}/p1/erase"), json!({"reason": "GDPR request 7"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let record: Value = r.json().await.unwrap();
    assert_eq!(
        (record["status"].as_str(), record["item"].as_str()),
        (Some("done"), Some("p1"))
    );
    assert_eq!(record["versions"], 1);
    let gone = server.http.get(format!("{items}/p1")).send().await.unwrap();
    assert_eq!(gone.status(), 410);
    assert_eq!(gone.json::<Value>().await.unwrap()["code"], "erased");
    let again = post(format!("{items}/p1/erase"), json!({"reason": "again"}))
        .await
        .unwrap();
    assert_eq!(again.status(), 410);
    let missing = post(format!("{items}/nobody/erase"), json!({"reason": "r"}))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let no_reason = post(format!("{items}/p2/erase"), json!({"reason": " "})).await.unwrap();
    assert_eq!(no_reason.status(), 422);

    let erase = format!("{}/v1/t1/people/erase", server.url);
    let everything = post(erase.clone(), json!({"filter": {}, "reason": "r"})).await.unwrap();
    assert_eq!(everything.status(), 422, "an empty filter would erase everything");
    let r = post(
        erase,
        json!({"filter": {"subject": "alice"}, "reason": "GDPR request 8"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let record: Value = r.json().await.unwrap();
    assert_eq!(
        record["items"].as_array().unwrap().len(),
        1,
        "p1 was erased already: {record}"
    );
    assert!(record["filterSha256"].as_str().is_some_and(|s| s.len() == 64));
    assert_eq!(
        server.http.get(format!("{items}/p2")).send().await.unwrap().status(),
        410
    );
    assert_eq!(
        server.http.get(format!("{items}/p3")).send().await.unwrap().status(),
        200
    );

    let records: Vec<Value> = server
        .http
        .get(format!("{}/v1/t1/people/erasures", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r["reason"].as_str().unwrap().starts_with("GDPR"))
    );
}

/// `chronos erase` on an embedded data directory, as an operator runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_command_erases_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let storages = chronos::connect::storages(&Default::default(), dir.path()).unwrap();
        let (storage, settings) = storages["default"].clone();
        chronos::connect::open("default", &storage, settings, &Default::default())
            .await
            .unwrap()
    };
    let c: chronos::engine::CollectionName = "notes".parse().unwrap();
    let id: chronos::engine::ItemId = "n1".parse().unwrap();
    {
        let e = open().await;
        let data = json!({"who": "SECRET-SUBJECT"}).as_object().unwrap().clone();
        e.create(&c, Some(id.clone()), data, &Default::default()).await.unwrap();
        e.flush_ledger().await.unwrap();
    }
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
            .args(["erase", "--data-dir"])
            .arg(dir.path())
            .args(["--output", "json"])
            .args(extra)
            .env_remove("CHRONOS_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    let done = tokio::task::block_in_place(|| run(&["--collection", "notes", "--id", "n1", "--reason", "GDPR"]));
    assert_eq!((done.len(), done[0]["status"].as_str()), (1, Some("done")));
    assert!(tokio::task::block_in_place(|| run(&["--resume"])).is_empty());
    let e = open().await;
    assert!(matches!(
        e.get_latest(&c, &id, Default::default()).await,
        Err(chronos::engine::Error::Erased(_))
    ));
}
