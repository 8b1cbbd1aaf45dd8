//! The retry queue in the embedded store: tables `queue` and `dead_letters` of the same
//! database file, each change one SQLite transaction.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteMetaStore;
use super::rows::map_sql;
use crate::engine::error::{Error, Result};
use crate::engine::model::Timestamp;
use crate::engine::store::queue::{Job, Operation, OperationId, OperationStatus, QueueStats, QueueStore, Settlement};
use crate::engine::store::rules::lease_end;

/// Finished operations stay readable this long, then go at the next claim that finds nothing.
const KEEP_FINISHED_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct SqliteQueue {
    store: SqliteMetaStore,
}

impl SqliteQueue {
    pub fn new(store: SqliteMetaStore) -> Self {
        SqliteQueue { store }
    }
}

const COLUMNS: &str = "status, due_at, attempts, last_error, result, updated_at, job";

/// status, due_at, attempts, last_error, result, updated_at, job
type RowValues = (String, i64, i64, Option<String>, Option<String>, i64, String);

fn time(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| Error::Corrupt(format!("bad time in the queue: {e}")))
}

fn read(r: &Row<'_>) -> rusqlite::Result<RowValues> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn from_row(row: RowValues) -> Result<Operation> {
    let (status, due_at, attempts, last_error, result, updated_at, job) = row;
    let job: Job =
        serde_json::from_str(&job).map_err(|e| Error::Corrupt(format!("a queued operation can't be read: {e}")))?;
    Ok(Operation {
        job,
        status: status.parse()?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        due_at: time(due_at)?,
        last_error,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("operation result: {e}")))?,
        updated_at: time(updated_at)?,
    })
}

/// [`COLUMNS`] for a dead letter (its status, and its due time, are implied).
const DEAD_COLUMNS: &str = "'dead', updated_at, attempts, last_error, NULL, updated_at, job";

/// Move a dead letter back to the queue with `status` (attempts reset when `fresh`); `false`
/// when `id` is not a dead letter.
fn undead(tx: &Connection, id: &str, status: OperationStatus, fresh: bool, now_ms: i64) -> Result<bool> {
    let attempts = if fresh { "0" } else { "attempts" };
    let moved = tx
        .execute(
            &format!(
                "INSERT INTO queue (id, status, due_at, attempts, last_error, updated_at, job) \
                 SELECT id, ?3, ?2, {attempts}, last_error, ?2, job FROM dead_letters WHERE id = ?1"
            ),
            params![id, now_ms, status.as_str()],
        )
        .map_err(map_sql)?;
    tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])
        .map_err(map_sql)?;
    Ok(moved == 1)
}

fn get(conn: &Connection, id: &str) -> Result<Option<Operation>> {
    let live = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM queue WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], read).optional())
        .map_err(map_sql)?;
    if let Some(row) = live {
        return from_row(row).map(Some);
    }
    let dead = conn
        .prepare_cached(&format!("SELECT {DEAD_COLUMNS} FROM dead_letters WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], read).optional())
        .map_err(map_sql)?;
    dead.map(from_row).transpose()
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(e.to_string()))
}

#[async_trait]
impl QueueStore for SqliteQueue {
    async fn enqueue(&self, op: &Operation) -> Result<()> {
        let op = op.clone();
        self.store
            .with_conn(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO queue (id, status, due_at, attempts, last_error, result, updated_at, job) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        op.job.id.as_str(),
                        op.status.as_str(),
                        op.due_at.as_millisecond(),
                        op.attempts,
                        op.last_error,
                        op.result.as_ref().map(json).transpose().ok().flatten(),
                        op.updated_at.as_millisecond(),
                        json(&op.job).unwrap_or_default(),
                    ])
                })
                .map_err(map_sql)?;
                Ok(())
            })
            .await
    }

    async fn claim(&self, now: Timestamp, lease: Duration) -> Result<Option<(Operation, String)>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let until = lease_end(now, lease).as_millisecond();
        let now_ms = now.as_millisecond();
        self.store
            .in_transaction(move |tx| {
                let id: Option<String> = tx
                    .prepare_cached(
                        "SELECT id FROM queue WHERE (status = 'pending' AND due_at <= ?1) \
                         OR (status = 'running' AND lease_until < ?1) ORDER BY due_at LIMIT 1",
                    )
                    .and_then(|mut s| s.query_row(params![now_ms], |r| r.get(0)).optional())
                    .map_err(map_sql)?;
                let Some(id) = id else {
                    tx.execute(
                        "DELETE FROM queue WHERE status IN ('succeeded', 'cancelled') AND updated_at < ?1",
                        params![now_ms - KEEP_FINISHED_MS],
                    )
                    .map_err(map_sql)?;
                    return Ok(None);
                };
                tx.execute(
                    "UPDATE queue SET status = 'running', lease_until = ?2, claim_token = ?3, \
                     attempts = attempts + 1, updated_at = ?4 WHERE id = ?1",
                    params![id, until, token, now_ms],
                )
                .map_err(map_sql)?;
                let op = get(tx, &id)?;
                Ok(op.map(|op| (op, token)))
            })
            .await
    }

    async fn settle(&self, id: &OperationId, token: &str, settlement: Settlement, now: Timestamp) -> Result<bool> {
        let (id, token) = (id.as_str().to_owned(), token.to_owned());
        let now_ms = now.as_millisecond();
        self.store
            .in_transaction(move |tx| {
                let held = "id = ?1 AND status = 'running' AND claim_token = ?2";
                let changed = match settlement {
                    Settlement::Succeeded(result) => tx
                        .execute(
                            &format!(
                                "UPDATE queue SET status = 'succeeded', result = ?3, updated_at = ?4, \
                                 lease_until = NULL, claim_token = NULL WHERE {held}"
                            ),
                            params![id, token, json(&result)?, now_ms],
                        )
                        .map_err(map_sql)?,
                    Settlement::Retry { due_at, error } => tx
                        .execute(
                            &format!(
                                "UPDATE queue SET status = 'pending', due_at = ?3, last_error = ?4, \
                                 updated_at = ?5, lease_until = NULL, claim_token = NULL WHERE {held}"
                            ),
                            params![id, token, due_at.as_millisecond(), error, now_ms],
                        )
                        .map_err(map_sql)?,
                    Settlement::Dead { error } => {
                        let moved = tx
                            .execute(
                                &format!(
                                    "INSERT INTO dead_letters (id, attempts, last_error, updated_at, job) \
                                     SELECT id, attempts, ?3, ?4, job FROM queue WHERE {held}"
                                ),
                                params![id, token, error, now_ms],
                            )
                            .map_err(map_sql)?;
                        tx.execute(&format!("DELETE FROM queue WHERE {held}"), params![id, token])
                            .map_err(map_sql)?;
                        moved
                    }
                };
                Ok(changed == 1)
            })
            .await
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>> {
        let id = id.as_str().to_owned();
        self.store.with_conn(move |conn| get(conn, &id)).await
    }

    async fn list(&self, status: OperationStatus, after: Option<&OperationId>, limit: usize) -> Result<Vec<Operation>> {
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(1000);
        self.store
            .with_conn(move |conn| {
                let rows = if status == OperationStatus::Dead {
                    conn.prepare_cached(&format!(
                        "SELECT {DEAD_COLUMNS} FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![after, limit], read)?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                } else {
                    conn.prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM queue WHERE status = ?3 AND id > ?1 ORDER BY id LIMIT ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![after, limit, status.as_str()], read)?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                }
                .map_err(map_sql)?;
                rows.into_iter().map(from_row).collect()
            })
            .await
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.store
            .with_conn(|conn| {
                let count = |sql: &str| -> Result<u64> {
                    let n: i64 = conn.query_row(sql, [], |r| r.get(0)).map_err(map_sql)?;
                    Ok(u64::try_from(n).unwrap_or(0))
                };
                Ok(QueueStats {
                    pending: count("SELECT count(*) FROM queue WHERE status = 'pending'")?,
                    running: count("SELECT count(*) FROM queue WHERE status = 'running'")?,
                    dead: count("SELECT count(*) FROM dead_letters")?,
                })
            })
            .await
    }

    async fn revive(&self, id: &OperationId, now: Timestamp) -> Result<bool> {
        let id = id.as_str().to_owned();
        let now_ms = now.as_millisecond();
        self.store
            .in_transaction(move |tx| {
                let moved = undead(tx, &id, OperationStatus::Pending, true, now_ms)?;
                Ok(moved)
            })
            .await
    }

    async fn cancel(&self, id: &OperationId, now: Timestamp) -> Result<Option<OperationStatus>> {
        let id = id.as_str().to_owned();
        let now_ms = now.as_millisecond();
        self.store
            .in_transaction(move |tx| {
                let was = match get(tx, &id)? {
                    None => None,
                    Some(op) => {
                        match op.status {
                            OperationStatus::Dead => {
                                undead(tx, &id, OperationStatus::Cancelled, false, now_ms)?;
                            }
                            OperationStatus::Pending => {
                                tx.execute(
                                    "UPDATE queue SET status = 'cancelled', updated_at = ?2 WHERE id = ?1",
                                    params![id, now_ms],
                                )
                                .map_err(map_sql)?;
                            }
                            _ => {}
                        }
                        Some(op.status)
                    }
                };
                Ok(was)
            })
            .await
    }

    async fn forget(&self, id: &OperationId) -> Result<()> {
        let id = id.as_str().to_owned();
        self.store
            .in_transaction(move |tx| {
                tx.execute("DELETE FROM queue WHERE id = ?1", params![id])
                    .map_err(map_sql)?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])
                    .map_err(map_sql)?;
                Ok(())
            })
            .await
    }
}
