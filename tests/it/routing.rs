//! Multi-tenant routing on real services: three backends (three MongoDB databases on the one
//! mongod, three sets of buckets on the one S3 server). Data lands exactly where routing says,
//! and nothing crosses tenants.

use chronos::config::Config;
use chronos::connect::{self, Connections};
use chronos::engine::PayloadStore;
use chronos::engine::s3::S3PayloadStore;
use serde_json::{Value, json};

use crate::api::start;
use crate::support::{self, env, unique};

#[tokio::test]
async fn data_lands_where_routing_says_and_nowhere_else() {
    let run = unique("r");
    let bucket = |role: &str, i: usize| format!("{run}-{role}{i}");
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
    let db = |i: usize| format!("{}_{i}", run.replace('-', "_"));
    let yaml = format!(
        "mongoUris: [{{env: CHRONOS_TEST_MONGO_URI}}]\nspacesConns:\n{spaces}databaseTypes:\n  metadata:\n    \
         generic: {{key: meta, spaces: 0, dbName: {}}}\n    tenants:\n      \
         - {{key: acme, extIdentifier: acme, spaces: 1, dbName: {}}}\n      \
         - {{key: globex, extIdentifier: globex, spaces: 2, dbName: {}}}\n",
        db(0),
        db(1),
        db(2)
    );
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
        let keys = store.list("notes/", None, 10).await.unwrap();
        assert_eq!(keys.len(), 1, "bucket {i}: {keys:?}");
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
