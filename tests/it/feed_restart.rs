//! The change feed across a crash: `chronos serve` killed with SIGKILL while a subscriber reads
//! its feed; the subscriber resumes from the last cv it saw on the restarted engine and, after
//! dedupe by cv, has seen every committed version exactly once, in cv order, and nothing else.

use std::time::Duration;

use chronos::client::Client;
use chronos::client::changes::ChangesParams;
use serde_json::{Value, json};

use crate::readme::serve_in;

async fn write(http: &reqwest::Client, url: &str, n: u64) {
    let r = http
        .post(format!("{url}/v1/default/notes/items"))
        .json(&json!({"n": n}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

#[tokio::test]
async fn a_subscriber_resumes_after_its_engine_is_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(30);

    let served = serve_in(&data).await;
    for n in 0..20 {
        write(&http, &served.url, n).await;
    }
    let client = Client::new(served.url.clone(), None).unwrap();
    let mut stream = client.watch("default", "notes", ChangesParams::default());
    let mut seen = Vec::new();
    for _ in 0..10 {
        let change = tokio::time::timeout(deadline, stream.next()).await.unwrap().unwrap();
        seen.push(change.cv);
    }
    served.kill().await;

    // The same data, a new process (and port); ten more writes after the restart.
    let served = serve_in(&data).await;
    for n in 20..30 {
        write(&http, &served.url, n).await;
    }
    let client = Client::new(served.url.clone(), None).unwrap();
    let resume = ChangesParams {
        after: *seen.last().unwrap(),
        ..Default::default()
    };
    let mut stream = client.watch("default", "notes", resume);
    while seen.len() < 30 {
        let change = tokio::time::timeout(deadline, stream.next()).await.unwrap().unwrap();
        seen.push(change.cv);
    }
    // The index, read as pages from the start: exactly what the subscriber saw.
    let page: Value = http
        .get(format!("{}/v1/default/notes/changes?after=0&limit=1000", served.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<u64> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cv"].as_u64().unwrap())
        .collect();
    assert_eq!(all.len(), 30, "every acknowledged write survived the kill: {page}");
    assert_eq!(seen, all, "once each, in cv order, across the crash");
    served.stop().await;
}
