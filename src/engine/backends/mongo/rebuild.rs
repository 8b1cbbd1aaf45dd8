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
//! so a batch of heads is one `update` command carrying a replace-with-upsert statement per head,
//! cut so the command stays under MongoDB's 16 MiB (heads carry up to 64 KiB of inline data).

use std::collections::HashSet;

use async_trait::async_trait;
use bson::{Bson, Document, doc};
use mongodb::error::ErrorKind;

use super::docs::{get_string, get_u64, head_doc, pruned_id, version_doc};
use super::{DUPLICATE_KEY, MongoMetaStore, map_err};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, VersionEntry};
use crate::engine::store::{MetaRebuild, RebuiltSequences};

/// Documents per `insertMany` or `update` command.
const BATCH: usize = 1000;

/// Bytes of head documents per `update` command: well under the 16 MiB a command may take.
const HEAD_BATCH_BYTES: usize = 8 * 1024 * 1024;

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
        let mut statements = Vec::new();
        let mut bytes = 0;
        for h in heads {
            let head = head_doc(h);
            let size = head.to_vec().map_err(|e| Error::metadata(e.to_string()))?.len();
            if !statements.is_empty() && (statements.len() == BATCH || bytes + size > HEAD_BATCH_BYTES) {
                self.replace_heads(c, std::mem::take(&mut statements)).await?;
                bytes = 0;
            }
            bytes += size;
            statements.push(doc! {"q": {"_id": h.id.as_str()}, "u": head, "upsert": true});
        }
        if !statements.is_empty() {
            self.replace_heads(c, statements).await?;
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
                doc! {"_id": pruned_id(c), "from": from, "counts": counts},
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

    /// One `update` command replacing (or inserting) each head its statements name.
    async fn replace_heads(&self, c: &CollectionName, statements: Vec<Document>) -> Result<()> {
        let reply = self
            .db
            .run_command(doc! {
                "update": format!("{c}_head"),
                "updates": statements,
                "ordered": false,
                // A command run directly takes no write concern from the database handle.
                "writeConcern": {"w": "majority"},
            })
            .await
            .map_err(map_err)?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let first = errors.first().and_then(Bson::as_document).map(|d| d.to_string());
            return Err(Error::metadata(format!(
                "loading heads of {c}: {} refused, the first: {}",
                errors.len(),
                first.unwrap_or_default()
            )));
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(Error::metadata(format!("loading heads of {c}: {wce}")));
        }
        Ok(())
    }
}
