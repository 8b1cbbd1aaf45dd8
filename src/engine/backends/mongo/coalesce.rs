//! Concurrent head reads of one collection share one `find`.
//!
//! Every read of an item's head (a latest read, and the head a history or as-of read starts
//! from) is a `findOne` by `_id`. Under load most of its cost is per command, not per document:
//! mongod parsing and planning it, the driver building, sending and decoding it, a connection
//! checked out for it. So reads of one collection that arrive while [`MAX_IN_FLIGHT`] of its
//! finds are already running wait, and each find that completes hands its place to all the
//! reads waiting then, which share one `find` of `{_id: {$in: [...]}}`: `k` reads cost one
//! command instead of `k`.
//!
//! A read arriving while fewer finds are running sends its own `findOne` at once, so a lone read
//! costs what it did, and two concurrent ones still run side by side (against a distant server,
//! one read need not wait out another's round trip).
//!
//! **Consistency is a lone read's.** A waiting read joins only a find sent after it was queued,
//! never one already on the wire, so it sees every write acknowledged before it was asked, with
//! the same read concern. Each read gets the head whose `_id` is its own id, or none: the batch
//! is matched by id, never by position.
//!
//! **Faults are a lone read's too.** A batch's `find` is one attempt, retried once by the driver
//! like a `findOne`; if it fails, each of its readers gets that error, as a lone read would (a
//! second attempt each would only double the wait in an outage). A head that does not decode
//! fails its own read only. A reader that goes away (its request was dropped) is simply not
//! answered; the batch it was in still runs for the others, in a task of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bson::{RawDocumentBuf, doc};
use futures::TryStreamExt;
use tokio::sync::oneshot;

use super::{MongoMetaStore, lock};
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, Head, ItemId};

/// Finds of one collection's heads running at once before reads start to wait for a batch.
///
/// One would make the biggest batches, but would also serialise reads on a server that is far
/// away rather than busy (every read waiting out another's round trip first); two keep a second
/// find on the wire while the first one's answers travel back. Measured at 32 clients on a
/// CPU-bound box (`docs/benchmarks.md`), when each batch still cost a `getMore` too: 1 → 0.11
/// commands per read, 2 → 0.20, 4 → 0.36, and HTTP reads at 0.86–0.95× the raw `findOne`'s rate
/// with 1, 0.80–0.88× with 2, 0.70–0.79× with 4.
const MAX_IN_FLIGHT: usize = 2;

/// At most this many reads share one `find` (its `$in` list and its reply stay small).
const MAX_BATCH: usize = 256;

struct Waiter {
    id: ItemId,
    /// What its own `findOne` would have answered.
    reply: oneshot::Sender<Result<Option<Head>>>,
}

#[derive(Default)]
struct Lane {
    /// Finds running for this collection: lone ones and batches.
    in_flight: usize,
    /// Reads waiting for the next batch; only ever non-empty while `in_flight == MAX_IN_FLIGHT`.
    waiting: Vec<Waiter>,
}

/// The read lanes of one metadata store: one per collection read from.
#[derive(Default)]
pub(super) struct HeadReads {
    lanes: Mutex<HashMap<CollectionName, Arc<Mutex<Lane>>>>,
}

impl HeadReads {
    fn lane(&self, c: &CollectionName) -> Arc<Mutex<Lane>> {
        let mut lanes = lock(&self.lanes);
        match lanes.get(c) {
            Some(lane) => lane.clone(),
            None => lanes.entry(c.clone()).or_default().clone(),
        }
    }

    /// The head of `id`, read alone or in a batch with other reads of `c`.
    pub(super) async fn head(&self, store: &MongoMetaStore, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        let lane = self.lane(c);
        let waiting = {
            let mut l = lock(&lane);
            if l.in_flight < MAX_IN_FLIGHT {
                l.in_flight += 1;
                None
            } else {
                let (reply, answer) = oneshot::channel();
                l.waiting.push(Waiter { id: id.clone(), reply });
                Some(answer)
            }
        };
        match waiting {
            None => {
                // Hand the slot on when done, even if this read is dropped halfway.
                let _slot = Slot {
                    store,
                    collection: c,
                    lane,
                };
                store.find_head(c, id).await
            }
            // Unanswered only if the batch's task died: then read alone.
            Some(answer) => match answer.await {
                Ok(answer) => answer,
                Err(_) => store.find_head(c, id).await,
            },
        }
    }
}

/// A lone read's place among the lane's finds. When it is let go, the waiting reads (if any)
/// take it over as a batch, run in a task of their own so that the lone read answers at once.
struct Slot<'a> {
    store: &'a MongoMetaStore,
    collection: &'a CollectionName,
    lane: Arc<Mutex<Lane>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let Some(batch) = next_batch(&self.lane) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (store, c, lane) = (self.store.clone(), self.collection.clone(), self.lane.clone());
                runtime.spawn(run_batches(store, c, lane, batch));
            }
            // No runtime to run the batch on: its readers read alone (their replies are dropped).
            Err(_) => {
                drop(batch);
                lock(&self.lane).in_flight -= 1;
            }
        }
    }
}

/// Take the waiting reads as the next batch, keeping the finishing find's place for it; or, if
/// none wait, give the place up.
fn next_batch(lane: &Mutex<Lane>) -> Option<Vec<Waiter>> {
    let mut l = lock(lane);
    if l.waiting.is_empty() {
        l.in_flight -= 1;
        return None;
    }
    let take = l.waiting.len().min(MAX_BATCH);
    Some(l.waiting.drain(..take).collect())
}

/// Run batches until no read waits.
async fn run_batches(store: MongoMetaStore, c: CollectionName, lane: Arc<Mutex<Lane>>, mut batch: Vec<Waiter>) {
    loop {
        store.answer_batch(&c, batch).await;
        match next_batch(&lane) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

impl MongoMetaStore {
    /// One `findOne` of a head.
    pub(super) async fn find_head(&self, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        let found = self
            .raw_heads(c)
            .find_one(doc! {"_id": id.as_str()})
            .await
            .map_err(super::map_err)?;
        found.map(|d| super::docs::head_from_raw(id, &d)).transpose()
    }

    /// Fetch the heads of a batch with one `find` and answer each reader with its own.
    async fn answer_batch(&self, c: &CollectionName, batch: Vec<Waiter>) {
        let mut ids: Vec<&str> = batch.iter().map(|w| w.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let found: Result<Vec<RawDocumentBuf>, _> = match self
            .raw_heads(c)
            .find(doc! {"_id": {"$in": &ids}})
            // With the limit the server closes the cursor with its first batch: no `getMore`.
            .limit(ids.len() as i64)
            .batch_size(ids.len() as u32)
            .await
        {
            Ok(cursor) => cursor.try_collect().await,
            Err(e) => Err(e),
        };
        let docs = match found {
            Ok(docs) => docs,
            Err(e) => {
                for w in batch {
                    let _ = w.reply.send(Err(super::map_err(e.clone())));
                }
                return;
            }
        };
        let by_id: HashMap<&str, &RawDocumentBuf> =
            docs.iter().filter_map(|d| Some((d.get_str("_id").ok()?, d))).collect();
        for w in batch {
            let answer = by_id
                .get(w.id.as_str())
                .map(|d| super::docs::head_from_raw(&w.id, d))
                .transpose();
            let _ = w.reply.send(answer);
        }
    }
}
