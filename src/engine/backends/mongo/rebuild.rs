//! Rebuilding the MongoDB store from the buckets: heads, version entries and sequences loaded in
//! bulk, a few commands per thousand versions.
//!
//! Version entries go in with unordered `insertMany`s of at most [`BATCH`] documents: one entry
//! already in the index makes only its own insert fail, with a duplicate key, which a resumed
//! rebuild expects. Such a failure is accepted only when the index really holds an entry at that
//! `(itemId, ov)` (asked in one `find`): a duplicate on the idempotency-key index is a duplicate
//! of a re-loaded entry too — unless that key sits on another version, which is reported.
//!
//! Heads are replaced whole by `_id`. The driver's `bulkWrite` needs mongod 8 and ours is 6.0,
//! so a batch of heads is a `delete` of the ids and an `insertMany`, in one transaction. Measured
//! against the other way 6.0 offers — one `update` command carrying a replace-with-upsert
//! statement per head — it loads an empty collection about 45% faster (medians of 6 rounds of
//! 5 000 heads side by side on the 2-core test machine: 18 500 against 12 800 heads/s) and
//! reloads loaded heads about 10% slower (14 800 against 16 600/s); a rebuild loads into an
//! empty store.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, doc};
use mongodb::error::ErrorKind;

use super::docs::{get_string, get_u64, head_doc, pruned_id, version_doc};
use super::{DUPLICATE_KEY, MongoMetaStore, commit, is_transient, map_err};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, VersionEntry};
use crate::engine::store::rules::HEAD_OVERHEAD;
use crate::engine::store::{MetaRebuild, RebuiltSequences};

/// Entries per `insertMany`, heads per transaction.
const BATCH: usize = 1000;

/// About how many bytes of heads one transaction carries (heads hold up to 64 KiB inline).
const HEAD_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How many times a batch of heads is tried when its transaction meets another.
const LOAD_ATTEMPTS: u32 = 5;

/// The `chronos_sequences` document holding a rebuild's progress (`/` can't be in a collection
/// name, so no collection's sequence or tallies can take this id).
const PROGRESS_ID: &str = "chronos/rebuild";

/// The suffixes of a collection's head and version-index collections (see `mod.rs`).
const DATA_COLLECTIONS: &str = "_(head|ver)$";

#[async_trait]
impl MetaRebuild for MongoMetaStore {
    async fn holds_data(&self) -> Result<bool> {
        let names = self
            .db
            .list_collection_names()
            .filter(doc! {"name": {"$regex": DATA_COLLECTIONS}})
            .await
            .map_err(map_err)?;
        for name in names {
            let any = self
                .db
                .collection::<Document>(&name)
                .find_one(doc! {})
                .projection(doc! {"_id": 1})
                .await
                .map_err(map_err)?;
            if any.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn load_versions(&self, c: &CollectionName, entries: &[VersionEntry]) -> Result<()> {
        for batch in entries.chunks(BATCH) {
            let docs: Vec<Document> = batch.iter().map(|v| version_doc(v, v.cv)).collect();
            if let Err(e) = self.versions_coll(c).insert_many(docs).ordered(false).await {
                self.check_loaded_already(c, batch, e).await?;
            }
        }
        Ok(())
    }

    async fn load_heads(&self, c: &CollectionName, heads: &[Head]) -> Result<()> {
        let mut start = 0;
        while start < heads.len() {
            // Up to BATCH heads, and fewer when they carry much inline data.
            let (mut end, mut bytes) = (start, 0);
            while end < heads.len() && end - start < BATCH && (end == start || bytes < HEAD_BATCH_BYTES) {
                bytes += HEAD_OVERHEAD as usize + heads[end].inline.as_ref().map_or(0, String::len);
                end += 1;
            }
            self.replace_heads(c, &heads[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn load_sequences(&self, c: &CollectionName, state: &RebuiltSequences) -> Result<()> {
        let from = state.counters_from as i64;
        let counts: Vec<Document> = state
            .pruned
            .iter()
            .map(|(name, n)| doc! {"name": name, "n": *n as i64})
            .collect();
        // Two documents, each set to its final state: a rebuild that stops between them sets
        // both again when it resumes.
        self.sequences()
            .replace_one(
                doc! {"_id": pruned_id(c)},
                doc! {"_id": pruned_id(c), "from": from, "counts": counts, "through": state.pruned_through as i64},
            )
            .upsert(true)
            .await
            .map_err(map_err)?;
        self.sequences()
            .update_one(
                doc! {"_id": c.as_str()},
                doc! {"$max": {"cv": state.last_cv as i64}, "$set": {"countersFrom": from}},
            )
            .upsert(true)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn rebuild_progress(&self) -> Result<Option<String>> {
        let found = self
            .sequences()
            .find_one(doc! {"_id": PROGRESS_ID})
            .await
            .map_err(map_err)?;
        found.map(|d| get_string(&d, "progress")).transpose()
    }

    async fn set_rebuild_progress(&self, progress: Option<&str>) -> Result<()> {
        let sequences = self.sequences();
        match progress {
            Some(p) => {
                sequences
                    .replace_one(doc! {"_id": PROGRESS_ID}, doc! {"_id": PROGRESS_ID, "progress": p})
                    .upsert(true)
                    .await
                    .map_err(map_err)?;
            }
            None => {
                sequences.delete_one(doc! {"_id": PROGRESS_ID}).await.map_err(map_err)?;
            }
        }
        Ok(())
    }
}

impl MongoMetaStore {
    /// A failed unordered insert of `batch`: fine when every failure is a duplicate key of an
    /// entry the index already holds at its `(itemId, ov)`; otherwise the error.
    async fn check_loaded_already(
        &self,
        c: &CollectionName,
        batch: &[VersionEntry],
        e: mongodb::error::Error,
    ) -> Result<()> {
        use futures::TryStreamExt;
        let ErrorKind::InsertMany(failure) = e.kind.as_ref() else {
            return Err(map_err(e));
        };
        let errors = failure.write_errors.as_deref().unwrap_or_default();
        if failure.write_concern_error.is_some() || errors.iter().any(|w| w.code != DUPLICATE_KEY) {
            return Err(map_err(e));
        }
        let mut clashing: Vec<&VersionEntry> = Vec::with_capacity(errors.len());
        for w in errors {
            clashing.push(batch.get(w.index).ok_or_else(|| map_err(e.clone()))?);
        }
        let wanted: Vec<Document> = clashing
            .iter()
            .map(|v| doc! {"itemId": v.id.as_str(), "ov": v.ov as i64})
            .collect();
        let found: Vec<Document> = self
            .versions_coll(c)
            .find(doc! {"$or": wanted})
            .projection(doc! {"_id": 0, "itemId": 1, "ov": 1})
            .batch_size(clashing.len() as u32 + 1)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        let indexed: HashSet<(String, u64)> = found
            .iter()
            .map(|d| Ok((get_string(d, "itemId")?, get_u64(d, "ov")?)))
            .collect::<Result<_>>()?;
        match clashing
            .iter()
            .find(|v| !indexed.contains(&(v.id.as_str().to_owned(), v.ov)))
        {
            None => Ok(()),
            Some(v) => Err(Error::RequestKeyTaken(format!(
                "the idempotency key of {c}/{} v{} is on another version",
                v.id, v.ov
            ))),
        }
    }

    /// Replace these heads (or insert them): in one transaction, delete those there and insert
    /// them all. Tried again when the transaction meets another (a write to the collection).
    async fn replace_heads(&self, c: &CollectionName, heads: &[Head]) -> Result<()> {
        let ids: Vec<&str> = heads.iter().map(|h| h.id.as_str()).collect();
        let docs: Vec<Document> = heads.iter().map(head_doc).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut session = self.start().await?;
            let done = async {
                self.heads(c)
                    .delete_many(doc! {"_id": {"$in": &ids}})
                    .session(&mut session)
                    .await?;
                self.heads(c).insert_many(&docs).session(&mut session).await?;
                commit(&mut session).await
            }
            .await;
            match done {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && attempt < LOAD_ATTEMPTS => {
                    let _ = session.abort_transaction().await;
                    tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(map_err(e));
                }
            }
        }
    }
}
