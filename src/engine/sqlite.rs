//! The embedded metadata store on SQLite: the default when Chronos runs without MongoDB and S3.
//!
//! One database file holds three tables keyed by collection name: `heads` (one row per item),
//! `versions` (the version index) and `sequences` (one cv counter per collection). Meta and
//! function ids are stored as JSON text, timestamps as integer milliseconds.
//!
//! The store belongs to one process: an exclusive lock file next to the database makes a second
//! process fail at open. That lets a pending write hold its item with an in-process lock (as the
//! in-memory store does) instead of keeping a SQLite transaction open across the payload upload,
//! which would block every other writer of the database.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::OwnedMutexGuard;

use super::error::{Error, Result};
use super::model::{CollectionName, Head, ItemId, Op, RequestKey, RequestStamp, Timestamp, VersionEntry};
use super::query::Filter;
use super::store::rules::{HEAD_OVERHEAD, check_precondition, next_head, ref_head};
use super::store::{
    CommitError, HeadChange, HistoryPoint, ListQuery, MetaStore, NewData, PendingWrite, PrunedVersion, RefWrite,
    TierBatch,
};

/// Bumped whenever the tables change; a database from a newer build is refused, not misread.
const SCHEMA_VERSION: i64 = 4;

/// How long a write waits for another write of the same item before reporting contention.
const ITEM_WAIT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE sequences (
    collection TEXT NOT NULL PRIMARY KEY,
    cv INTEGER NOT NULL,
    counters_from INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE heads (
    collection TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ov INTEGER NOT NULL,
    cv INTEGER NOT NULL,
    write_id TEXT NOT NULL,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    function_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    meta TEXT NOT NULL,
    inline_data TEXT,
    PRIMARY KEY (collection, item_id)
) STRICT;
CREATE TABLE versions (
    collection TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ov INTEGER NOT NULL,
    cv INTEGER NOT NULL,
    op TEXT NOT NULL,
    at INTEGER NOT NULL,
    actor TEXT,
    reason TEXT,
    write_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    meta TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (collection, item_id, ov)
) STRICT;
";

/// Schema 2: idempotency keys on versions, and the retry queue with its dead letters.
const MIGRATE_2: &str = "
ALTER TABLE versions ADD COLUMN request_id TEXT;
ALTER TABLE versions ADD COLUMN request_hash TEXT;
CREATE UNIQUE INDEX versions_request ON versions (collection, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE queue (
    id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    lease_until INTEGER,
    claim_token TEXT,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    result TEXT,
    updated_at INTEGER NOT NULL,
    job TEXT NOT NULL
) STRICT;
CREATE INDEX queue_due ON queue (status, due_at);
CREATE TABLE dead_letters (
    id TEXT NOT NULL PRIMARY KEY,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    job TEXT NOT NULL
) STRICT;
";

const HEAD_COLUMNS: &str = "ov, cv, write_id, inserted_at, updated_at, deleted_at, function_ids, \
                            state, size, checksum, meta, inline_data, payload_ref";
const VERSION_COLUMNS: &str =
    "ov, cv, op, at, actor, reason, write_id, size, checksum, meta, deleted, request_id, request_hash, payload_ref";

/// Schema changes after version 1, in order; entry `i` takes a database from version `i + 1` to
/// `i + 2`. Only additive changes, so a database is upgraded in place at open.
const MIGRATIONS: &[&str] = &[
    // 2: idempotency keys on versions, and the retry queue with its dead letters.
    MIGRATE_2,
    // 3: restore by reference. A JSON `PayloadRef`; NULL = the version's own payload object.
    "ALTER TABLE heads ADD COLUMN payload_ref TEXT; ALTER TABLE versions ADD COLUMN payload_ref TEXT;",
    // 4: retention's tallies per counter name since `counters_from` (JSON object; NULL = none).
    "ALTER TABLE sequences ADD COLUMN pruned TEXT;",
];

#[derive(Clone)]
pub struct SqliteMetaStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// One connection: SQLite serialises writers anyway, and this keeps the store simple.
    conn: Mutex<Connection>,
    /// How often the connection was taken: tests check that long work gives it up between steps.
    #[cfg(test)]
    taken: std::sync::atomic::AtomicUsize,
    items: ItemLocks,
    /// Declared last so it is released only after the connection has closed.
    _lock: File,
}

fn lock_std<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteMetaStore {
    /// Open (or create) the database at `path`, taking the exclusive lock `<path>.lock`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::metadata(format!("cannot open lock file {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::metadata(format!(
                    "{} is in use by another Chronos process (it holds {}); stop that process or \
                     use another data directory",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::metadata(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }

        let mut conn = Connection::open(path).map_err(map_sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(map_sql)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(map_sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Unsupported(format!(
                "SQLite could not use write-ahead logging for {} (journal mode `{mode}`)",
                path.display()
            )));
        }
        // In WAL mode NORMAL may lose the last commits on power loss; an acknowledged write must not.
        conn.pragma_update(None, "synchronous", "FULL").map_err(map_sql)?;
        create_schema(&mut conn)?;
        Ok(SqliteMetaStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                #[cfg(test)]
                taken: Default::default(),
                items: ItemLocks::default(),
                _lock: lock,
            }),
        })
    }

    pub(crate) async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        #[cfg(test)]
        inner.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || f(&mut lock_std(&inner.conn)))
            .await
            .map_err(Error::metadata)?
    }

    /// Run `f` in an immediate transaction on the connection: committed when `f` succeeds,
    /// rolled back when it fails.
    pub(crate) async fn in_transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_sql)?;
            let out = f(&tx)?;
            tx.commit().map_err(map_sql)?;
            Ok(out)
        })
        .await
    }
}

fn create_schema(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_sql)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(map_sql)?;
    match version {
        0..SCHEMA_VERSION => {
            if version == 0 {
                tx.execute_batch(SCHEMA).map_err(map_sql)?;
            }
            for step in &MIGRATIONS[(version.max(1) - 1) as usize..] {
                tx.execute_batch(step).map_err(map_sql)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(map_sql)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(Error::Unsupported(format!(
                "the database has schema version {other}; this build of Chronos knows version \
                 {SCHEMA_VERSION} (was it written by a newer Chronos?)"
            )));
        }
    }
    tx.commit().map_err(map_sql)
}

pub(crate) fn map_sql(e: rusqlite::Error) -> Error {
    use rusqlite::Error as E;
    match &e {
        E::InvalidColumnType(..) | E::FromSqlConversionFailure(..) | E::IntegralValueOutOfRange(..) => {
            Error::Corrupt(e.to_string())
        }
        _ if matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        ) =>
        {
            Error::Corrupt(e.to_string())
        }
        _ => Error::metadata(e),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Corrupt(format!("{what} {n} does not fit the database")))
}

fn to_u64(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::Corrupt(format!("stored {what} {n} is negative")))
}

fn to_time(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| Error::Corrupt(format!("stored time {ms}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::validation("meta", e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored {what}: {e}")))
}

/// A head row as stored, before its values are checked.
struct HeadRow {
    ov: i64,
    cv: i64,
    write_id: String,
    inserted_at: i64,
    updated_at: i64,
    deleted_at: Option<i64>,
    function_ids: String,
    state: String,
    size: i64,
    checksum: String,
    meta: String,
    inline: Option<String>,
    payload_ref: Option<String>,
}

impl HeadRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(HeadRow {
            ov: r.get(0)?,
            cv: r.get(1)?,
            write_id: r.get(2)?,
            inserted_at: r.get(3)?,
            updated_at: r.get(4)?,
            deleted_at: r.get(5)?,
            function_ids: r.get(6)?,
            state: r.get(7)?,
            size: r.get(8)?,
            checksum: r.get(9)?,
            meta: r.get(10)?,
            inline: r.get(11)?,
            payload_ref: r.get(12)?,
        })
    }

    fn into_head(self, id: &ItemId) -> Result<Head> {
        Ok(Head {
            id: id.clone(),
            ov: to_u64(self.ov, "ov")?,
            cv: to_u64(self.cv, "cv")?,
            write_id: self.write_id,
            inserted_at: to_time(self.inserted_at)?,
            updated_at: to_time(self.updated_at)?,
            deleted_at: self.deleted_at.map(to_time).transpose()?,
            function_ids: from_json(&self.function_ids, "function ids")?,
            state: self.state.parse()?,
            size: to_u64(self.size, "size")?,
            checksum: self.checksum,
            meta: from_json(&self.meta, "meta")?,
            inline: self.inline,
            payload_ref: self
                .payload_ref
                .map(|r| from_json(&r, "payload reference"))
                .transpose()?,
        })
    }
}

/// A version row as stored, before its values are checked.
struct VersionRow {
    ov: i64,
    cv: i64,
    op: String,
    at: i64,
    actor: Option<String>,
    reason: Option<String>,
    write_id: String,
    size: i64,
    checksum: String,
    meta: String,
    deleted: bool,
    request_id: Option<String>,
    request_hash: Option<String>,
    payload_ref: Option<String>,
}

impl VersionRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(VersionRow {
            ov: r.get(0)?,
            cv: r.get(1)?,
            op: r.get(2)?,
            at: r.get(3)?,
            actor: r.get(4)?,
            reason: r.get(5)?,
            write_id: r.get(6)?,
            size: r.get(7)?,
            checksum: r.get(8)?,
            meta: r.get(9)?,
            deleted: r.get(10)?,
            request_id: r.get(11)?,
            request_hash: r.get(12)?,
            payload_ref: r.get(13)?,
        })
    }

    fn into_version(self, id: &ItemId) -> Result<VersionEntry> {
        Ok(VersionEntry {
            id: id.clone(),
            ov: to_u64(self.ov, "ov")?,
            cv: to_u64(self.cv, "cv")?,
            op: self.op.parse()?,
            at: to_time(self.at)?,
            actor: self.actor,
            reason: self.reason,
            write_id: self.write_id,
            size: to_u64(self.size, "size")?,
            checksum: self.checksum,
            meta: from_json::<Map<String, Value>>(&self.meta, "meta")?,
            deleted: self.deleted,
            request: match (self.request_id, self.request_hash) {
                (Some(key), Some(fingerprint)) => Some(RequestStamp {
                    key: key.parse()?,
                    fingerprint,
                }),
                _ => None,
            },
            payload_ref: self
                .payload_ref
                .map(|r| from_json(&r, "payload reference"))
                .transpose()?,
        })
    }
}

fn read_head(conn: &Connection, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {HEAD_COLUMNS} FROM heads WHERE collection = ?1 AND item_id = ?2"
        ))
        .and_then(|mut s| s.query_row(params![c.as_str(), id.as_str()], HeadRow::read).optional())
        .map_err(map_sql)?;
    row.map(|r| r.into_head(id)).transpose()
}

fn read_versions(
    conn: &Connection,
    id: &ItemId,
    sql_filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<VersionEntry>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE collection = ?1 AND item_id = ?2 {sql_filter}"
        ))
        .and_then(|mut s| {
            s.query_map(params, VersionRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(map_sql)?;
    rows.into_iter().map(|r| r.into_version(id)).collect()
}

fn next_cv(conn: &Connection, c: &CollectionName) -> Result<u64> {
    let cv: i64 = conn
        .prepare_cached(
            "INSERT INTO sequences (collection, cv) VALUES (?1, 1) \
             ON CONFLICT (collection) DO UPDATE SET cv = cv + 1 RETURNING cv",
        )
        .and_then(|mut s| s.query_row(params![c.as_str()], |r| r.get(0)))
        .map_err(map_sql)?;
    to_u64(cv, "cv")
}

/// Write the new head and its version entry in one transaction.
fn commit_write(
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
        ))
    })()
    .map_err(not_committed)?;
    let (ov, cv, function_ids, size, meta, v_ov, v_cv, v_size, v_meta, previous_ov) = head_values;
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
    ];
    // The head must still be the one the write started from; the item lock guarantees it unless
    // something outside this process changed the database.
    let sql = match previous_ov {
        None => {
            "INSERT INTO heads (collection, item_id, ov, cv, write_id, inserted_at, updated_at, \
             deleted_at, function_ids, state, size, checksum, meta, inline_data) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14 WHERE ?15 IS NULL \
             ON CONFLICT (collection, item_id) DO NOTHING"
        }
        Some(_) => {
            "UPDATE heads SET ov = ?3, cv = ?4, write_id = ?5, inserted_at = ?6, updated_at = ?7, \
             deleted_at = ?8, function_ids = ?9, state = ?10, size = ?11, checksum = ?12, \
             meta = ?13, inline_data = ?14 WHERE collection = ?1 AND item_id = ?2 AND ov = ?15"
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
         checksum, meta, deleted, request_id, request_hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        ])
    })
    .map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => not_committed(key_taken(&v.id)),
        _ => sql_not_committed(e),
    })?;
    tx.commit().map_err(commit_failed)
}

/// What a failed COMMIT means for the transaction.
fn commit_failed(e: rusqlite::Error) -> CommitError {
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
fn refs_commit_failed(e: rusqlite::Error) -> Error {
    match commit_failed(e) {
        CommitError::Unknown(error) => Error::OutcomeUnknown(error.to_string()),
        CommitError::NotCommitted { error, .. } => error,
    }
}

/// Apply a batch of appends by reference in one transaction; `Ok(None)` (and nothing written)
/// when a head is no longer at its expected ov.
/// A version insert that broke a constraint: the item is held (or its head matched), so
/// (item, ov) can't clash — the idempotency key's uniqueness did.
fn key_taken(id: &ItemId) -> Error {
    Error::AlreadyExists(format!("a write with the idempotency key of {id}"))
}

/// A collection's counter mark and retention's tallies since it.
fn read_pruned(conn: &Connection, c: &CollectionName) -> Result<(u64, HashMap<String, u64>)> {
    let row: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT counters_from, pruned FROM sequences WHERE collection = ?1",
            params![c.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map_sql)?;
    let (from, pruned) = row.unwrap_or((0, None));
    let pruned = match pruned {
        Some(json) => from_json(&json, "pruned")?,
        None => HashMap::new(),
    };
    Ok((to_u64(from, "counters_from")?, pruned))
}

fn append_refs(conn: &mut Connection, c: &CollectionName, writes: &[RefWrite]) -> Result<Option<u64>> {
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
        // The entry whose data a restore takes must still be indexed (retention removes entries
        // in a transaction too, so it can't slip in between).
        if let Some(source) = w.source {
            let source = to_i64(source, "ov")?;
            let indexed = tx
                .prepare_cached("SELECT 1 FROM versions WHERE collection = ?1 AND item_id = ?2 AND ov = ?3")
                .and_then(|mut st| st.exists(params![c.as_str(), v.id.as_str(), source]))
                .map_err(map_sql)?;
            if !indexed {
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
    tx.commit().map_err(refs_commit_failed)?;
    Ok(Some(first.unwrap_or(0)))
}

type ItemKey = (CollectionName, ItemId);
type LockMap = Arc<Mutex<HashMap<ItemKey, Arc<tokio::sync::Mutex<()>>>>>;

/// One async lock per item being written, held by its pending write like a row lock. Entries
/// are removed when the last user lets go, so the map stays as small as the set of busy items.
#[derive(Default)]
struct ItemLocks(LockMap);

struct ItemGuard {
    map: LockMap,
    key: ItemKey,
    slot: Option<Arc<tokio::sync::Mutex<()>>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl ItemLocks {
    async fn acquire(&self, key: ItemKey) -> Result<ItemGuard> {
        let slot = lock_std(&self.0).entry(key.clone()).or_default().clone();
        let mut guard = ItemGuard {
            map: self.0.clone(),
            key,
            slot: Some(slot.clone()),
            held: None,
        };
        match tokio::time::timeout(ITEM_WAIT, slot.lock_owned()).await {
            Ok(held) => {
                guard.held = Some(held);
                Ok(guard)
            }
            Err(_) => Err(Error::Contended(format!("{}/{}", guard.key.0, guard.key.1))),
        }
    }
}

impl Drop for ItemGuard {
    fn drop(&mut self) {
        let mut map = lock_std(&self.map);
        self.held = None;
        if let Some(slot) = self.slot.take()
            // Only the map and this guard still know the lock: nobody is waiting for it. Clones
            // are only made under the map's mutex, which we hold.
            && Arc::strong_count(&slot) == 2
        {
            map.remove(&self.key);
        }
    }
}

struct SqlitePending {
    store: Arc<Inner>,
    change: HeadChange,
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    item: ItemGuard,
}

#[async_trait]
impl PendingWrite for SqlitePending {
    fn previous(&self) -> Option<&Head> {
        self.previous.as_ref()
    }
    fn ov(&self) -> u64 {
        self.ov
    }
    fn cv(&self) -> u64 {
        self.cv
    }

    async fn set_data(&mut self, data: NewData) -> Result<()> {
        self.change.data = Some(data);
        Ok(())
    }

    async fn commit(self: Box<Self>, version: VersionEntry) -> Result<(), CommitError> {
        super::store::in_time(self.change.commit_by)?;
        let this = *self;
        let head = next_head(&this.change, this.previous.as_ref(), this.ov, this.cv, &version);
        let previous_ov = this.previous.as_ref().map(|p| p.ov);
        let collection = this.change.collection;
        let store = this.store;
        let item = this.item;
        let joined = tokio::task::spawn_blocking(move || {
            // The item stays held until the transaction is over, even if the caller stops waiting.
            let _item = item;
            commit_write(&mut lock_std(&store.conn), &collection, previous_ov, &head, &version)
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
impl MetaStore for SqliteMetaStore {
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

    async fn begin_write(&self, change: HeadChange) -> Result<Box<dyn PendingWrite>> {
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
        Ok(Box::new(SqlitePending {
            store: self.inner.clone(),
            change,
            previous,
            ov,
            cv,
            item,
        }))
    }

    async fn append_by_reference(&self, c: &CollectionName, writes: Vec<RefWrite>) -> Result<Option<u64>> {
        let mut ids: Vec<ItemId> = writes.iter().map(|w| w.version.id.clone()).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != writes.len() {
            return Err(Error::validation("writes", "one write per item"));
        }
        // Held like pending writes hold them (in id order, so two restores can't deadlock): a
        // single write that began before us must commit against the head it saw.
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            held.push(self.inner.items.acquire((c.clone(), id)).await?);
        }
        let c = c.clone();
        self.with_conn(move |conn| {
            let _held = held;
            append_refs(conn, &c, &writes)
        })
        .await
    }

    async fn head(&self, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        let (c, id) = (c.clone(), id.clone());
        self.with_conn(move |conn| read_head(conn, &c, &id)).await
    }

    async fn version(&self, c: &CollectionName, id: &ItemId, ov: u64) -> Result<Option<VersionEntry>> {
        let Ok(ov) = i64::try_from(ov) else {
            return Ok(None);
        };
        let (c, id) = (c.clone(), id.clone());
        self.with_conn(move |conn| {
            let found = read_versions(conn, &id, "AND ov = ?3", params![c.as_str(), id.as_str(), ov])?;
            Ok(found.into_iter().next())
        })
        .await
    }

    async fn version_as_of(&self, c: &CollectionName, id: &ItemId, at: Timestamp) -> Result<Option<VersionEntry>> {
        let (c, id) = (c.clone(), id.clone());
        self.with_conn(move |conn| {
            let found = read_versions(
                conn,
                &id,
                "AND at <= ?3 ORDER BY ov DESC LIMIT 1",
                params![c.as_str(), id.as_str(), at.as_millisecond()],
            )?;
            Ok(found.into_iter().next())
        })
        .await
    }

    async fn list_heads(&self, c: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        let order = if q.descending { "DESC" } else { "ASC" };
        let cmp = if q.descending { "<" } else { ">" };
        let sql = Arc::new(format!(
            "SELECT {HEAD_COLUMNS}, item_id FROM heads WHERE collection = ?1 AND (?2 IS NULL OR item_id {cmp} ?2) \
             AND (?3 OR deleted_at IS NULL) ORDER BY item_id {order} LIMIT ?4"
        ));
        // The filter runs in process over pages in id order: the embedded store serves small
        // collections, and this keeps one evaluator for every in-process store. Each page takes
        // the one connection on its own, so a selective filter over a large collection holds
        // other requests (writes included) out for one page at a time, not for the whole scan.
        let mut found = Vec::new();
        let mut cursor = q.after_id.as_ref().map(|i| i.as_str().to_owned());
        let page = q.limit.max(256) as i64;
        loop {
            let (c, sql, after, include_deleted) = (c.clone(), sql.clone(), cursor.clone(), q.include_deleted);
            let rows = self
                .with_conn(move |conn| {
                    conn.prepare_cached(&sql)
                        .and_then(|mut s| {
                            s.query_map(params![c.as_str(), after, include_deleted, page], |r| {
                                Ok((HeadRow::read(r)?, r.get::<_, String>(13)?))
                            })?
                            .collect::<rusqlite::Result<Vec<_>>>()
                        })
                        .map_err(map_sql)
                })
                .await?;
            let exhausted = (rows.len() as i64) < page;
            for (row, id) in rows {
                cursor = Some(id.clone());
                let head = row.into_head(&id.parse()?)?;
                if q.filter.matches(&head.meta) {
                    found.push(head);
                    if found.len() == q.limit {
                        return Ok(found);
                    }
                }
            }
            if exhausted {
                return Ok(found);
            }
        }
    }

    async fn versions_at(&self, c: &CollectionName, ids: &[ItemId], point: HistoryPoint) -> Result<Vec<VersionEntry>> {
        let (c, ids) = (c.clone(), ids.to_vec());
        self.with_conn(move |conn| {
            let (column, bound) = match point {
                HistoryPoint::Cv(cv) => ("cv", to_i64(cv, "cv")?),
                HistoryPoint::At(at) => ("at", at.as_millisecond()),
            };
            let filter = format!("AND {column} <= ?3 ORDER BY ov DESC LIMIT 1");
            let mut found = Vec::new();
            for id in &ids {
                found.extend(read_versions(
                    conn,
                    id,
                    &filter,
                    params![c.as_str(), id.as_str(), bound],
                )?);
            }
            Ok(found)
        })
        .await
    }

    async fn count_versions(&self, c: &CollectionName, after_cv: u64, filter: &Filter) -> Result<HashMap<Op, u64>> {
        let (c, filter) = (c.clone(), filter.clone());
        self.with_conn(move |conn| {
            let mut counts = HashMap::new();
            let mut stmt = conn
                .prepare_cached("SELECT op, meta FROM versions WHERE collection = ?1 AND cv > ?2")
                .map_err(map_sql)?;
            let rows = stmt
                .query_map(params![c.as_str(), to_i64(after_cv, "cv")?], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(map_sql)?;
            for row in rows {
                let (op, meta) = row.map_err(map_sql)?;
                if filter.is_empty() || filter.matches(&from_json(&meta, "meta")?) {
                    *counts.entry(op.parse()?).or_default() += 1;
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn counters_from(&self, c: &CollectionName) -> Result<u64> {
        let c = c.clone();
        self.with_conn(move |conn| {
            let n: Option<i64> = conn
                .query_row(
                    "SELECT counters_from FROM sequences WHERE collection = ?1",
                    params![c.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_sql)?;
            to_u64(n.unwrap_or(0), "counters_from")
        })
        .await
    }

    async fn reset_counters(&self, c: &CollectionName) -> Result<u64> {
        let c = c.clone();
        self.with_conn(move |conn| {
            let n: i64 = conn
                .query_row(
                    "INSERT INTO sequences (collection, cv, counters_from) VALUES (?1, 0, 0) \
                     ON CONFLICT (collection) DO UPDATE SET counters_from = cv, pruned = NULL RETURNING counters_from",
                    params![c.as_str()],
                    |r| r.get(0),
                )
                .map_err(map_sql)?;
            to_u64(n, "counters_from")
        })
        .await
    }

    async fn mark_processed(
        &self,
        c: &CollectionName,
        older_than: Timestamp,
        only: Option<&ItemId>,
        after_id: Option<&ItemId>,
        limit: usize,
        dry_run: bool,
    ) -> Result<TierBatch> {
        let (c, only, after) = (c.clone(), only.cloned(), after_id.cloned());
        self.in_transaction(move |tx| {
            let rows: Vec<(String, i64)> = tx
                .prepare_cached(
                    "SELECT item_id, COALESCE(LENGTH(inline_data), 0) FROM heads \
                     WHERE collection = ?1 AND state = 'new' AND updated_at < ?2 \
                     AND (?3 IS NULL OR item_id = ?3) AND (?4 IS NULL OR item_id > ?4) \
                     ORDER BY item_id LIMIT ?5",
                )
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            c.as_str(),
                            older_than.as_millisecond(),
                            only.as_ref().map(ItemId::as_str),
                            after.as_ref().map(ItemId::as_str),
                            limit as i64
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .collect()
                })
                .map_err(map_sql)?;
            let mut batch = TierBatch::default();
            for (id, inline) in rows {
                let inline = to_u64(inline, "size")?;
                batch.bytes_before += HEAD_OVERHEAD + inline;
                batch.bytes_after += HEAD_OVERHEAD + if dry_run { inline } else { 0 };
                if !dry_run {
                    tx.execute(
                        "UPDATE heads SET inline_data = NULL, state = 'processed' \
                         WHERE collection = ?1 AND item_id = ?2 AND state = 'new'",
                        params![c.as_str(), id],
                    )
                    .map_err(map_sql)?;
                }
                batch.ids.push(id.parse()?);
            }
            Ok(batch)
        })
        .await
    }

    async fn delete_versions(&self, c: &CollectionName, id: &ItemId, versions: &[PrunedVersion]) -> Result<u64> {
        let (c, id, versions) = (c.clone(), id.clone(), versions.to_vec());
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(map_sql)?;
            let (from, mut pruned) = read_pruned(&tx, &c)?;
            let mut n = 0;
            for p in versions {
                let removed = tx
                    .execute(
                        "DELETE FROM versions WHERE collection = ?1 AND item_id = ?2 AND ov = ?3",
                        params![c.as_str(), id.as_str(), to_i64(p.ov, "ov")?],
                    )
                    .map_err(map_sql)? as u64;
                n += removed;
                if removed > 0 && p.cv > from {
                    for name in p.counts {
                        *pruned.entry(name).or_default() += 1;
                    }
                }
            }
            tx.execute(
                "UPDATE sequences SET pruned = ?2 WHERE collection = ?1",
                params![c.as_str(), to_json(&pruned)?],
            )
            .map_err(map_sql)?;
            tx.commit().map_err(map_sql)?;
            Ok(n)
        })
        .await
    }

    async fn pruned_counts(&self, c: &CollectionName) -> Result<HashMap<String, u64>> {
        let c = c.clone();
        self.with_conn(move |conn| Ok(read_pruned(conn, &c)?.1)).await
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

    async fn count_items(&self, c: &CollectionName) -> Result<u64> {
        let c = c.clone();
        self.with_conn(move |conn| {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM heads WHERE collection = ?1",
                    params![c.as_str()],
                    |r| r.get(0),
                )
                .map_err(map_sql)?;
            to_u64(n, "count")
        })
        .await
    }

    async fn versions(
        &self,
        c: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>> {
        let after = match after_ov.map(i64::try_from) {
            None => -1,
            Some(Ok(after)) => after,
            Some(Err(_)) => return Ok(vec![]),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (c, id) = (c.clone(), id.clone());
        self.with_conn(move |conn| {
            read_versions(
                conn,
                &id,
                "AND ov > ?3 ORDER BY ov LIMIT ?4",
                params![c.as_str(), id.as_str(), after, limit],
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{Content, Op, now};
    use crate::engine::store::NewData;

    /// Review L1: a COMMIT of appends by reference that failed after writing may still have
    /// happened, so it is `OutcomeUnknown` (never queued without the caller's key); a busy
    /// COMMIT wrote nothing.
    #[test]
    fn a_failed_commit_of_appends_by_reference_keeps_its_outcome_unknown() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let io = refs_commit_failed(failure(rusqlite::ffi::SQLITE_IOERR));
        assert!(matches!(io, Error::OutcomeUnknown(_)), "{io:?}");
        let busy = refs_commit_failed(failure(rusqlite::ffi::SQLITE_BUSY));
        assert!(matches!(busy, Error::Unavailable { .. }), "{busy:?}");
    }

    fn change(id: &str, op: Op, expected_ov: Option<u64>) -> HeadChange {
        HeadChange {
            collection: "c".parse().unwrap(),
            id: id.parse().unwrap(),
            op,
            expected_ov,
            write_id: uuid::Uuid::now_v7().simple().to_string(),
            at: now(),
            data: Some(NewData {
                content: Content::from_json("{}".into()),
                meta: Map::new(),
                inline: true,
            }),
            function_id: None,
            request_key: None,
            commit_by: jiff::Timestamp::MAX,
        }
    }

    fn entry(p: &dyn PendingWrite, c: &HeadChange) -> VersionEntry {
        VersionEntry {
            id: c.id.clone(),
            ov: p.ov(),
            cv: p.cv(),
            op: c.op,
            at: c.at,
            actor: None,
            reason: None,
            write_id: c.write_id.clone(),
            size: 2,
            checksum: Content::from_json("{}".into()).checksum,
            meta: Map::new(),
            deleted: false,
            request: None,
            payload_ref: None,
        }
    }

    fn busy_items(s: &SqliteMetaStore) -> usize {
        lock_std(&s.inner.items.0).len()
    }

    /// A filter that matches nothing made the listing scan the whole collection while holding
    /// the one connection, so every other request, writes included, waited for it (review L7).
    #[tokio::test]
    async fn a_long_listing_gives_the_connection_up_between_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteMetaStore::open(&dir.path().join("db")).unwrap();
        for i in 0..600 {
            let c = change(&format!("i{i:04}"), Op::Create, None);
            let p = s.begin_write(c.clone()).await.unwrap();
            let v = entry(p.as_ref(), &c);
            p.commit(v).await.unwrap();
        }
        let none = crate::engine::query::Filter::parse(&serde_json::json!({"k": "no such value"}), &|_| true).unwrap();
        let q = ListQuery {
            filter: none,
            after_id: None,
            limit: 10,
            descending: false,
            include_deleted: false,
        };
        let before = s.inner.taken.load(std::sync::atomic::Ordering::Relaxed);
        assert!(s.list_heads(&"c".parse().unwrap(), &q).await.unwrap().is_empty());
        let taken = s.inner.taken.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            taken >= 3,
            "600 heads in pages of 256: the connection was taken {taken} time(s)"
        );
    }

    #[tokio::test]
    async fn item_locks_are_held_until_commit_or_drop_and_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteMetaStore::open(&dir.path().join("db")).unwrap();
        let create = change("a", Op::Create, None);
        let p = s.begin_write(create.clone()).await.unwrap();
        assert_eq!(busy_items(&s), 1);
        // A second writer of the same item waits for the first.
        let update = change("a", Op::Update, Some(0));
        let waiting = tokio::spawn({
            let s = SqliteMetaStore { inner: s.inner.clone() };
            async move { s.begin_write(update).await.map(|p| p.ov()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        let v = entry(p.as_ref(), &create);
        p.commit(v).await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 1);
        assert_eq!(busy_items(&s), 0, "released locks are removed");

        let other = s.begin_write(change("b", Op::Create, None)).await.unwrap();
        drop(other);
        assert_eq!(busy_items(&s), 0);
        assert_eq!(
            s.head(&"c".parse().unwrap(), &"b".parse().unwrap()).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_schema_1_database_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO versions (collection, item_id, ov, cv, op, at, write_id, size, checksum, meta, deleted) \
                 VALUES ('c', 'a', 0, 1, 'CREATE', 0, 'w', 2, 'x', '{}', 0)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = SqliteMetaStore::open(&path).unwrap();
        let v = s
            .version(&"c".parse().unwrap(), &"a".parse().unwrap(), 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v.write_id.as_str(), v.request), ("w", None));
        let key: RequestKey = "k".parse().unwrap();
        assert_eq!(s.version_by_request(&"c".parse().unwrap(), &key).await.unwrap(), None);
    }

    #[test]
    fn a_database_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(SqliteMetaStore::open(&path), Err(Error::Unsupported(_))));
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO heads (collection, item_id, ov, cv, write_id, inserted_at, updated_at, function_ids, \
                 state, size, checksum, meta) VALUES ('c', 'i', 0, 1, 'w', 0, 0, '[]', 'new', 2, 'x', '{}')",
                [],
            )
            .unwrap();
        }
        let s = SqliteMetaStore::open(&path).unwrap();
        let head = s
            .head(&"c".parse().unwrap(), &"i".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((head.ov, head.write_id.as_str(), head.payload_ref), (0, "w", None));
        let version: i64 = lock_std(&s.inner.conn)
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
