//! Rows as stored and back: the columns read for heads and versions, the checked conversions of
//! integers, times and JSON text, and the small reads every part of the store shares.

use std::collections::HashMap;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use serde_json::{Map, Value};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, RequestStamp, Timestamp, VersionEntry};

pub(super) const HEAD_COLUMNS: &str = "ov, cv, write_id, inserted_at, updated_at, deleted_at, function_ids, \
                            state, size, checksum, meta, inline_data, payload_ref";

pub(super) const VERSION_COLUMNS: &str =
    "ov, cv, op, at, actor, reason, write_id, size, checksum, meta, deleted, request_id, request_hash, payload_ref";

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

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub(super) fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Corrupt(format!("{what} {n} does not fit the database")))
}

pub(super) fn to_u64(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::Corrupt(format!("stored {what} {n} is negative")))
}

pub(super) fn to_time(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| Error::Corrupt(format!("stored time {ms}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::validation("meta", e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored {what}: {e}")))
}

/// A head row as stored, before its values are checked.
pub(super) struct HeadRow {
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
    pub(super) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
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

    pub(super) fn into_head(self, id: &ItemId) -> Result<Head> {
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
pub(super) struct VersionRow {
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
    pub(super) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
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

    pub(super) fn into_version(self, id: &ItemId) -> Result<VersionEntry> {
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

pub(super) fn read_head(conn: &Connection, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {HEAD_COLUMNS} FROM heads WHERE collection = ?1 AND item_id = ?2"
        ))
        .and_then(|mut s| s.query_row(params![c.as_str(), id.as_str()], HeadRow::read).optional())
        .map_err(map_sql)?;
    row.map(|r| r.into_head(id)).transpose()
}

/// The statement [`read_versions`] runs: an item's versions (`?1` collection, `?2` item) and
/// `sql_filter`.
pub(super) fn versions_sql(sql_filter: &str) -> String {
    format!("SELECT {VERSION_COLUMNS} FROM versions WHERE collection = ?1 AND item_id = ?2 {sql_filter}")
}

pub(super) fn read_versions(
    conn: &Connection,
    id: &ItemId,
    sql_filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<VersionEntry>> {
    let rows = conn
        .prepare_cached(&versions_sql(sql_filter))
        .and_then(|mut s| {
            s.query_map(params, VersionRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(map_sql)?;
    rows.into_iter().map(|r| r.into_version(id)).collect()
}

/// Versions of every item with cv above `after`, in cv order (along the `(collection, cv)`
/// index); at most `limit`.
pub(super) fn read_versions_after(
    conn: &Connection,
    c: &CollectionName,
    after: i64,
    limit: i64,
) -> Result<Vec<VersionEntry>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS}, item_id FROM versions WHERE collection = ?1 AND cv > ?2 ORDER BY cv LIMIT ?3"
        ))
        .and_then(|mut s| {
            s.query_map(params![c.as_str(), after, limit], |r| {
                Ok((VersionRow::read(r)?, r.get::<_, String>(14)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(map_sql)?;
    rows.into_iter()
        .map(|(row, id)| row.into_version(&id.parse()?))
        .collect()
}

pub(super) fn next_cv(conn: &Connection, c: &CollectionName) -> Result<u64> {
    let cv: i64 = conn
        .prepare_cached(
            "INSERT INTO sequences (collection, cv) VALUES (?1, 1) \
             ON CONFLICT (collection) DO UPDATE SET cv = cv + 1 RETURNING cv",
        )
        .and_then(|mut s| s.query_row(params![c.as_str()], |r| r.get(0)))
        .map_err(map_sql)?;
    to_u64(cv, "cv")
}

/// A collection's counter mark and retention's tallies since it.
pub(super) fn read_pruned(conn: &Connection, c: &CollectionName) -> Result<(u64, HashMap<String, u64>)> {
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
