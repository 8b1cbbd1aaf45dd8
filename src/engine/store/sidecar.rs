//! Per-item records kept beside an item's versions, not in them: a legal hold and an item's
//! wrapped data key.
//!
//! Neither is part of the item's history. Setting a hold is not a write of the item (no ov, no
//! cv, nothing in `/versions`), and a data key must be destroyable without touching the versions
//! it protects (crypto-shredding). Keeping them in the head instead would make every write carry
//! them forward and every store's write path know about them; a small keyed record per
//! (collection, kind, item) costs one point read where it is needed (retention, erase, an
//! encrypted read) and nothing on the other paths.

use async_trait::async_trait;

use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId};

/// What a side record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SideKind {
    /// A legal hold on the item (JSON `{reason, by, at}`).
    Hold,
    /// The item's data key, wrapped by the key-encryption key (JSON, see `engine::shred`).
    DataKey,
}

impl SideKind {
    /// The name stores keep it under.
    pub fn as_str(self) -> &'static str {
        match self {
            SideKind::Hold => "hold",
            SideKind::DataKey => "dataKey",
        }
    }
}

/// The side records of every collection: opaque text, one per (collection, kind, item).
#[async_trait]
pub trait MetaSidecar: Send + Sync + 'static {
    /// Store `record`, replacing the one there.
    async fn put_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId, record: &str) -> Result<()>;
    /// Store `record` unless one is there already; returns the record stored afterwards (the
    /// existing one, when two writers race, so both use the same).
    async fn create_side(
        &self,
        collection: &CollectionName,
        kind: SideKind,
        id: &ItemId,
        record: &str,
    ) -> Result<String>;
    async fn side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<Option<String>>;
    /// Remove the record; returns whether there was one.
    async fn delete_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<bool>;
}
