//! The operator against the real test API server (`scripts/kube-apiserver.sh`), real MongoDB and
//! real S3. Each test has its own namespace and runs the controllers in-process, scoped to it.

use std::sync::Arc;
use std::time::Duration;

use chronos::engine::{CollectionName, ItemId, ReadOptions, State};
use chronos::operator::crd::ChronosCollection;
use chronos::operator::crd::ChronosDatabase;
use chronos::operator::crd::ChronosRetention;
use chronos::operator::crd::{ChronosRestore, Phase};
use chronos::operator::{Context, Scope, backends, conditions};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::support::{env, kube_client, s3_connection, unique};

/// How long any one expected outcome may take.
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    client: kube::Client,
    ns: String,
    ctx: Arc<Context>,
    controllers: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

impl Cluster {
    /// A fresh namespace with the backend Secrets; controllers not started yet.
    async fn new() -> Cluster {
        let client = kube_client().await;
        let ns = unique("op");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let s3 = s3_connection();
        for (name, data) in [
            ("mongo", vec![("uri", env("CHRONOS_TEST_MONGO_URI"))]),
            (
                "s3",
                vec![
                    ("accessKey", s3.access_key.clone()),
                    ("secretKey", s3.secret_key.clone()),
                ],
            ),
        ] {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some([(backends::CREDENTIALS_LABEL.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                },
                data: Some(
                    data.into_iter()
                        .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &secret).await.unwrap();
        }
        let ctx = Context::new(client.clone(), "chronos:test");
        Cluster {
            client,
            ns,
            ctx,
            controllers: tokio::spawn(async {}),
        }
    }

    fn start(&mut self) {
        let scope = Scope {
            namespace: Some(self.ns.clone()),
            retention_labels: Some(format!("chronos.dev/test={}", self.ns)),
        };
        self.controllers = tokio::spawn(chronos::operator::run_controllers(self.ctx.clone(), scope));
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create<K>(&self, obj: Value) -> K
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
    {
        let obj: K = serde_json::from_value(obj).unwrap();
        self.api::<K>().create(&PostParams::default(), &obj).await.unwrap()
    }

    fn database_spec(&self, name: &str, extra: Value) -> Value {
        let buckets = unique("op");
        let mut spec = json!({
            "key": name,
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}, "dbName": unique("op").replace('-', "_")},
            "s3": {
                "endpoint": env("CHRONOS_TEST_S3_ENDPOINT"),
                "region": env("CHRONOS_TEST_S3_REGION"),
                "buckets": {"json": format!("{buckets}-json"), "content": format!("{buckets}-content"), "backups": format!("{buckets}-backups")},
                "credentialsSecretRef": {"name": "s3"}
            }
        });
        merge(&mut spec, extra);
        json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosDatabase", "metadata": {"name": name}, "spec": spec})
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Wait (by watching, not sleeping) until `name` satisfies `cond`; returns it.
/// Wait (bounded) until the object `name` meets `cond`; shared with the examples tests.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let cond = &cond;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(cond)).await {
                // A watch can expire under load (410 Gone, "too old resource version"): start over.
                Err(kube::runtime::wait::Error::ProbeFailed(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match found {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} vanished while waiting for: {what}"),
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!(
            "timed out waiting for {name}: {what}; last seen: {:#?}",
            api.get_opt(name).await
        ),
    }
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    use futures::StreamExt;
    let gone = async {
        let mut events = std::pin::pin!(kube::runtime::watcher::watch_object(api.clone(), name));
        while let Some(event) = events.next().await {
            // The watch says "gone": confirm with a GET (a re-list can report it early).
            if event.unwrap().is_none() && api.get_opt(name).await.unwrap().is_none() {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .unwrap_or_else(|_| panic!("{name} was not deleted in time"));
}

/// The Event about object `name` in `ns` with `reason`, polled (bounded by [`WAIT`]): events are
/// published after the status write that a test usually waits for.
async fn wait_event(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            });
        if let Some(event) = found {
            return event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event about {ns}/{name}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stands in for the kubelet (the test API server runs no pods): every Deployment in the
/// namespace gets all its replicas ready for its current generation.
pub async fn fake_kubelet(api: Api<Deployment>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let mut events = std::pin::pin!(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = events.next().await {
        let Ok(d) = event else { continue };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        if status.observed_generation != d.metadata.generation || status.ready_replicas != Some(want) {
            let body = json!({"status": {"replicas": want, "readyReplicas": want, "observedGeneration": d.metadata.generation}});
            let _ = api
                .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(body))
                .await;
        }
    }
}

pub fn condition(db: &ChronosDatabase, t: &str) -> Option<String> {
    let s = db.status.as_ref()?;
    conditions::status_of(&s.conditions, t).map(str::to_owned)
}

async fn bucket_exists(bucket: &str) -> bool {
    s3_connection()
        .client()
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .is_ok()
}

async fn mongo_databases() -> Vec<String> {
    crate::support::mongo_client(Default::default())
        .await
        .list_database_names()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn database_gets_buckets_and_an_engine_and_delete_policy_drops_the_data() {
    let mut k = Cluster::new().await;
    k.start();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chronos=debug,kube=info")
        .try_init();
    let started = std::time::Instant::now();
    let spec = k.database_spec("orders", json!({"engine": {"replicas": 1}, "deletionPolicy": "Delete"}));
    let created: ChronosDatabase = k.create(spec).await;
    let dbs = k.api::<ChronosDatabase>();
    let db = wait_for(&dbs, "orders", "buckets ready", |d| {
        condition(d, "BucketsReady").as_deref() == Some("True")
    })
    .await;
    eprintln!("database reconciled to BucketsReady in {:?}", started.elapsed());
    let status = db.status.clone().unwrap();
    assert_eq!(status.observed_generation, created.metadata.generation);
    assert_eq!(condition(&db, "BackendsReachable").as_deref(), Some("True"));
    assert_eq!(
        condition(&db, "EngineReady").as_deref(),
        Some("False"),
        "no pod runs yet"
    );
    assert_eq!(condition(&db, "Ready").as_deref(), Some("False"));
    assert_eq!(
        status.engine_url,
        Some(format!("http://orders-engine.{}.svc:8080", k.ns))
    );
    let buckets = db.spec.s3.buckets.clone();
    for b in [&buckets.json, &buckets.content, &buckets.backups] {
        assert!(bucket_exists(b).await, "bucket {b} created");
    }

    // The engine's objects: owned by the database, config referencing the mounted Secrets.
    let deployment = k.api::<Deployment>().get("orders-engine").await.unwrap();
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.clone()),
        ("ChronosDatabase", db.uid().unwrap())
    );
    let template = deployment.spec.as_ref().unwrap().template.clone();
    let hash = template.metadata.unwrap().annotations.unwrap()["chronos.dev/config-hash"].clone();
    assert_eq!(Some(&hash), status.config_hash.as_ref());
    assert_eq!(
        template.spec.unwrap().containers[0].image.as_deref(),
        Some("chronos:test")
    );
    let service = k.api::<Service>().get("orders-engine").await.unwrap();
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8080);
    let config = k.api::<Secret>().get("orders-engine-config").await.unwrap();
    let text = String::from_utf8(config.data.unwrap()["config.json"].0.clone()).unwrap();
    let parsed = chronos::config::Config::parse(&text).unwrap();
    assert_eq!(parsed.databases[0].key, "orders");
    assert_eq!(parsed.databases[0].db_name.as_ref(), Some(&db.spec.mongodb.db_name));
    assert_eq!(
        status.database_url,
        Some(format!("http://orders-engine.{}.svc:8080/v1/orders", k.ns))
    );
    assert!(
        !text.contains("mongodb://"),
        "no secret values in the rendered config: {text}"
    );

    // Auth is on: the database's tokens Secret (made once, owned by it) is where the status says,
    // and the engine's tokens file reads it; a NetworkPolicy admits the namespace to the API port.
    assert_eq!(status.tokens_secret.as_deref(), Some("orders-tokens"));
    assert_eq!(
        parsed.auth.as_ref().map(|a| a.tokens_file.clone()),
        Some("/etc/chronos/tokens.json".into())
    );
    let tokens = k.api::<Secret>().get("orders-tokens").await.unwrap();
    assert_eq!(tokens.owner_references()[0].uid, db.uid().unwrap());
    let token_values = tokens.data.clone().unwrap();
    assert_eq!(token_values.keys().collect::<Vec<_>>(), ["admin", "read", "write"]);
    assert!(token_values.values().all(|v| v.0.len() == 43));
    let policy = k.api::<NetworkPolicy>().get("orders-engine").await.unwrap();
    let rule = &policy.spec.unwrap().ingress.unwrap()[0];
    assert_eq!(
        serde_json::to_value(rule).unwrap(),
        json!({"from": [{"podSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]})
    );
    let created = wait_event(&k.client, &k.ns, "orders", "TokensCreated").await;
    assert!(created.note.unwrap().contains("Secret orders-tokens"));

    // A pod becomes ready (nothing runs pods here: a stand-in kubelet marks them ready) → Ready.
    let generation = deployment.metadata.generation;
    let kubelet = tokio::spawn(fake_kubelet(k.api::<Deployment>()));
    let db = wait_for(&dbs, "orders", "ready", |d| {
        condition(d, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&db, "EngineReady").as_deref(), Some("True"));
    // Each readiness change was an Event: waiting for the engine, then ready.
    let waiting = wait_event(&k.client, &k.ns, "orders", "EngineNotReady").await;
    assert_eq!(waiting.type_.as_deref(), Some("Warning"));
    let ready = wait_event(&k.client, &k.ns, "orders", "Ready").await;
    assert_eq!(ready.type_.as_deref(), Some("Normal"));
    let regarding = ready.regarding.unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.uid),
        (Some("ChronosDatabase"), db.uid())
    );
    assert_eq!(ready.reporting_controller.as_deref(), Some("chronos-operator"));

    // A new collection map changes the configuration → the Deployment rolls (new hash).
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "items"},
        "spec": {"database": "orders", "name": "items", "indexedProps": ["status"]}
    }))
    .await;
    let rolled = wait_for(&k.api::<Deployment>(), "orders-engine", "a new config hash", |d| {
        let a = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref());
        a.is_some_and(|a| a["chronos.dev/config-hash"] != hash)
    })
    .await;
    assert!(rolled.metadata.generation > generation);
    let tokens = k.api::<Secret>().get("orders-tokens").await.unwrap();
    assert_eq!(tokens.data.unwrap(), token_values, "tokens are never regenerated");

    // Delete with deletionPolicy: Delete → the MongoDB database and the buckets are gone.
    let mongo_db = db.spec.mongodb.db_name.clone();
    wait_for(&k.api::<ChronosCollection>(), "items", "indexes ready", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, "IndexesReady"))
    })
    .await;
    assert!(
        mongo_databases().await.contains(&mongo_db),
        "the collection's indexes created the database"
    );
    // The database's own objects live under its key; another application's object in the JSON
    // bucket is not the database's to delete, and keeps that bucket.
    let s3 = s3_connection().client();
    for (bucket, key) in [
        (&buckets.json, "orders/things/x/v0/w.json"),
        (&buckets.json, "other-app/keep.txt"),
    ] {
        s3.put_object()
            .bucket(bucket.as_str())
            .key(key)
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    // The engine's pods stop before the data goes: with no kubelet to stop them, the database
    // waits, scaled to zero, with its data intact.
    kubelet.abort();
    dbs.delete("orders", &DeleteParams::default()).await.unwrap();
    wait_for(&k.api::<Deployment>(), "orders-engine", "scaled to zero", |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(0)
    })
    .await;
    assert!(
        dbs.get_opt("orders").await.unwrap().is_some(),
        "still there while pods run"
    );
    assert!(bucket_exists(&buckets.backups).await && mongo_databases().await.contains(&mongo_db));
    let kubelet = tokio::spawn(fake_kubelet(k.api::<Deployment>()));
    wait_gone(&dbs, "orders").await;
    for b in [&buckets.content, &buckets.backups] {
        assert!(!bucket_exists(b).await, "bucket {b} deleted");
    }
    let left = s3.list_objects_v2().bucket(buckets.json.as_str()).send().await.unwrap();
    let left: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        left,
        ["other-app/keep.txt"],
        "only the database's own objects were deleted"
    );
    assert!(!mongo_databases().await.contains(&mongo_db), "MongoDB database dropped");
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn retain_keeps_the_data_and_invalid_specs_say_what_is_wrong() {
    let mut k = Cluster::new().await;
    k.start();
    let dbs = k.api::<ChronosDatabase>();
    k.create::<ChronosDatabase>(k.database_spec("kept", json!({}))).await;
    let db = wait_for(&dbs, "kept", "buckets ready", |d| {
        condition(d, "BucketsReady").as_deref() == Some("True")
    })
    .await;
    let engine = db
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "EngineReady")
        .cloned()
        .unwrap();
    assert_eq!(engine.reason, "Progressing", "served by the shared engine, no pod runs");
    assert!(k.api::<Deployment>().get_opt("kept-engine").await.unwrap().is_none());
    assert!(k.api::<Deployment>().get_opt("chronos-engine").await.unwrap().is_some());
    dbs.delete("kept", &DeleteParams::default()).await.unwrap();
    wait_gone(&dbs, "kept").await;
    assert!(
        bucket_exists(&db.spec.s3.buckets.json).await,
        "Retain keeps the buckets"
    );

    let mut bad = k.database_spec("bad", json!({}));
    bad["spec"]["s3"]["buckets"]["json"] = "Not_A_Bucket".into();
    k.create::<ChronosDatabase>(bad).await;
    let db = wait_for(&dbs, "bad", "a Ready condition", |d| condition(d, "Ready").is_some()).await;
    let ready = &db.status.unwrap().conditions[0];
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
    assert!(ready.message.contains("spec.s3.buckets.json"), "{}", ready.message);
    let event = wait_event(&k.client, &k.ns, "bad", "InvalidSpec").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains("spec.s3.buckets.json"));

    // Missing Secret → BackendsReachable False, naming the Secret.
    let mut orphan = k.database_spec("orphan", json!({}));
    orphan["spec"]["mongodb"]["uriSecretRef"]["name"] = "nope".into();
    k.create::<ChronosDatabase>(orphan).await;
    let db = wait_for(&dbs, "orphan", "BackendsReachable", |d| {
        condition(d, "BackendsReachable").is_some()
    })
    .await;
    let c = db
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "BackendsReachable")
        .unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message.contains("Secret") && c.message.contains("nope"),
        "{}",
        c.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_indexes_are_created_in_mongodb() {
    let mut k = Cluster::new().await;
    k.start();
    let db: ChronosDatabase = k.create(k.database_spec("shop", json!({}))).await;
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "orders"},
        "spec": {"database": "shop", "name": "orders", "indexedProps": ["status", "customer"], "requiredIndexed": ["status"]}
    }))
    .await;
    let cols = k.api::<ChronosCollection>();
    let c = wait_for(&cols, "orders", "indexes ready", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, "IndexesReady"))
    })
    .await;
    let status = c.status.unwrap();
    assert_eq!(status.indexes, ["meta_status", "meta_customer"]);
    assert_eq!(status.observed_generation, c.metadata.generation);
    let mongo = crate::support::mongo_client(Default::default()).await;
    let names = mongo
        .database(&db.spec.mongodb.db_name)
        .collection::<bson::Document>("orders_head")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names.contains(&"meta_status".to_owned()) && names.contains(&"meta_customer".to_owned()),
        "{names:?}"
    );

    // An invalid collection says why and creates nothing.
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "broken"},
        "spec": {"database": "shop", "name": "broken", "indexedProps": ["a"], "requiredIndexed": ["b"]}
    }))
    .await;
    let c = wait_for(&cols, "broken", "a condition", |c| {
        c.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
    })
    .await;
    let cond = &c.status.unwrap().conditions[0];
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        cond.message.contains("`b` is not listed in indexedProps"),
        "{}",
        cond.message
    );
    wait_event(&k.client, &k.ns, "broken", "InvalidSpec").await;

    // Content properties go through the same validation: one can't be indexed too.
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "photos"},
        "spec": {"database": "shop", "name": "photos", "indexedProps": ["photo"], "contentProps": {"photo": "binary"}}
    }))
    .await;
    let c = wait_for(&cols, "photos", "a condition", |c| {
        c.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
    })
    .await;
    let cond = &c.status.unwrap().conditions[0];
    assert_eq!(cond.reason, "InvalidSpec");
    assert!(
        cond.message
            .contains("spec.contentProps: `photo` can't be both indexed and content"),
        "{}",
        cond.message
    );
    // And the schema admits only the engine's kinds.
    let resource = kube::core::ApiResource::erase::<ChronosCollection>(&());
    let untyped: Api<kube::core::DynamicObject> = Api::namespaced_with(k.client.clone(), &k.ns, &resource);
    let odd: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "odd"},
        "spec": {"database": "shop", "name": "odd", "contentProps": {"photo": "jpeg"}}
    }))
    .unwrap();
    let err = untyped.create(&PostParams::default(), &odd).await.unwrap_err();
    assert!(err.to_string().contains("Unsupported value"), "{err}");
}

/// The config of the namespace's shared engine, parsed.
async fn shared_config(k: &Cluster) -> chronos::config::Config {
    let secret = k.api::<Secret>().get("chronos-engine-config").await.unwrap();
    let text = String::from_utf8(secret.data.unwrap()["config.json"].0.clone()).unwrap();
    chronos::config::Config::parse(&text).unwrap()
}

fn owners(d: &Deployment) -> Vec<(String, Option<bool>)> {
    let mut out: Vec<(String, Option<bool>)> = d
        .owner_references()
        .iter()
        .map(|o| (o.name.clone(), o.controller))
        .collect();
    out.sort();
    out
}

fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .map(|a| a["chronos.dev/config-hash"].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_engine_serves_every_database_without_its_own_and_goes_with_the_last() {
    let mut k = Cluster::new().await;
    k.start();
    let dbs = k.api::<ChronosDatabase>();
    let deployments = k.api::<Deployment>();
    k.create::<ChronosDatabase>(k.database_spec("a", json!({}))).await;
    let routed = k.database_spec(
        "b",
        json!({"key": null, "routing": {"databaseType": "metadata", "tier": "generic"}}),
    );
    k.create::<ChronosDatabase>(routed).await;
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "docs"},
        "spec": {"database": "a", "name": "docs", "indexedProps": ["title"], "contentProps": {"body": "text", "scan": "binary"}}
    }))
    .await;

    // Both are served by one engine, each under its key; `a`'s collection map carries its
    // content properties.
    let both = wait_for(&deployments, "chronos-engine", "both databases as owners", |d| {
        owners(d).len() == 2
    })
    .await;
    assert_eq!(
        owners(&both),
        [("a".to_owned(), None), ("b".to_owned(), None)],
        "owned by every member, controlled by none"
    );
    let config = wait_until_config(&k, |c| {
        c.databases
            .first()
            .and_then(|a| a.collection_maps.as_ref())
            .is_some_and(|m| m.contains_key("docs"))
    })
    .await;
    let a = &config.databases[0];
    assert_eq!(a.key, "a");
    let docs = &a.collection_maps.as_ref().unwrap()["docs"];
    assert_eq!(docs.content_props["body"], chronos::engine::ContentKind::Text);
    assert_eq!(docs.content_props["scan"], chronos::engine::ContentKind::Binary);
    let b = config.database_types.as_ref().unwrap().metadata.as_ref().unwrap();
    assert_eq!(b.generic.as_ref().unwrap().key, "b");
    assert!(k.api::<Service>().get_opt("chronos-engine").await.unwrap().is_some());
    assert!(deployments.get_opt("a-engine").await.unwrap().is_none());

    // The pod becomes ready → both databases are Ready, with the engine's URL and their own.
    let current = deployments.get("chronos-engine").await.unwrap();
    let kubelet = tokio::spawn(fake_kubelet(deployments.clone()));
    for (name, key) in [("a", "a"), ("b", "b")] {
        let db = wait_for(&dbs, name, "ready", |d| {
            condition(d, "Ready").as_deref() == Some("True")
        })
        .await;
        let status = db.status.unwrap();
        let url = format!("http://chronos-engine.{}.svc:8080", k.ns);
        assert_eq!(status.engine_url.as_ref(), Some(&url));
        assert_eq!(status.database_url, Some(format!("{url}/v1/{key}")));
        assert_eq!(status.config_hash, Some(config_hash(&current)), "the hash now deployed");
        wait_event(&k.client, &k.ns, name, "Ready").await;
    }

    // A third database claiming `a`'s key is not served, and says why.
    k.create::<ChronosDatabase>(k.database_spec("c", json!({"key": "a"})))
        .await;
    let c = wait_for(&dbs, "c", "engine condition", |d| condition(d, "EngineReady").is_some()).await;
    let engine = c
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "EngineReady")
        .unwrap();
    assert_eq!((engine.status.as_str(), engine.reason.as_str()), ("False", "Conflict"));
    assert!(
        engine
            .message
            .contains("key `a` is already served by ChronosDatabase a"),
        "{}",
        engine.message
    );
    wait_event(&k.client, &k.ns, "c", "Conflict").await;
    assert_eq!(shared_config(&k).await.databases.len(), 1, "c is left out");

    // A member leaves → the engine rolls without it.
    let before = config_hash(&deployments.get("chronos-engine").await.unwrap());
    dbs.delete("b", &DeleteParams::default()).await.unwrap();
    wait_gone(&dbs, "b").await;
    let rolled = wait_for(&deployments, "chronos-engine", "b gone from the owners", |d| {
        owners(d).iter().all(|(n, _)| n != "b")
    })
    .await;
    assert_ne!(config_hash(&rolled), before, "the configuration changed");
    assert!(shared_config(&k).await.database_types.is_none());

    // The last members leave → the shared engine is removed.
    dbs.delete("c", &DeleteParams::default()).await.unwrap();
    dbs.delete("a", &DeleteParams::default()).await.unwrap();
    wait_gone(&deployments, "chronos-engine").await;
    wait_gone(&k.api::<Service>(), "chronos-engine").await;
    wait_gone(&k.api::<Secret>(), "chronos-engine-config").await;
    kubelet.abort();
}

/// Poll the shared engine's config (bounded) until `cond` holds.
async fn wait_until_config(k: &Cluster, cond: impl Fn(&chronos::config::Config) -> bool) -> chronos::config::Config {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(secret) = k.api::<Secret>().get_opt("chronos-engine-config").await.unwrap() {
            let text = String::from_utf8(secret.data.unwrap()["config.json"].0.clone()).unwrap();
            let config = chronos::config::Config::parse(&text).unwrap();
            if cond(&config) {
                return config;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shared engine's config never matched"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A database resource (not reconciled) plus an engine over its backends, with `n` items written
/// at ov 0, then updated; returns the cv between the two rounds.
async fn seeded(k: &Cluster, n: usize) -> (ChronosDatabase, Arc<chronos::engine::Engine>, u64) {
    let db: ChronosDatabase = k.create(k.database_spec("data", json!({}))).await;
    let storage = backends::storage(&k.client, &db).await.unwrap();
    backends::ensure_buckets(&k.ctx, &storage).await.unwrap();
    let engine = backends::engine(&k.ctx, &db, Default::default()).await.unwrap();
    let c: CollectionName = "notes".parse().unwrap();
    let who = chronos::engine::Attribution::new("test", "seed");
    let mut cv = 0;
    for i in 0..n {
        let data = json!({"n": i, "round": 1}).as_object().unwrap().clone();
        cv = engine
            .create(&c, Some(format!("item-{i:02}").parse().unwrap()), data, &who)
            .await
            .unwrap()
            .1
            .cv;
    }
    for i in 0..n {
        let data = json!({"n": i, "round": 2}).as_object().unwrap().clone();
        engine
            .update(&c, &format!("item-{i:02}").parse().unwrap(), data, Some(0), &who)
            .await
            .unwrap();
    }
    (db, engine, cv)
}

async fn round(engine: &chronos::engine::Engine, id: &str) -> Value {
    let c: CollectionName = "notes".parse().unwrap();
    let id: ItemId = id.parse().unwrap();
    engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap().data["round"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_restore_runs_in_pages_and_reports_progress() {
    let mut k = Cluster::new().await;
    Arc::get_mut(&mut k.ctx).unwrap().restore_page = 2;
    let (_, engine, cv) = seeded(&k, 5).await;
    k.start();
    k.create::<ChronosRestore>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "back"},
        "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}}
    }))
    .await;
    let restores = k.api::<ChronosRestore>();
    let r = wait_for(&restores, "back", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    let plan = s.plan.unwrap();
    assert_eq!((plan.examined, plan.restored), (5, 5));
    let applied = s.applied.unwrap();
    assert_eq!((applied.examined, applied.restored, applied.unchanged), (5, 5, 0));
    let progress = s.progress.unwrap();
    assert_eq!((progress.done, progress.total), (5, 5));
    assert!(s.started_at.is_some() && s.completed_at.is_some() && s.cursor.is_none());
    for i in 0..5 {
        assert_eq!(round(&engine, &format!("item-{i:02}")).await, 1, "restored to round 1");
    }
    let started = wait_event(&k.client, &k.ns, "back", "RestoreStarted").await;
    assert!(started.note.unwrap().contains("collection notes"));
    let done = wait_event(&k.client, &k.ns, "back", "RestoreSucceeded").await;
    assert_eq!(done.type_.as_deref(), Some("Normal"));

    // The spec is immutable (CEL on the server).
    let err = restores
        .patch(
            "back",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dryRun": true}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_resumes_after_its_recorded_cursor() {
    let mut k = Cluster::new().await;
    let (_, engine, cv) = seeded(&k, 5).await;
    let r: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "resume"},
            "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}}
        }))
        .await;
    // As a previous operator left it: planned, two items done, cursor after item-01.
    let body = json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore",
        "status": {"phase": "Running", "plan": {"examined": 5, "restored": 5, "deleted": 0, "unchanged": 0},
                   "applied": {"examined": 2, "restored": 2, "deleted": 0, "unchanged": 0},
                   "progress": {"done": 2, "total": 5}, "cursor": "item-01"}
    });
    let restores = k.api::<ChronosRestore>();
    restores
        .patch_status(
            &r.name_any(),
            &PatchParams::apply("previous-operator"),
            &Patch::Apply(body),
        )
        .await
        .unwrap();
    // A dry run interrupted right after its plan was recorded: resuming must not apply it.
    let dry: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "dry"},
            "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}, "dryRun": true}
        }))
        .await;
    let planned = json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore",
        "status": {"phase": "Running", "plan": {"examined": 5, "restored": 5, "deleted": 0, "unchanged": 0},
                   "progress": {"done": 0, "total": 5}}
    });
    restores
        .patch_status(
            &dry.name_any(),
            &PatchParams::apply("previous-operator"),
            &Patch::Apply(planned),
        )
        .await
        .unwrap();
    k.start();
    let r = wait_for(&restores, "resume", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(
        s.applied.unwrap().examined,
        5,
        "2 recorded + the 3 after the cursor, none redone"
    );
    assert_eq!(s.progress.unwrap().done, 5);
    let dry = wait_for(&restores, "dry", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await
    .status
    .unwrap();
    assert_eq!((dry.phase, dry.applied), (Phase::Succeeded, None));
    assert_eq!(
        round(&engine, "item-00").await,
        2,
        "before the cursor: not touched again (nor by the dry run)"
    );
    assert_eq!(round(&engine, "item-02").await, 1);
    assert_eq!(round(&engine, "item-04").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn item_restore_and_dry_run() {
    let mut k = Cluster::new().await;
    let (_, engine, cv) = seeded(&k, 2).await;
    k.start();
    let restore = |name: &str, spec: Value| json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": name}, "spec": spec});
    let restores = k.api::<ChronosRestore>();
    let done = |r: &ChronosRestore| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    };
    // The plan first: it counts what a restore would change, so it must not race the item
    // restore below (which changes item-01 back already).
    k.create::<ChronosRestore>(restore(
        "plan",
        json!({"database": "data", "collection": "notes", "target": {"cv": cv}, "dryRun": true}),
    ))
    .await;
    let plan = wait_for(&restores, "plan", "finished", done).await.status.unwrap();
    assert_eq!(plan.phase, Phase::Succeeded);
    assert_eq!(plan.plan.unwrap().restored, 2);
    assert!(plan.applied.is_none(), "a dry run applies nothing");
    assert_eq!(round(&engine, "item-00").await, 2, "dry run wrote nothing");
    k.create::<ChronosRestore>(restore(
        "one",
        json!({"database": "data", "collection": "notes", "itemId": "item-01", "target": {"ov": 0}}),
    ))
    .await;
    k.create::<ChronosRestore>(restore(
        "nope",
        json!({"database": "data", "collection": "notes", "itemId": "item-01", "target": {"ov": 9}}),
    ))
    .await;
    let one = wait_for(&restores, "one", "finished", done).await.status.unwrap();
    assert_eq!(one.phase, Phase::Succeeded, "{:?}", one.message);
    assert_eq!(round(&engine, "item-01").await, 1);
    let nope = wait_for(&restores, "nope", "finished", done).await.status.unwrap();
    assert_eq!(nope.phase, Phase::Failed);
    assert!(nope.message.unwrap().contains("not found"));
    let failed = wait_event(&k.client, &k.ns, "nope", "RestoreFailed").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_runs_on_schedule_and_marks_items_processed() {
    let mut k = Cluster::new().await;
    let (db, engine, _) = seeded(&k, 3).await;
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "notes"},
        "spec": {"database": db.name_any(), "name": "notes", "retention": {"keepVersions": 1}}
    }))
    .await;
    k.start();
    let retentions: Api<ChronosRetention> = Api::all(k.client.clone());
    let name = k.ns.clone();
    let r: ChronosRetention = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRetention",
        "metadata": {"name": name, "labels": {"chronos.dev/test": k.ns}},
        "spec": {"selector": {"namespaces": [k.ns]}, "rules": {"ttlHours": 0}, "schedule": "* * * * * *"}
    }))
    .unwrap();
    retentions.create(&PostParams::default(), &r).await.unwrap();
    let r = wait_for(&retentions, &name, "a run", |r| {
        r.status.as_ref().is_some_and(|s| s.last_run.is_some())
    })
    .await;
    let status = r.status.clone().unwrap();
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, "Succeeded", "{:?}", last.failures);
    assert_eq!((last.collections, last.processed), (1, 3));
    assert_eq!(last.versions_pruned, 3, "the collection's keepVersions: 1 applies");
    assert!(status.next_run.is_some() && conditions::is_true(&status.conditions, "Scheduled"));
    let c: CollectionName = "notes".parse().unwrap();
    let rec = engine
        .get_latest(&c, &"item-00".parse().unwrap(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(rec.system.state, State::Processed);
    // A cluster-scoped object's Events go to the `default` namespace.
    let event = wait_event(&k.client, "default", &name, "RunSucceeded").await;
    assert!(event.note.unwrap().contains("3 item(s) processed"));
    retentions.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_replica_holds_the_lease_until_it_lets_go() {
    use chronos::operator::leader::{Attempt, LeaseSettings, release, try_acquire};
    let k = Cluster::new().await;
    let a = LeaseSettings::new(&k.ns, "replica-a");
    let b = LeaseSettings::new(&k.ns, "replica-b");
    assert_eq!(try_acquire(&k.client, &a).await.unwrap(), Attempt::Leading);
    assert_eq!(
        try_acquire(&k.client, &b).await.unwrap(),
        Attempt::Following {
            holder: "replica-a".into()
        }
    );
    assert_eq!(try_acquire(&k.client, &a).await.unwrap(), Attempt::Leading, "renewal");
    release(&k.client, &a).await.unwrap();
    assert_eq!(
        try_acquire(&k.client, &b).await.unwrap(),
        Attempt::Leading,
        "free after release"
    );
    assert!(matches!(
        try_acquire(&k.client, &a).await.unwrap(),
        Attempt::Following { .. }
    ));
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(k.client.clone(), &k.ns)
        .get("chronos-operator")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // An expired lease (0 s, renewed microseconds ago) is taken over without its holder's help.
    let mut short = LeaseSettings::new(&k.ns, "replica-c");
    short.name = "short".into();
    short.duration = Duration::from_secs(0);
    assert_eq!(try_acquire(&k.client, &short).await.unwrap(), Attempt::Leading);
    let mut other = short.clone();
    other.identity = "replica-d".into();
    assert_eq!(
        try_acquire(&k.client, &other).await.unwrap(),
        Attempt::Leading,
        "expired lease taken"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_restore_reconciled_again_after_its_write_does_not_append_twice() {
    let k = Cluster::new().await;
    let (_, engine, _) = seeded(&k, 1).await;
    let r: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "again"},
            "spec": {"database": "data", "collection": "notes", "itemId": "item-00", "target": {"ov": 0}}
        }))
        .await;
    let reconcile = || chronos::operator::controllers::restore::reconcile(Arc::new(r.clone()), k.ctx.clone());
    reconcile().await.unwrap();
    let c: CollectionName = "notes".parse().unwrap();
    let id: ItemId = "item-00".parse().unwrap();
    let latest = || async { engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap().ov };
    assert_eq!(latest().await, 2, "created, updated, restored");
    // The status write after the append is lost (the operator restarted, the API server failed):
    // the next reconcile runs the restore again.
    let restores = k.api::<ChronosRestore>();
    restores
        .patch_status(
            "again",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "completedAt": null, "applied": null}})),
        )
        .await
        .unwrap();
    reconcile().await.unwrap();
    let s = restores.get("again").await.unwrap().status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(
        latest().await,
        2,
        "the second run replays the first write instead of appending"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_claiming_another_ones_mongodb_database_or_dropped_buckets_is_refused() {
    // Two tenants, two namespaces, one MongoDB and one S3.
    let mut a = Cluster::new().await;
    a.start();
    let mut b = Cluster::new().await;
    b.start();
    let first = a.database_spec("first", json!({"deletionPolicy": "Delete"}));
    a.create::<ChronosDatabase>(first.clone()).await;
    wait_for(&a.api::<ChronosDatabase>(), "first", "backends reachable", |d| {
        condition(d, "BackendsReachable").as_deref() == Some("True")
    })
    .await;
    let reason = |d: &ChronosDatabase| {
        let c = d
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "BackendsReachable")?;
        Some((c.reason.clone(), c.message.clone()))
    };
    let dbs = b.api::<ChronosDatabase>();
    // Same MongoDB database, under another key in another namespace: refused.
    let mut same_db = b.database_spec("second", json!({}));
    same_db["spec"]["mongodb"]["dbName"] = first["spec"]["mongodb"]["dbName"].clone();
    b.create::<ChronosDatabase>(same_db).await;
    let second = wait_for(&dbs, "second", "a conflict", |d| {
        reason(d).is_some_and(|(r, _)| r == "Conflict")
    })
    .await;
    let (_, message) = reason(&second).unwrap();
    assert!(message.contains(&format!("{}/first", a.ns)), "{message}");
    assert_eq!(condition(&second, "Ready").as_deref(), Some("False"));
    assert!(
        b.api::<Deployment>().get_opt("chronos-engine").await.unwrap().is_none(),
        "not served"
    );
    // The buckets of a database that drops its data on deletion: refused as well.
    let mut same_buckets = b.database_spec("third", json!({}));
    same_buckets["spec"]["s3"]["buckets"] = first["spec"]["s3"]["buckets"].clone();
    b.create::<ChronosDatabase>(same_buckets).await;
    let third = wait_for(&dbs, "third", "a conflict", |d| {
        reason(d).is_some_and(|(r, _)| r == "Conflict")
    })
    .await;
    assert!(reason(&third).unwrap().1.contains("bucket"), "{:?}", reason(&third));
    // Deleting the refused one with deletionPolicy: Delete drops nothing of the first's.
    dbs.patch(
        "second",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete"}})),
    )
    .await
    .unwrap();
    dbs.delete("second", &DeleteParams::default()).await.unwrap();
    wait_event(&b.client, &b.ns, "second", "DataRetained").await;
    let first = a.api::<ChronosDatabase>().get("first").await.unwrap();
    assert!(
        bucket_exists(&first.spec.s3.buckets.json).await,
        "the first database's buckets are still there"
    );
}

/// Deleting a namespace (or `kubectl delete -k`) can remove the backend Secrets before the
/// ChronosDatabase. Its `deletionPolicy: Delete` can then reach nothing: the data is kept (an
/// Event says so) and the resource goes, instead of waiting for Secrets that will not come back
/// and holding the namespace in Terminating (review M8).
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_database_whose_secrets_are_gone_keeps_its_data_and_does_not_hang() {
    let mut k = Cluster::new().await;
    k.start();
    let dbs = k.api::<ChronosDatabase>();
    k.create::<ChronosDatabase>(k.database_spec("gone", json!({"deletionPolicy": "Delete"})))
        .await;
    let db = wait_for(&dbs, "gone", "buckets ready", |d| {
        condition(d, "BucketsReady").as_deref() == Some("True")
    })
    .await;
    for name in ["mongo", "s3"] {
        k.api::<Secret>().delete(name, &DeleteParams::default()).await.unwrap();
    }
    dbs.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_gone(&dbs, "gone").await;
    let retained = wait_event(&k.client, &k.ns, "gone", "DataRetained").await;
    assert!(retained.note.unwrap().contains("not found"));
    assert!(bucket_exists(&db.spec.s3.buckets.json).await, "the data is kept");
}

/// The `BackendsReachable` condition of `name`, once the operator wrote one.
async fn backends_condition(
    dbs: &Api<ChronosDatabase>,
    name: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let db = wait_for(dbs, name, "BackendsReachable", |d| {
        condition(d, "BackendsReachable").is_some()
    })
    .await;
    db.status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "BackendsReachable")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_outside_the_allowed_hosts_are_never_contacted() {
    // No list: any host but link-local and cloud metadata addresses (M7).
    let mut open = Cluster::new().await;
    open.start();
    let mut spec = open.database_spec("metadata", json!({}));
    spec["spec"]["s3"]["endpoint"] = "http://169.254.169.254".into();
    open.create::<ChronosDatabase>(spec).await;
    let c = backends_condition(&open.api(), "metadata").await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "BackendNotAllowed"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains("169.254.169.254:80") && c.message.contains("link-local"),
        "{}",
        c.message
    );

    // A list naming only the S3 server: another endpoint, and a MongoDB URI elsewhere, are refused
    // before any bucket is made.
    let mut closed = Cluster::new().await;
    let s3 = url::Url::parse(&env("CHRONOS_TEST_S3_ENDPOINT")).unwrap();
    let s3_host = format!("{}:{}", s3.host_str().unwrap(), s3.port_or_known_default().unwrap());
    Arc::get_mut(&mut closed.ctx).unwrap().backend_hosts =
        chronos::operator::backend_hosts::BackendHosts::parse(&[s3_host]).unwrap();
    closed.start();
    let dbs = closed.api::<ChronosDatabase>();
    let mut spec = closed.database_spec("elsewhere", json!({}));
    spec["spec"]["s3"]["endpoint"] = "http://attacker.example".into();
    closed.create::<ChronosDatabase>(spec).await;
    let c = backends_condition(&dbs, "elsewhere").await;
    assert_eq!(c.reason, "BackendNotAllowed", "{}", c.message);
    assert!(
        c.message.contains("attacker.example:80") && c.message.contains("--allowed-backend-hosts"),
        "{}",
        c.message
    );

    let db: ChronosDatabase = closed.create(closed.database_spec("mongo-elsewhere", json!({}))).await;
    let c = backends_condition(&dbs, "mongo-elsewhere").await;
    assert_eq!(c.reason, "BackendNotAllowed", "{}", c.message);
    assert!(c.message.contains("MongoDB URI in Secret mongo/uri"), "{}", c.message);
    assert!(
        !c.message.contains(&env("CHRONOS_TEST_MONGO_URI")),
        "the URI is never shown"
    );
    assert!(!bucket_exists(&db.spec.s3.buckets.json).await, "nothing was made");
}
