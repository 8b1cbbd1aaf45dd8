//! The HTTP service over a real socket, driven by the typed client, on each backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use chronos::api::auth::Tokens;
use chronos::api::{self, AppState, ServiceSettings};
use chronos::client::{Client, Version, WriteOptions};
use chronos::engine::{Engine, EngineSettings};
use serde_json::{Map, Value, json};

use crate::support::{self, Harness};

/// A running server on an ephemeral loopback port.
pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    /// Ends when the server has shut down.
    pub task: tokio::task::JoinHandle<()>,
    pub state: AppState,
}

pub async fn start(databases: BTreeMap<String, Arc<Engine>>, tokens: Option<Tokens>, max_body: usize) -> Server {
    start_with(databases, tokens, &ServiceSettings::new(max_body)).await
}

pub async fn start_with(
    databases: BTreeMap<String, Arc<Engine>>,
    tokens: Option<Tokens>,
    settings: &ServiceSettings,
) -> Server {
    let state = AppState::new(databases, tokens);
    let app = api::router(state.clone(), settings);
    chronos::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stopped = state.shutdown_requested();
    let task = tokio::spawn(async move {
        api::serve(listener, app, stopped).await.unwrap();
    });
    Server {
        url,
        http: reqwest::Client::new(),
        task,
        state,
    }
}

async fn serve_one(h: Harness) -> (Server, Harness) {
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    (server, h)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// The same checks for every backend pair.
async fn round_trip(server: &Server) {
    let c = Client::new(&server.url, None).unwrap();
    let who = WriteOptions {
        actor: Some("alice".into()),
        reason: Some("test".into()),
        ..Default::default()
    };
    let created = c
        .create("t1", "notes", None, &obj(json!({"title": "a", "n": 1})), &who)
        .await
        .unwrap();
    assert_eq!(created.ov, 0);
    let got = c
        .get("t1", "notes", &created.id, &Version::Latest, false)
        .await
        .unwrap();
    assert_eq!(got["title"], "a");
    assert_eq!(got["_system"]["id"], created.id.as_str());
    assert_eq!(got["_system"]["ov"], 0);
    assert_eq!(got["_system"]["state"], "new");

    // If-Match (412 when stale) and expectedOv (409 when stale).
    let mut lock = WriteOptions {
        expected_ov: Some(0),
        ..Default::default()
    };
    let updated = c
        .update("t1", "notes", &created.id, &obj(json!({"title": "b"})), &lock)
        .await
        .unwrap();
    assert_eq!(updated.ov, 1);
    let stale = c
        .update("t1", "notes", &created.id, &obj(json!({"title": "c"})), &lock)
        .await
        .unwrap_err();
    assert_eq!((stale.status(), stale.code()), (Some(412), Some("precondition_failed")));
    let resp = server
        .http
        .put(format!("{}/v1/t1/notes/items/{}?expectedOv=0", server.url, created.id))
        .json(&json!({"title": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "version_conflict");
    assert_eq!(body["details"]["currentOv"], 1);

    let v0 = c.get("t1", "notes", &created.id, &Version::Ov(0), false).await.unwrap();
    assert_eq!(v0["title"], "a");
    let at = c
        .get("t1", "notes", &created.id, &Version::At(updated.at.clone()), false)
        .await
        .unwrap();
    assert_eq!(at["_system"]["ov"], 1);

    lock.expected_ov = Some(1);
    let deleted = c.delete("t1", "notes", &created.id, &lock).await.unwrap();
    assert_eq!(deleted.ov, 2);
    let gone = c
        .get("t1", "notes", &created.id, &Version::Latest, false)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("not_found"));
    let kept = c.get("t1", "notes", &created.id, &Version::Latest, true).await.unwrap();
    assert_eq!(kept["_system"]["deleted"], true);

    let hist = c.history("t1", "notes", &created.id, None, Some(2)).await.unwrap_err();
    assert_eq!(hist.code(), Some("not_found"), "history of a deleted item is hidden");
    let resp = server
        .http
        .get(format!(
            "{}/v1/t1/notes/items/{}/versions?includeDeleted=true&limit=2",
            server.url, created.id
        ))
        .send()
        .await
        .unwrap();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["versions"].as_array().unwrap().len(), 2);
    assert_eq!(page["versions"][0]["actor"], "alice");
    assert_eq!(page["nextAfterOv"], 1);
}

async fn listing(server: &Server) {
    let c = Client::new(&server.url, None).unwrap();
    for i in 0..5 {
        let data = obj(json!({"n": i, "status": if i < 3 { "open" } else { "closed" }}));
        c.create(
            "t1",
            "tasks",
            Some(&format!("task-{i}")),
            &data,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    }
    let mut params = chronos::client::ListParams {
        filter: Some(json!({"status": "open"})),
        limit: Some(2),
        ..Default::default()
    };
    let first = c.list("t1", "tasks", &params).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.items[0]["_system"]["id"], "task-0");
    params.after_id = first.next_after_id.clone();
    let second = c.list("t1", "tasks", &params).await.unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0]["_system"]["id"], "task-2");
    assert_eq!(second.next_after_id, None);
    for bad in ["{\"$where\": \"1\"}", "{\"n\": {\"$regex\": \"x\"}}", "not json"] {
        let resp = server
            .http
            .get(format!("{}/v1/t1/tasks/items", server.url))
            .query(&[("filter", bad)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "bad_request");
    }
}

async fn enrich_and_restore(server: &Server) {
    use chronos::client::RestorePoint;
    let c = Client::new(&server.url, None).unwrap();
    let none = WriteOptions::default();
    let created = c
        .create(
            "t1",
            "people",
            Some("p1"),
            &obj(json!({"name": "Ann", "tags": ["a"]})),
            &none,
        )
        .await
        .unwrap();
    let patches = [obj(json!({"tags": ["b"]})), obj(json!({"age": 40}))];
    let enriched = c
        .enrich("t1", "people", "p1", &patches, Some("census"), &none)
        .await
        .unwrap();
    assert_eq!(enriched.ov, 1);
    let got = c.get("t1", "people", "p1", &Version::Latest, false).await.unwrap();
    assert_eq!(got["tags"], json!(["a", "b"]));
    assert_eq!(got["age"], 40);
    assert_eq!(got["_system"]["functionIds"], json!(["census"]));
    let not_objects = server
        .http
        .patch(format!("{}/v1/t1/people/items/p1", server.url))
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    assert_eq!(not_objects.status(), 422);

    let restored = c
        .restore_item("t1", "people", "p1", &Version::Ov(0), &none)
        .await
        .unwrap();
    assert_eq!(restored.ov, 2);
    let got = c.get("t1", "people", "p1", &Version::Latest, false).await.unwrap();
    assert_eq!(got["tags"], json!(["a"]));
    let both = server
        .http
        .post(format!("{}/v1/t1/people/items/p1/restore", server.url))
        .json(&json!({"ov": 0, "at": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);
    let wrong_type = server
        .http
        .post(format!("{}/v1/t1/people/items/p1/restore", server.url))
        .json(&json!({"ov": "zero"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 422);
    let body: Value = wrong_type.json().await.unwrap();
    assert_eq!(body["details"]["field"], "ov");

    // Back to the collection as of the create: p2 (created later) is deleted, p1 is as created.
    c.create("t1", "people", Some("p2"), &obj(json!({"name": "Bob"})), &none)
        .await
        .unwrap();
    let point = RestorePoint::Cv(created.cv);
    let plan = c
        .restore_collection_page("t1", "people", &point, true, None, &none)
        .await
        .unwrap();
    assert_eq!(
        (plan.counts.examined, plan.counts.deleted, plan.counts.unchanged),
        (2, 1, 1)
    );
    assert_eq!(plan.total, 2);
    let done = c
        .restore_collection_page("t1", "people", &point, false, None, &none)
        .await
        .unwrap();
    assert_eq!(done.counts, plan.counts);
    assert_eq!(done.next_after_id, None);
    let gone = c.get("t1", "people", "p2", &Version::Latest, false).await.unwrap_err();
    assert_eq!(gone.code(), Some("not_found"));
}

#[tokio::test]
async fn api_round_trip_memory() {
    let (server, _h) = serve_one(support::memory(EngineSettings::default())).await;
    round_trip(&server).await;
    listing(&server).await;
    enrich_and_restore(&server).await;
}

#[tokio::test]
async fn api_round_trip_mongo_s3() {
    let (server, _h) = serve_one(support::mongo_s3(EngineSettings::default()).await).await;
    round_trip(&server).await;
    listing(&server).await;
    enrich_and_restore(&server).await;
}

#[tokio::test]
async fn api_round_trip_embedded() {
    let (server, _h) = serve_one(support::embedded(EngineSettings::default())).await;
    round_trip(&server).await;
    listing(&server).await;
    enrich_and_restore(&server).await;
}

/// Client mistakes are clear 4xx in the one error shape; nothing is written.
#[tokio::test]
async fn client_mistakes_are_4xx() {
    let (server, h) = serve_one(support::memory(EngineSettings::default())).await;
    let u = &server.url;
    let http = &server.http;
    let json_ct = ("content-type", "application/json");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(format!("{u}/v1/t1/notes/items/a%2Fb")), 400, "invalid_name"),
        (http.get(format!("{u}/v1/t1/notes/items/a%00b")), 400, "invalid_name"),
        (http.get(format!("{u}/v1/t1/no%20pe/items/x")), 400, "invalid_name"),
        (http.get(format!("{u}/v1/t1/system_x/items/x")), 400, "invalid_name"),
        (http.get(format!("{u}/v1/zz/notes/items/x")), 404, "database_not_found"),
        (http.get(format!("{u}/v1/t1/notes/items/x?ov=abc")), 400, "bad_request"),
        (http.get(format!("{u}/v1/t1/notes/items/x?bogus=1")), 400, "bad_request"),
        (
            http.get(format!("{u}/v1/t1/notes/items/x?at=yesterday")),
            400,
            "bad_request",
        ),
        (
            http.get(format!("{u}/v1/t1/notes/items/x?ov=1&at=2020-01-01T00:00:00Z")),
            400,
            "bad_request",
        ),
        (
            http.get(format!("{u}/v1/t1/notes/items/x/versions?limit=0")),
            400,
            "bad_request",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items"))
                .header(json_ct.0, json_ct.1)
                .body("{bad"),
            400,
            "invalid_json",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items"))
                .header(json_ct.0, json_ct.1)
                .body("[1]"),
            422,
            "validation_failed",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items"))
                .header(json_ct.0, json_ct.1)
                .body(format!("{{\"a\":\"{}\"}}", "x".repeat(2 << 20))),
            413,
            "payload_too_large",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items"))
                .header(json_ct.0, json_ct.1)
                .body("[".repeat(10_000) + &"]".repeat(10_000)),
            400,
            "invalid_json",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items?id=bad/id"))
                .header(json_ct.0, json_ct.1)
                .body("{}"),
            400,
            "invalid_name",
        ),
        (
            http.post(format!("{u}/v1/t1/notes/items?actor=a%0Ab"))
                .header(json_ct.0, json_ct.1)
                .body("{}"),
            400,
            "bad_request",
        ),
        (
            http.put(format!("{u}/v1/t1/notes/items/x"))
                .header(json_ct.0, json_ct.1)
                .header("if-match", "\"zz\"")
                .body("{}"),
            400,
            "bad_request",
        ),
        (
            http.put(format!("{u}/v1/t1/notes/items/x"))
                .header(json_ct.0, json_ct.1)
                .body("{}"),
            404,
            "not_found",
        ),
        (http.delete(format!("{u}/v1/t1/notes/items/x")), 404, "not_found"),
        (http.patch(format!("{u}/v1/t1/notes/items")), 405, "method_not_allowed"),
        (http.get(format!("{u}/v2/anything")), 404, "route_not_found"),
    ];
    for (req, status, code) in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let resp = http.execute(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    }
    // URL libraries normalise `..` away; a raw request sends it as is.
    for path in [
        "/v1/t1/notes/items/..",
        "/v1/t1/../items/x",
        "/v1/t1/notes/items/%2E%2E",
    ] {
        let (status, body) = raw_get(&server.url, path).await;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
    }
    assert!(
        h.payloads.list("", None, 10).await.unwrap().is_empty(),
        "nothing was written"
    );
}

/// A GET sent byte for byte, bypassing any URL normalisation.
pub async fn raw_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
