//! The versioning core: every write makes an immutable version; reads only ever return the data
//! of the item (and version) they name. See `docs/design.md` for the write protocol.
//!
//! This file holds the [`Engine`], how it is built, and what its parts share; the parts: `write`
//! (the write protocol), `enrich` (merged writes), `read` (the reads), `submit` (the front door: a write now, or kept by the
//! retry queue, and the queue's worker), `stamp` (idempotency keys).

mod enrich;
mod read;
pub(crate) mod stamp;
pub mod submit;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::engine::content::Contents;
use crate::engine::error::Result;
use crate::engine::ledger::Ledger;
use crate::engine::model::{
    CollectionName, ItemId, Op, PayloadRef, Record, RequestStamp, SystemFields, Timestamp, metadata_name, parse_checked,
};
use crate::engine::pack::packer::Packer;
use crate::engine::retention::manifests::Manifests;
use crate::engine::retry::Retry;
use crate::engine::settings::{CollectionMap, EngineSettings};
use crate::engine::store::queue::QueueStore;
use crate::engine::store::{MetaStore, NewData, PayloadStore};

/// Read options shared by the point reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Return deleted items (and delete versions) instead of `NotFound`.
    pub include_deleted: bool,
}

/// What one write does to its item: the operation, its precondition, where its data comes from,
/// and what it records (the enrichment's function id, the caller's idempotency stamp).
pub(crate) struct WriteIntent {
    pub op: Op,
    /// Optimistic lock: the write applies only if the head is at this ov. `None` = last writer wins.
    pub expected_ov: Option<u64>,
    pub content: NewContent,
    pub function_id: Option<String>,
    pub stamp: Option<RequestStamp>,
}

/// Where a write's data comes from.
pub(crate) enum NewContent {
    Data(NewData),
    /// The previous version's data (a logical delete).
    KeepPrevious,
}

/// A jittered exponential pause, 1 ms … 64 ms, before a write that lost its item to a concurrent
/// writer looks again: the winner's hold lasts about one payload upload.
pub(crate) async fn contention_backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % cap;
    tokio::time::sleep(std::time::Duration::from_millis(1 + jitter)).await;
}

/// What [`Engine::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// A filter in the safe subset (see [`Filter`](crate::engine::query::Filter)); `Value::Null` for none.
    pub filter: Value,
    /// Continue after this id (from [`ListPage::next_after_id`]).
    pub after_id: Option<ItemId>,
    /// 1 to 1000.
    pub limit: usize,
    pub descending: bool,
    pub include_deleted: bool,
    /// List the collection as it was at this time.
    pub at: Option<Timestamp>,
    /// Keep only these top-level properties of the data.
    pub fields: Option<Vec<String>>,
}

/// A record whose data is still its stored JSON text: checked against the version's checksum (so
/// it is exactly the JSON that was written), not parsed. For readers that only pass the data on,
/// such as the API's plain reads, which would otherwise build a tree of it only to serialise it
/// again; [`RecordText::parse`] makes the [`Record`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordText {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    pub write_id: String,
    pub system: SystemFields,
    pub data_json: String,
    pub payload_ref: Option<PayloadRef>,
}

impl RecordText {
    pub fn parse(self, collection: &CollectionName) -> Result<Record> {
        let data = parse_checked(&self.data_json, &format_args!("{collection}/{} v{}", self.id, self.ov))?;
        Ok(Record {
            id: self.id,
            ov: self.ov,
            cv: self.cv,
            write_id: self.write_id,
            system: self.system,
            data,
            payload_ref: self.payload_ref,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage<R = Record> {
    pub records: Vec<R>,
    /// Pass as `after_id` for the next page; `None` on the last page.
    pub next_after_id: Option<ItemId>,
}

/// One logical database: a metadata store and a payload store.
pub struct Engine {
    /// The logical database's key: its payload envelopes and manifests name it, and reads
    /// refuse those of another database.
    database: String,
    meta: Arc<dyn MetaStore>,
    payloads: Arc<dyn PayloadStore>,
    /// Manifests of pruned versions (in the backups bucket; they name `database`, so the
    /// builder keeps the two in step); retention needs them.
    manifests: Manifests,
    /// Content properties, offloaded to and resolved from the content bucket.
    contents: Contents,
    /// Writes that met a transient failure, kept for retry (the metadata store's queue).
    retry: Retry,
    /// What this process committed, written to the payload bucket so the metadata can be rebuilt
    /// from the buckets (it names `database`, so the builder keeps the two in step).
    ledger: Ledger,
    /// Gathers the payloads of writes made together into packs (with `settings.pack_writes`).
    packer: Packer,
    settings: EngineSettings,
    /// Collections whose indexes this process has ensured (once each, never per write).
    prepared: Mutex<HashMap<CollectionName, Arc<OnceCell<()>>>>,
    /// What this process's change-feed readers share per collection.
    feeds: crate::engine::feed::hub::Feeds,
}

impl Engine {
    pub fn new(meta: Arc<dyn MetaStore>, payloads: Arc<dyn PayloadStore>, settings: EngineSettings) -> Self {
        Engine {
            database: super::model::DEFAULT_DATABASE.to_owned(),
            meta,
            manifests: Manifests::new(super::model::DEFAULT_DATABASE, None),
            contents: Contents::default(),
            retry: Retry::new(None, settings.queue.clone()),
            ledger: Ledger::new(super::model::DEFAULT_DATABASE, payloads.clone(), settings.ledger_flush),
            packer: Packer::new(super::model::DEFAULT_DATABASE, payloads.clone(), settings.pack_writes),
            payloads,
            settings,
            prepared: Mutex::new(HashMap::new()),
            feeds: Default::default(),
        }
    }

    /// Name the logical database (default `default`). Engines over shared buckets are built
    /// with [`Engine::for_database`], which also keeps their keys apart.
    pub fn with_database(mut self, database: &str) -> Self {
        self.database = database.to_owned();
        self.manifests = Manifests::new(database, self.manifests.backups().cloned());
        self.ledger = Ledger::new(database, self.payloads.clone(), self.settings.ledger_flush);
        self.packer = Packer::new(database, self.payloads.clone(), self.settings.pack_writes);
        self
    }

    /// The logical database's key.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Attach the backups store (manifests of pruned versions).
    pub fn with_backups(mut self, backups: Arc<dyn PayloadStore>) -> Self {
        self.manifests = Manifests::new(&self.database, Some(backups));
        self
    }

    /// Attach the content store (the content bucket).
    pub fn with_content(mut self, content: Arc<dyn PayloadStore>) -> Self {
        self.contents = Contents::new(content);
        self
    }

    /// Attach the retry queue (see [`crate::engine::retry`]).
    pub fn with_queue(mut self, queue: Arc<dyn QueueStore>) -> Self {
        self.retry = Retry::new(Some(queue), self.settings.queue.clone());
        self
    }

    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Write the versions this process committed to the ledger now, instead of within the next
    /// second: at shutdown, and before rebuilding or verifying from the buckets.
    pub async fn flush_ledger(&self) -> Result<()> {
        self.ledger.flush().await
    }

    pub(super) fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    pub(super) fn payload_store(&self) -> &dyn PayloadStore {
        self.payloads.as_ref()
    }

    pub(super) fn retry(&self) -> &Retry {
        &self.retry
    }

    /// The content bucket, if the database has one.
    pub(super) fn content_store(&self) -> Option<&dyn PayloadStore> {
        self.contents.store()
    }

    pub(super) fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    pub(crate) fn feeds(&self) -> &crate::engine::feed::hub::Feeds {
        &self.feeds
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Check that the backends are reachable and fit for use.
    pub async fn ping(&self) -> Result<()> {
        self.meta.ping().await?;
        self.payloads.list("", None, 1).await?;
        Ok(())
    }

    pub(super) fn map(&self, collection: &CollectionName) -> Option<&CollectionMap> {
        self.settings.collection_maps.get(collection.as_str())
    }

    /// Whether the collection keeps some properties in the content bucket: a read that shows
    /// content inline must then resolve them in the record's data.
    pub fn has_content_props(&self, collection: &CollectionName) -> bool {
        self.map(collection).is_some_and(|m| !m.content_props.is_empty())
    }

    /// Whether queries may filter on `property` in this collection.
    pub fn is_indexed(&self, collection: &CollectionName, property: &str) -> bool {
        match self.map(collection).and_then(CollectionMap::explicit) {
            Some(props) => props.iter().any(|p| p == property),
            None => metadata_name(property),
        }
    }

    /// Create or update a collection's indexes from its current collection map, now (the
    /// operator calls this when a ChronosCollection changes; writes do it once by themselves).
    pub async fn ensure_indexes(&self, collection: &CollectionName) -> Result<Vec<String>> {
        let indexed = self
            .map(collection)
            .and_then(CollectionMap::explicit)
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        self.meta.prepare_collection(collection, &indexed).await?;
        Ok(indexed.iter().map(|p| format!("meta_{p}")).collect())
    }

    pub(super) async fn prepare(&self, collection: &CollectionName) -> Result<()> {
        let cell = {
            let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            prepared.entry(collection.clone()).or_default().clone()
        };
        let indexed = self
            .map(collection)
            .and_then(CollectionMap::explicit)
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        cell.get_or_try_init(|| self.meta.prepare_collection(collection, &indexed))
            .await
            .map(|_| ())
    }
}
