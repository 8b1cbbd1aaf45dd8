//! Reads on MongoDB: heads, versions and listings, and what a collection restore needs (versions
//! at a point in history, appends by reference in one transaction).

use async_trait::async_trait;
use bson::{Bson, Document, RawDocument, RawDocumentBuf, doc};
use mongodb::{ClientSession, Database};

use super::docs::{
    filter_doc, get_string, get_u64, head_from_raw, pruned_id, ref_head_update, to_date, version_doc, version_from_doc,
};
use super::{DUPLICATE_KEY, MongoMetaStore, code, commit, commit_error, is_transient, map_err};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, Timestamp, VersionEntry};
use crate::engine::store::{CommitError, HistoryPoint, HistoryStart, ListQuery, MetaRead, MetaRestore, RefWrite};

/// A head found by a query: its id is its `_id`.
fn raw_head(d: &RawDocument) -> Result<Head> {
    let id: ItemId = d
        .get_str("_id")
        .map_err(|e| Error::Corrupt(format!("a head's `_id`: {e}")))?
        .parse()?;
    head_from_raw(&id, d)
}

impl MongoMetaStore {
    /// The heads a listing returns; without their inline data unless `with_data`.
    async fn find_heads(&self, c: &CollectionName, q: &ListQuery, with_data: bool) -> Result<Vec<Head>> {
        use futures::TryStreamExt;
        let mut filter = filter_doc(&q.filter);
        if !q.include_deleted {
            filter.insert("deletedAt", Bson::Null);
        }
        if let Some(after) = &q.after_id {
            filter.insert("_id", doc! {if q.descending { "$lt" } else { "$gt" }: after.as_str()});
        }
        let heads = self.raw_heads(c);
        let mut find = heads
            .find(filter)
            .sort(doc! {"_id": if q.descending { -1 } else { 1 }})
            .limit(q.limit as i64)
            .batch_size(q.limit as u32);
        if !with_data {
            find = find.projection(doc! {"data": 0});
        }
        let docs: Vec<RawDocumentBuf> = find.await.map_err(map_err)?.try_collect().await.map_err(map_err)?;
        docs.iter().map(|d| raw_head(d)).collect()
    }
}

#[async_trait]
impl MetaRead for MongoMetaStore {
    async fn head(&self, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        self.head_reads.head(self, c, id).await
    }

    async fn version(&self, c: &CollectionName, id: &ItemId, ov: u64) -> Result<Option<VersionEntry>> {
        let found = self
            .versions_coll(c)
            .find_one(doc! {"itemId": id.as_str(), "ov": ov as i64})
            .await
            .map_err(map_err)?;
        found.map(|d| version_from_doc(id, &d)).transpose()
    }

    async fn version_as_of(&self, c: &CollectionName, id: &ItemId, at: Timestamp) -> Result<Option<VersionEntry>> {
        let found = self
            .versions_coll(c)
            .find_one(doc! {"itemId": id.as_str(), "at": {"$lte": to_date(at)}})
            .sort(doc! {"itemId": 1, "ov": -1})
            .await
            .map_err(map_err)?;
        found.map(|d| version_from_doc(id, &d)).transpose()
    }

    async fn versions(
        &self,
        c: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>> {
        use futures::TryStreamExt;
        let mut filter = doc! {"itemId": id.as_str()};
        if let Some(after) = after_ov {
            filter.insert("ov", doc! {"$gt": after as i64});
        }
        let docs: Vec<Document> = self
            .versions_coll(c)
            .find(filter)
            .sort(doc! {"itemId": 1, "ov": 1})
            .limit(limit as i64)
            .batch_size(limit as u32)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| version_from_doc(id, d)).collect()
    }

    async fn list_heads(&self, c: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        self.find_heads(c, q, true).await
    }

    async fn versions_after(&self, c: &CollectionName, after_cv: u64, limit: usize) -> Result<Vec<VersionEntry>> {
        // Majority reads: a version the feed delivers must not be rolled back by a failover.
        let majority = mongodb::options::CollectionOptions::builder()
            .read_concern(mongodb::options::ReadConcern::majority())
            .build();
        let versions = self
            .db
            .collection_with_options::<Document>(&format!("{c}_ver"), majority);
        // Along the `cv` index.
        let found = versions
            .find(doc! {"cv": {"$gt": after_cv as i64}})
            .sort(doc! {"cv": 1})
            .limit(limit as i64)
            .batch_size(limit.min(1000) as u32)
            .await;
        versions_of(found).await
    }

    async fn watch_commits(&self, c: &CollectionName) -> Result<crate::engine::store::signal::CommitWatch> {
        self.commits_of(c).await
    }

    async fn history_start(&self, c: &CollectionName) -> Result<HistoryStart> {
        let oldest = self
            .versions_coll(c)
            .find_one(doc! {})
            .sort(doc! {"cv": 1})
            .projection(doc! {"cv": 1})
            .await
            .map_err(map_err)?;
        let tally = self
            .sequences()
            .find_one(doc! {"_id": pruned_id(c)})
            .await
            .map_err(map_err)?;
        Ok(HistoryStart {
            oldest_cv: oldest.map(|d| get_u64(&d, "cv")).transpose()?,
            pruned_through: tally.and_then(|t| get_u64(&t, "through").ok()).unwrap_or(0),
        })
    }
}

#[async_trait]
impl MetaRestore for MongoMetaStore {
    async fn heads_without_data(&self, c: &CollectionName, ids: &[ItemId]) -> Result<Vec<Head>> {
        use futures::TryStreamExt;
        let ids: Vec<&str> = ids.iter().map(ItemId::as_str).collect();
        let docs: Vec<RawDocumentBuf> = self
            .raw_heads(c)
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"data": 0})
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| raw_head(d)).collect()
    }

    async fn list_heads_without_data(&self, c: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        self.find_heads(c, q, false).await
    }

    async fn versions_at(&self, c: &CollectionName, ids: &[ItemId], point: HistoryPoint) -> Result<Vec<VersionEntry>> {
        let bound = match point {
            HistoryPoint::Cv(cv) => doc! {"cv": {"$lte": cv as i64}},
            HistoryPoint::At(at) => doc! {"at": {"$lte": to_date(at)}},
        };
        let mut first = doc! {"itemId": {"$in": ids.iter().map(ItemId::as_str).collect::<Vec<_>>()}};
        first.extend(bound);
        let pipeline = vec![
            doc! {"$match": first},
            // Backwards along the (itemId, ov) index: no in-memory sort (the order of the
            // result does not matter).
            doc! {"$sort": {"itemId": -1, "ov": -1}},
            doc! {"$group": {"_id": "$itemId", "v": {"$first": "$$ROOT"}}},
            doc! {"$replaceRoot": {"newRoot": "$v"}},
        ];
        versions_of(self.versions_coll(c).aggregate(pipeline).await).await
    }

    async fn oldest_versions(&self, c: &CollectionName, ids: &[ItemId]) -> Result<Vec<VersionEntry>> {
        let pipeline = vec![
            doc! {"$match": {"itemId": {"$in": ids.iter().map(ItemId::as_str).collect::<Vec<_>>()}}},
            // Along the (itemId, ov) index, each item's first entry first.
            doc! {"$sort": {"itemId": 1, "ov": 1}},
            doc! {"$group": {"_id": "$itemId", "v": {"$first": "$$ROOT"}}},
            doc! {"$replaceRoot": {"newRoot": "$v"}},
        ];
        versions_of(self.versions_coll(c).aggregate(pipeline).await).await
    }

    async fn append_by_reference(
        &self,
        c: &CollectionName,
        writes: Vec<RefWrite>,
        commit_by: Timestamp,
    ) -> Result<Option<u64>> {
        if writes.is_empty() {
            return Ok(Some(0));
        }
        let k = writes.len() as u64;
        // One `$inc` for the whole batch: its cvs are `last - k + 1 ..= last`, in order.
        let first = self.take_cvs(c, k).await? + 1 - k;
        let updates: Vec<Document> = (first..).zip(&writes).map(|(cv, w)| ref_head_update(w, cv)).collect();
        let entries: Vec<Document> = (first..)
            .zip(&writes)
            .map(|(cv, w)| version_doc(&w.version, cv))
            .collect();
        // The index entries whose data restored versions take: each must still be there naming
        // the pack the version copies, and is written to (`refs`), so retention's removal of it
        // (or a repointing) conflicts with this transaction.
        let sources: Vec<Document> = writes
            .iter()
            .filter_map(|w| {
                w.source.map(|ov| {
                    let pack = match w.copied_pack() {
                        Some(key) => doc! {"payloadRef.pack.key": key},
                        None => doc! {"payloadRef.pack": null},
                    };
                    let mut q = doc! {"itemId": w.version.id.as_str(), "ov": ov as i64};
                    q.extend(pack);
                    doc! {"q": q, "u": {"$inc": {"refs": 1}}}
                })
            })
            .collect();
        let n_sources = sources.len() as u64;
        let mut session = self.start().await?;
        // One `update` command carrying a statement per item: every head moves, or (a
        // precondition failed, or another transaction holds an item) the batch is given up.
        if update_all(&self.db, &mut session, format!("{c}_head"), updates).await? != k
            || (n_sources > 0 && update_all(&self.db, &mut session, format!("{c}_ver"), sources).await? != n_sources)
        {
            let _ = session.abort_transaction().await;
            return Ok(None);
        }
        match self.versions_coll(c).insert_many(entries).session(&mut session).await {
            Ok(_) => {}
            Err(e) => {
                let _ = session.abort_transaction().await;
                return match code(&e) {
                    // The heads matched, so (itemId, ov) can't clash: an idempotency key did.
                    Some(DUPLICATE_KEY) => Err(Error::RequestKeyTaken(format!(
                        "a write with the idempotency key of {c}"
                    ))),
                    _ if is_transient(&e) => Ok(None),
                    _ => Err(map_err(e)),
                };
            }
        }
        if let Err(late) = crate::engine::store::refs_in_time(commit_by) {
            let _ = session.abort_transaction().await;
            return Err(late);
        }
        // An unknown outcome is reported as such, never as an outage: the batch may have
        // committed, and only the caller's idempotency key makes another attempt safe.
        match commit(&mut session).await {
            Ok(()) => Ok(Some(first)),
            Err(e) => match commit_error(&e) {
                CommitError::Unknown(error) => Err(Error::OutcomeUnknown(error.to_string())),
                CommitError::NotCommitted { retry: true, .. } => Ok(None),
                CommitError::NotCommitted { error, .. } => Err(error),
            },
        }
    }

    async fn count_items(&self, c: &CollectionName) -> Result<u64> {
        self.heads(c).estimated_document_count().await.map_err(map_err)
    }
}

/// The version entries an aggregation over a version index returns.
pub(super) async fn versions_of(
    cursor: mongodb::error::Result<mongodb::Cursor<Document>>,
) -> Result<Vec<VersionEntry>> {
    use futures::TryStreamExt;
    let docs: Vec<Document> = cursor.map_err(map_err)?.try_collect().await.map_err(map_err)?;
    docs.iter()
        .map(|d| {
            let id: ItemId = get_string(d, "itemId")?.parse()?;
            version_from_doc(&id, d)
        })
        .collect()
}

/// One statement of the batched head `update` of an append by reference.
/// One `update` command with these statements, in the session's transaction: how many
/// documents matched (0 when a statement failed or met a transient conflict). On any other
/// error the transaction is aborted.
pub(super) async fn update_all(
    db: &Database,
    session: &mut ClientSession,
    collection: String,
    updates: Vec<Document>,
) -> Result<u64> {
    let reply = db
        .run_command(doc! {"update": collection, "updates": updates, "ordered": true})
        .session(&mut *session)
        .await;
    match reply {
        Ok(reply) if reply.get_array("writeErrors").is_err() => Ok(match reply.get("n") {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            _ => 0,
        }),
        Ok(_) => Ok(0),
        Err(e) if is_transient(&e) => Ok(0),
        Err(e) => {
            let _ = session.abort_transaction().await;
            Err(map_err(e))
        }
    }
}
