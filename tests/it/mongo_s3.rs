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
