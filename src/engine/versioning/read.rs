//! Reads: the latest record, a version by ov or by time (from the index, or from a retention
//! manifest once pruned), history and listings, each returning only the data of the item and
//! version it names.

use std::time::Duration;

use bytes::Bytes;

use super::{Engine, ListOptions, ListPage, ReadOptions, RecordText};
use crate::engine::content::no_presign;
use crate::engine::envelope::{self, Decoded, DecodedText};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, PayloadLoc, Record, VersionEntry, VersionTarget, check_data};
use crate::engine::query::Filter;
use crate::engine::settings::ContentMode;
use crate::engine::store::ListQuery;

impl Engine {
    /// The latest version of an item.
    pub async fn get_latest(&self, collection: &CollectionName, id: &ItemId, opts: ReadOptions) -> Result<Record> {
        self.get_latest_text(collection, id, opts).await?.parse(collection)
    }

    /// [`Engine::get_latest`], the data left as its stored text.
    pub async fn get_latest_text(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        opts: ReadOptions,
    ) -> Result<RecordText> {
        let head = self.meta.head(collection, id).await?;
        let head = head.ok_or_else(|| not_found(collection, id))?;
        if head.erased() {
            return Err(Error::Erased(format!("{collection}/{id}")));
        }
        if head.deleted() && !opts.include_deleted {
            return Err(not_found(collection, id));
        }
        self.text_of_head(collection, head).await
    }

    pub(super) async fn record_of_head(&self, collection: &CollectionName, head: Head) -> Result<Record> {
        self.text_of_head(collection, head).await?.parse(collection)
    }

    async fn text_of_head(&self, collection: &CollectionName, mut head: Head) -> Result<RecordText> {
        let data_json = match head.inline.take() {
            Some(json) => {
                check_data(
                    &json,
                    &head.checksum,
                    &format_args!("{collection}/{} v{}", head.id, head.ov),
                )?;
                json
            }
            None => {
                self.load_text(collection, &head.id, head.payload(), &head.checksum)
                    .await?
                    .data_json
            }
        };
        // A reference counts only next to the write that made it (see `Head::payload`): a later
        // write that knows nothing of references leaves a stale copy, which no reader must see.
        let payload_ref = head.payload_ref.clone().filter(|r| r.of == head.write_id);
        Ok(RecordText {
            system: head.system(),
            id: head.id,
            ov: head.ov,
            cv: head.cv,
            write_id: head.write_id,
            data_json,
            payload_ref,
        })
    }

    /// List items by indexed metadata (the safe subset of [`Filter`]), in id order, paged.
    pub async fn list(&self, collection: &CollectionName, opts: &ListOptions) -> Result<ListPage> {
        let page = self.list_text(collection, opts).await?;
        let mut records = page
            .records
            .into_iter()
            .map(|r| r.parse(collection))
            .collect::<Result<Vec<Record>>>()?;
        if let Some(fields) = &opts.fields {
            for r in &mut records {
                r.data.retain(|k, _| fields.iter().any(|f| f == k));
            }
        }
        Ok(ListPage {
            records,
            next_after_id: page.next_after_id,
        })
    }

    /// [`Engine::list`], each record's data left as its stored text (`fields` is not applied).
    pub async fn list_text(&self, collection: &CollectionName, opts: &ListOptions) -> Result<ListPage<RecordText>> {
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
        let (listed, last_listed): (usize, Option<ItemId>);
        // Payloads not inline are fetched concurrently, keeping the listing's order.
        let records: Vec<RecordText> = match opts.at {
            None => {
                let heads = self.meta.list_heads(collection, &query).await?;
                // An erased item has nothing to show (it is listed with deleted ones, as a
                // tombstone head reads as deleted); the page still ends where the store's did.
                (listed, last_listed) = (heads.len(), heads.last().map(|h| h.id.clone()));
                futures::stream::iter(heads.into_iter().filter(|h| !h.erased()))
                    .map(|h| self.text_of_head(collection, h))
                    .buffered(16)
                    .try_collect()
                    .await?
            }
            Some(at) => {
                let versions = self.list_as_of(collection, at, &query).await?;
                (listed, last_listed) = (versions.len(), versions.last().map(|v| v.id.clone()));
                futures::stream::iter(versions)
                    .map(|v| self.text_of(collection, v, read))
                    .buffered(16)
                    .try_collect()
                    .await?
            }
        };
        let next_after_id = (listed == opts.limit).then_some(last_listed).flatten();
        Ok(ListPage { records, next_after_id })
    }

    /// The version of an item that `target` names: the one with that ov, or the one current at
    /// that time.
    pub async fn get_at(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
        opts: ReadOptions,
    ) -> Result<Record> {
        self.get_at_text(collection, id, target, opts).await?.parse(collection)
    }

    /// [`Engine::get_at`], the data left as its stored text.
    pub async fn get_at_text(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
        opts: ReadOptions,
    ) -> Result<RecordText> {
        let entry = self.version_entry(collection, id, target).await?.ok_or_else(|| {
            Error::NotFound(match target {
                VersionTarget::Ov(ov) => format!("{collection}/{id} v{ov}"),
                VersionTarget::At(at) => format!("{collection}/{id} as of {at}"),
            })
        })?;
        self.text_of(collection, entry, opts).await
    }

    /// The entry of the version `target` names: from the index or, once pruned, a manifest.
    pub(crate) async fn version_entry(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<VersionEntry>> {
        // Pruned versions are always older than the ones left in the index, so the manifests
        // only need asking when the index has nothing that early.
        match self.indexed_version(collection, id, target).await? {
            Some(entry) => Ok(Some(entry)),
            None => self.pruned_version_here(collection, id, target).await,
        }
    }

    /// The version `target` names as the index has it (`None` once pruned, or never written).
    pub(crate) async fn indexed_version(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<VersionEntry>> {
        match target {
            VersionTarget::Ov(ov) => self.meta.version(collection, id, ov).await,
            VersionTarget::At(at) => self.meta.version_as_of(collection, id, at).await,
        }
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
        self.manifests.version(collection, id, target).await
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
            Some(h) if h.erased() => return Err(Error::Erased(format!("{collection}/{id}"))),
            Some(h) if !h.deleted() || opts.include_deleted => {}
            _ => return Err(not_found(collection, id)),
        }
        self.meta.versions(collection, id, after_ov, limit).await
    }

    async fn text_of(&self, collection: &CollectionName, entry: VersionEntry, opts: ReadOptions) -> Result<RecordText> {
        if entry.erased() {
            return Err(Error::Erased(format!("{collection}/{} v{}", entry.id, entry.ov)));
        }
        if entry.deleted && !opts.include_deleted {
            return Err(Error::NotFound(format!(
                "{collection}/{} v{} (deleted)",
                entry.id, entry.ov
            )));
        }
        let decoded = self
            .load_text(collection, &entry.id, entry.payload(), &entry.checksum)
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
        Ok(RecordText {
            id: entry.id,
            ov: entry.ov,
            cv: entry.cv,
            write_id: entry.write_id,
            system,
            data_json: decoded.data_json,
            payload_ref: entry.payload_ref,
        })
    }

    /// Show a record's content properties as `mode` says.
    pub async fn resolve_content(
        &self,
        collection: &CollectionName,
        record: &mut Record,
        mode: ContentMode,
    ) -> Result<()> {
        self.contents
            .resolve(self.map(collection), collection, record, mode)
            .await
    }

    /// A presigned URL for the record's whole version payload (the envelope JSON). A packed
    /// version's envelope is first copied to its own key (once: the copy is kept, and retention
    /// and erasure remove it with the version), because a presigned URL can't name a byte range.
    pub async fn presign_payload(&self, collection: &CollectionName, record: &Record, ttl: Duration) -> Result<String> {
        let loc = record.payload();
        let key = loc.key(collection, &record.id);
        if loc.pack.is_some() {
            self.standalone_copy(collection, &record.id, loc).await?;
        }
        self.payload_store()
            .presign_get(&key, ttl)
            .await?
            .ok_or_else(no_presign)
    }

    /// The payload at `payload` of an item, checked to be exactly that version's envelope with
    /// this data checksum. A version appended by reference passes the location it refers to
    /// (`Head::payload`, `VersionEntry::payload`).
    pub(crate) async fn load(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        payload: PayloadLoc<'_>,
        checksum: &str,
    ) -> Result<Decoded> {
        let text = self.load_text(collection, id, payload, checksum).await?;
        text.parse(&format_args!("{collection}/{id} v{}", payload.ov))
    }

    /// [`Engine::load`], leaving the data as text.
    pub(crate) async fn load_text(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        payload: PayloadLoc<'_>,
        checksum: &str,
    ) -> Result<DecodedText> {
        let bytes = match self.fetch_payload(collection, id, payload).await? {
            Some(bytes) => bytes,
            None => self.fetch_moved(collection, id, payload).await?,
        };
        let (ov, write_id) = (payload.ov, payload.write_id);
        let expected = envelope::Expected {
            database: &self.database,
            collection,
            id,
            ov,
            write_id,
            checksum,
        };
        self.decode_payload_text(&bytes, &expected).await
    }

    /// The bytes of a packed payload that is not where the index named it a moment ago: a hold
    /// or compaction may have copied it elsewhere and repointed the index, and scrub deleted the
    /// pack nothing named any more, between that index read and the GET. So it is read once more
    /// from where the index names it now. Otherwise the index says this version exists: a
    /// missing payload is damage, not absence.
    async fn fetch_moved(&self, collection: &CollectionName, id: &ItemId, was: PayloadLoc<'_>) -> Result<Bytes> {
        let missing = |at| Error::Corrupt(format!("payload {} is missing", describe(collection, id, at)));
        if was.pack.is_none() {
            return Err(missing(was));
        }
        // Every version taking its data from this payload moves with it, its own (ov `was.ov`:
        // a version restored by reference names its source's ov) among them.
        let Some(now) = self.meta.version(collection, id, was.ov).await? else {
            return Err(missing(was));
        };
        let moved = now.payload();
        if (moved.ov, moved.write_id) != (was.ov, was.write_id) || moved == was {
            return Err(missing(was));
        }
        self.fetch_payload(collection, id, moved)
            .await?
            .ok_or_else(|| missing(moved))
    }
}

/// A payload's location for messages: its key, or its pack and byte range.
fn describe(collection: &CollectionName, id: &ItemId, payload: PayloadLoc<'_>) -> String {
    match payload.pack {
        None => payload.key(collection, id),
        Some(p) => format!("{} bytes {}+{}", p.key, p.offset, p.len),
    }
}

fn not_found(collection: &CollectionName, id: &ItemId) -> Error {
    Error::NotFound(format!("{collection}/{id}"))
}
