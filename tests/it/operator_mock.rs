//! The reconcilers against a mock API server (kube-rs' `tower_test` pattern): each test scripts
//! the API calls a reconcile must make, in order, and asserts their exact bodies — the error
//! paths the real server is awkward to provoke.

use std::sync::Arc;

use chronos::operator::crd::ChronosCollection;
use chronos::operator::crd::ChronosDatabase;
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

/// Answer the requests of a database reconcile that ends before any engine: the namespace's
/// databases listed (the shared engine is rendered again without this one; no engine marker is
/// found, so nothing to delete), then the status write and its Event. Returns the four
/// (method, path, body).
async fn answer_unserved(handle: &mut Handle, db: &Value) -> [(String, String, Value); 4] {
    let list = json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabaseList", "metadata": {},
                      "items": [db]});
    let list = expect(handle, StatusCode::OK, list).await;
    let marker = expect(
        handle,
        StatusCode::NOT_FOUND,
        not_found("secrets chronos-engine-config"),
    )
    .await;
    let status = expect(handle, StatusCode::OK, db.clone()).await;
    let event = expect(handle, StatusCode::CREATED, json!({})).await;
    [list, marker, status, event]
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
    let server = tokio::spawn(async move { answer_unserved(&mut handle, &echo).await });
    let action = chronos::operator::controllers::database::reconcile(Arc::new(db.clone()), ctx).await;
    let [list, marker, (method, uri, body), event] = server.await.unwrap();
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
    let action = chronos::operator::controllers::collection::reconcile(Arc::new(c), ctx).await;
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
    let err = chronos::operator::controllers::collection::reconcile(c.clone(), ctx.clone())
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

fn valid_database(extra: Value) -> ChronosDatabase {
    let mut db = json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabase",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 1, "uid": "u1",
                     "finalizers": ["chronos.dev/data"]},
        "spec": {
            "key": "orders",
            "mongodb": {"uriSecretRef": {"name": "victim", "key": "password"}, "dbName": "orders"},
            "s3": {"endpoint": "http://s3:8333", "buckets": {"json": "a-json", "content": "a-content", "backups": "a-backups"},
                   "credentialsSecretRef": {"name": "s3"}}
        }
    });
    if let (Some(spec), Some(extra)) = (db["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(db).unwrap()
}

#[tokio::test]
async fn an_unlabelled_secret_is_not_used_and_the_condition_says_how_to_allow_it() {
    let (ctx, mut handle) = mock();
    let db = valid_database(json!({}));
    let echo = serde_json::to_value(&db).unwrap();
    // Another application's Secret: no chronos.dev/credentials label.
    let victim = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "victim", "namespace": "shop"},
                        "data": {"password": "aHVudGVyMg=="}});
    let server = tokio::spawn(async move {
        let secret = expect(&mut handle, StatusCode::OK, victim).await;
        (secret, answer_unserved(&mut handle, &echo).await)
    });
    let action = chronos::operator::controllers::database::reconcile(Arc::new(db), ctx).await;
    let (secret, [next, marker, (_, uri, body), _]) = server.await.unwrap();
    assert_eq!(secret.1, "/api/v1/namespaces/shop/secrets/victim");
    assert_eq!(
        (next.0.as_str(), next.1.as_str()),
        ("GET", "/apis/chronos.dev/v1alpha1/namespaces/shop/chronosdatabases?"),
        "nothing else is read, nothing is sent anywhere with the value"
    );
    assert!(marker.1.ends_with("/secrets/chronos-engine-config"));
    assert_eq!(action.unwrap(), Action::requeue(requeue::MISSING));
    assert!(uri.ends_with("/chronosdatabases/orders/status?&force=true&fieldManager=chronos-operator"));
    let reachable = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "BackendsReachable")
        .unwrap()
        .clone();
    assert_eq!(
        (reachable["status"].as_str(), reachable["reason"].as_str()),
        (Some("False"), Some("SecretNotLabelled"))
    );
    let message = reachable["message"].as_str().unwrap();
    assert!(
        message.contains("chronos.dev/credentials=true") && message.contains("shop/victim"),
        "{message}"
    );
}

#[tokio::test]
async fn an_image_outside_the_allow_list_is_refused_before_any_secret_is_read() {
    let (ctx, mut handle) = mock();
    let db = valid_database(json!({"engine": {"image": "attacker.example/img:1"}}));
    let echo = serde_json::to_value(&db).unwrap();
    let server = tokio::spawn(async move { answer_unserved(&mut handle, &echo).await });
    let action = chronos::operator::controllers::database::reconcile(Arc::new(db), ctx).await;
    let [(method, uri, _), _, (_, _, body), _] = server.await.unwrap();
    assert_eq!(
        (method.as_str(), uri.as_str()),
        ("GET", "/apis/chronos.dev/v1alpha1/namespaces/shop/chronosdatabases?"),
        "no Secret is read for a database whose engine would run a foreign image"
    );
    assert_eq!(action.unwrap(), Action::await_change());
    let ready = &body["status"]["conditions"][0];
    assert_eq!(ready["reason"], "InvalidSpec");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.engine.image") && message.contains("attacker.example/img:1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_chronos_engine_the_operator_did_not_make_is_not_deleted() {
    let (ctx, mut handle) = mock();
    // An invalid database: the namespace's shared engine has no member left and would go.
    let db = valid_database(json!({"key": "admin"}));
    let echo = serde_json::to_value(&db).unwrap();
    let list = json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabaseList", "metadata": {},
                      "items": [echo.clone()]});
    // …but `chronos-engine` here is another application's: no operator label, no owner.
    let foreign = |api: &str, kind: &str, name: &str| json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "shop", "uid": "x"}});
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        // Until the status write: GETs find the foreign objects, anything else succeeds.
        loop {
            let (request, send) = handle.next_request().await.expect("another request");
            let (method, uri) = (request.method().to_string(), request.uri().path().to_owned());
            let name = uri.rsplit('/').next().unwrap_or_default().to_owned();
            let body = match (method.as_str(), uri.split('/').nth_back(1).unwrap_or_default()) {
                ("GET", "chronosdatabases") | ("GET", "shop") => list.clone(),
                ("GET", "secrets") => foreign("v1", "Secret", &name),
                ("GET", "services") => foreign("v1", "Service", &name),
                ("GET", "networkpolicies") => foreign("networking.k8s.io/v1", "NetworkPolicy", &name),
                ("GET", "deployments") => json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": "shop", "uid": "x"},
                    "spec": {"selector": {}, "template": {}}}),
                ("PATCH", _) => echo.clone(),
                _ => json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            };
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            let done = uri.ends_with("/chronosdatabases/orders/status");
            seen.push((method, uri));
            if done {
                break;
            }
        }
        let _event = expect(&mut handle, StatusCode::CREATED, json!({})).await;
        seen
    });
    chronos::operator::controllers::database::reconcile(Arc::new(db), ctx)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert!(
        seen.iter()
            .any(|(m, u)| m == "GET" && u.ends_with("/secrets/chronos-engine-config")),
        "{seen:?}"
    );
    let deletes: Vec<&String> = seen.iter().filter(|(m, _)| m == "DELETE").map(|(_, u)| u).collect();
    assert!(deletes.is_empty(), "deleted objects it did not make: {deletes:?}");
}
