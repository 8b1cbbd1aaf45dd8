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

mod changes;
mod database;
mod erasure;
mod history;
mod restore;
mod schedule;
mod shared_engine;

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
        Cluster {
            ctx: Self::context(&client, &ns),
            client,
            ns,
            controllers: tokio::spawn(async {}),
        }
    }

    /// A fresh operator context, watching namespace `ns` only.
    fn context(client: &kube::Client, ns: &str) -> Arc<Context> {
        let mut ctx = Context::with_identity(client.clone(), "chronos:test", None);
        ctx.watched_namespaces = vec![ns.to_owned()];
        Arc::new(ctx)
    }

    /// Stop the operator as a shutdown does (the controllers, then the change-feed followers,
    /// which write what they saw), leaving nothing of it running.
    async fn stop(&mut self) {
        let controllers = std::mem::replace(&mut self.controllers, tokio::spawn(async {}));
        controllers.abort();
        let _ = controllers.await;
        self.ctx.followers.stop_all().await;
        assert!(self.ctx.followers.is_empty());
    }

    /// [`Cluster::stop`], then start a new operator (a fresh context: nothing carried over in
    /// memory, as after a process restart).
    async fn restart(&mut self) {
        self.stop().await;
        self.ctx = Self::context(&self.client, &self.ns);
        self.start();
    }

    fn start(&mut self) {
        let scope = Scope {
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

/// A database resource (not reconciled) plus an engine over its backends, with `n` items written
/// at ov 0, then updated; returns the cv between the two rounds.
async fn seeded(k: &Cluster, n: usize) -> (ChronosDatabase, Arc<chronos::engine::Engine>, u64) {
    seeded_with(k, n, json!({})).await
}

/// [`seeded`], with `extra` merged into the database's spec.
async fn seeded_with(k: &Cluster, n: usize, extra: Value) -> (ChronosDatabase, Arc<chronos::engine::Engine>, u64) {
    let db: ChronosDatabase = k.create(k.database_spec("data", extra)).await;
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
