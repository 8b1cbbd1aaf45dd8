//! Commit signals on MongoDB: one change stream per collection per store (per engine process),
//! on the inserts into the collection's version index, shared by every watcher of that
//! collection, so a commit by any engine process wakes them. Opened by the first watcher, closed
//! when the last one goes. A change stream only reports majority-committed changes, the ones the
//! feed's majority reads return.
//!
//! If the stream breaks (failover, network), it is opened again after a pause and the watchers
//! are woken once: they re-read the index, which the stream only ever pointed them to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{Document, doc};
use futures::StreamExt;
use mongodb::Collection;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ChangeStreamEvent;
use tokio::sync::{Mutex, watch};

use super::docs::get_u64;
use super::{MongoMetaStore, map_err};
use crate::engine::error::Result;
use crate::engine::model::CollectionName;
use crate::engine::store::signal::CommitWatch;

type Streams = Mutex<HashMap<CollectionName, watch::Sender<u64>>>;

/// The open change streams of a store, per collection.
#[derive(Default)]
pub(super) struct Watches {
    streams: Arc<Streams>,
}

impl MongoMetaStore {
    pub(super) async fn commits_of(&self, c: &CollectionName) -> Result<CommitWatch> {
        let mut streams = self.watches.streams.lock().await;
        if let Some(sender) = streams.get(c) {
            return Ok(sender.subscribe());
        }
        // Opened before the watch is handed out: the caller's next read of the index sees
        // everything committed before this point, and the stream reports everything after.
        let versions = self.versions_coll(c);
        let stream = open(&versions).await.map_err(map_err)?;
        let (sender, watch) = watch::channel(0);
        streams.insert(c.clone(), sender.clone());
        tokio::spawn(relay(
            c.clone(),
            versions,
            stream,
            sender,
            Arc::downgrade(&self.watches.streams),
        ));
        Ok(watch)
    }
}

async fn open(versions: &Collection<Document>) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
    versions
        .watch()
        .pipeline([
            doc! {"$match": {"operationType": "insert"}},
            doc! {"$project": {"operationType": 1, "fullDocument.cv": 1}},
        ])
        .await
}

/// Raise the collection's signal for every insert the stream reports, until nobody watches.
async fn relay(
    c: CollectionName,
    versions: Collection<Document>,
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
    sender: watch::Sender<u64>,
    streams: std::sync::Weak<Streams>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(e)) => {
                    let cv = e.full_document.as_ref().and_then(|d| get_u64(d, "cv").ok()).unwrap_or(0);
                    sender.send_modify(|highest| *highest = (*highest).max(cv));
                    pause = Duration::from_millis(100);
                }
                broken => {
                    let error = match broken {
                        Some(Err(e)) => e.to_string(),
                        _ => "the stream ended".to_owned(),
                    };
                    tracing::warn!(collection = %c, %error, "change stream broke; opening it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                    if let Ok(again) = open(&versions).await {
                        stream = again;
                        // Whatever happened while it was down: look again.
                        sender.send_modify(|_| {});
                    }
                }
            },
            () = sender.closed() => {
                let Some(streams) = streams.upgrade() else { return };
                let mut streams = streams.lock().await;
                // A watcher may have come while this one waited for the lock.
                if sender.receiver_count() == 0 {
                    streams.remove(&c);
                    return;
                }
            }
        }
    }
}
