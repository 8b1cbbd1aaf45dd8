//! The versioning core: every write makes an immutable version; reads only ever return the data
//! of the item (and version) they name. See `docs/design.md` for the write protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::envelope::{self, Decoded};
use super::error::{Error, Result};
use super::model::{
    Attribution, CollectionName, Content, Enrichment, Head, ItemId, Op, Record, RequestStamp, SYSTEM_KEY, State,
    SystemFields, Timestamp, VersionEntry, VersionTarget, WriteOutcome, metadata_name, now, parse_data, payload_key,
};
use super::query::Filter;
use super::settings::{CollectionMap, EngineSettings, QueueSettings};
use super::store::queue::QueueStore;
use super::store::{CommitError, HeadChange, Held, ListQuery, MetaStore, NewData, PayloadStore};

/// How many times a write whose commit failed transiently is redone from the start.
const COMMIT_ATTEMPTS: usize = 5;

/// Read options shared by the point reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Return deleted items (and delete versions) instead of `NotFound`.
    pub include_deleted: bool,
}

/// Where a write's data comes from.
pub(super) enum NewContent<'a> {
    Data(NewData),
    /// The previous version's data (a logical delete).
    KeepPrevious,
    /// The previous version's data with these patches merged in (enrichment).
    Merge(&'a [Map<String, Value>]),
}

/// What [`Engine::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// A filter in the safe subset (see [`Filter`]); `Value::Null` for none.
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

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub records: Vec<Record>,
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
    /// Manifests of pruned versions (the backups bucket); retention needs it.
    backups: Option<Arc<dyn PayloadStore>>,
    /// Content properties (the content bucket).
    content: Option<Arc<dyn PayloadStore>>,
    /// Writes that met a transient failure, kept for retry (the metadata store's queue).
    queue: Option<Arc<dyn QueueStore>>,
    settings: EngineSettings,
    /// Collections whose indexes this process has ensured (once each, never per write).
    prepared: Mutex<HashMap<CollectionName, Arc<OnceCell<()>>>>,
}

impl Engine {
    pub fn new(meta: Arc<dyn MetaStore>, payloads: Arc<dyn PayloadStore>, settings: EngineSettings) -> Self {
        Engine {
            database: super::model::DEFAULT_DATABASE.to_owned(),
            meta,
            payloads,
            backups: None,
            content: None,
            queue: None,
            settings,
            prepared: Mutex::new(HashMap::new()),
        }
    }

    /// Name the logical database (default `default`). Engines over shared buckets are built
    /// with [`Engine::for_database`], which also keeps their keys apart.
    pub fn with_database(mut self, database: &str) -> Self {
        self.database = database.to_owned();
        self
    }

    /// The logical database's key.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Attach the backups store (manifests of pruned versions).
    pub fn with_backups(mut self, backups: Arc<dyn PayloadStore>) -> Self {
        self.backups = Some(backups);
        self
    }

    /// Attach the content store (the content bucket).
    pub fn with_content(mut self, content: Arc<dyn PayloadStore>) -> Self {
        self.content = Some(content);
        self
    }

    /// Attach the retry queue (see [`super::queue`]).
    pub fn with_queue(mut self, queue: Arc<dyn QueueStore>) -> Self {
        self.queue = Some(queue);
        self
    }

    pub(super) fn queue(&self) -> Option<&Arc<dyn QueueStore>> {
        self.queue.as_ref()
    }

    pub(super) fn queue_settings(&self) -> &QueueSettings {
        &self.settings.queue
    }

    pub(super) fn content_store(&self) -> Option<&dyn PayloadStore> {
        self.content.as_deref()
    }

    pub(super) fn backups(&self) -> Option<Arc<dyn PayloadStore>> {
        self.backups.clone()
    }

    pub(super) fn backups_ref(&self) -> Option<&dyn PayloadStore> {
        self.backups.as_deref()
    }

    pub(super) fn payload_store(&self) -> &dyn PayloadStore {
        self.payloads.as_ref()
    }

    pub(super) fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
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

    /// Create an item at ov 0. With `id: None` a time-ordered id is generated.
    pub async fn create(
        &self,
        collection: &CollectionName,
        id: Option<ItemId>,
        data: Map<String, Value>,
        who: &Attribution,
    ) -> Result<(ItemId, WriteOutcome)> {
        let generated = id.is_none();
        let id = id.unwrap_or_else(ItemId::generate);
        self.create_as(collection, id, generated, data, who).await
    }

    /// [`Engine::create`] with the id chosen already; `generated` says the caller didn't name it
    /// (a retry under the same idempotency key without an id is then the same request).
    pub(super) async fn create_as(
        &self,
        collection: &CollectionName,
        id: ItemId,
        generated: bool,
        data: Map<String, Value>,
        who: &Attribution,
    ) -> Result<(ItemId, WriteOutcome)> {
        let named = (!generated).then_some(&id);
        let stamp = stamp(who, collection, "create", named, None, &data)?;
        let mut data = data;
        self.offload_content(collection, &id, &mut data).await?;
        let data = self.new_data(collection, data)?;
        self.write(
            collection,
            &id,
            Op::Create,
            None,
            NewContent::Data(data),
            None,
            who,
            stamp,
        )
        .await
    }

    /// Replace an item's data: ov + 1. `expected_ov: None` means last writer wins.
    pub async fn update(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        data: Map<String, Value>,
        expected_ov: Option<u64>,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        let stamp = stamp(who, collection, "update", Some(id), expected_ov, &data)?;
        let mut data = data;
        self.offload_content(collection, id, &mut data).await?;
        let data = self.new_data(collection, data)?;
        let (_, outcome) = self
            .write(
                collection,
                id,
                Op::Update,
                expected_ov,
                NewContent::Data(data),
                None,
                who,
                stamp,
            )
            .await?;
        Ok(outcome)
    }

    /// Logically delete an item: a new version marked deleted that keeps the last data.
    pub async fn delete(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        expected_ov: Option<u64>,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        let stamp = stamp(who, collection, "delete", Some(id), expected_ov, &Value::Null)?;
        let (_, outcome) = self
            .write(
                collection,
                id,
                Op::Delete,
                expected_ov,
                NewContent::KeepPrevious,
                None,
                who,
                stamp,
            )
            .await?;
        Ok(outcome)
    }

    /// Enrich an item: deep-merge `patches` in order into its latest data (see [`merge`]), as
    /// one new version. `function_id` is added to `_system.functionIds`. The merge happens while
    /// the item is held, so concurrent enrichments serialise and none of them is lost.
    ///
    /// [`merge`]: super::merge
    pub async fn enrich(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        patches: &[Map<String, Value>],
        enrichment: &Enrichment,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        if patches.is_empty() {
            return Err(Error::validation("patches", "at least one patch is needed"));
        }
        if let Some(f) = &enrichment.function_id
            && (f.is_empty() || f.len() > 256)
        {
            return Err(Error::validation("functionId", "must be 1-256 characters"));
        }
        let function_id = enrichment.function_id.clone();
        let body = serde_json::json!({"patches": patches, "functionId": function_id});
        let stamp = stamp(who, collection, "enrich", Some(id), enrichment.expected_ov, &body)?;
        let content = NewContent::Merge(patches);
        let (_, outcome) = self
            .write(
                collection,
                id,
                Op::Update,
                enrichment.expected_ov,
                content,
                function_id,
                who,
                stamp,
            )
            .await?;
        Ok(outcome)
    }

    /// The latest version of an item.
    pub async fn get_latest(&self, collection: &CollectionName, id: &ItemId, opts: ReadOptions) -> Result<Record> {
        let head = self.meta.head(collection, id).await?;
        let head = head.ok_or_else(|| not_found(collection, id))?;
        if head.deleted() && !opts.include_deleted {
            return Err(not_found(collection, id));
        }
        self.record_of_head(collection, head).await
    }

    async fn record_of_head(&self, collection: &CollectionName, head: Head) -> Result<Record> {
        let data = match &head.inline {
            Some(json) => parse_data(
                json,
                &head.checksum,
                &format_args!("{collection}/{} v{}", head.id, head.ov),
            )?,
            None => {
                self.load(collection, &head.id, head.payload(), &head.checksum)
                    .await?
                    .data
            }
        };
        Ok(Record {
            system: head.system(),
            id: head.id,
            ov: head.ov,
            cv: head.cv,
            write_id: head.write_id,
            data,
            payload_ref: head.payload_ref,
        })
    }

    /// List items by indexed metadata (the safe subset of [`Filter`]), in id order, paged.
    pub async fn list(&self, collection: &CollectionName, opts: &ListOptions) -> Result<ListPage> {
        use futures::{StreamExt, TryStreamExt};
        if opts.limit == 0 || opts.limit > 1000 {
            return Err(Error::validation("limit", "must be between 1 and 1000"));
        }
        let filter = Filter::parse(&opts.filter, &|p| self.is_indexed(collection, p))?;
        let query = ListQuery {
            filter,
            after_id: opts.after_id.clone(),
            limit: opts.limit,
            descending: opts.descending,
            include_deleted: opts.include_deleted,
        };
        let read = ReadOptions {
            include_deleted: opts.include_deleted,
        };
        // Payloads not inline are fetched concurrently, keeping the listing's order.
        let mut records: Vec<Record> = match opts.at {
            None => {
                let heads = self.meta.list_heads(collection, &query).await?;
                futures::stream::iter(heads)
                    .map(|h| self.record_of_head(collection, h))
                    .buffered(16)
                    .try_collect()
                    .await?
            }
            Some(at) => {
                let versions = self.list_as_of(collection, at, &query).await?;
                futures::stream::iter(versions)
                    .map(|v| self.record_of(collection, v, read))
                    .buffered(16)
                    .try_collect()
                    .await?
            }
        };
        if let Some(fields) = &opts.fields {
            for r in &mut records {
                r.data.retain(|k, _| fields.iter().any(|f| f == k));
            }
        }
        let next_after_id = (records.len() == opts.limit)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        Ok(ListPage { records, next_after_id })
    }

    /// Version `ov` of an item.
    pub async fn get_version(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        ov: u64,
        opts: ReadOptions,
    ) -> Result<Record> {
        let entry = match self.meta.version(collection, id, ov).await? {
            Some(entry) => Some(entry),
            None => self.pruned_version_here(collection, id, VersionTarget::Ov(ov)).await?,
        };
        let entry = entry.ok_or_else(|| Error::NotFound(format!("{collection}/{id} v{ov}")))?;
        self.record_of(collection, entry, opts).await
    }

    /// The version of an item that was current at `at`.
    pub async fn get_as_of(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        at: Timestamp,
        opts: ReadOptions,
    ) -> Result<Record> {
        // Pruned versions are always older than the ones left in the index, so the manifests
        // only need asking when the index has nothing that early.
        let entry = match self.meta.version_as_of(collection, id, at).await? {
            Some(entry) => Some(entry),
            None => self.pruned_version_here(collection, id, VersionTarget::At(at)).await?,
        };
        let entry = entry.ok_or_else(|| Error::NotFound(format!("{collection}/{id} as of {at}")))?;
        self.record_of(collection, entry, opts).await
    }

    /// A pruned version of an item that exists in this database: manifests of an item without a
    /// head here are never asked (they can only be another database's).
    async fn pruned_version_here(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<VersionEntry>> {
        if self.meta.head(collection, id).await?.is_none() {
            return Ok(None);
        }
        self.pruned_version(collection, id, target).await
    }

    /// The version index of an item, oldest first: up to `limit` entries after `after_ov`.
    pub async fn history(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
        opts: ReadOptions,
    ) -> Result<Vec<VersionEntry>> {
        if limit == 0 || limit > 1000 {
            return Err(Error::validation("limit", "must be between 1 and 1000"));
        }
        let head = self.meta.head(collection, id).await?;
        match head {
            Some(h) if !h.deleted() || opts.include_deleted => {}
            _ => return Err(not_found(collection, id)),
        }
        self.meta.versions(collection, id, after_ov, limit).await
    }

    async fn record_of(&self, collection: &CollectionName, entry: VersionEntry, opts: ReadOptions) -> Result<Record> {
        if entry.deleted && !opts.include_deleted {
            return Err(Error::NotFound(format!(
                "{collection}/{} v{} (deleted)",
                entry.id, entry.ov
            )));
        }
        let decoded = self
            .load(collection, &entry.id, entry.payload(), &entry.checksum)
            .await?;
        let mut system = decoded.system;
        if let Some(r) = &entry.payload_ref {
            // The envelope's `_system` is the referenced version's; insertedAt is the item's and
            // the same in both, the rest is this version's own.
            system.updated_at = entry.at;
            system.deleted = entry.deleted;
            system.deleted_at = entry.deleted.then_some(entry.at);
            system.function_ids = r.function_ids.clone();
        }
        Ok(Record {
            id: entry.id,
            ov: entry.ov,
            cv: entry.cv,
            write_id: entry.write_id,
            system,
            data: decoded.data,
            payload_ref: entry.payload_ref,
        })
    }

    /// The payload object `payload` = (ov, write id) of an item, checked to be exactly that
    /// version's envelope with this data checksum. A version appended by reference passes the
    /// (ov, write id) it refers to (`Head::payload`, `VersionEntry::payload`).
    pub(super) async fn load(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        payload: (u64, &str),
        checksum: &str,
    ) -> Result<Decoded> {
        let (ov, write_id) = payload;
        let key = payload_key(collection, id, ov, write_id);
        let bytes = self.payloads.get(&key).await?;
        // The index says this version exists: a missing payload is damage, not absence.
        let bytes = bytes.ok_or_else(|| Error::Corrupt(format!("payload {key} is missing")))?;
        let expected = envelope::Expected {
            database: &self.database,
            collection,
            id,
            ov,
            write_id,
            checksum,
        };
        envelope::decode(&bytes, &expected)
    }

    pub(super) fn map(&self, collection: &CollectionName) -> Option<&CollectionMap> {
        self.settings.collection_maps.get(collection.as_str())
    }

    /// Whether queries may filter on `property` in this collection.
    pub fn is_indexed(&self, collection: &CollectionName, property: &str) -> bool {
        match self.map(collection).and_then(CollectionMap::explicit) {
            Some(props) => props.iter().any(|p| p == property),
            None => metadata_name(property),
        }
    }

    pub(super) fn new_data(&self, collection: &CollectionName, mut data: Map<String, Value>) -> Result<NewData> {
        // `_system` is ours: a record read, edited and written back must not smuggle it in.
        data.remove(SYSTEM_KEY);
        let content = Content::new(&data)?;
        if content.json.len() > self.settings.max_payload_bytes {
            return Err(Error::TooLarge {
                actual: content.json.len(),
                limit: self.settings.max_payload_bytes,
            });
        }
        let map = self.map(collection);
        let meta = match map.and_then(CollectionMap::explicit) {
            Some(props) => explicit_meta(&data, props)?,
            None => default_meta(&data, self.settings.meta_max_string_bytes),
        };
        if let Some(map) = map {
            let missing: Vec<&str> = map
                .required_indexed
                .iter()
                .filter(|p| data.get(p.as_str()).is_none_or(Value::is_null))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(Error::validation(
                    "data",
                    format!("missing required indexed properties: {}", missing.join(", ")),
                ));
            }
        }
        let inline = content.json.len() <= self.settings.inline_max_bytes;
        Ok(NewData { content, meta, inline })
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

    /// The write protocol: hold the item in the metadata store, upload the payload under a key no
    /// other attempt can use, then commit head + version atomically. See `docs/design.md`.
    ///
    /// With an idempotency stamp, a write already made under its key is not made again: its
    /// first outcome is returned (`replayed`), also when a concurrent attempt with the same key
    /// wins the race — the store refuses a second version with the key.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        op: Op,
        expected_ov: Option<u64>,
        content: NewContent<'_>,
        function_id: Option<String>,
        who: &Attribution,
        stamp: Option<RequestStamp>,
    ) -> Result<(ItemId, WriteOutcome)> {
        self.prepare(collection).await?;
        self.once_per_key(collection, stamp.as_ref(), || async {
            let outcome = self
                .write_once(
                    collection,
                    id,
                    op,
                    expected_ov,
                    content,
                    function_id,
                    who,
                    stamp.as_ref(),
                )
                .await?;
            Ok((id.clone(), outcome))
        })
        .await
    }

    /// Make a write under an idempotency stamp at most once: a write already made under its key
    /// answers with its first outcome instead of running `attempt`, and so does an attempt that
    /// lost to a concurrent one with the same key.
    pub(super) async fn once_per_key<F, Fut>(
        &self,
        collection: &CollectionName,
        stamp: Option<&RequestStamp>,
        attempt: F,
    ) -> Result<(ItemId, WriteOutcome)>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(ItemId, WriteOutcome)>>,
    {
        let Some(stamp) = stamp else { return attempt().await };
        if let Some(first) = self.replay(collection, stamp).await? {
            return Ok(first);
        }
        match attempt().await {
            // A retry racing with its first attempt (or arriving after it) fails its
            // precondition or its key's uniqueness: if the key is recorded now, that is the answer.
            Err(e @ (Error::AlreadyExists(_) | Error::NotFound(_) | Error::VersionConflict { .. })) => {
                match self.replay(collection, stamp).await? {
                    Some(first) => Ok(first),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// The first outcome of the write made under this stamp's key, if there was one.
    async fn replay(
        &self,
        collection: &CollectionName,
        stamp: &RequestStamp,
    ) -> Result<Option<(ItemId, WriteOutcome)>> {
        let Some(v) = self.meta.version_by_request(collection, &stamp.key).await? else {
            return Ok(None);
        };
        if v.request.as_ref().is_some_and(|r| r.fingerprint != stamp.fingerprint) {
            return Err(Error::IdempotencyKeyReused(format!(
                "`{}` was already used for a different request (on {collection}/{}); use a new key",
                stamp.key, v.id
            )));
        }
        let outcome = WriteOutcome {
            ov: v.ov,
            cv: v.cv,
            at: v.at,
            replayed: true,
        };
        Ok(Some((v.id, outcome)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_once(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        op: Op,
        expected_ov: Option<u64>,
        content: NewContent<'_>,
        function_id: Option<String>,
        who: &Attribution,
        stamp: Option<&RequestStamp>,
    ) -> Result<WriteOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let write_id = uuid::Uuid::now_v7();
            let mut change = HeadChange {
                collection: collection.clone(),
                id: id.clone(),
                op,
                expected_ov,
                write_id: write_id.simple().to_string(),
                commit_by: super::store::rules::commit_deadline(&write_id, self.settings.orphan_grace),
                at: now(),
                data: match &content {
                    NewContent::Data(d) => Some(d.clone()),
                    NewContent::KeepPrevious | NewContent::Merge(_) => None,
                },
                function_id: function_id.clone(),
                request_key: stamp.map(|s| s.key.clone()),
            };
            let Held {
                previous,
                ov,
                cv,
                write: mut pending,
            } = self.meta.begin_write(change.clone()).await?;
            if let NewContent::Merge(patches) = &content {
                // The item is held: merging over its current data can't lose a concurrent write.
                let merged = match self.merged(collection, previous.as_ref(), patches).await {
                    Ok(d) => d,
                    Err(e) => {
                        pending.abort().await;
                        return Err(e);
                    }
                };
                if let Err(e) = pending.set_data(merged.clone()).await {
                    pending.abort().await;
                    return Err(e);
                }
                change.data = Some(merged);
            }
            let prepared = match self.version_for(&change, previous.as_ref(), ov, cv, who, stamp).await {
                Ok(p) => p,
                Err(e) => {
                    pending.abort().await;
                    return Err(e);
                }
            };
            let (entry, body) = prepared;
            let key = payload_key(collection, id, ov, &change.write_id);
            if let Err(e) = self.payloads.put(&key, Bytes::from(body)).await {
                pending.abort().await;
                return Err(e);
            }
            let outcome = WriteOutcome {
                ov,
                cv,
                at: entry.at,
                replayed: false,
            };
            match pending.commit(entry).await {
                Ok(()) => return Ok(outcome),
                Err(CommitError::NotCommitted { error, retry }) => {
                    // Our key is unique to this attempt, so removing it can't touch anyone else's.
                    if let Err(e) = self.payloads.delete(&key).await {
                        tracing::warn!(%key, error = %e, "could not remove the payload of an aborted write; scrub will find it");
                    }
                    if !retry || attempt >= COMMIT_ATTEMPTS {
                        return Err(error);
                    }
                }
                Err(CommitError::Unknown(error)) => {
                    // The commit may have happened: the payload must stay.
                    tracing::warn!(%key, %error, "commit outcome unknown; payload kept");
                    return Err(Error::OutcomeUnknown(error.to_string()));
                }
            }
        }
    }

    async fn merged(
        &self,
        collection: &CollectionName,
        previous: Option<&Head>,
        patches: &[Map<String, Value>],
    ) -> Result<NewData> {
        let previous = previous.ok_or_else(|| Error::Corrupt("an enrichment needs a previous version".into()))?;
        let data = self.record_of_head(collection, previous.clone()).await?.data;
        // Merging megabytes is CPU work: off the runtime's threads, so other requests go on.
        let patches = patches.to_vec();
        let mut data = tokio::task::spawn_blocking(move || {
            let mut data = data;
            for patch in &patches {
                super::merge::merge_object(&mut data, patch);
            }
            data
        })
        .await
        .map_err(|e| Error::Corrupt(format!("the merge did not finish: {e}")))?;
        self.offload_content(collection, &previous.id, &mut data).await?;
        self.new_data(collection, data)
    }

    /// Build the version entry and payload of a write once the store has told us the previous head.
    async fn version_for(
        &self,
        change: &HeadChange,
        previous: Option<&Head>,
        ov: u64,
        cv: u64,
        who: &Attribution,
        stamp: Option<&RequestStamp>,
    ) -> Result<(VersionEntry, Vec<u8>)> {
        let collection = &change.collection;
        // Per item, time never runs backwards even if replicas' clocks disagree slightly.
        let at = previous.map_or(change.at, |p| p.updated_at.max(change.at));
        let (content, meta) = match (&change.data, previous) {
            (Some(d), _) => (d.content.clone(), d.meta.clone()),
            (None, Some(p)) => {
                let json = match &p.inline {
                    Some(json) => json.clone(),
                    None => self.load(collection, &p.id, p.payload(), &p.checksum).await?.data_json,
                };
                (Content::from_json(json), p.meta.clone())
            }
            (None, None) => {
                return Err(Error::Corrupt("a write without data needs a previous version".into()));
            }
        };
        let deleted = change.op == Op::Delete;
        let mut function_ids = previous.map(|p| p.function_ids.clone()).unwrap_or_default();
        if let Some(f) = &change.function_id
            && !function_ids.contains(f)
        {
            function_ids.push(f.clone());
        }
        let system = SystemFields {
            inserted_at: previous.map_or(at, |p| p.inserted_at),
            updated_at: at,
            deleted_at: deleted.then_some(at),
            deleted,
            function_ids,
            state: State::New,
        };
        let entry = VersionEntry {
            id: change.id.clone(),
            ov,
            cv,
            op: change.op,
            at,
            actor: who.actor.clone(),
            reason: who.reason.clone(),
            write_id: change.write_id.clone(),
            size: content.size(),
            checksum: content.checksum.clone(),
            meta,
            deleted,
            request: stamp.cloned(),
            payload_ref: None,
        };
        let body = envelope::encode(&self.database, collection, &entry, &system, &content.json)?;
        Ok((entry, body))
    }
}

/// The idempotency stamp of a write whose caller gave a key: the key and a fingerprint of what
/// was asked (operation, item, precondition and body), so the same key can't be replayed for a
/// different request.
pub(super) fn stamp(
    who: &Attribution,
    collection: &CollectionName,
    op: &str,
    id: Option<&ItemId>,
    expected_ov: Option<u64>,
    body: &impl serde::Serialize,
) -> Result<Option<RequestStamp>> {
    use sha2::{Digest, Sha256};
    let Some(key) = &who.request_key else { return Ok(None) };
    let asked = serde_json::json!({
        "op": op,
        "collection": collection.as_str(),
        "id": id.map(ItemId::as_str),
        "expectedOv": expected_ov,
        "body": body,
    });
    let bytes = serde_json::to_vec(&asked).map_err(|e| Error::validation("data", e.to_string()))?;
    Ok(Some(RequestStamp {
        key: key.clone(),
        fingerprint: hex::encode(Sha256::digest(&bytes)),
    }))
}

fn not_found(collection: &CollectionName, id: &ItemId) -> Error {
    Error::NotFound(format!("{collection}/{id}"))
}

/// With no collection map, every top-level property whose value is a scalar (or an array of
/// scalars) becomes indexed metadata. Objects and very long strings are left out: the query
/// subset can't use them and they would bloat the head.
fn default_meta(data: &Map<String, Value>, max_string: usize) -> Map<String, Value> {
    let fits = |v: &Value| match v {
        Value::String(s) => s.len() <= max_string,
        Value::Object(_) | Value::Array(_) => false,
        _ => true,
    };
    data.iter()
        .filter(|(k, _)| metadata_name(k))
        .filter(|(_, v)| match v {
            Value::Array(items) => items.len() <= 64 && items.iter().all(fits),
            other => fits(other),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// With a collection map, exactly the listed properties are indexed metadata; each must be a
/// scalar or an array of scalars, since that is what queries can compare.
fn explicit_meta(data: &Map<String, Value>, props: &[String]) -> Result<Map<String, Value>> {
    let mut meta = Map::new();
    for p in props {
        let Some(v) = data.get(p) else { continue };
        let scalar = |v: &Value| !matches!(v, Value::Object(_) | Value::Array(_));
        let ok = match v {
            Value::Array(items) => items.iter().all(scalar),
            other => scalar(other),
        };
        if !ok {
            return Err(Error::validation(
                p.clone(),
                "an indexed property must be a string, number, boolean, null or an array of those",
            ));
        }
        meta.insert(p.clone(), v.clone());
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_meta_keeps_scalars_only() {
        let data = json!({
            "a": 1, "b": "x", "c": [1, "y"], "d": {"e": 1}, "$x": 1, "f.g": 2, "h": "z".repeat(2000),
            "i": [{"j": 1}], "k": null
        });
        let meta = default_meta(data.as_object().unwrap(), 1024);
        assert_eq!(meta.keys().collect::<Vec<_>>(), ["a", "b", "c", "k"]);
    }
}
