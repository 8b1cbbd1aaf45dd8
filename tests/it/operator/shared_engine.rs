//! The namespace's shared engine: it serves every database without its own, and goes with the last.

use super::*;

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
