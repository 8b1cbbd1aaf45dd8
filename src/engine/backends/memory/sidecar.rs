//! Side records of the in-memory store (holds, wrapped data keys): a map, kept with the same
//! rules as the real stores so the conformance suite can hold them to it.

use async_trait::async_trait;

use super::meta::{MemoryMetaStore, Sides};
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId};
use crate::engine::store::sidecar::{MetaSidecar, SideKind};

impl MemoryMetaStore {
    fn sides(&self) -> std::sync::MutexGuard<'_, Sides> {
        self.sides.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl MetaSidecar for MemoryMetaStore {
    async fn put_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId, record: &str) -> Result<()> {
        self.sides()
            .insert((collection.clone(), kind, id.clone()), record.to_owned());
        Ok(())
    }

    async fn create_side(
        &self,
        collection: &CollectionName,
        kind: SideKind,
        id: &ItemId,
        record: &str,
    ) -> Result<String> {
        Ok(self
            .sides()
            .entry((collection.clone(), kind, id.clone()))
            .or_insert_with(|| record.to_owned())
            .clone())
    }

    async fn side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<Option<String>> {
        Ok(self.sides().get(&(collection.clone(), kind, id.clone())).cloned())
    }

    async fn delete_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<bool> {
        Ok(self.sides().remove(&(collection.clone(), kind, id.clone())).is_some())
    }
}
