//! The service's contract beyond items and auth: the OpenAPI document against the routes, metrics,
//! readiness, admin routes, how a 500 is reported, slow bodies, and the client's timeout against a
//! silent server.

use std::collections::BTreeMap;
use std::sync::Arc;

use chronos::api::{self, auth::Tokens};
use chronos::engine::backends::MemoryMetaStore;
use chronos::engine::backends::{S3Connection, S3PayloadStore};
use chronos::engine::{Engine, EngineSettings};
use reqwest::Method;
use serde_json::Value;

use crate::api::start;
use crate::support;

pub(crate) const TOKENS: &str = r#"
tokens:
  - {name: reader-t1, token: reader-t1-0123456789, databases: [t1], scopes: [read]}
  - {name: writer-t1, token: writer-t1-0123456789, databases: [t1], scopes: [read, write]}
  - {name: writer-t2, token: writer-t2-0123456789, databases: [t2], scopes: [read, write]}
  - {name: admin-t1, token: admin-t1-00123456789, databases: [t1], scopes: [admin]}
  - {name: admin-t2, token: admin-t2-00123456789, databases: [t2], scopes: [admin]}
  - {name: metrics, token: metrics-0-0123456789, databases: ["*"], scopes: [metrics]}
  - {name: admin, token: admin-000-0123456789, databases: ["*"], scopes: [admin]}
"#;

/// Every documented operation as (method, concrete path).
pub(crate) fn operations() -> Vec<(Method, String)> {
    let doc = serde_json::to_value(api::openapi()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let concrete = path
                .replace("{db}", "t1")
                .replace("{collection}", "notes")
                .replace("{id}", "x");
            ops.push((m, concrete));
        }
    }
    assert!(ops.len() >= 9, "the document lists the routes: {ops:?}");
    // Shutting the server down ends any walk over the routes, so it comes last.
    ops.sort_by_key(|(_, path)| path == "/v1/admin/shutdown");
    ops
}

pub(crate) async fn status_of(http: &reqwest::Client, method: &Method, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if *method == Method::POST || *method == Method::PUT || *method == Method::PATCH {
        req = req.json(&serde_json::json!({"k": 1}));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

pub(crate) fn engines() -> BTreeMap<String, Arc<Engine>> {
    ["t1", "t2"]
        .into_iter()
        .map(|k| (k.to_owned(), support::memory(EngineSettings::default()).engine))
        .collect()
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let server = start(engines(), None, 1 << 20).await;
    let served: Value = server
        .http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        serde_json::to_value(api::openapi()).unwrap(),
        "served document = generated document"
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in operations() {
        let (status, body) = status_of(&server.http, &method, &format!("{}{path}", server.url), None).await;
        let code = body["code"].as_str().unwrap_or("");
        assert!(
            code != "route_not_found" && status != 405,
            "{method} {path} is documented but not routed ({status} {code})"
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let server = start(engines(), None, 1 << 20).await;
    for _ in 0..3 {
        server
            .http
            .get(format!("{}/v1/t1/notes/items/nope", server.url))
            .send()
            .await
            .unwrap();
    }
    let text = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("chronos_http_requests_total{")
                && l.contains(r#"route="/v1/{db}/{collection}/items/{id}""#)
                && l.contains(r#"method="GET""#)
                && l.contains(r#"status="404""#)
        })
        .unwrap_or_else(|| panic!("no request counter for the item route in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    assert!(
        text.contains("chronos_http_request_duration_seconds_bucket"),
        "latency histogram missing"
    );
}

#[tokio::test]
async fn readiness_reflects_the_backends() {
    let server = start(engines(), None, 1 << 20).await;
    let resp = server.http.get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // A payload store whose server is not there: not ready, and the answer says which database.
    let dead = S3Connection {
        endpoint: "http://127.0.0.1:9".into(),
        region: "us-east-1".into(),
        access_key: "k".into(),
        secret_key: "s".into(),
        force_path_style: true,
    };
    let engine = Engine::new(
        Arc::new(MemoryMetaStore::new()),
        Arc::new(S3PayloadStore::new(dead.client(), "nowhere")),
        EngineSettings::default(),
    );
    let broken = BTreeMap::from([("broken".to_owned(), Arc::new(engine))]);
    let server = start(broken.clone(), None, 1 << 20).await;
    let resp = server.http.get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "backend_unavailable");
    assert!(body["message"].as_str().unwrap().contains("broken"), "{body}");

    // With tokens, the public probe names no tenant and no backend address.
    let server = start(broken, Some(Tokens::parse(TOKENS).unwrap()), 1 << 20).await;
    let resp = server.http.get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("broken") && !body.contains("127.0.0.1"),
        "the public readiness probe leaks: {body}"
    );
}

#[tokio::test]
async fn a_500_carries_the_request_id_and_no_internals() {
    let settings = EngineSettings {
        inline_max_bytes: 0,
        ..Default::default()
    };
    let h = support::memory(settings);
    let coll = "notes".parse().unwrap();
    let (id, _) = h
        .engine
        .create(
            &coll,
            None,
            serde_json::json!({"a": 1}).as_object().unwrap().clone(),
            &Default::default(),
        )
        .await
        .unwrap();
    let key = h.payloads.list("notes/", None, 1).await.unwrap().remove(0);
    h.payloads
        .put(&key, bytes::Bytes::from_static(b"{\"garbage\": true}"))
        .await
        .unwrap();
    let server = start(BTreeMap::from([("t1".to_owned(), h.engine.clone())]), None, 1 << 20).await;
    let resp = server
        .http
        .get(format!("{}/v1/t1/notes/items/{id}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "internal");
    assert_eq!(body["details"]["requestId"], header_id.as_str());
    assert!(
        !body.to_string().contains("garbage") && !body.to_string().contains(&key),
        "internals leaked: {body}"
    );
}

#[tokio::test]
async fn admin_validates_creates_buckets_and_shuts_down() {
    // A database whose payload bucket does not exist yet, on the real S3 server.
    let h = support::mongo_s3(EngineSettings::default()).await;
    let missing = S3PayloadStore::new(support::s3_connection().client(), support::unique("chronos-missing"));
    let engine = Engine::new(
        Arc::new(MemoryMetaStore::new()),
        Arc::new(missing),
        EngineSettings::default(),
    );
    let dbs = BTreeMap::from([
        ("good".to_owned(), h.engine.clone()),
        ("fresh".to_owned(), Arc::new(engine)),
    ]);
    let server = start(dbs, Some(Tokens::parse(TOKENS).unwrap()), 1 << 20).await;
    let admin = "admin-000-0123456789";
    let get = |path: &str| {
        server
            .http
            .get(format!("{}{path}", server.url))
            .bearer_auth(admin)
            .send()
    };
    let post = |path: &str, body: Value| {
        server
            .http
            .post(format!("{}{path}", server.url))
            .bearer_auth(admin)
            .json(&body)
            .send()
    };

    let v: Value = get("/v1/admin/databases/good/validate")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let components: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["metadata", "payloads", "backups"]);

    let v: Value = get("/v1/admin/databases/fresh/validate")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], false);
    let payloads = &v["checks"][1];
    assert!(payloads["detail"].as_str().unwrap().contains("does not exist"), "{v}");
    assert!(payloads["recommendation"].as_str().is_some());

    let plan: Value = post(
        "/v1/admin/databases/fresh/buckets",
        serde_json::json!({"createIfMissing": true, "dryRun": true}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (plan[0]["existed"].as_bool(), plan[0]["created"].as_bool()),
        (Some(false), Some(false))
    );
    let made: Value = post(
        "/v1/admin/databases/fresh/buckets",
        serde_json::json!({"createIfMissing": true}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(made[0]["created"], true);
    let v: Value = get("/v1/admin/databases/fresh/validate")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let t: Value = post("/v1/admin/databases/fresh/s3-test", Value::Null)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t["roundTripMs"].as_u64().is_some(), "{t}");
    let health: Value = get("/v1/admin/health").await.unwrap().json().await.unwrap();
    assert_eq!(health["ok"], true, "{health}");

    // Writers may not use admin routes.
    let denied = server
        .http
        .get(format!("{}/v1/admin/health", server.url))
        .bearer_auth("writer-t1-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    let resp = post("/v1/admin/shutdown", Value::Null).await.unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .expect("the server stopped after the shutdown request")
        .unwrap();
}

/// Backend calls are timed per backend and call: MongoDB commands through the driver's command
/// monitoring (as `chronos serve` wires it), S3 calls in the store.
#[tokio::test]
async fn metrics_time_backend_calls() {
    use chronos::config::{RemoteStorage, S3Access, Storage};
    use chronos::connect::{self, Connections};
    let buckets: Vec<String> = (0..3).map(|_| support::unique("chronos-metrics")).collect();
    for b in &buckets {
        S3PayloadStore::new(support::s3_connection().client(), b)
            .ensure_bucket()
            .await
            .unwrap();
    }
    let s3 = support::s3_connection();
    let storage = Storage::Remote(RemoteStorage {
        mongo_uri: support::env("CHRONOS_TEST_MONGO_URI"),
        db_name: support::unique("m").replace('-', "_"),
        s3: S3Access {
            endpoint: s3.endpoint,
            region: s3.region,
            access_key: s3.access_key,
            secret_key: s3.secret_key,
            force_path_style: s3.force_path_style,
        },
        json_bucket: buckets[0].clone(),
        content_bucket: buckets[1].clone(),
        backups_bucket: buckets[2].clone(),
        object_lock: false,
    });
    let engine = connect::open("t1", &storage, EngineSettings::default(), &Connections::default())
        .await
        .unwrap();
    let server = start(BTreeMap::from([("t1".to_owned(), engine)]), None, 1 << 20).await;
    let created = server
        .http
        .post(format!("{}/v1/t1/notes/items", server.url))
        .json(&serde_json::json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let text = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"backend="mongodb",call="commitTransaction",outcome="ok""#,
        r#"backend="s3",call="put",outcome="ok""#,
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("chronos_backend_call_duration_seconds_count") && l.contains(needle)),
            "no {needle} in:\n{text}"
        );
    }
}

/// RFC 9110: `If-Match` compares strongly (a weak tag never matches) and `If-Match: *` needs the
/// item to exist.
#[tokio::test]
async fn if_match_follows_rfc_9110() {
    let server = start(engines(), None, 1 << 20).await;
    let url = format!("{}/v1/t1/notes/items/m1", server.url);
    let put = |if_match: &'static str| {
        server
            .http
            .put(&url)
            .header("if-match", if_match)
            .json(&serde_json::json!({"k": 2}))
            .send()
    };
    assert_eq!(put("*").await.unwrap().status(), 412, "`*` on a missing item");
    let created = server
        .http
        .post(format!("{}/v1/t1/notes/items?id=m1", server.url))
        .json(&serde_json::json!({"k": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(put("W/\"0\"").await.unwrap().status(), 412, "a weak tag never matches");
    assert_eq!(put("*").await.unwrap().status(), 200, "`*` on an existing item");
    assert_eq!(put("\"1\"").await.unwrap().status(), 200);
}

/// Four clients that announce large bodies and never send them held the four large-body permits
/// for ever, so every other large write waited (review L7). A body deadline answers them 408 and
/// frees the permits.
#[tokio::test]
async fn slow_bodies_cannot_block_large_writes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings = api::ServiceSettings {
        body_read_timeout: std::time::Duration::from_millis(500),
        ..api::ServiceSettings::new(8 << 20)
    };
    let server = crate::api::start_with(engines(), None, &settings).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"POST /v1/t1/notes/items HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n[",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    let big = serde_json::json!({"blob": "x".repeat(2 << 20)});
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        server
            .http
            .post(format!("{}/v1/t1/notes/items", server.url))
            .json(&big)
            .send(),
    )
    .await
    .expect("a large write gets through while slow clients stall")
    .unwrap();
    assert_eq!(resp.status(), 201);
    for mut s in stalled {
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// A server that takes the connection and never answers: a client request fails after its read
/// timeout, saying it could not reach the server, instead of waiting forever.
#[tokio::test]
async fn a_client_request_to_a_silent_server_times_out() {
    use chronos::client::{Client, Error};
    use std::time::Duration;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap());
        }
    });
    let client = Client::with_read_timeout(&url, None, Duration::from_millis(300)).unwrap();
    // The bound only guards against a hang: the request ends at its own timeout.
    let got = tokio::time::timeout(Duration::from_secs(30), client.get_json("/v1/t1/notes/items/x"))
        .await
        .expect("a request to a silent server must not wait forever");
    assert!(matches!(got, Err(Error::Transport { .. })), "{got:?}");
    silent.abort();
}
