//! Erasure records in the payload bucket: the append-only account of what was erased, who asked
//! and why, and the denylist that keeps a restore, a rebuild or a queued retry from bringing an
//! erased item back. One object per erasure, `chronos-erasures/<collection>/<erasure id>.json`
//! (under the database's prefix), written `started` — naming every item and version it will
//! erase — before anything is erased, and rewritten `done` at the end: a process killed midway
//! leaves a started record, which `Engine::resume_erasures` (or the same erase again) finishes.
//!
//! A record never names what was erased: no data, no metadata, and of a filter only its SHA-256
//! (a filter names the very subject whose data goes). What it keeps is the versions' places
//! (ov, cv, time), the counter names each counted toward (so counters and a rebuild's tallies
//! stay true) and a SHA-256 over the erased index entries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, Timestamp};
use crate::engine::store::PayloadStore;

/// Where erasure records live. `chronos…` can't be a collection's name, so no payload key starts
/// with it; scrub leaves the prefix alone.
pub const ERASURES_PREFIX: &str = "chronos-erasures/";

/// Where an erasure is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErasureStatus {
    /// Recorded, with everything it will erase; the work may be under way or cut short.
    Started,
    /// Every item named is erased.
    Done,
}

/// One erased version: its place, and the counters it counted toward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasedVersion {
    pub ov: u64,
    pub cv: u64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Counter names (`counters.rs`), kept as tallies like retention's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<String>,
}

/// One erased item and the versions the index held of it when the erasure started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasedItem {
    #[schema(value_type = String)]
    pub id: ItemId,
    pub versions: Vec<ErasedVersion>,
}

/// An erasure record (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Erasure {
    /// A UUIDv7, so records sort by when they started.
    pub id: String,
    pub database: String,
    #[schema(value_type = String)]
    pub collection: CollectionName,
    pub status: ErasureStatus,
    /// Who asked (the token's name when auth is on).
    pub actor: Option<String>,
    pub reason: String,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// The item asked for, for an erasure of one item.
    #[schema(value_type = Option<String>)]
    pub item: Option<ItemId>,
    /// Hex SHA-256 of the filter asked for (its JSON), for an erasure by filter.
    pub filter_sha256: Option<String>,
    pub items: Vec<ErasedItem>,
    /// How many index entries became tombstones.
    pub versions: u64,
    /// How many objects were deleted (payloads and content; counted when done).
    pub objects: u64,
    /// Hex SHA-256 over the erased index entries (id, ov, cv and data checksum of each, in order).
    pub sha256: String,
}

fn key(collection: &CollectionName, id: &str) -> String {
    format!("{ERASURES_PREFIX}{collection}/{id}.json")
}

/// Store (or replace: started, then done) an erasure record.
pub async fn write(store: &dyn PayloadStore, erasure: &Erasure) -> Result<()> {
    let body = serde_json::to_vec(erasure).map_err(|e| Error::Corrupt(format!("an erasure record: {e}")))?;
    store
        .put(&key(&erasure.collection, &erasure.id), Bytes::from(body))
        .await
}

/// Every erasure record of the database (of one collection, if given), oldest first. A record
/// of another database is refused, like another database's payload.
pub async fn all(
    store: &dyn PayloadStore,
    database: &str,
    collection: Option<&CollectionName>,
) -> Result<Vec<Erasure>> {
    let prefix = match collection {
        Some(c) => format!("{ERASURES_PREFIX}{c}/"),
        None => ERASURES_PREFIX.to_owned(),
    };
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = store.list(&prefix, after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else { break };
        for k in &keys {
            let Some(bytes) = store.get(k).await? else { continue };
            let e: Erasure = serde_json::from_slice(&bytes)
                .map_err(|err| Error::Corrupt(format!("{k}: not an erasure record: {err}")))?;
            if e.database != database || key(&e.collection, &e.id) != *k {
                return Err(Error::Corrupt(format!(
                    "{k}: the record names {}/{}",
                    e.database, e.collection
                )));
            }
            out.push(e);
        }
        after = Some(last);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
