//! The change feed across engine processes on real MongoDB + S3 (and embedded): commits by any
//! process wake every subscriber through one change stream per collection per process, idle
//! subscribers cost no reads, and many writers with subscribers that drop and resume at random
//! points still see every committed version exactly once after dedupe by cv, in cv order.

use std::sync::Arc;
use std::time::Duration;

use chronos::engine::backends::{MongoMetaStore, S3PayloadStore};
use chronos::engine::store::decorators::{Faults, Faulty};
use chronos::engine::{CollectionName, Engine, EngineSettings, MetaStore, MetaWrite, PayloadStore, VersionEntry};
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
    process_with(db, bucket, EngineSettings::default()).await
}

async fn process_with(
    db: &str,
    bucket: &str,
    settings: EngineSettings,
) -> (Arc<Engine>, Arc<dyn MetaStore>, support::Commands) {
    process_faulty(db, bucket, settings, Default::default()).await
}

/// [`process_with`] whose payload uploads fail while `faults` says so.
async fn process_faulty(
    db: &str,
    bucket: &str,
    settings: EngineSettings,
    faults: Arc<Faults>,
) -> (Arc<Engine>, Arc<dyn MetaStore>, support::Commands) {
    let commands: support::Commands = Default::default();
    let client = support::mongo_client(commands.clone()).await;
    let meta = MongoMetaStore::new(client, db);
    meta.ping().await.unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(meta);
    let store = S3PayloadStore::new(support::s3_connection().client(), bucket.to_owned());
    store.ensure_bucket().await.unwrap();
    let payloads: Arc<dyn PayloadStore> = Arc::new(Faulty::new(Arc::new(store), faults));
    let engine = Arc::new(Engine::new(meta.clone(), payloads, settings));
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

/// A small random number below `n` (the test needs variety, not quality).
fn below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % n.max(1)
}

/// 8 writers over two engines (last writer wins on shared items, so some take a second cv and
/// leave a gap; uploads fail now and then, so some take a cv and never commit it) and 4
/// subscribers that drop their subscription at random points,
/// mid-read too, and resume on either engine — sometimes from a cv before the last one they
/// received, as a client that had not processed everything would. Each, after dedupe by cv, saw
/// every version in the index exactly once, in cv order, and nothing else; within one
/// subscription versions never went back.
async fn writers_and_resuming_subscribers(engines: [Arc<Engine>; 2], meta: Arc<dyn MetaStore>, faults: Arc<Faults>) {
    let all = engines[0].change_filter(&things(), &Value::Null, vec![]).unwrap();
    for k in 0..6 {
        let id = format!("shared{k}").parse().unwrap();
        engines[0]
            .create(&things(), Some(id), obj(json!({"k": k})), &Default::default())
            .await
            .unwrap();
    }
    let (done_tx, done) = tokio::sync::watch::channel(None::<u64>);
    let subscribers: Vec<_> = (0..4)
        .map(|s| {
            let engines = engines.clone();
            let all = all.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut received: Vec<VersionEntry> = Vec::new();
                let mut resume = 0;
                let mut reconnects = 0;
                loop {
                    let engine = &engines[((s + reconnects) % 2) as usize];
                    let mut sub = engine.subscribe(&things(), resume, all.clone()).await.unwrap();
                    let mut last_in_this = resume;
                    for _ in 0..1 + below(4) {
                        // A short wait cut off mid-read is a dropped connection too.
                        let wait = Duration::from_millis(5 + below(200));
                        let Ok(batch) = tokio::time::timeout(wait, sub.next()).await else {
                            break;
                        };
                        for v in batch.unwrap() {
                            assert!(v.cv > last_in_this, "one subscription never goes back");
                            last_in_this = v.cv;
                            received.push(v);
                        }
                    }
                    drop(sub);
                    reconnects += 1;
                    let newest = received.last().map_or(0, |v| v.cv);
                    if done.borrow().is_some_and(|last| newest >= last) {
                        return (received, reconnects);
                    }
                    // Resume after the last one, or (processed less than received) a bit before.
                    resume = match below(3) {
                        0 if received.len() > 3 => received[received.len() - 1 - below(3) as usize].cv,
                        _ => newest,
                    };
                }
            })
        })
        .collect();

    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let engine = engines[(w % 2) as usize].clone();
            tokio::spawn(async move {
                for n in 0..25u64 {
                    let outcome = if n % 5 == 0 {
                        let id = format!("w{w}-{n}").parse().unwrap();
                        engine
                            .create(&things(), Some(id), obj(json!({"w": w, "n": n})), &Default::default())
                            .await
                            .map(|_| ())
                    } else {
                        let id = format!("shared{}", below(6)).parse().unwrap();
                        engine
                            .update(&things(), &id, obj(json!({"w": w, "n": n})), None, &Default::default())
                            .await
                            .map(|_| ())
                    };
                    // Contention may refuse a write; what counts is what the index has.
                    if let Err(e) = outcome {
                        assert!(
                            matches!(
                                e,
                                chronos::engine::Error::Contended(_) | chronos::engine::Error::Unavailable { .. }
                            ),
                            "{e:?}"
                        );
                    }
                }
            })
        })
        .collect();
    let flaky = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(40 + below(40))).await;
            faults.fail_puts.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5 + below(10))).await;
            faults.fail_puts.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for w in writers {
        w.await.unwrap();
    }
    flaky.abort();
    let index = meta.versions_after(&things(), 0, 100_000).await.unwrap();
    let last = index.last().unwrap().cv;
    assert!(index.len() > 100, "most writes went in: {}", index.len());
    assert!(last > index.len() as u64 + 3, "some cvs were taken and never committed");
    done_tx.send(Some(last)).unwrap();

    for (s, sub) in subscribers.into_iter().enumerate() {
        let (received, reconnects) = tokio::time::timeout(Duration::from_secs(120), sub)
            .await
            .unwrap_or_else(|_| panic!("subscriber {s} did not reach cv {last}"))
            .unwrap();
        assert!(reconnects > 3, "subscriber {s} resumed {reconnects} times");
        let mut deduped: Vec<VersionEntry> = Vec::new();
        for v in &received {
            let expected = index.iter().find(|i| i.cv == v.cv);
            assert_eq!(expected, Some(v), "subscriber {s}: only committed versions, as indexed");
            if deduped.last().is_none_or(|d| v.cv > d.cv) {
                deduped.push(v.clone());
            } else {
                assert!(
                    deduped.iter().any(|d| d.cv == v.cv),
                    "subscriber {s}: cv {} out of order",
                    v.cv
                );
            }
        }
        assert_eq!(deduped, index, "subscriber {s}: every version once, in cv order");
    }
}

/// A short grace, so gaps left by writes that took a second cv settle in seconds.
fn short_grace() -> EngineSettings {
    EngineSettings {
        orphan_grace: Duration::from_secs(6),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_and_resuming_subscribers_on_two_processes_mongo_s3() {
    let db = support::unique("feed").replace('-', "_");
    let bucket = support::unique("chronos-feed");
    let faults = Arc::new(Faults::default());
    let (a, meta, _) = process_faulty(&db, &bucket, short_grace(), faults.clone()).await;
    let (b, _, _) = process_faulty(&db, &bucket, short_grace(), faults.clone()).await;
    writers_and_resuming_subscribers([a, b], meta, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_and_resuming_subscribers_on_two_engines_embedded() {
    let h = support::embedded(short_grace());
    writers_and_resuming_subscribers([h.engine.clone(), h.replica()], h.meta.clone(), h.faults.clone()).await;
}
