//! The files in `examples/` (tenant, restores, retention) applied as written to the real test API
//! server, with the controllers running in-process against real MongoDB and S3. Only what must
//! differ per test run is substituted: the namespace; the Secrets' values (the tests' MongoDB and
//! S3 credentials); the database's S3 endpoint, MongoDB database and bucket names (the backends
//! are shared by every test); and for the cluster-scoped retention its name, a label that scopes it
//! to this test's controllers, and a schedule that is due now. Everything else is verbatim, so a
//! broken example fails here.
//!
//! The README's kubectl walkthrough (a tenant's lifecycle, restore, retention) runs here too, as
//! written, with `kubectl` against the same API server; a stand-in kubelet marks engine pods
//! ready, since the test API server runs none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chronos::engine::{Attribution, CollectionName, Engine, ItemId, ReadOptions};
use chronos::operator::crd::ChronosCollection;
use chronos::operator::crd::ChronosDatabase;
use chronos::operator::crd::ChronosRetention;
use chronos::operator::crd::{ChronosRestore, Phase};
use chronos::operator::{Context, Scope, backends, conditions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::operator::{condition, fake_kubelet, wait_for};
use crate::support::{env, kube_client, s3_connection, unique};

/// The namespace every example file names.
const EXAMPLE_NS: &str = "tenant-acme";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every YAML document of an example file.
fn documents(relative: &str) -> Vec<Value> {
    let path = examples_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// The files `examples/tenant/kustomization.yaml` lists, in order: what `kubectl apply -k`,
/// Argo CD and Flux apply.
fn tenant_files() -> Vec<String> {
    let k = documents("tenant/kustomization.yaml").remove(0);
    k["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| format!("tenant/{}", r.as_str().expect("a file name")))
        .collect()
}

/// One test's copy of the examples: its namespace, its controllers, its substitutions.
struct Tenant {
    client: kube::Client,
    ns: String,
    ctx: Arc<Context>,
    controllers: tokio::task::JoinHandle<()>,
    /// The database as applied (after substitution).
    database: Value,
}

impl Drop for Tenant {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

impl Tenant {
    async fn new() -> Tenant {
        let client = kube_client().await;
        let ns = unique("ex");
        let mut ctx = Context::with_identity(client.clone(), "chronos:test", None);
        ctx.watched_namespaces = vec![ns.clone()];
        let ctx = std::sync::Arc::new(ctx);
        let scope = Scope {
            retention_labels: Some(format!("chronos.dev/test={ns}")),
        };
        let controllers = tokio::spawn(chronos::operator::run_controllers(ctx.clone(), scope));
        Tenant {
            client,
            ns,
            ctx,
            controllers,
            database: Value::Null,
        }
    }

    /// An example document as this test applies it.
    fn substitute(&self, mut doc: Value) -> Value {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let meta = &mut doc["metadata"];
        if meta.get("namespace").is_some() {
            assert_eq!(
                meta["namespace"], EXAMPLE_NS,
                "every namespaced example lives in {EXAMPLE_NS}"
            );
            meta["namespace"] = self.ns.clone().into();
        }
        match kind.as_str() {
            "Namespace" => {
                assert_eq!(meta["name"], EXAMPLE_NS);
                meta["name"] = self.ns.clone().into();
            }
            "Secret" => doc = self.secret(doc),
            "ChronosDatabase" => {
                let spec = &mut doc["spec"];
                let s3 = s3_connection();
                spec["s3"]["endpoint"] = s3.endpoint.clone().into();
                spec["s3"]["region"] = env("CHRONOS_TEST_S3_REGION").into();
                spec["mongodb"]["dbName"] = unique("ex").replace('-', "_").into();
                let buckets = unique("ex");
                for b in ["json", "content", "backups"] {
                    assert!(spec["s3"]["buckets"][b].is_string(), "the example names its {b} bucket");
                    spec["s3"]["buckets"][b] = format!("{buckets}-{b}").into();
                }
            }
            "ChronosRetention" => {
                meta["name"] = self.ns.clone().into();
                meta["labels"]["chronos.dev/test"] = self.ns.clone().into();
                let namespaces = &mut doc["spec"]["selector"]["namespaces"];
                assert_eq!(*namespaces, json!([EXAMPLE_NS]));
                *namespaces = json!([self.ns]);
                // Due every second, so a run happens now rather than tonight.
                doc["spec"]["schedule"] = "* * * * * *".into();
            }
            _ => {}
        }
        doc
    }

    /// The example Secret with this test's values: same name, same keys (every key the example
    /// has must have a test value), as `data` (the test API server does not fold `stringData`).
    fn secret(&self, mut doc: Value) -> Value {
        let s3 = s3_connection();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let given = doc["stringData"]
            .as_object()
            .cloned()
            .expect("example Secrets use stringData");
        let mut data = serde_json::Map::new();
        for key in given.keys() {
            let value = match (name.as_str(), key.as_str()) {
                ("acme-mongodb", "uri") => env("CHRONOS_TEST_MONGO_URI"),
                ("acme-s3", "accessKey") => s3.access_key.clone(),
                ("acme-s3", "secretKey") => s3.secret_key.clone(),
                other => panic!("no test value for Secret key {other:?}: update tests/it/examples.rs"),
            };
            data.insert(key.clone(), base64(&value).into());
        }
        doc.as_object_mut().unwrap().remove("stringData");
        doc["data"] = Value::Object(data);
        doc
    }

    /// Create one substituted document with the typed API of its kind.
    async fn apply(&mut self, doc: Value) {
        let doc = self.substitute(doc);
        let pp = PostParams::default();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => create(&Api::<Namespace>::all(self.client.clone()), &pp, doc).await,
            "Secret" => create(&self.api::<Secret>(), &pp, doc).await,
            "ChronosDatabase" => {
                self.database = doc.clone();
                create(&self.api::<ChronosDatabase>(), &pp, doc).await
            }
            "ChronosCollection" => create(&self.api::<ChronosCollection>(), &pp, doc).await,
            "ChronosRestore" => create(&self.api::<ChronosRestore>(), &pp, doc).await,
            "ChronosRetention" => create(&Api::<ChronosRetention>::all(self.client.clone()), &pp, doc).await,
            other => panic!("examples.rs does not know how to apply a {other}"),
        }
    }

    async fn apply_file(&mut self, relative: &str) {
        for doc in documents(relative) {
            self.apply(doc).await;
        }
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// An engine over the applied database's backends.
    async fn engine(&self) -> Arc<Engine> {
        let db: ChronosDatabase = serde_json::from_value(self.database.clone()).unwrap();
        let db = self.api::<ChronosDatabase>().get(&db.name_any()).await.unwrap();
        let settings = backends::settings(&self.ctx, &db).await.unwrap();
        backends::engine(&self.ctx, &db, settings).await.unwrap()
    }
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn create<K>(api: &Api<K>, pp: &PostParams, doc: Value)
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    api.create(pp, &obj)
        .await
        .unwrap_or_else(|e| panic!("the API server refused {}: {e}", obj.name_any()));
}

/// Wait (by watching, not sleeping) until `name` satisfies `cond`; returns it.
fn indexes_ready(c: &ChronosCollection) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, "IndexesReady"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_example_becomes_ready_with_its_indexes_and_retention_runs() {
    let mut t = Tenant::new().await;
    let files = tenant_files();
    assert_eq!(
        files,
        [
            "tenant/namespace.yaml",
            "tenant/secrets.yaml",
            "tenant/database.yaml",
            "tenant/collection-orders.yaml",
            "tenant/collection-customers.yaml",
            "tenant/retention.yaml"
        ]
    );
    for file in &files {
        t.apply_file(file).await;
    }
    assert!(
        Api::<Namespace>::all(t.client.clone())
            .get_opt(&t.ns)
            .await
            .unwrap()
            .is_some(),
        "the example Namespace was created"
    );

    // The database: backends reached with the Secrets' values, buckets made, engine applied.
    let dbs = t.api::<ChronosDatabase>();
    let db = wait_for(&dbs, "acme", "buckets ready", |d| {
        condition(d, "BucketsReady").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&db, "BackendsReachable").as_deref(), Some("True"));
    let engine_url = db.status.as_ref().and_then(|s| s.engine_url.clone());
    assert_eq!(engine_url, Some(format!("http://acme-engine.{}.svc:8080", t.ns)));
    let example = &documents("tenant/database.yaml")[0]["spec"]["engine"];
    let deployment = t.api::<Deployment>().get("acme-engine").await.unwrap();
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(
        Some(spec.replicas.unwrap()),
        example["replicas"].as_i64().map(|r| r as i32)
    );
    let resources = serde_json::to_value(spec.template.spec.unwrap().containers[0].resources.clone()).unwrap();
    assert_eq!(
        resources, example["resources"],
        "the example's engine resources reach the pods"
    );

    // Auth on, reachable from the namespace only: the tokens Secret the status names, the policy.
    assert_eq!(
        db.status.as_ref().and_then(|s| s.tokens_secret.as_deref()),
        Some("acme-tokens")
    );
    let tokens = t.api::<Secret>().get("acme-tokens").await.unwrap();
    assert_eq!(tokens.data.unwrap().len(), 3, "read, write and admin");
    let policy = t
        .api::<k8s_openapi::api::networking::v1::NetworkPolicy>()
        .get("acme-engine")
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&policy.spec.unwrap().ingress.unwrap()[0].from).unwrap(),
        json!([{"podSelector": {}}])
    );

    // Pods become ready (nothing runs pods on the test API server, so a stand-in kubelet marks
    // them ready) → Ready. It follows every generation: the collections' indexed properties
    // reach the engine's configuration and roll the Deployment again after this point.
    let kubelet = tokio::spawn(fake_kubelet(t.api::<Deployment>()));
    let db = wait_for(&dbs, "acme", "ready", |d| {
        condition(d, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&db, "EngineReady").as_deref(), Some("True"));

    // Both collections: their indexes exist in MongoDB.
    let cols = t.api::<ChronosCollection>();
    let orders = wait_for(&cols, "acme-orders", "indexes ready", indexes_ready).await;
    assert_eq!(
        orders.status.unwrap().indexes,
        ["meta_status", "meta_customer", "meta_total"]
    );
    let customers = wait_for(&cols, "acme-customers", "indexes ready", indexes_ready).await;
    assert_eq!(customers.status.unwrap().indexes, ["meta_email", "meta_country"]);
    let mongo = crate::support::mongo_client(Default::default()).await;
    let mongo_db = mongo.database(&db.spec.mongodb.db_name);
    for (collection, expected) in [
        ("orders_head", ["meta_status", "meta_customer", "meta_total"].as_slice()),
        ("customers_head", ["meta_email", "meta_country"].as_slice()),
    ] {
        let names = mongo_db
            .collection::<bson::Document>(collection)
            .list_index_names()
            .await
            .unwrap();
        for index in expected {
            assert!(names.iter().any(|n| n == index), "{collection}: {index} in {names:?}");
        }
    }

    // The example's rules and counters are in the engine's configuration.
    let config = t.api::<Secret>().get("acme-engine-config").await.unwrap();
    let text = String::from_utf8(config.data.unwrap()["config.json"].0.clone()).unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    // The database routes as metadata/tenant: its entry carries its own settings.
    let entry = &parsed["databaseTypes"]["metadata"]["tenants"][0];
    assert_eq!(
        entry["collectionMaps"]["orders"]["validation"]["requiredIndexed"],
        json!(["status"]),
        "{parsed}"
    );
    assert_eq!(entry["counters"]["orders"][0]["name"], "bigOrders");
    assert_eq!(entry["engine"]["maxPayloadBytes"], 8388608);

    // The retention (due now in this test) runs over both collections of the labelled database.
    let retentions: Api<ChronosRetention> = Api::all(t.client.clone());
    let r = wait_for(&retentions, &t.ns, "a run", |r| {
        r.status.as_ref().is_some_and(|s| s.last_run.is_some())
    })
    .await;
    let status = r.status.unwrap();
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, "Succeeded", "{:?}", last.failures);
    assert_eq!(last.collections, 2, "orders and customers");
    assert!(!last.dry_run);
    assert!(conditions::is_true(&status.conditions, "Scheduled"));
    retentions.delete(&t.ns, &DeleteParams::default()).await.unwrap();
    kubelet.abort();
}

fn finished(r: &ChronosRestore) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
}

async fn round(engine: &Engine, id: &str) -> Value {
    let c: CollectionName = "orders".parse().unwrap();
    let id: ItemId = id.parse().unwrap();
    engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap().data["round"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_examples_restore_an_item_and_the_collection() {
    let mut t = Tenant::new().await;
    for file in [
        "tenant/namespace.yaml",
        "tenant/secrets.yaml",
        "tenant/database.yaml",
        "tenant/collection-orders.yaml",
    ] {
        t.apply_file(file).await;
    }
    wait_for(
        &t.api::<ChronosCollection>(),
        "acme-orders",
        "indexes ready",
        indexes_ready,
    )
    .await;

    // Two orders (cv 1 and 2), then both updated (cv 3 and 4): the examples restore order-1001 to
    // ov 0 and the collection to cv 2.
    let engine = t.engine().await;
    let orders: CollectionName = "orders".parse().unwrap();
    let who = Attribution::new("test", "seed");
    let mut cv = 0;
    for (id, customer) in [("order-1001", "c1"), ("order-1002", "c2")] {
        let data = json!({"status": "open", "customer": customer, "total": 120, "round": 1});
        let id = Some(id.parse().unwrap());
        cv = engine
            .create(&orders, id, data.as_object().unwrap().clone(), &who)
            .await
            .unwrap()
            .1
            .cv;
    }
    let example_cv = documents("restore/collection.yaml")[0]["spec"]["target"]["cv"].clone();
    assert_eq!(
        json!(cv),
        example_cv,
        "a fresh collection: the example's cv is after both creates"
    );
    for id in ["order-1001", "order-1002"] {
        let data = json!({"status": "paid", "customer": "c9", "total": 5, "round": 2});
        let id: ItemId = id.parse().unwrap();
        engine
            .update(&orders, &id, data.as_object().unwrap().clone(), Some(0), &who)
            .await
            .unwrap();
    }

    let restores = t.api::<ChronosRestore>();
    t.apply_file("restore/item.yaml").await;
    let item = wait_for(&restores, "acme-order-1001-to-ov0", "finished", finished).await;
    let s = item.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(round(&engine, "order-1001").await, 1, "order-1001 back at ov 0's data");
    assert_eq!(
        round(&engine, "order-1002").await,
        2,
        "an item restore touches one item"
    );

    t.apply_file("restore/collection.yaml").await;
    let all = wait_for(&restores, "acme-orders-to-cv2", "finished", finished).await;
    let s = all.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(s.plan.unwrap().examined, 2);
    assert_eq!(s.progress.unwrap().done, 2);
    assert_eq!(round(&engine, "order-1002").await, 1, "the collection is back at cv 2");
    assert_eq!(round(&engine, "order-1001").await, 1);
}

/// The `sh` blocks of a README section (from its `## ` heading to the next).
fn readme_blocks(heading: &str) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"))
        .split("\n## ")
        .next()
        .unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_kubernetes_walkthrough_runs_as_written() {
    let mut t = Tenant::new().await;
    // A copy of examples/ with this test's substitutions; the README's commands run in it.
    let dir = tempfile::tempdir().unwrap();
    for sub in ["tenant", "restore"] {
        let target = dir.path().join("examples").join(sub);
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(examples_dir().join(sub)).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let relative = format!("{sub}/{file}");
            let text = if file == "kustomization.yaml" {
                std::fs::read_to_string(examples_dir().join(&relative)).unwrap()
            } else {
                let docs: Vec<String> = documents(&relative)
                    .into_iter()
                    .map(|d| {
                        let d = t.substitute(d);
                        if d["kind"] == "ChronosDatabase" {
                            t.database = d.clone();
                        }
                        serde_json::to_string_pretty(&d).unwrap()
                    })
                    .collect();
                docs.join("\n---\n")
            };
            std::fs::write(target.join(&file), text).unwrap();
        }
    }
    let kubelet = tokio::spawn(fake_kubelet(t.api::<Deployment>()));
    // The commands as written; only the names that must be unique per run are mapped.
    let prelude = "set -euo pipefail\n\
        kubectl() {\n\
          local args=() a\n\
          for a in \"$@\"; do a=${a//tenant-acme/$CHRONOS_NS}; args+=(\"${a//acme-nightly/$CHRONOS_NS}\"); done\n\
          \"$CHRONOS_TEST_KUBECTL\" \"${args[@]}\"\n\
        }\n";
    let run = |block: String| {
        let dir = dir.path().to_owned();
        let ns = t.ns.clone();
        async move {
            let output = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(format!("{prelude}{block}"))
                .current_dir(dir)
                .env("CHRONOS_NS", ns)
                .env("CHRONOS_TEST_KUBECTL", env("CHRONOS_TEST_KUBECTL"))
                .env("KUBECONFIG", env("CHRONOS_TEST_KUBECONFIG"))
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "README block failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            stdout
        }
    };

    let lifecycle = readme_blocks("## A tenant's lifecycle with kubectl");
    assert_eq!(lifecycle.len(), 2, "bring-up and deletion");
    let out = run(lifecycle[0].clone()).await;
    assert!(out.contains(&format!("http://acme-engine.{}.svc:8080", t.ns)), "{out}");
    // The new index changed the engine's configuration: it rolls, then is Ready again.
    wait_for(&t.api::<ChronosDatabase>(), "acme", "ready after the roll", |d| {
        condition(d, "Ready").as_deref() == Some("True")
    })
    .await;
    let customers = t.api::<ChronosCollection>().get("acme-customers").await.unwrap();
    assert_eq!(
        customers.status.unwrap().indexes,
        ["meta_email", "meta_country", "meta_plan"]
    );

    // Data to restore: two orders (cv 1, 2), both updated (cv 3, 4).
    let engine = t.engine().await;
    let orders: CollectionName = "orders".parse().unwrap();
    let who = Attribution::new("test", "seed");
    for round_no in [1, 2] {
        for id in ["order-1001", "order-1002"] {
            let data = json!({"status": "open", "customer": "c1", "total": 120, "round": round_no});
            let data = data.as_object().unwrap().clone();
            let id: ItemId = id.parse().unwrap();
            match round_no {
                1 => drop(engine.create(&orders, Some(id), data, &who).await.unwrap()),
                _ => drop(engine.update(&orders, &id, data, Some(0), &who).await.unwrap()),
            }
        }
    }
    let restore = readme_blocks("## Restore");
    assert_eq!(restore.len(), 1);
    let out = run(restore[0].clone()).await;
    assert!(out.contains("acme-orders-to-cv2"), "{out}");
    assert_eq!(round(&engine, "order-1001").await, 1);
    assert_eq!(round(&engine, "order-1002").await, 1);

    // The block reads the last run, as one would of a nightly retention that has run: wait for
    // the first run of this one (every second here) to be recorded before reading it.
    let retentions = Api::<ChronosRetention>::all(t.client.clone());
    wait_for(&retentions, &t.ns, "a first run", |r| {
        r.status
            .as_ref()
            .and_then(|s| s.last_run.as_ref())
            .is_some_and(|l| l.outcome == "Succeeded")
    })
    .await;
    let retention = readme_blocks("## Retention");
    assert_eq!(retention.len(), 1);
    let out = run(retention[0].clone()).await;
    assert!(
        out.contains("\"outcome\":\"Succeeded\""),
        "the last run is shown: {out}"
    );
    let r = retentions.get(&t.ns).await.unwrap();
    assert!(r.spec.suspend);

    run(lifecycle[1].clone()).await;
    assert!(t.api::<ChronosDatabase>().get_opt("acme").await.unwrap().is_none());
    assert!(t.api::<Secret>().get_opt("acme-s3").await.unwrap().is_none());
    assert!(retentions.get_opt(&t.ns).await.unwrap().is_none());
    kubelet.abort();
}
