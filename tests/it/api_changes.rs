//! The change feed over HTTP, driven by the typed client on each backend: JSON pages, the live
//! SSE stream with its resume after a dropped connection, 410 `history_pruned`, the subscriber
//! gauge, clear 400s for malformed requests, a stream that does not hold up shutdown, and the
//! `chronos watch` command: its lines, its `--limit` and its end when its reader goes.

use std::collections::BTreeMap;
use std::time::Duration;

use chronos::client::changes::{Change, ChangesParams};
use chronos::client::{Client, WriteOptions};
use serde_json::{Map, Value, json};

use crate::api::{Server, raw_get, start};
use crate::support::{self, Harness};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn serve(h: &Harness) -> (Server, Client) {
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    let client = Client::new(&server.url, None).unwrap();
    (server, client)
}

/// Every page from `after` with the client, until the server says there is no more.
async fn all_pages(c: &Client, p: &ChangesParams) -> Vec<Change> {
    let mut p = p.clone();
    let mut got = Vec::new();
    loop {
        let page = c.changes("t1", "notes", &p).await.unwrap();
        got.extend(page.changes);
        p.after = page.next;
        if !page.more {
            return got;
        }
    }
}

async fn feed_over_http(h: Harness) {
    let (server, c) = serve(&h).await;
    let who = WriteOptions::default();
    let mut ids = Vec::new();
    for n in 0..4 {
        let w = c
            .create("t1", "notes", None, &obj(json!({"n": n, "kind": "k"})), &who)
            .await
            .unwrap();
        c.update("t1", "notes", &w.id, &obj(json!({"n": n + 10, "kind": "k"})), &who)
            .await
            .unwrap();
        ids.push(w.id);
    }
    c.delete("t1", "notes", &ids[0], &who).await.unwrap();

    let paged = all_pages(
        &c,
        &ChangesParams {
            limit: Some(3),
            ..Default::default()
        },
    )
    .await;
    let cvs: Vec<u64> = paged.iter().map(|c| c.cv).collect();
    assert_eq!(paged.len(), 9);
    assert!(cvs.windows(2).all(|w| w[0] < w[1]), "cv order: {cvs:?}");
    assert_eq!(paged[0].meta["n"], 0, "indexed metadata");
    assert!(paged.iter().all(|c| c.data.is_none()));
    let with_data = all_pages(
        &c,
        &ChangesParams {
            include_data: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        with_data[1].data.as_ref().unwrap()["n"],
        10,
        "include=data: the version's own data"
    );
    assert_eq!(with_data[1].data.as_ref().unwrap()["_system"]["ov"], 1);
    let big = all_pages(
        &c,
        &ChangesParams {
            filter: Some(r#"{"n": {"$gte": 10}}"#.into()),
            ops: Some("UPDATE".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(big.iter().map(|c| c.op.as_str()).collect::<Vec<_>>(), ["UPDATE"; 4]);

    // Live: the same versions, then new ones as they are written, across a dropped connection.
    let mut live = c.watch("t1", "notes", ChangesParams::default());
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(live.next().await.unwrap());
    }
    assert_eq!(seen, paged, "the stream starts with what the pages had");
    let gauge = subscriber_gauge(&server).await;
    assert!(gauge >= Some(1.0), "a subscriber on t1/notes: {gauge:?}");
    let w = c
        .create("t1", "notes", None, &obj(json!({"n": 99})), &who)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.cv, next.id.as_str()),
        (w.cv, w.id.as_str()),
        "pushed when written"
    );
    live.disconnect();
    let w2 = c
        .update("t1", "notes", &w.id, &obj(json!({"n": 100})), &who)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.cv, w2.cv, "resumed after the last cv, nothing twice");
    drop(live);

    // Retention cuts into the beginning: 410 with where the feed is complete again.
    h.engine
        .prune_versions(
            &"notes".parse().unwrap(),
            &chronos::engine::PrunePolicy {
                keep_last: Some(1),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    let gone = c.changes("t1", "notes", &ChangesParams::default()).await.unwrap_err();
    assert_eq!(
        (gone.status(), gone.code()),
        (Some(410), Some("history_pruned")),
        "{gone}"
    );
    let chronos::client::Error::Api { details, .. } = &gone else {
        panic!("{gone:?}")
    };
    let through = details["prunedThrough"].as_u64().unwrap();
    assert!(details["oldestCv"].as_u64().is_some());
    let mut stream = c.watch("t1", "notes", ChangesParams::default());
    let err = stream.next().await.unwrap_err();
    assert_eq!(err.code(), Some("history_pruned"));
    let rest = all_pages(
        &c,
        &ChangesParams {
            after: through,
            ..Default::default()
        },
    )
    .await;
    assert!(rest.iter().all(|c| c.cv > through));
    server.state.request_shutdown();
}

/// The value of `chronos_feed_subscribers` for t1/notes, if exported.
async fn subscriber_gauge(server: &Server) -> Option<f64> {
    let text = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("chronos_feed_subscribers{")
                && l.contains(r#"collection="notes""#)
                && l.contains(r#"db="t1""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_over_http_memory() {
    feed_over_http(support::memory(Default::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_over_http_embedded() {
    feed_over_http(support::embedded(Default::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_over_http_mongo_s3() {
    feed_over_http(support::mongo_s3(Default::default()).await).await;
}

/// Malformed cursors, limits, filters and ops are 400s with the error shape, never a 500.
#[tokio::test]
async fn malformed_feed_requests_are_400() {
    let h = support::memory(Default::default());
    let (server, _) = serve(&h).await;
    for query in [
        "after=abc",
        "after=-1",
        "after=9223372036854775808",
        "limit=0",
        "limit=1001",
        "ops=CREATE,FOO",
        "filter=notjson",
        "filter=%7B%22n%22%3A%7B%22%24where%22%3A1%7D%7D",
        "include=everything",
        "nope=1",
    ] {
        let (status, body) = raw_get(&server.url, &format!("/v1/t1/notes/changes?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains("\"code\""), "{query}: {body}");
    }
    let bad_id = server
        .http
        .get(format!("{}/v1/t1/notes/changes", server.url))
        .header("last-event-id", "x1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    let (status, _) = raw_get(&server.url, "/v1/t1/notes/changes?after=0&limit=1000").await;
    assert_eq!(status, 200);
}

/// An open stream ends when the server shuts down, so it never holds the drain up.
#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let h = support::memory(Default::default());
    let (server, _) = serve(&h).await;
    let response = server
        .http
        .get(format!("{}/v1/t1/notes/changes", server.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    server.state.request_shutdown();
    tokio::time::timeout(Duration::from_secs(20), server.task)
        .await
        .expect("the server drained with a stream open")
        .unwrap();
    drop(response);
}

/// `chronos watch` prints one JSON line per change, in cv order, and keeps following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_command_prints_one_line_per_change() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let h = support::memory(Default::default());
    let (server, c) = serve(&h).await;
    let who = WriteOptions::default();
    let first = c
        .create("t1", "notes", None, &obj(json!({"n": 1})), &who)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
        .args(["watch", "t1", "notes", "--output", "json", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let line = next_line().await;
    assert_eq!(
        (line["cv"].as_u64(), line["id"].as_str(), line["op"].as_str()),
        (Some(first.cv), Some(first.id.as_str()), Some("CREATE"))
    );
    let second = c
        .update("t1", "notes", &first.id, &obj(json!({"n": 2})), &who)
        .await
        .unwrap();
    let line = next_line().await;
    assert_eq!(
        (line["cv"].as_u64(), line["ov"].as_u64(), line["meta"]["n"].as_u64()),
        (Some(second.cv), Some(1), Some(2))
    );
    child.kill().await.unwrap();
}

/// `chronos watch --limit N` prints N changes and exits; a watch whose reader has gone ends
/// even while no change comes (`chronos watch … | head -n 2` once every change is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_command_ends_at_its_limit_and_when_its_reader_goes() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let h = support::memory(Default::default());
    let (server, c) = serve(&h).await;
    let who = WriteOptions::default();
    for n in 0..3 {
        c.create("t1", "notes", None, &obj(json!({"n": n})), &who)
            .await
            .unwrap();
    }
    let watch = |extra: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chronos"))
            .args(["watch", "t1", "notes", "--output", "json", "--server", &server.url])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // Bounded waits only guard against a hang; each ends as soon as the process does.
    let limited = tokio::time::timeout(Duration::from_secs(30), watch(&["--limit", "2"]).wait_with_output())
        .await
        .expect("a watch with --limit must end")
        .unwrap();
    assert!(limited.status.success());
    let cvs: Vec<u64> = String::from_utf8(limited.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["cv"].as_u64().unwrap())
        .collect();
    assert_eq!(cvs, [1, 2]);

    let mut child = watch(&[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap();
        assert!(line.unwrap().is_some());
    }
    // Every change is printed and no other comes: only the closed pipe can end it now.
    drop(lines);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("a watch whose reader has gone must end without waiting for another change")
        .unwrap();
    assert!(status.success());
}
