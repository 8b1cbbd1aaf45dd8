//! Head reads on a real MongoDB replica set: concurrent reads of one collection share a `find`,
//! and each still gets exactly its own item, as fresh as a lone read.

use chronos::engine::{Attribution, CollectionName, EngineSettings, Error, ItemId, ReadOptions};
use futures::future::join_all;
use serde_json::json;

use crate::support;

fn data(n: usize, v: usize) -> serde_json::Map<String, serde_json::Value> {
    json!({"n": n, "v": v}).as_object().unwrap().clone()
}

/// Many reads at once, of distinct items, of one item several times and of items that do not
/// exist: far fewer `find`s than reads, and every read answered with its own item or not found.
#[tokio::test]
async fn concurrent_reads_share_finds_and_each_gets_its_own_item() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "read-together".parse().unwrap();
    let who = Attribution::default();
    let ids: Vec<ItemId> = (0..64).map(|i| format!("r-{i}").parse().unwrap()).collect();
    for r in join_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| h.engine.create(&c, Some(id.clone()), data(i, 0), &who)),
    )
    .await
    {
        r.unwrap();
    }
    h.take_commands();

    // Each item three times, interleaved with reads of ids nobody wrote.
    let asked: Vec<(Option<usize>, ItemId)> = (0..3)
        .flat_map(|_| (0..64).map(|i| (Some(i), ids[i].clone())))
        .chain((0..16).map(|i| (None, format!("missing-{i}").parse().unwrap())))
        .collect();
    let read = join_all(
        asked
            .iter()
            .map(|(_, id)| h.engine.get_latest(&c, id, ReadOptions::default())),
    )
    .await;
    let commands = h.take_commands();
    println!("{} reads: {} commands", asked.len(), commands.len());
    assert!(commands.iter().all(|c| c == "find"), "{commands:?}");
    assert!(
        commands.len() <= asked.len() / 8,
        "{} reads sent {} finds",
        asked.len(),
        commands.len()
    );
    for ((n, id), got) in asked.iter().zip(read) {
        match n {
            Some(n) => {
                let record = got.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(&record.id, id);
                assert_eq!(record.data["n"], json!(n), "{id} read another item's data");
            }
            None => assert!(matches!(got, Err(Error::NotFound(_))), "{id}: {got:?}"),
        }
    }
}

/// A read made after a write was acknowledged sees that write, while other reads and writes of
/// the collection keep its finds batched.
#[tokio::test]
async fn a_batched_read_sees_every_write_acknowledged_before_it() {
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "read-own-writes".parse().unwrap();
    let who = Attribution::default();
    let ids: Vec<ItemId> = (0..24).map(|i| format!("w-{i}").parse().unwrap()).collect();
    let engine = &h.engine;
    h.take_commands();
    let rounds = join_all(ids.iter().enumerate().map(|(i, id)| {
        let who = who.clone();
        let c = c.clone();
        async move {
            engine.create(&c, Some(id.clone()), data(i, 0), &who).await.unwrap();
            for v in 1..=8 {
                let written = engine
                    .update(&c, id, data(i, v), Some(v as u64 - 1), &who)
                    .await
                    .unwrap();
                // Several reads per write, so that reads keep arriving while finds are in flight.
                for _ in 0..3 {
                    let read = engine.get_latest(&c, id, ReadOptions::default()).await.unwrap();
                    assert_eq!((read.ov, read.cv), (written.ov, written.cv), "{id} read a stale head");
                    assert_eq!(read.data["v"], json!(v));
                    assert_eq!(read.data["n"], json!(i));
                }
            }
        }
    }))
    .await;
    assert_eq!(rounds.len(), ids.len());
    // The reads were batched (each alone would be a `find`; the updates' groups send some too).
    let reads = ids.len() * 8 * 3;
    let finds = h.take_commands().iter().filter(|c| *c == "find").count();
    println!("{reads} reads and their writes: {finds} finds");
    assert!(finds < reads / 2, "{finds} finds for {reads} reads");
}

/// A head that does not decode fails its own read only: the other reads of its batch are
/// answered, and it gets the error a lone read gets.
#[tokio::test]
async fn a_head_that_does_not_decode_fails_only_its_own_read() {
    use mongodb::bson::{Document, doc};
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "read-corrupt".parse().unwrap();
    let who = Attribution::default();
    let ids: Vec<ItemId> = (0..32).map(|i| format!("x-{i}").parse().unwrap()).collect();
    for (i, id) in ids.iter().enumerate() {
        h.engine.create(&c, Some(id.clone()), data(i, 0), &who).await.unwrap();
    }
    let Some(support::RawMeta::Mongo(client, db)) = h.raw.clone() else {
        panic!("a MongoDB harness")
    };
    let heads = client.database(&db).collection::<Document>("read-corrupt_head");
    let broken = heads
        .update_one(doc! {"_id": "x-7"}, doc! {"$set": {"ov": "seven"}})
        .await
        .unwrap();
    assert_eq!(broken.modified_count, 1);
    h.take_commands();

    let asked: Vec<&ItemId> = ids.iter().cycle().take(4 * ids.len()).collect();
    let read = join_all(
        asked
            .iter()
            .map(|id| h.engine.get_latest(&c, id, ReadOptions::default())),
    )
    .await;
    let commands = h.take_commands();
    // Every id of a batch exists here: the batch's cursor must still close without a `getMore`.
    assert!(commands.iter().all(|c| c == "find"), "{commands:?}");
    assert!(commands.len() < asked.len() / 4, "{commands:?}");
    for (id, got) in asked.iter().zip(read) {
        if id.as_str() == "x-7" {
            assert!(matches!(got, Err(Error::Corrupt(_))), "{got:?}");
        } else {
            assert_eq!(&got.unwrap().id, *id);
        }
    }
}

/// Reads dropped halfway (a client that hung up), whether sending their own `findOne` or waiting
/// for a batch, leave the collection's reads working: their places pass on.
#[tokio::test]
async fn reads_dropped_halfway_leave_the_lane_working() {
    use std::time::Duration;
    let h = support::mongo_s3(EngineSettings::default()).await;
    let c: CollectionName = "read-dropped".parse().unwrap();
    let who = Attribution::default();
    let id: ItemId = "d-1".parse().unwrap();
    h.engine.create(&c, Some(id.clone()), data(1, 0), &who).await.unwrap();
    h.take_commands();

    // More reads than may run at once: the first ones send their finds, the rest wait.
    let mut reads: Vec<_> = (0..6)
        .map(|_| Box::pin(h.engine.get_latest(&c, &id, ReadOptions::default())))
        .collect();
    for read in &mut reads {
        assert!(futures::poll!(read.as_mut()).is_pending());
    }
    drop(reads);

    // A guard against a hang, not a synchronisation: the read must simply complete.
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        h.engine.get_latest(&c, &id, ReadOptions::default()),
    )
    .await
    .expect("a read after dropped reads must not wait forever")
    .unwrap();
    assert_eq!(read.data["n"], json!(1));
    assert!(h.take_commands().iter().any(|c| c == "find"));
}

/// A batch whose reply is lost (mongod answered, then the connection broke, on the driver's
/// retry too) fails its readers with the error their own `findOne` would have met, never with
/// another read's data; reads sent alone meanwhile are answered, and the lane recovers.
#[tokio::test]
async fn a_batch_whose_reply_is_lost_fails_its_readers_like_a_lone_read() {
    use chronos::engine::Backend;
    let proxy = crate::mongo_proxy::ReplyDropper::start().await;
    let h = support::mongo_s3_at(&proxy.uri(), EngineSettings::default()).await;
    let c: CollectionName = "read-lost".parse().unwrap();
    let who = Attribution::default();
    let ids: Vec<ItemId> = (0..32).map(|i| format!("l-{i}").parse().unwrap()).collect();
    for (i, id) in ids.iter().enumerate() {
        h.engine.create(&c, Some(id.clone()), data(i, 0), &who).await.unwrap();
    }
    let read_all = || {
        join_all(
            ids.iter()
                .cycle()
                .take(2 * ids.len())
                .map(|id| h.engine.get_latest(&c, id, ReadOptions::default())),
        )
    };

    // Only a batch's `find` names `$in`: lone `findOne`s get through.
    proxy.drop_replies_to(b"$in\0".to_vec());
    let read = read_all().await;
    proxy.disarm();
    assert!(proxy.dropped() > 0, "a batch was sent and its reply lost");
    let mut failed = 0;
    for (id, got) in ids.iter().cycle().zip(read) {
        match got {
            Ok(record) => assert_eq!(record.data["n"], json!(id.as_str()[2..].parse::<usize>().unwrap())),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::Unavailable {
                            backend: Backend::Metadata,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the lost batch's readers were told");

    for (id, got) in ids.iter().cycle().zip(read_all().await) {
        assert_eq!(&got.unwrap().id, id);
    }
}
