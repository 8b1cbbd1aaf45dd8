//! The reconcilers against a mock API server (kube-rs' `tower_test` pattern): each test scripts
//! the API calls a reconcile must make, in order, and asserts their exact bodies — the error
//! paths the real server is awkward to provoke.

use std::sync::Arc;

use chronos::operator::collection::ChronosCollection;
use chronos::operator::database::ChronosDatabase;
use chronos::operator::{Context, requeue};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (Context::new(client, "chronos:test"), handle)
}

/// Expect one request; answer it with `status` and `body`; return (method, path and query, body).
async fn expect(handle: &mut Handle, status: StatusCode, body: Value) -> (String, String, Value) {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the reconciler made another request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    (method, uri, sent)
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{what} not found")})
}

#[tokio::test]
async fn invalid_database_spec_is_reported_and_waits_for_a_change() {
    let (ctx, mut handle) = mock();
    let db: ChronosDatabase = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabase",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 4, "uid": "u1",
                     "finalizers": ["chronos.dev/data"]},
        "spec": {
            "mongodb": {"uriSecretRef": {"name": "m", "key": "uri"}, "dbName": "orders"},
            "s3": {"endpoint": "ftp://x", "buckets": {"json": "a-json", "content": "a-content", "backups": "a-backups"},
                   "credentialsSecretRef": {"name": "s3"}}
        }
    }))
    .unwrap();
    let echo = serde_json::to_value(&db).unwrap();
    let list = json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabaseList", "metadata": {},
                      "items": [echo.clone()]});
    let server = tokio::spawn(async move {
        let list = expect(&mut handle, StatusCode::OK, list).await;
        let marker = expect(
            &mut handle,
            StatusCode::NOT_FOUND,
            not_found("secrets chronos-engine-config"),
        )
        .await;
        let status = expect(&mut handle, StatusCode::OK, echo).await;
        let event = expect(&mut handle, StatusCode::CREATED, json!({})).await;
        (list, marker, status, event)
    });
    let action = chronos::operator::database::controller::reconcile(Arc::new(db.clone()), ctx).await;
    let (list, marker, (method, uri, body), event) = server.await.unwrap();
    assert_eq!(
        action.unwrap(),
        Action::await_change(),
        "an invalid spec waits for the user"
    );
    // The namespace's shared engine is rendered again without it: no member left, no engine
    // (the config Secret marks one), nothing to delete.
    assert_eq!(
        (list.0.as_str(), list.1.as_str()),
        ("GET", "/apis/chronos.dev/v1alpha1/namespaces/shop/chronosdatabases?")
    );
    assert_eq!(
        (marker.0.as_str(), marker.1.as_str()),
        ("GET", "/api/v1/namespaces/shop/secrets/chronos-engine-config")
    );
    assert_eq!(method, "PATCH");
    assert_eq!(
        uri,
        "/apis/chronos.dev/v1alpha1/namespaces/shop/chronosdatabases/orders/status?&force=true&fieldManager=chronos-operator"
    );
    let status = &body["status"];
    assert_eq!(body["kind"], "ChronosDatabase");
    assert_eq!(status["observedGeneration"], 4);
    let ready = &status["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    assert_eq!(ready["reason"], "InvalidSpec");
    assert_eq!(ready["observedGeneration"], 4);
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("exactly one of spec.routing and spec.key"),
        "{message}"
    );
    assert!(message.contains("spec.s3.endpoint"), "{message}");

    // …and says so as a Warning Event about the database.
    let (method, uri, event) = event;
    assert_eq!(
        (method.as_str(), uri.as_str()),
        ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events?")
    );
    assert_eq!(
        (
            event["type"].as_str(),
            event["reason"].as_str(),
            event["action"].as_str()
        ),
        (Some("Warning"), Some("InvalidSpec"), Some("Reconcile"))
    );
    assert_eq!(event["note"], ready["message"]);
    assert_eq!(
        (event["regarding"]["kind"].as_str(), event["regarding"]["name"].as_str()),
        (Some("ChronosDatabase"), Some("orders"))
    );
    assert_eq!(event["reportingController"], "chronos-operator");
}

#[tokio::test]
async fn collection_of_a_missing_database_says_so_and_retries() {
    let (ctx, mut handle) = mock();
    let c: ChronosCollection = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 1},
        "spec": {"database": "nope", "name": "orders", "indexedProps": ["status"]}
    }))
    .unwrap();
    let echo = serde_json::to_value(&c).unwrap();
    let server = tokio::spawn(async move {
        let get = expect(&mut handle, StatusCode::NOT_FOUND, not_found("chronosdatabases nope")).await;
        let patch = expect(&mut handle, StatusCode::OK, echo).await;
        (get, patch)
    });
    let action = chronos::operator::collection::controller::reconcile(Arc::new(c), ctx).await;
    let ((get_method, get_uri, _), (patch_method, patch_uri, body)) = server.await.unwrap();
    assert_eq!(action.unwrap(), Action::requeue(requeue::MISSING));
    assert_eq!(
        (get_method.as_str(), get_uri.as_str()),
        (
            "GET",
            "/apis/chronos.dev/v1alpha1/namespaces/shop/chronosdatabases/nope"
        )
    );
    assert_eq!(patch_method, "PATCH");
    assert!(patch_uri.ends_with("/chronoscollections/orders/status?&force=true&fieldManager=chronos-operator"));
    let cond = &body["status"]["conditions"][0];
    assert_eq!(
        (cond["type"].as_str(), cond["reason"].as_str()),
        (Some("IndexesReady"), Some("DatabaseNotFound"))
    );
    assert_eq!(cond["message"], "ChronosDatabase shop/nope not found");
    assert_eq!(body["status"]["indexes"], json!([]));
}

#[tokio::test]
async fn api_server_errors_are_transient_and_retried() {
    let (ctx, mut handle) = mock();
    let c: ChronosCollection = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"database": "db", "name": "orders"}
    }))
    .unwrap();
    let server = tokio::spawn(async move {
        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError",
                             "code": 500, "message": "etcd is down"});
        expect(&mut handle, StatusCode::INTERNAL_SERVER_ERROR, failure).await
    });
    let c = Arc::new(c);
    let err = chronos::operator::collection::controller::reconcile(c.clone(), ctx.clone())
        .await
        .unwrap_err();
    server.await.unwrap();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        chronos::operator::error_policy(c, &err, ctx),
        Action::requeue(requeue::TRANSIENT)
    );
    let invalid = chronos::operator::Error::Invalid("x".into());
    assert!(!invalid.is_transient());
}
