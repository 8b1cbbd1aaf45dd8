//! Multi-tenant routing on real services: three backends (three MongoDB databases on the one
//! mongod, three sets of buckets on the one S3 server). Data lands exactly where routing says,
//! and nothing crosses tenants.

use chronos::config::Config;
use chronos::connect::{self, Connections};
use chronos::engine::PayloadStore;
use chronos::engine::backends::S3PayloadStore;
use serde_json::{Value, json};

use crate::api::start;
use crate::support::{self, env, unique};

/// Three sets of buckets and a routing configuration over them: `meta` on backend 0, tenants
/// `acme` on 1 and `globex` on 2, each in its own MongoDB database.
async fn three_backends(run: &str) -> (String, impl Fn(usize) -> String, impl Fn(&str, usize) -> String) {
    let bucket = {
        let run = run.to_owned();
        move |role: &str, i: usize| format!("{run}-{role}{i}")
    };
    for i in 0..3 {
        for role in ["json", "content", "backups"] {
            S3PayloadStore::new(support::s3_connection().client(), bucket(role, i))
                .ensure_bucket()
                .await
                .unwrap();
        }
    }
    let spaces: String = (0..3)
        .map(|i| {
            format!(
                "  - {{endpoint: '{}', region: us-east-1, accessKey: {{env: CHRONOS_TEST_S3_ACCESS_KEY}}, \
                 secretKey: {{env: CHRONOS_TEST_S3_SECRET_KEY}}, jsonBucket: {}, contentBucket: {}, backupsBucket: {}}}\n",
                env("CHRONOS_TEST_S3_ENDPOINT"),
                bucket("json", i),
                bucket("content", i),
                bucket("backups", i)
            )
        })
        .collect();
    let db = {
        let run = run.replace('-', "_");
        move |i: usize| format!("{run}_{i}")
    };
    let yaml = format!(
        "mongoUris: [{{env: CHRONOS_TEST_MONGO_URI}}]\nspacesConns:\n{spaces}databaseTypes:\n  metadata:\n    \
         generic: {{key: meta, spaces: 0, dbName: {}}}\n    tenants:\n      \
         - {{key: acme, extIdentifier: acme, spaces: 1, dbName: {}}}\n      \
         - {{key: globex, extIdentifier: globex, spaces: 2, dbName: {}}}\n",
        db(0),
        db(1),
        db(2)
    );
    (yaml, db, bucket)
}

#[tokio::test]
async fn data_lands_where_routing_says_and_nowhere_else() {
    let run = unique("r");
    let (yaml, db, bucket) = three_backends(&run).await;
    let config = Config::parse(&yaml).unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let conns = Connections::default();
    let databases = connect::open_all(&config, std::path::Path::new("unused"), &conns)
        .await
        .unwrap();
    assert_eq!(databases.keys().collect::<Vec<_>>(), ["acme", "globex", "meta"]);
    let server = start(databases, None, 1 << 20).await;

    for (i, key) in ["meta", "acme", "globex"].iter().enumerate() {
        let resp = server
            .http
            .post(format!("{}/v1/{key}/notes/items?id=n1", server.url))
            .json(&json!({"owner": key, "i": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{key}");
    }
    // Each key reads its own record, never another tenant's.
    for key in ["meta", "acme", "globex"] {
        let r: Value = server
            .http
            .get(format!("{}/v1/{key}/notes/items/n1", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["owner"], key);
    }
    // Underneath: one head in each tenant's MongoDB database, one payload in each tenant's bucket.
    let mongo = mongodb::Client::with_uri_str(env("CHRONOS_TEST_MONGO_URI"))
        .await
        .unwrap();
    for i in 0..3 {
        let heads = mongo.database(&db(i)).collection::<bson::Document>("notes_head");
        let docs: Vec<bson::Document> = {
            use futures::TryStreamExt;
            heads.find(bson::doc! {}).await.unwrap().try_collect().await.unwrap()
        };
        assert_eq!(docs.len(), 1, "database {i}");
        let owner = ["meta", "acme", "globex"][i];
        assert!(
            docs[0].get_str("data").unwrap().contains(owner),
            "database {i} holds {owner}'s data"
        );
        let store = S3PayloadStore::new(support::s3_connection().client(), bucket("json", i));
        let all = store.list("", None, 10).await.unwrap();
        // The ledger (written within a second of the commit) is the owner's too.
        let (ledger, keys): (Vec<String>, Vec<String>) = all.into_iter().partition(|k| k.contains("/chronos-ledger/"));
        assert!(
            ledger
                .iter()
                .all(|k| k.starts_with(&format!("{owner}/chronos-ledger/notes/"))),
            "{ledger:?}"
        );
        assert_eq!(keys.len(), 1, "bucket {i}: {keys:?}");
        assert!(keys[0].starts_with(&format!("{owner}/notes/n1/v0.")), "{keys:?}");
        let payload = store.get(&keys[0]).await.unwrap().unwrap();
        let payload = String::from_utf8_lossy(&payload);
        assert!(
            payload.contains(&format!("\"owner\":\"{owner}\"")),
            "bucket {i} holds {owner}'s payload"
        );
    }
    let unknown = server
        .http
        .get(format!("{}/v1/initech/notes/items/n1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// The routing table changes under load: a tenant is added, then a broken file is ignored; the
/// writers of an existing tenant see no failure, and the new tenant answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_reloads_under_load_without_failing_requests() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let run = unique("h");
    let (yaml, db, _) = three_backends(&run).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chronos.yaml");
    // Start with meta and acme only.
    let initial = yaml.split("      - {key: globex").next().unwrap().to_owned();
    std::fs::write(&path, &initial).unwrap();
    let config = Config::load(&path).unwrap();
    let conns = Arc::new(Connections::default());
    let databases = connect::open_all(&config, dir.path(), &conns).await.unwrap();
    let server = start(databases.clone(), None, 1 << 20).await;
    let mut reloader = chronos::reload::Reloader::new(&path, dir.path(), conns, &config, &databases).unwrap();
    assert!(
        !reloader.check(&server.state).await.unwrap(),
        "unchanged file, nothing to do"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (http, url) = (server.http.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let resp = http
                        .post(format!("{url}/v1/acme/load/items"))
                        .json(&json!({"w": w, "i": i}))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 201 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    // Let the load get going: wait for acknowledged writes, not for time.
    while ok.load(Ordering::Relaxed) < 20 {
        tokio::task::yield_now().await;
    }
    let globex_before = server
        .http
        .get(format!("{}/v1/globex/load/items", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(globex_before.status(), 404);

    std::fs::write(&path, &yaml).unwrap();
    assert!(
        reloader.check(&server.state).await.unwrap(),
        "the new table is swapped in"
    );
    let before_bad = ok.load(Ordering::Relaxed);
    std::fs::write(&path, "databaseTypes: {metadata: {generic: {key: '../bad'}}}\n").unwrap();
    assert!(
        reloader.check(&server.state).await.is_err(),
        "an invalid file is refused"
    );
    while ok.load(Ordering::Relaxed) < before_bad + 20 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the reloads"
    );

    let created = server
        .http
        .post(format!("{}/v1/globex/load/items", server.url))
        .json(&json!({"new": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        201,
        "the added tenant answers, and the broken file changed nothing"
    );
    let mongo = mongodb::Client::with_uri_str(env("CHRONOS_TEST_MONGO_URI"))
        .await
        .unwrap();
    let n = mongo
        .database(&db(2))
        .collection::<bson::Document>("load_head")
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(n, 1, "globex's write is in globex's database");
    let acme = mongo
        .database(&db(1))
        .collection::<bson::Document>("load_head")
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(
        acme,
        ok.load(Ordering::Relaxed),
        "every acknowledged acme write is there"
    );
}
