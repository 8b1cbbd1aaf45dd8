//! Erasure (the right to be forgotten): one item, or every item a filter on indexed metadata
//! finds in ANY of its versions (a subject id changed later is still found), erased across all
//! its versions. What goes: the item's payload objects and content blobs (every object under its
//! key prefix, orphans of failed writes included), its inline data, metadata, attribution,
//! idempotency stamps and references in the head and every index entry, its retention manifests'
//! entries, its ledger records (redacted, keeping their digests), and its queued writes. What
//! stays: a tombstone per version (id, ov, cv, time, op `ERASED`), so ov and cv stay gapless and
//! the id stays taken; the counters, because each erased version's counter names become tallies
//! (retention's approach); and an erasure record (`ledger::erasures`).
//!
//! Crash safety: the record is written `started`, naming every item and version, before anything
//! is erased; each step is idempotent, so finishing a started erasure — `Engine::resume_erasures`,
//! or the same erase asked again — completes it. See `item` for one item's steps, `redact` for
//! the ledger's.

mod item;
mod redact;

use serde_json::Value;
use sha2::Digest as _;

use crate::engine::error::{Error, Result};
use crate::engine::ledger::erasures::{self, ErasedItem, ErasedVersion, Erasure, ErasureStatus};
use crate::engine::model::{CollectionName, Head, ItemId, VersionEntry, now};
use crate::engine::query::Filter;
use crate::engine::versioning::Engine;

/// How many items a filter's erasure looks up per page.
const PAGE: usize = 500;

/// What an erasure erases.
#[derive(Debug, Clone, PartialEq)]
pub enum EraseTarget {
    Item(ItemId),
    /// Every item with a version whose indexed metadata matches this filter (the list filter's
    /// safe subset; an empty filter is refused).
    Matching(Value),
}

/// An erasure as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct EraseRequest {
    pub target: EraseTarget,
    pub actor: Option<String>,
    /// Why (required: the record is an audit trail).
    pub reason: String,
}

impl Engine {
    /// Erase what `request` names (see the module doc) and return the erasure's record. Asked
    /// again for an item a started erasure names, it finishes that erasure. 404 for an unknown
    /// item, 410 for one already erased.
    pub async fn erase(&self, collection: &CollectionName, request: &EraseRequest) -> Result<Erasure> {
        if request.reason.trim().is_empty() {
            return Err(Error::validation(
                "reason",
                "an erasure needs a reason (it is recorded)",
            ));
        }
        let started = erasures::all(self.payload_store(), self.database(), Some(collection)).await?;
        let pending: Vec<Erasure> = started
            .into_iter()
            .filter(|e| e.status == ErasureStatus::Started)
            .collect();
        let (ids, item, filter_sha256) = match &request.target {
            EraseTarget::Item(id) => {
                if let Some(e) = pending.iter().find(|e| e.items.iter().any(|i| &i.id == id)) {
                    return self.finish_erasure(e.clone()).await;
                }
                let head = self.meta().head(collection, id).await?;
                let head = head.ok_or_else(|| Error::NotFound(format!("{collection}/{id}")))?;
                if head.erased() {
                    return Err(Error::Erased(format!("{collection}/{id}")));
                }
                (vec![id.clone()], Some(id.clone()), None)
            }
            EraseTarget::Matching(filter) => {
                let parsed = Filter::parse(filter, &|p| self.is_indexed(collection, p))?;
                if parsed.is_empty() {
                    return Err(Error::validation(
                        "filter",
                        "an erasure by filter needs a non-empty filter",
                    ));
                }
                // A started erasure of the same filter is the same erase asked again.
                let sha = hex::encode(sha2::Sha256::digest(filter.to_string().as_bytes()));
                if let Some(e) = pending
                    .iter()
                    .find(|e| e.filter_sha256.as_deref() == Some(sha.as_str()))
                {
                    return self.finish_erasure(e.clone()).await;
                }
                (self.items_matching(collection, &parsed).await?, None, Some(sha))
            }
        };
        let mut planned = Vec::with_capacity(ids.len());
        let mut hasher = sha2::Sha256::new();
        let mut versions = 0;
        for id in &ids {
            let Some(head) = self.meta().head(collection, id).await? else {
                continue;
            };
            if head.erased() {
                continue;
            }
            self.erasable(collection, &head).await?;
            let entries = self.all_versions(collection, id).await?;
            let mut erased = Vec::with_capacity(entries.len());
            for v in entries.iter().filter(|v| !v.erased()) {
                hasher.update(format!("{}\n{}\n{}\n{}\n", v.id, v.ov, v.cv, v.checksum).as_bytes());
                erased.push(ErasedVersion {
                    ov: v.ov,
                    cv: v.cv,
                    at: v.at,
                    counts: self.counter_names(collection, v)?,
                });
            }
            versions += erased.len() as u64;
            planned.push(ErasedItem {
                id: id.clone(),
                versions: erased,
            });
        }
        let erasure = Erasure {
            id: uuid::Uuid::now_v7().to_string(),
            database: self.database().to_owned(),
            collection: collection.clone(),
            status: ErasureStatus::Started,
            actor: request.actor.clone(),
            reason: request.reason.clone(),
            started_at: now(),
            finished_at: None,
            item,
            filter_sha256,
            items: planned,
            versions,
            objects: 0,
            sha256: hex::encode(hasher.finalize()),
        };
        self.record_erasure(&erasure).await?;
        self.finish_erasure(erasure).await
    }

    /// Finish every erasure a process left started (at engine start, or `chronos erase --resume`).
    pub async fn resume_erasures(&self) -> Result<Vec<Erasure>> {
        let mut finished = Vec::new();
        for e in erasures::all(self.payload_store(), self.database(), None).await? {
            if e.status == ErasureStatus::Started {
                finished.push(self.finish_erasure(e).await?);
            }
        }
        Ok(finished)
    }

    /// The erasure records of a collection (of every collection, if `None`), oldest first.
    pub async fn erasures(&self, collection: Option<&CollectionName>) -> Result<Vec<Erasure>> {
        erasures::all(self.payload_store(), self.database(), collection).await
    }

    /// The items of a collection that an erasure (started or done) names: the denylist a
    /// restore, a rebuild and a queued retry check.
    pub async fn erased_items(&self, collection: &CollectionName) -> Result<std::collections::HashSet<ItemId>> {
        let records = erasures::all(self.payload_store(), self.database(), Some(collection)).await?;
        Ok(records
            .into_iter()
            .flat_map(|e| e.items.into_iter().map(|i| i.id))
            .collect())
    }

    /// Whether this item may be erased now. The one place that decides it: a legal hold, or a
    /// collection's retention hold still running, refuses here (409 `held`).
    async fn erasable(&self, collection: &CollectionName, head: &Head) -> Result<()> {
        match self.hold_reason(collection, &head.id, Some(head)).await? {
            Some(reason) => Err(Error::Held(format!("{collection}/{}", head.id), reason)),
            None => Ok(()),
        }
    }

    /// Do (or finish) the work of a started erasure, then record it done.
    async fn finish_erasure(&self, mut erasure: Erasure) -> Result<Erasure> {
        let collection = erasure.collection.clone();
        let mut objects = 0;
        for item in &erasure.items {
            objects += self.erase_item(&collection, item).await?;
        }
        let ids: Vec<ItemId> = erasure.items.iter().map(|i| i.id.clone()).collect();
        // Their envelopes in packs (written with other items' payloads) are blanked in place.
        objects += self.redact_packs(&collection, &ids).await?;
        self.redact_ledger(&collection, &ids).await?;
        self.cancel_queued(&collection, &ids).await?;
        erasure.objects += objects;
        erasure.status = ErasureStatus::Done;
        erasure.finished_at = Some(now());
        self.record_erasure(&erasure).await?;
        tracing::info!(
            erasure = %erasure.id,
            collection = %collection,
            items = erasure.items.len(),
            versions = erasure.versions,
            objects = erasure.objects,
            "erasure done"
        );
        Ok(erasure)
    }

    /// Write an erasure record to the payload bucket (what a rebuild reads) and to the metadata
    /// store (the copy next to the index), in that order.
    async fn record_erasure(&self, erasure: &Erasure) -> Result<()> {
        erasures::write(self.payload_store(), erasure).await?;
        let json = serde_json::to_string(erasure).map_err(|e| Error::Corrupt(format!("an erasure record: {e}")))?;
        self.meta().put_erasure(&erasure.id, &json).await
    }

    /// Every item with a version matching `filter`, in id order.
    async fn items_matching(&self, collection: &CollectionName, filter: &Filter) -> Result<Vec<ItemId>> {
        let mut ids: Vec<ItemId> = Vec::new();
        loop {
            let page = self
                .meta()
                .items_with_versions_matching(collection, filter, ids.last(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            ids.extend(page);
            if !full {
                return Ok(ids);
            }
        }
    }

    /// Every index entry of an item, oldest first.
    async fn all_versions(&self, collection: &CollectionName, id: &ItemId) -> Result<Vec<VersionEntry>> {
        let mut out: Vec<VersionEntry> = Vec::new();
        loop {
            let page = self
                .meta()
                .versions(collection, id, out.last().map(|v| v.ov), 1000)
                .await?;
            let Some(_) = page.last() else { return Ok(out) };
            out.extend(page);
        }
    }
}
