//! Rebuilding the embedded store from the buckets: each load is one transaction of prepared
//! statements over the rows a write stores, so a page of thousands of versions costs one commit
//! (one fsync) instead of one per row.
//!
//! A version already in the index is left as it is (the insert does nothing on its primary key),
//! which makes a load safe to repeat when a rebuild resumes; any other conflict — an idempotency
//! key already on another version — still fails the load, and its transaction writes nothing.

use async_trait::async_trait;
use rusqlite::{ErrorCode, OptionalExtension, params};

use super::SqliteMetaStore;
use super::rows::{map_sql, to_i64, to_json};
use super::write::key_taken;
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, Head, VersionEntry};
use crate::engine::store::{MetaRebuild, RebuiltSequences};

#[async_trait]
impl MetaRebuild for SqliteMetaStore {
    async fn holds_data(&self) -> Result<bool> {
        self.with_conn(|conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM heads) OR EXISTS (SELECT 1 FROM versions)",
                [],
                |r| r.get(0),
            )
            .map_err(map_sql)
        })
        .await
    }

    async fn load_versions(&self, c: &CollectionName, entries: &[VersionEntry]) -> Result<()> {
        let (c, entries) = (c.clone(), entries.to_vec());
        self.in_transaction(move |tx| {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO versions (collection, item_id, ov, cv, op, at, actor, reason, write_id, size, \
                     checksum, meta, deleted, request_id, request_hash, payload_ref) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
                     ON CONFLICT (collection, item_id, ov) DO NOTHING",
                )
                .map_err(map_sql)?;
            for v in &entries {
                let payload_ref = v.payload_ref.as_ref().map(to_json).transpose()?;
                insert
                    .execute(params![
                        c.as_str(),
                        v.id.as_str(),
                        to_i64(v.ov, "ov")?,
                        to_i64(v.cv, "cv")?,
                        v.op.as_str(),
                        v.at.as_millisecond(),
                        v.actor,
                        v.reason,
                        v.write_id,
                        to_i64(v.size, "size")?,
                        v.checksum,
                        to_json(&v.meta)?,
                        v.deleted,
                        v.request.as_ref().map(|r| r.key.as_str()),
                        v.request.as_ref().map(|r| r.fingerprint.as_str()),
                        payload_ref,
                    ])
                    // The primary key's conflict does nothing, so a constraint that still fails
                    // is the idempotency key's.
                    .map_err(|e| match e.sqlite_error_code() {
                        Some(ErrorCode::ConstraintViolation) => key_taken(&v.id),
                        _ => map_sql(e),
                    })?;
            }
            Ok(())
        })
        .await
    }

    async fn load_heads(&self, c: &CollectionName, heads: &[Head]) -> Result<()> {
        let (c, heads) = (c.clone(), heads.to_vec());
        self.in_transaction(move |tx| {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO heads (collection, item_id, ov, cv, write_id, inserted_at, updated_at, \
                     deleted_at, function_ids, state, size, checksum, meta, inline_data, payload_ref) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(map_sql)?;
            for h in &heads {
                let payload_ref = h.payload_ref.as_ref().map(to_json).transpose()?;
                insert
                    .execute(params![
                        c.as_str(),
                        h.id.as_str(),
                        to_i64(h.ov, "ov")?,
                        to_i64(h.cv, "cv")?,
                        h.write_id,
                        h.inserted_at.as_millisecond(),
                        h.updated_at.as_millisecond(),
                        h.deleted_at.map(|t| t.as_millisecond()),
                        to_json(&h.function_ids)?,
                        h.state.as_str(),
                        to_i64(h.size, "size")?,
                        h.checksum,
                        to_json(&h.meta)?,
                        h.inline,
                        payload_ref,
                    ])
                    .map_err(map_sql)?;
            }
            Ok(())
        })
        .await
    }

    async fn load_sequences(&self, c: &CollectionName, state: &RebuiltSequences) -> Result<()> {
        let c = c.clone();
        let last_cv = to_i64(state.last_cv, "cv")?;
        let from = to_i64(state.counters_from, "counters_from")?;
        let pruned_through = to_i64(state.pruned_through, "cv")?;
        // No tallies is stored as a reset stores it.
        let pruned = (!state.pruned.is_empty()).then(|| to_json(&state.pruned)).transpose()?;
        self.in_transaction(move |tx| {
            tx.execute(
                "INSERT INTO sequences (collection, cv, counters_from, pruned, pruned_through) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (collection) DO UPDATE SET cv = max(cv, excluded.cv), \
                 counters_from = excluded.counters_from, pruned = excluded.pruned, \
                 pruned_through = max(pruned_through, excluded.pruned_through)",
                params![c.as_str(), last_cv, from, pruned, pruned_through],
            )
            .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn rebuild_progress(&self) -> Result<Option<String>> {
        self.with_conn(|conn| {
            conn.query_row("SELECT progress FROM rebuild_progress WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(map_sql)
        })
        .await
    }

    async fn set_rebuild_progress(&self, progress: Option<&str>) -> Result<()> {
        let progress = progress.map(str::to_owned);
        self.with_conn(move |conn| {
            match progress {
                Some(p) => conn.execute(
                    "INSERT INTO rebuild_progress (id, progress) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET progress = excluded.progress",
                    params![p],
                ),
                None => conn.execute("DELETE FROM rebuild_progress", []),
            }
            .map_err(map_sql)?;
            Ok(())
        })
        .await
    }
}
