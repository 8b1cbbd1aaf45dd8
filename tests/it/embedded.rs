//! The embedded default backends (SQLite + a local directory): the conformance suite, plus what
//! only a local store has to get right — surviving a restart and refusing a second process.

use chronos::connect::embedded;
use chronos::engine::{Attribution, CollectionName, EngineSettings, Error, Op, ReadOptions, VersionTarget};
use serde_json::json;

use crate::support;

crate::conformance_suite!(support::embedded);

fn data(n: u64) -> serde_json::Map<String, serde_json::Value> {
    json!({"n": n}).as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let c: CollectionName = "kept".parse().unwrap();
    let who = Attribution::new("tester", "reopen");
    // Nothing inline: the reads after reopening must come from the payload files.
    let settings = EngineSettings {
        inline_max_bytes: 0,
        ..EngineSettings::default()
    };
    let (hot, hot_out, cold, last) = {
        let e = embedded(dir.path(), "default", settings.clone()).unwrap();
        let (hot, hot_out) = e.create(&c, None, data(0), &who).await.unwrap();
        let (cold, _) = e.create(&c, None, data(10), &who).await.unwrap();
        e.update(&c, &cold, data(11), Some(0), &who).await.unwrap();
        let last = e.delete(&c, &cold, Some(1), &who).await.unwrap();
        (hot, hot_out, cold, last)
    };

    let e = embedded(dir.path(), "default", settings).unwrap();
    let r = e.get_latest(&c, &hot, ReadOptions::default()).await.unwrap();
    assert_eq!((r.ov, r.cv, r.data), (0, hot_out.cv, data(0)));
    assert_eq!(r.system.inserted_at, hot_out.at);

    let with_deleted = ReadOptions { include_deleted: true };
    let r = e.get_latest(&c, &cold, with_deleted).await.unwrap();
    assert_eq!((r.ov, r.cv), (2, last.cv));
    assert_eq!(r.data, data(11));
    assert!(r.system.deleted);
    let history = e.history(&c, &cold, None, 10, with_deleted).await.unwrap();
    assert_eq!(
        history.iter().map(|v| (v.ov, v.op)).collect::<Vec<_>>(),
        [(0, Op::Create), (1, Op::Update), (2, Op::Delete)]
    );
    assert_eq!(history[2].actor.as_deref(), Some("tester"));
    assert_eq!(
        e.get_at(&c, &cold, VersionTarget::Ov(0), ReadOptions::default())
            .await
            .unwrap()
            .data,
        data(10)
    );

    // Counters continue where they stopped.
    let next = e.update(&c, &hot, data(1), Some(0), &who).await.unwrap();
    assert_eq!(next.ov, 1);
    assert!(next.cv > last.cv, "cv {} after {}", next.cv, last.cv);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let first = embedded(dir.path(), "default", EngineSettings::default()).unwrap();
    first.ping().await.unwrap();
    let Err(err) = embedded(dir.path(), "default", EngineSettings::default()) else {
        panic!("a second open of a directory in use succeeded");
    };
    assert!(
        matches!(&err, Error::Unavailable { .. }) && err.to_string().contains("in use"),
        "{err}"
    );
    drop(first);
    embedded(dir.path(), "default", EngineSettings::default())
        .expect("the directory is free again once the first engine is gone")
        .ping()
        .await
        .unwrap();
}
