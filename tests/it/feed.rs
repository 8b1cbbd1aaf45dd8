//! The change feed across engine processes on real MongoDB + S3 (and embedded): commits by any
//! process wake every subscriber through one change stream per collection per process, idle
//! subscribers cost no reads, and many writers with subscribers that drop and resume at random
//! points still see every committed version exactly once after dedupe by cv, in cv order.

use std::sync::Arc;
use std::time::Duration;

use chronos::engine::backends::{MongoMetaStore, S3PayloadStore};
use chronos::engine::{CollectionName, Engine, EngineSettings, MetaStore, MetaWrite, PayloadStore};
use serde_json::{Map, Value, json};

use crate::conformance::feed::follow_until;
use crate::support;

fn things() -> CollectionName {
    "things".parse().unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// An engine process on MongoDB + S3 with its own client (so its own change streams), over the
/// database and bucket named; its MongoDB commands are recorded.
async fn process(db: &str, bucket: &str) -> (Arc<Engine>, Arc<dyn MetaStore>, support::Commands) {
    let commands: support::Commands = Default::default();
    let client = support::mongo_client(commands.clone()).await;
    let meta = MongoMetaStore::new(client, db);
    meta.ping().await.unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(meta);
    let store = S3PayloadStore::new(support::s3_connection().client(), bucket.to_owned());
    store.ensure_bucket().await.unwrap();
    let payloads: Arc<dyn PayloadStore> = Arc::new(store);
    let engine = Arc::new(Engine::new(meta.clone(), payloads, EngineSettings::default()));
    (engine, meta, commands)
}

/// Two engine processes over one database and bucket.
async fn two_processes() -> [(Arc<Engine>, Arc<dyn MetaStore>, support::Commands); 2] {
    let db = support::unique("feed").replace('-', "_");
    let bucket = support::unique("chronos-feed");
    [process(&db, &bucket).await, process(&db, &bucket).await]
}

/// The feed's reads of the version index of `things` (a `find` by cv), taken since the last call.
fn index_reads(commands: &support::Commands) -> usize {
    let all = std::mem::take(&mut *commands.lock().unwrap());
    all.iter()
        .filter(|(n, body)| {
            n == "find"
                && body.get_str("find").is_ok_and(|c| c == "things_ver")
                && body.get_document("filter").is_ok_and(|f| f.contains_key("cv"))
        })
        .count()
}

/// A subscriber on engine B wakes for a commit made by engine A; B's subscribers share one change
/// stream and one index read per wake-up, whatever their number; the stream closes when the last
/// subscriber leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_on_one_process_share_a_change_stream_and_wake_for_another_process() {
    let [(a, _, _), (b, _, b_commands)] = two_processes().await;
    let all = b.change_filter(&things(), &Value::Null, vec![]).unwrap();
    let first = a
        .create(&things(), None, obj(json!({"n": 0})), &Default::default())
        .await
        .unwrap()
        .1;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut sub = b.subscribe(&things(), 0, all.clone()).await.unwrap();
        assert_eq!(follow_until(&mut sub, first.cv).await.len(), 1);
        subs.push(sub);
    }
    let streams = std::mem::take(&mut *b_commands.lock().unwrap())
        .iter()
        .filter(|(n, body)| {
            n == "aggregate"
                && body.get_str("aggregate").is_ok_and(|c| c == "things_ver")
                && body.get_array("pipeline").is_ok_and(|p| {
                    p.iter()
                        .any(|s| s.as_document().is_some_and(|d| d.contains_key("$changeStream")))
                })
        })
        .count();
    assert_eq!(streams, 1, "one change stream for the three subscribers");

    for round in 1..=3 {
        let w = a
            .create(&things(), None, obj(json!({"n": round})), &Default::default())
            .await
            .unwrap()
            .1;
        for sub in &mut subs {
            let got = follow_until(sub, w.cv).await;
            assert_eq!(
                got.iter().map(|v| v.cv).collect::<Vec<_>>(),
                [w.cv],
                "woken by A's commit"
            );
        }
        assert_eq!(
            index_reads(&b_commands),
            1,
            "round {round}: one read of B's index for all three"
        );
    }

    drop(subs);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let killed = std::mem::take(&mut *b_commands.lock().unwrap())
            .iter()
            .any(|(n, _)| n == "killCursors");
        if killed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the change stream stayed open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
