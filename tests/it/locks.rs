//! Item locks across engine replicas on real MongoDB: the head document held by a write's
//! transaction is the lock (see docs/design.md, "Item locks"). These tests hold a write in the
//! middle of its payload upload to show what other replicas see, and what happens to a writer
//! whose lock the server took away.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chronos::engine::backends::MongoMetaStore;
use chronos::engine::backends::S3PayloadStore;
use chronos::engine::store::decorators::{Faults, Faulty};
use chronos::engine::{
    Attribution, CollectionName, Engine, EngineSettings, Error, MetaWrite, PayloadStore, ReadOptions, VersionTarget,
};
use mongodb::bson::{Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use serde_json::{Map, Value, json};

use crate::support;

struct Replicas {
    /// Two engines (two replicas) over one database and bucket; payload writes can be held.
    a: Arc<Engine>,
    b: Arc<Engine>,
    faults: Arc<Faults>,
    payloads: Arc<dyn PayloadStore>,
    /// Session ids of the head `findAndModify` commands sent by replica `a`.
    a_sessions: Arc<Mutex<Vec<Document>>>,
    admin: mongodb::Client,
}

async fn replicas() -> Replicas {
    let db = support::unique("locks").replace('-', "_");
    let sessions: Arc<Mutex<Vec<Document>>> = Default::default();
    let mut options = mongodb::options::ClientOptions::parse(support::env("CHRONOS_TEST_MONGO_URI"))
        .await
        .unwrap();
    let seen = sessions.clone();
    options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e
            && s.command_name == "findAndModify"
            && let Ok(lsid) = s.command.get_document("lsid")
        {
            seen.lock().unwrap().push(lsid.clone());
        }
    }));
    let client_a = mongodb::Client::with_options(options).unwrap();
    let admin = support::mongo_client(Default::default()).await;
    let bucket = S3PayloadStore::new(support::s3_connection().client(), support::unique("chronos-locks"));
    bucket.ensure_bucket().await.unwrap();
    let bucket: Arc<dyn PayloadStore> = Arc::new(bucket);
    let faults = Arc::new(Faults::default());
    let held: Arc<dyn PayloadStore> = Arc::new(Faulty::new(bucket.clone(), faults.clone()));
    let meta_a = MongoMetaStore::new(client_a, &db);
    meta_a.ping().await.unwrap();
    let a = Arc::new(Engine::new(Arc::new(meta_a), held, EngineSettings::default()));
    let b = Arc::new(Engine::new(
        Arc::new(MongoMetaStore::new(admin.clone(), &db)),
        bucket.clone(),
        EngineSettings::default(),
    ));
    Replicas {
        a,
        b,
        faults,
        payloads: bucket,
        a_sessions: sessions,
        admin,
    }
}

fn coll() -> CollectionName {
    "locked".parse().unwrap()
}

fn data(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_item_makes_other_replicas_wait_then_report_locked() {
    let r = replicas().await;
    let who = Attribution::default();
    let (id, _) = r.a.create(&coll(), None, data(json!({"n": 0})), &who).await.unwrap();
    r.faults.hold_puts.store(true, Ordering::SeqCst);
    let writer = tokio::spawn({
        let (a, id) = (r.a.clone(), id.clone());
        async move {
            a.update(&coll(), &id, data(json!({"n": "a"})), None, &Attribution::default())
                .await
        }
    });
    r.faults.held.notified().await;
    // Replica b retries with backoff for a bounded time, then gives a clear answer.
    let contender = r.b.update(&coll(), &id, data(json!({"n": "b"})), None, &who).await;
    assert!(matches!(contender, Err(Error::Contended(_))), "{contender:?}");
    // Other items are not held.
    r.b.create(&coll(), None, data(json!({"other": true})), &who)
        .await
        .unwrap();
    r.faults.release_one();
    let a = writer.await.unwrap().expect("the lock holder commits");
    assert_eq!(a.ov, 1);
    let latest = r.b.get_latest(&coll(), &id, ReadOptions::default()).await.unwrap();
    assert_eq!((latest.ov, latest.data), (1, data(json!({"n": "a"}))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_whose_lock_expired_cannot_commit() {
    let r = replicas().await;
    let who = Attribution::default();
    let (id, _) = r.b.create(&coll(), None, data(json!({"n": 0})), &who).await.unwrap();
    r.a_sessions.lock().unwrap().clear();
    r.faults.hold_puts.store(true, Ordering::SeqCst);
    let writer = tokio::spawn({
        let (a, id) = (r.a.clone(), id.clone());
        async move {
            a.update(&coll(), &id, data(json!({"n": "late"})), None, &Attribution::default())
                .await
        }
    });
    r.faults.held.notified().await;
    // What MongoDB does to a transaction that outlives transactionLifetimeLimitSeconds: abort
    // it and release what it holds. Here it is done at once, to the held writer's session.
    let sessions: Vec<Document> = r.a_sessions.lock().unwrap().clone();
    assert!(!sessions.is_empty(), "the held writer's session was seen");
    r.admin
        .database("admin")
        .run_command(doc! {"killSessions": sessions})
        .await
        .unwrap();
    // The item is free: another replica writes it.
    let b =
        r.b.update(&coll(), &id, data(json!({"n": "b"})), None, &who)
            .await
            .unwrap();
    assert_eq!(b.ov, 1);
    // The writer that lost its lock can't commit what it prepared under it: that attempt is
    // refused, its payload removed, and the write is redone from the start under a new lock,
    // after B's version (last writer wins, nothing overwritten).
    r.faults.hold_puts.store(false, Ordering::SeqCst);
    r.faults.release_one();
    let late = writer.await.unwrap().expect("redone under a new lock");
    assert_eq!(late.ov, 2, "the late writer did not take B's ov");
    let history =
        r.b.history(&coll(), &id, None, 10, ReadOptions::default())
            .await
            .unwrap();
    assert_eq!(history.iter().map(|v| v.ov).collect::<Vec<_>>(), [0, 1, 2]);
    let v1 =
        r.b.get_at(&coll(), &id, VersionTarget::Ov(1), ReadOptions::default())
            .await
            .unwrap();
    assert_eq!(v1.data, data(json!({"n": "b"})), "B's version is intact");
    // The refused attempt's payload is gone (it had a key of its own); only committed ones remain.
    let keys = r.payloads.list(&format!("locked/{id}/"), None, 100).await.unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
}
