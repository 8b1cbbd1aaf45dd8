//! Side records of the embedded store (holds, wrapped data keys): the `sides` table, one row per
//! (collection, kind, item).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteMetaStore;
use super::rows::map_sql;
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId};
use crate::engine::store::sidecar::{MetaSidecar, SideKind};

#[async_trait]
impl MetaSidecar for SqliteMetaStore {
    async fn put_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId, record: &str) -> Result<()> {
        let (c, i, r) = (collection.to_string(), id.to_string(), record.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO sides (collection, kind, item_id, record) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (collection, kind, item_id) DO UPDATE SET record = excluded.record",
                params![c, kind.as_str(), i, r],
            )
            .map_err(map_sql)?;
            Ok(())
        })
        .await
    }

    async fn create_side(
        &self,
        collection: &CollectionName,
        kind: SideKind,
        id: &ItemId,
        record: &str,
    ) -> Result<String> {
        let (c, i, r) = (collection.to_string(), id.to_string(), record.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO sides (collection, kind, item_id, record) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (collection, kind, item_id) DO NOTHING",
                params![c, kind.as_str(), i, r],
            )
            .map_err(map_sql)?;
            conn.query_row(
                "SELECT record FROM sides WHERE collection = ?1 AND kind = ?2 AND item_id = ?3",
                params![c, kind.as_str(), i],
                |row| row.get(0),
            )
            .map_err(map_sql)
        })
        .await
    }

    async fn side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<Option<String>> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT record FROM sides WHERE collection = ?1 AND kind = ?2 AND item_id = ?3",
                params![c, kind.as_str(), i],
                |row| row.get(0),
            )
            .optional()
            .map_err(map_sql)
        })
        .await
    }

    async fn delete_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<bool> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM sides WHERE collection = ?1 AND kind = ?2 AND item_id = ?3",
                    params![c, kind.as_str(), i],
                )
                .map_err(map_sql)?;
            Ok(n > 0)
        })
        .await
    }
}
