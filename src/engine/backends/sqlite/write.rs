//! Writes on SQLite: a pending write holds its item with an in-process lock while the payload is
//! uploaded, then commits the head and the version entry in one transaction; appends by
//! reference commit a whole restore page the same way.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::rows::{from_json, is_busy, map_sql, next_cv, read_head, read_versions, to_i64, to_json};
use super::{Inner, ItemGuard, SqliteMetaStore, lock_std};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, PayloadRef, RequestKey, Timestamp, VersionEntry};
use crate::engine::store::rules::{check_precondition, next_head, ref_head};
use crate::engine::store::{CommitError, HeadChange, Held, MetaWrite, PendingWrite, RefWrite};

/// Write the new head and its version entry in one transaction.
pub(super) fn commit_write(
    conn: &mut Connection,
    c: &CollectionName,
    previous_ov: Option<u64>,
    head: &Head,
    v: &VersionEntry,
) -> Result<(), CommitError> {
    let not_committed = |error: Error| CommitError::NotCommitted { error, retry: false };
    let sql_not_committed = |e: rusqlite::Error| CommitError::NotCommitted {
        retry: is_busy(&e),
        error: map_sql(e),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_not_committed)?;
    let head_values = (|| {
        Ok::<_, Error>((
            to_i64(head.ov, "ov")?,
            to_i64(head.cv, "cv")?,
            to_json(&head.function_ids)?,
            to_i64(head.size, "size")?,
            to_json(&head.meta)?,
            to_i64(v.ov, "ov")?,
            to_i64(v.cv, "cv")?,
            to_i64(v.size, "size")?,
            to_json(&v.meta)?,
            previous_ov.map(|o| to_i64(o, "ov")).transpose()?,
            v.payload_ref.as_ref().map(to_json).transpose()?,
        ))
    })()
    .map_err(not_committed)?;
    let (ov, cv, function_ids, size, meta, v_ov, v_cv, v_size, v_meta, previous_ov, payload_ref) = head_values;
    let head_params = params![
        c.as_str(),
        head.id.as_str(),
        ov,
        cv,
        head.write_id,
        head.inserted_at.as_millisecond(),
        head.updated_at.as_millisecond(),
        head.deleted_at.map(|t| t.as_millisecond()),
        function_ids,
        head.state.as_str(),
        size,
        head.checksum,
        meta,
        head.inline,
        previous_ov,
        payload_ref,
    ];
    // The head must still be the one the write started from; the item lock guarantees it unless
    // something outside this process changed the database.
    let sql = match previous_ov {
        None => {
            "INSERT INTO heads (collection, item_id, ov, cv, write_id, inserted_at, updated_at, \
             deleted_at, function_ids, state, size, checksum, meta, inline_data, payload_ref) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?16 WHERE ?15 IS NULL \
             ON CONFLICT (collection, item_id) DO NOTHING"
        }
        Some(_) => {
            "UPDATE heads SET ov = ?3, cv = ?4, write_id = ?5, inserted_at = ?6, updated_at = ?7, \
             deleted_at = ?8, function_ids = ?9, state = ?10, size = ?11, checksum = ?12, \
             meta = ?13, inline_data = ?14, payload_ref = ?16 WHERE collection = ?1 AND item_id = ?2 AND ov = ?15"
        }
    };
    let changed = tx
        .prepare_cached(sql)
        .and_then(|mut s| s.execute(head_params))
        .map_err(sql_not_committed)?;
    if changed != 1 {
        return Err(not_committed(Error::Corrupt(format!(
            "the head of {c}/{} changed while a write held it; is another process using the database?",
            head.id
        ))));
    }
    tx.prepare_cached(
        "INSERT INTO versions (collection, item_id, ov, cv, op, at, actor, reason, write_id, size, \
         checksum, meta, deleted, request_id, request_hash, payload_ref) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            c.as_str(),
            v.id.as_str(),
            v_ov,
            v_cv,
            v.op.as_str(),
            v.at.as_millisecond(),
            v.actor,
            v.reason,
            v.write_id,
            v_size,
            v.checksum,
            v_meta,
            v.deleted,
            v.request.as_ref().map(|r| r.key.as_str()),
            v.request.as_ref().map(|r| r.fingerprint.as_str()),
            payload_ref,
        ])
    })
    .map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => not_committed(key_taken(&v.id)),
        _ => sql_not_committed(e),
    })?;
    tx.commit().map_err(commit_failed)
}

/// What a failed COMMIT means for the transaction.
pub(super) fn commit_failed(e: rusqlite::Error) -> CommitError {
    if is_busy(&e) {
        // COMMIT failed before writing anything; the dropped transaction rolls back.
        CommitError::NotCommitted {
            retry: true,
            error: map_sql(e),
        }
    } else {
        // An I/O error while committing may still leave the commit in the WAL, to be
        // recovered at the next open.
        CommitError::Unknown(map_sql(e))
    }
}

/// A failed COMMIT of appends by reference: an unknown outcome stays unknown (never an outage,
/// which would be queued and appended again).
pub(super) fn refs_commit_failed(e: rusqlite::Error) -> Error {
    match commit_failed(e) {
        CommitError::Unknown(error) => Error::OutcomeUnknown(error.to_string()),
        CommitError::NotCommitted { error, .. } => error,
    }
}

/// Apply a batch of appends by reference in one transaction; `Ok(None)` (and nothing written)
/// when a head is no longer at its expected ov.
/// A version insert that broke a constraint: the item is held (or its head matched), so
/// (item, ov) can't clash — the idempotency key's uniqueness did.
pub(super) fn key_taken(id: &ItemId) -> Error {
    Error::RequestKeyTaken(format!("a write with the idempotency key of {id}"))
}

pub(super) fn append_refs(
    conn: &mut Connection,
    c: &CollectionName,
    writes: &[RefWrite],
    commit_by: Timestamp,
) -> Result<Option<u64>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_sql)?;
    let mut first = None;
    for w in writes {
        let v = &w.version;
        let Some(previous) = read_head(&tx, c, &v.id)? else {
            return Ok(None);
        };
        if previous.ov != w.expected_ov || v.ov != previous.ov + 1 {
            return Ok(None);
        }
        // The entry whose data a restore takes must still be indexed, naming the same pack
        // (retention and repointing change entries in a transaction too, so they can't slip in
        // between).
        if let Some(source) = w.source {
            let source = to_i64(source, "ov")?;
            let found: Option<Option<String>> = tx
                .prepare_cached("SELECT payload_ref FROM versions WHERE collection = ?1 AND item_id = ?2 AND ov = ?3")
                .and_then(|mut st| {
                    st.query_row(params![c.as_str(), v.id.as_str(), source], |r| r.get(0))
                        .optional()
                })
                .map_err(map_sql)?;
            let Some(payload_ref) = found else {
                return Ok(None);
            };
            let named: Option<PayloadRef> = payload_ref
                .as_deref()
                .map(|t| from_json(t, "payload_ref"))
                .transpose()?;
            if named.as_ref().and_then(PayloadRef::pack_key) != w.copied_pack() {
                return Ok(None);
            }
        }
        let cv = next_cv(&tx, c)?;
        first.get_or_insert(cv);
        let head = ref_head(&previous, w, cv);
        let payload_ref = v.payload_ref.as_ref().map(to_json).transpose()?;
        let (ov, cv_i, previous_ov) = (to_i64(v.ov, "ov")?, to_i64(cv, "cv")?, to_i64(previous.ov, "ov")?);
        let (size, meta) = (to_i64(v.size, "size")?, to_json(&v.meta)?);
        tx.prepare_cached(
            "UPDATE heads SET ov = ?3, cv = ?4, write_id = ?5, updated_at = ?6, deleted_at = ?7, state = ?8, \
             size = ?9, checksum = ?10, meta = ?11, inline_data = ?12, payload_ref = ?13 \
             WHERE collection = ?1 AND item_id = ?2 AND ov = ?14",
        )
        .and_then(|mut s| {
            s.execute(params![
                c.as_str(),
                head.id.as_str(),
                ov,
                cv_i,
                head.write_id,
                head.updated_at.as_millisecond(),
                head.deleted_at.map(|t| t.as_millisecond()),
                head.state.as_str(),
                size,
                head.checksum,
                meta,
                head.inline,
                payload_ref,
                previous_ov,
            ])
        })
        .map_err(map_sql)?;
        tx.prepare_cached(
            "INSERT INTO versions (collection, item_id, ov, cv, op, at, actor, reason, write_id, size, \
             checksum, meta, deleted, payload_ref, request_id, request_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )
        .and_then(|mut s| {
            s.execute(params![
                c.as_str(),
                v.id.as_str(),
                ov,
                cv_i,
                v.op.as_str(),
                v.at.as_millisecond(),
                v.actor,
                v.reason,
                v.write_id,
                size,
                v.checksum,
                meta,
                v.deleted,
                payload_ref,
                v.request.as_ref().map(|r| r.key.as_str()),
                v.request.as_ref().map(|r| r.fingerprint.as_str()),
            ])
        })
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => key_taken(&v.id),
            _ => map_sql(e),
        })?;
    }
    // Dropping the transaction rolls it back.
    crate::engine::store::refs_in_time(commit_by)?;
    tx.commit().map_err(refs_commit_failed)?;
    Ok(Some(first.unwrap_or(0)))
}

pub(super) struct SqlitePending {
    store: Arc<Inner>,
    change: HeadChange,
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    item: ItemGuard,
}

#[async_trait]
impl PendingWrite for SqlitePending {
    async fn commit(self: Box<Self>, version: VersionEntry) -> Result<(), CommitError> {
        crate::engine::store::in_time(self.change.commit_by)?;
        let this = *self;
        let head = next_head(&this.change, this.previous.as_ref(), this.ov, this.cv, &version);
        let previous_ov = this.previous.as_ref().map(|p| p.ov);
        let collection = this.change.collection;
        let store = this.store;
        let item = this.item;
        let cv = head.cv;
        let joined = tokio::task::spawn_blocking(move || {
            // The item stays held until the transaction is over, even if the caller stops waiting.
            let _item = item;
            let done = commit_write(&mut lock_std(&store.conn), &collection, previous_ov, &head, &version);
            if done.is_ok() {
                store.signals.announce(&collection, cv);
            }
            done
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(CommitError::Unknown(Error::metadata(e))),
        }
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl MetaWrite for SqliteMetaStore {
    async fn ping(&self) -> Result<()> {
        self.with_conn(|conn| {
            conn.query_row("SELECT count(*) FROM sequences", [], |_| Ok(()))
                .map_err(map_sql)
        })
        .await
    }

    async fn prepare_collection(&self, _collection: &CollectionName, _indexed: &[String]) -> Result<()> {
        // The tables are shared by all collections and were created at open.
        Ok(())
    }

    async fn begin_write(&self, change: HeadChange) -> Result<Held> {
        let item = self
            .inner
            .items
            .acquire((change.collection.clone(), change.id.clone()))
            .await?;
        let (change, previous, cv) = self
            .with_conn(move |conn| {
                let previous = read_head(conn, &change.collection, &change.id)?;
                check_precondition(&change, previous.as_ref())?;
                // Allocated under the item lock, after the previous write's commit: cv increases
                // along each item's history.
                let cv = next_cv(conn, &change.collection)?;
                Ok((change, previous, cv))
            })
            .await?;
        let ov = previous.as_ref().map_or(0, |p| p.ov + 1);
        let write = Box::new(SqlitePending {
            store: self.inner.clone(),
            change,
            previous: previous.clone(),
            ov,
            cv,
            item,
        });
        Ok(Held {
            previous,
            ov,
            cv,
            together: 1,
            write,
        })
    }

    async fn version_by_request(&self, c: &CollectionName, key: &RequestKey) -> Result<Option<VersionEntry>> {
        let (c, key) = (c.clone(), key.clone());
        self.with_conn(move |conn| {
            let id: Option<String> = conn
                .prepare_cached("SELECT item_id FROM versions WHERE collection = ?1 AND request_id = ?2")
                .and_then(|mut s| s.query_row(params![c.as_str(), key.as_str()], |r| r.get(0)).optional())
                .map_err(map_sql)?;
            let Some(id) = id else { return Ok(None) };
            let id: ItemId = id.parse()?;
            let found = read_versions(
                conn,
                &id,
                "AND request_id = ?3",
                params![c.as_str(), id.as_str(), key.as_str()],
            )?;
            Ok(found.into_iter().next())
        })
        .await
    }
}
