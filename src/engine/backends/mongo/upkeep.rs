//! Counters, tiering and retention on MongoDB: counts over the version index, dropping inline data
//! from heads, and removing versions together with their tallies in one transaction.

use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, doc};
use mongodb::ClientSession;
use mongodb::options::ReturnDocument;

use super::docs::{filter_doc, get_string, get_u64, pack_doc, pruned_id, tally_counts, to_date};
use super::{MongoMetaStore, commit, is_transient, map_err};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, Op, State};
use crate::engine::query::Filter;
use crate::engine::store::{MetaUpkeep, PrunedVersion, Repoint, TierBatch, TierQuery};

impl MongoMetaStore {
    /// The documents an aggregation over a collection's version index yields.
    async fn aggregate_versions(&self, c: &CollectionName, pipeline: Vec<Document>) -> Result<Vec<Document>> {
        use futures::TryStreamExt;
        self.versions_coll(c)
            .aggregate(pipeline)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)
    }

    /// In the session's transaction: remove the versions still indexed and add them to the
    /// collection's tallies.
    async fn delete_and_tally(
        &self,
        session: &mut ClientSession,
        c: &CollectionName,
        id: &ItemId,
        versions: &[PrunedVersion],
    ) -> Result<u64, mongodb::error::Error> {
        use futures::TryStreamExt;
        let sequences = self.sequences();
        let ovs: Vec<i64> = versions.iter().map(|p| p.ov as i64).collect();
        let filter = doc! {"itemId": id.as_str(), "ov": {"$in": &ovs}};
        let present: Vec<Document> = self
            .versions_coll(c)
            .find(filter.clone())
            .projection(doc! {"ov": 1})
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        let present: std::collections::HashSet<u64> = present.iter().filter_map(|d| get_u64(d, "ov").ok()).collect();
        let deleted = self
            .versions_coll(c)
            .delete_many(filter)
            .session(&mut *session)
            .await?
            .deleted_count;
        let seq = sequences
            .find_one(doc! {"_id": c.as_str()})
            .session(&mut *session)
            .await?;
        let from = seq.and_then(|d| get_u64(&d, "countersFrom").ok()).unwrap_or(0);
        let tally = sequences
            .find_one(doc! {"_id": pruned_id(c)})
            .session(&mut *session)
            .await?;
        let removed_through = versions
            .iter()
            .filter(|p| present.contains(&p.ov))
            .map(|p| p.cv)
            .max()
            .unwrap_or(0);
        let through = tally
            .as_ref()
            .and_then(|t| get_u64(t, "through").ok())
            .unwrap_or(0)
            .max(removed_through);
        let mut counts = tally.map(|t| tally_counts(&t, from)).unwrap_or_default();
        for p in versions.iter().filter(|p| present.contains(&p.ov) && p.cv > from) {
            for name in &p.counts {
                *counts.entry(name.clone()).or_default() += 1;
            }
        }
        let counts: Vec<Document> = counts
            .into_iter()
            .map(|(name, n)| doc! {"name": name, "n": n as i64})
            .collect();
        sequences
            .replace_one(
                doc! {"_id": pruned_id(c)},
                doc! {"_id": pruned_id(c), "from": from as i64, "counts": counts, "through": through as i64},
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        Ok(deleted)
    }
}

#[async_trait]
impl MetaUpkeep for MongoMetaStore {
    async fn count_versions(
        &self,
        c: &CollectionName,
        after_cv: u64,
        filter: &Filter,
    ) -> Result<std::collections::HashMap<Op, u64>> {
        let mut m = filter_doc(filter);
        m.insert("cv", doc! {"$gt": after_cv as i64});
        let pipeline = vec![
            doc! {"$match": m},
            doc! {"$group": {"_id": "$op", "n": {"$sum": 1_i64}}},
        ];
        let docs = self.aggregate_versions(c, pipeline).await?;
        docs.iter()
            .map(|d| Ok((get_string(d, "_id")?.parse()?, get_u64(d, "n")?)))
            .collect()
    }

    async fn items_with_versions_matching(
        &self,
        c: &CollectionName,
        filter: &Filter,
        after_id: Option<&ItemId>,
        limit: usize,
    ) -> Result<Vec<ItemId>> {
        let mut m = filter_doc(filter);
        if let Some(after) = after_id {
            m.insert("itemId", doc! {"$gt": after.as_str()});
        }
        let pipeline = vec![
            doc! {"$match": m},
            doc! {"$group": {"_id": "$itemId"}},
            doc! {"$sort": {"_id": 1}},
            doc! {"$limit": limit as i64},
        ];
        let docs = self.aggregate_versions(c, pipeline).await?;
        docs.iter().map(|d| get_string(d, "_id")?.parse()).collect()
    }

    async fn put_erasure(&self, id: &str, record: &str) -> Result<()> {
        self.erasures()
            .replace_one(doc! {"_id": id}, doc! {"_id": id, "record": record})
            .upsert(true)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn erasure_records(&self) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let docs: Vec<Document> = self
            .erasures()
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| get_string(d, "record")).collect()
    }

    async fn counters_from(&self, c: &CollectionName) -> Result<u64> {
        let seq = self
            .sequences()
            .find_one(doc! {"_id": c.as_str()})
            .await
            .map_err(map_err)?;
        Ok(seq.and_then(|d| get_u64(&d, "countersFrom").ok()).unwrap_or(0))
    }

    async fn reset_counters(&self, c: &CollectionName) -> Result<u64> {
        // A pipeline update copies the current cv in one atomic step.
        let seq = self
            .sequences()
            .find_one_and_update(
                doc! {"_id": c.as_str()},
                vec![doc! {"$set": {"cv": {"$ifNull": ["$cv", 0_i64]}, "countersFrom": {"$ifNull": ["$cv", 0_i64]}}}],
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?
            .ok_or_else(|| Error::metadata("counter reset returned nothing"))?;
        get_u64(&seq, "countersFrom")
    }

    async fn pruned_counts(&self, c: &CollectionName) -> Result<std::collections::HashMap<String, u64>> {
        let from = self.counters_from(c).await?;
        let tally = self
            .sequences()
            .find_one(doc! {"_id": pruned_id(c)})
            .await
            .map_err(map_err)?;
        Ok(tally.map(|t| tally_counts(&t, from)).unwrap_or_default())
    }

    async fn mark_processed(&self, c: &CollectionName, query: &TierQuery) -> Result<TierBatch> {
        use futures::TryStreamExt;
        let mut filter = doc! {"state": State::New.as_str(), "updatedAt": {"$lt": to_date(query.older_than)}};
        match (query.only.as_ref(), query.after_id.as_ref()) {
            (Some(id), _) => {
                filter.insert("_id", id.as_str());
            }
            (None, Some(after)) => {
                filter.insert("_id", doc! {"$gt": after.as_str()});
            }
            (None, None) => {}
        }
        let heads = self.heads(c);
        // The documents' real size in MongoDB, before and after.
        let sizes = |ids: Vec<&str>| {
            let heads = heads.clone();
            let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
            async move {
                let docs: Vec<Document> = heads
                    .find(doc! {"_id": {"$in": ids}})
                    .projection(doc! {"s": {"$bsonSize": "$$ROOT"}})
                    .await
                    .map_err(map_err)?
                    .try_collect()
                    .await
                    .map_err(map_err)?;
                Ok::<u64, Error>(docs.iter().filter_map(|d| get_u64(d, "s").ok()).sum())
            }
        };
        let candidates: Vec<Document> = heads
            .find(filter.clone())
            .projection(doc! {"_id": 1, "s": {"$bsonSize": "$$ROOT"}})
            .sort(doc! {"_id": 1})
            .limit(query.limit as i64)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        let ids: Vec<ItemId> = candidates
            .iter()
            .map(|d| get_string(d, "_id")?.parse())
            .collect::<Result<_>>()?;
        let bytes_before: u64 = candidates.iter().filter_map(|d| get_u64(d, "s").ok()).sum();
        if query.dry_run || ids.is_empty() {
            return Ok(TierBatch {
                ids,
                bytes_before,
                bytes_after: bytes_before,
            });
        }
        let id_strs: Vec<&str> = ids.iter().map(ItemId::as_str).collect();
        filter.insert("_id", doc! {"$in": &id_strs});
        // The filter is re-checked per document: an item written meanwhile stays `new`.
        heads
            .update_many(
                filter,
                doc! {"$unset": {"data": ""}, "$set": {"state": State::Processed.as_str()}},
            )
            .await
            .map_err(map_err)?;
        let bytes_after = sizes(id_strs).await?;
        Ok(TierBatch {
            ids,
            bytes_before,
            bytes_after,
        })
    }

    async fn repoint_payload(&self, c: &CollectionName, id: &ItemId, moving: Repoint<'_>) -> Result<u64> {
        let mut names = doc! {"payloadRef.ov": moving.payload.0 as i64, "payloadRef.writeId": moving.payload.1};
        match moving.from {
            Some(key) => names.insert("payloadRef.pack.key", key),
            None => names.insert("payloadRef.pack", mongodb::bson::Bson::Null),
        };
        let update = match moving.to {
            Some(p) => doc! {"$set": {"payloadRef.pack": pack_doc(p)}},
            None => doc! {"$unset": {"payloadRef.pack": ""}},
        };
        // Versions first, then the head: a reader in between finds the same bytes either way.
        let mut versions = doc! {"itemId": id.as_str()};
        versions.extend(names.clone());
        let mut head = doc! {"_id": id.as_str()};
        head.extend(names);
        let v = self
            .versions_coll(c)
            .update_many(versions, update.clone())
            .await
            .map_err(map_err)?;
        let h = self.heads(c).update_one(head, update).await.map_err(map_err)?;
        Ok(v.modified_count + h.modified_count)
    }

    async fn delete_versions(&self, c: &CollectionName, id: &ItemId, versions: &[PrunedVersion]) -> Result<u64> {
        // One transaction per try; concurrent prunes of one collection meet on its tally
        // document, and the loser tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut session = self.start().await?;
            let done = match self.delete_and_tally(&mut session, c, id, versions).await {
                Ok(n) => commit(&mut session).await.map(|()| n),
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    Err(e)
                }
            };
            match done {
                Ok(n) => return Ok(n),
                Err(e) if is_transient(&e) && attempt < PRUNE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(1 << attempt.min(6))).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
    }
}

/// How many times retention's delete of an item's versions is tried when it meets another's.
pub(super) const PRUNE_ATTEMPTS: u32 = 20;
