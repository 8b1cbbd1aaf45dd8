//! Counters, tiering and retention on SQLite: counts over the version index, dropping inline data
//! from heads, and removing versions together with their tallies.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteMetaStore;
use super::rows::{from_json, map_sql, read_pruned, to_i64, to_json, to_u64};
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId, Op, PayloadRef};
use crate::engine::query::Filter;
use crate::engine::store::rules::HEAD_OVERHEAD;
use crate::engine::store::{MetaUpkeep, PrunedVersion, Repoint, TierBatch, TierQuery, repoint};

#[async_trait]
impl MetaUpkeep for SqliteMetaStore {
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

    async fn items_with_versions_matching(
        &self,
        c: &CollectionName,
        filter: &Filter,
        after_id: Option<&ItemId>,
        limit: usize,
    ) -> Result<Vec<ItemId>> {
        let (c, filter) = (c.clone(), filter.clone());
        let after = after_id.map(|a| a.as_str().to_owned()).unwrap_or_default();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT item_id, meta FROM versions WHERE collection = ?1 AND item_id > ?2 ORDER BY item_id, ov",
                )
                .map_err(map_sql)?;
            let rows = stmt
                .query_map(params![c.as_str(), after], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(map_sql)?;
            let mut ids: Vec<ItemId> = Vec::new();
            for row in rows {
                let (id, meta) = row.map_err(map_sql)?;
                if ids.len() >= limit {
                    break;
                }
                if ids.last().is_some_and(|last| last.as_str() == id) {
                    continue;
                }
                if filter.is_empty() || filter.matches(&from_json(&meta, "meta")?) {
                    ids.push(id.parse()?);
                }
            }
            Ok(ids)
        })
        .await
    }

    async fn put_erasure(&self, id: &str, record: &str) -> Result<()> {
        let (id, record) = (id.to_owned(), record.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO erasures (id, record) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                params![id, record],
            )
            .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn erasure_records(&self) -> Result<Vec<String>> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT record FROM erasures ORDER BY id")
                .map_err(map_sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(map_sql)?;
            rows.map(|r| r.map_err(map_sql)).collect()
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

    async fn pruned_counts(&self, c: &CollectionName) -> Result<HashMap<String, u64>> {
        let c = c.clone();
        self.with_conn(move |conn| Ok(read_pruned(conn, &c)?.1)).await
    }

    async fn mark_processed(&self, c: &CollectionName, query: &TierQuery) -> Result<TierBatch> {
        let c = c.clone();
        let TierQuery {
            older_than,
            only,
            after_id: after,
            limit,
            dry_run,
        } = query.clone();
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

    async fn repoint_payload(&self, c: &CollectionName, id: &ItemId, moving: Repoint<'_>) -> Result<u64> {
        let (c, id, write_id, to) = (c.clone(), id.clone(), moving.payload.1.to_owned(), moving.to.cloned());
        let (ov, from) = (moving.payload.0, moving.from.map(str::to_owned));
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(map_sql)?;
            let mut changed = 0;
            for (table, key) in [("versions", "ov"), ("heads", "item_id")] {
                let rows: Vec<(String, String)> = {
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "SELECT CAST({key} AS TEXT), payload_ref FROM {table} \
                             WHERE collection = ?1 AND item_id = ?2 AND payload_ref IS NOT NULL"
                        ))
                        .map_err(map_sql)?;
                    stmt.query_map(params![c.as_str(), id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                        .and_then(Iterator::collect)
                        .map_err(map_sql)?
                };
                for (row, text) in rows {
                    let mut r: PayloadRef = from_json(&text, "payload_ref")?;
                    let moving = Repoint {
                        payload: (ov, &write_id),
                        from: from.as_deref(),
                        to: to.as_ref(),
                    };
                    if repoint(&mut r, &moving) != Some(true) {
                        continue;
                    }
                    tx.execute(
                        &format!(
                            "UPDATE {table} SET payload_ref = ?4 WHERE collection = ?1 AND item_id = ?2 \
                             AND CAST({key} AS TEXT) = ?3"
                        ),
                        params![c.as_str(), id.as_str(), row, to_json(&r)?],
                    )
                    .map_err(map_sql)?;
                    changed += 1;
                }
            }
            tx.commit().map_err(map_sql)?;
            Ok(changed)
        })
        .await
    }

    async fn delete_versions(&self, c: &CollectionName, id: &ItemId, versions: &[PrunedVersion]) -> Result<u64> {
        let (c, id, versions) = (c.clone(), id.clone(), versions.to_vec());
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(map_sql)?;
            let (from, mut pruned) = read_pruned(&tx, &c)?;
            let mut n = 0;
            let mut highest = 0;
            for p in versions {
                let removed = tx
                    .execute(
                        "DELETE FROM versions WHERE collection = ?1 AND item_id = ?2 AND ov = ?3",
                        params![c.as_str(), id.as_str(), to_i64(p.ov, "ov")?],
                    )
                    .map_err(map_sql)? as u64;
                n += removed;
                if removed > 0 {
                    highest = highest.max(p.cv);
                }
                if removed > 0 && p.cv > from {
                    for name in p.counts {
                        *pruned.entry(name).or_default() += 1;
                    }
                }
            }
            tx.execute(
                "UPDATE sequences SET pruned = ?2, pruned_through = MAX(pruned_through, ?3) WHERE collection = ?1",
                params![c.as_str(), to_json(&pruned)?, to_i64(highest, "cv")?],
            )
            .map_err(map_sql)?;
            tx.commit().map_err(map_sql)?;
            Ok(n)
        })
        .await
    }
}
