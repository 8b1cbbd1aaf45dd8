//! A database's life: buckets, engine, indexes, invalid specs, claims on shared data, its
//! deletion, and the backend hosts the operator may reach.

use super::*;

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

/// With `s3.objectLock` the buckets are created with S3 Object Lock and `ObjectLockReady` says
/// whether the server enforces it (SeaweedFS 4.48 does: the probe's delete of a locked version is
/// refused); a database without it gets no such condition.
#[tokio::test(flavor = "multi_thread")]
async fn object_lock_is_probed_and_reported() {
    let mut k = Cluster::new().await;
    k.start();
    let dbs = k.api::<ChronosDatabase>();
    let _: ChronosDatabase = k
        .create(k.database_spec("locked", json!({"s3": {"objectLock": true}})))
        .await;
    let _: ChronosDatabase = k.create(k.database_spec("plain", json!({}))).await;
    let locked = wait_for(&dbs, "locked", "object lock probed", |d| {
        condition(d, "ObjectLockReady").is_some()
    })
    .await;
    assert_eq!(
        condition(&locked, "ObjectLockReady").as_deref(),
        Some("True"),
        "{:?}",
        locked.status
    );
    let lock = s3_connection()
        .client()
        .get_object_lock_configuration()
        .bucket(&locked.spec.s3.buckets.json)
        .send()
        .await
        .unwrap();
    let enabled = lock.object_lock_configuration().and_then(|c| c.object_lock_enabled());
    assert_eq!(
        enabled.map(|e| e.as_str()),
        Some("Enabled"),
        "the bucket was created with it"
    );
    let plain = wait_for(&dbs, "plain", "buckets ready", |d| {
        condition(d, "BucketsReady").as_deref() == Some("True")
    })
    .await;
    assert_eq!(condition(&plain, "ObjectLockReady"), None);
}
