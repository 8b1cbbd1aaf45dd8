//! The engine on a real MongoDB replica set and a real S3 server.

use chronos::engine::{Attribution, CollectionName, EngineSettings, ReadOptions};
use serde_json::json;

use crate::support;

crate::conformance_suite!(support::mongo_s3);

/// The cost of each operation in MongoDB commands, measured with the driver's command monitoring.
#[tokio::test]
async fn mongo_commands_per_operation() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "counted".parse().unwrap();
    let who = Attribution::default();
    let data = || json!({"a": 1}).as_object().unwrap().clone();
    // The first write of a collection ensures its indexes, once per process.
    let (warm, _) = h.engine.create(&c, None, data(), &who).await.unwrap();
    assert!(h.take_commands().contains(&"createIndexes".to_owned()));
    h.engine.update(&c, &warm, data(), Some(0), &who).await.unwrap();
    assert!(
        !h.take_commands().contains(&"createIndexes".to_owned()),
        "indexes are never ensured per write"
    );

    let (id, _) = h.engine.create(&c, None, data(), &who).await.unwrap();
    let create = h.take_commands();
    h.engine.update(&c, &id, data(), Some(0), &who).await.unwrap();
    let update = h.take_commands();
    h.engine.update(&c, &id, data(), None, &who).await.unwrap();
    let blind_update = h.take_commands();
    h.engine.delete(&c, &id, Some(2), &who).await.unwrap();
    let delete = h.take_commands();
    h.engine.get_latest(&c, &warm, ReadOptions::default()).await.unwrap();
    let latest = h.take_commands();
    h.engine
        .get_version(&c, &warm, 0, ReadOptions::default())
        .await
        .unwrap();
    let version = h.take_commands();

    println!(
        "create: {create:?}\nupdate: {update:?}\ndelete: {delete:?}\ngetLatest: {latest:?}\ngetVersion: {version:?}"
    );
    assert_eq!(create, ["findAndModify", "insert", "insert", "commitTransaction"]);
    assert_eq!(
        update,
        ["findAndModify", "findAndModify", "insert", "commitTransaction"]
    );
    assert_eq!(blind_update, update);
    assert_eq!(delete, update);
    assert_eq!(latest, ["find"]);
    assert_eq!(version, ["find"]);
}

/// Presigned URLs for a version's payload and its content properties, fetched with a plain GET.
#[tokio::test]
async fn presigned_urls_serve_the_exact_bytes() {
    use chronos::engine::{CollectionMap, ContentKind};
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "docs".into(),
        CollectionMap {
            content_props: [("body".to_owned(), ContentKind::Text)].into(),
            ..Default::default()
        },
    );
    let h = support::mongo_s3(settings).await;
    let dbs = std::collections::BTreeMap::from([("t1".to_owned(), h.engine.clone())]);
    let server = crate::api::start(dbs, None, 1 << 20).await;
    let body = "the body ".repeat(100);
    let created: serde_json::Value = server
        .http
        .post(format!("{}/v1/t1/docs/items?id=d1", server.url))
        .json(&json!({"title": "t", "body": body}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["ov"], 0);
    let record: serde_json::Value = server
        .http
        .get(format!("{}/v1/t1/docs/items/d1?presign=true&ttlSeconds=60", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plain = reqwest::Client::new();
    let content_url = record["body"]["$content"]["url"].as_str().expect("a content URL");
    let fetched = plain.get(content_url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().await.unwrap(), body, "content bytes");
    let payload_url = record["_system"]["payloadUrl"].as_str().expect("a payload URL");
    let envelope: serde_json::Value = plain.get(payload_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(envelope["chronos"]["id"], "d1");
    assert_eq!(
        envelope["data"]["body"]["$content"]["key"],
        record["body"]["$content"]["key"]
    );
    // Without credentials and without a signature, the bucket says no.
    let unsigned = payload_url.split('?').next().unwrap();
    assert_eq!(plain.get(unsigned).send().await.unwrap().status(), 403);

    // Inline by default: the value itself.
    let inline: serde_json::Value = server
        .http
        .get(format!("{}/v1/t1/docs/items/d1", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inline["body"], body.as_str());
}
