//! Rebuilding the in-memory store from the buckets: the loads are plain map inserts, but they keep
//! the same rules as the real stores (an entry loaded twice stays as it was, an idempotency key
//! on two versions is refused), so the conformance suite can hold the others to them.

use async_trait::async_trait;

use super::meta::MemoryMetaStore;
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, VersionEntry};
use crate::engine::store::{MetaRebuild, RebuiltSequences};

#[async_trait]
impl MetaRebuild for MemoryMetaStore {
    async fn holds_data(&self) -> Result<bool> {
        Ok(self
            .lock()
            .values()
            .any(|c| !c.heads.is_empty() || !c.versions.is_empty()))
    }

    async fn load_versions(&self, collection: &CollectionName, entries: &[VersionEntry]) -> Result<()> {
        let mut all = self.lock();
        let coll = all.entry(collection.clone()).or_default();
        // Checked before anything is inserted, so a refused load changes nothing.
        let mut keys = std::collections::HashMap::new();
        for v in entries {
            let Some(r) = &v.request else { continue };
            let at = (v.id.clone(), v.ov);
            let recorded = coll.requests.get(&r.key).or_else(|| keys.get(&r.key));
            if recorded.is_some_and(|other| other != &at) {
                return Err(Error::RequestKeyTaken(format!(
                    "idempotency key {} of {collection}/{} v{}",
                    r.key, v.id, v.ov
                )));
            }
            keys.insert(r.key.clone(), at);
        }
        for v in entries {
            let at = (v.id.clone(), v.ov);
            if coll.versions.contains_key(&at) {
                continue;
            }
            if let Some(r) = &v.request {
                coll.requests.insert(r.key.clone(), at.clone());
            }
            coll.versions.insert(at, v.clone());
        }
        Ok(())
    }

    async fn load_heads(&self, collection: &CollectionName, heads: &[Head]) -> Result<()> {
        let mut all = self.lock();
        let coll = all.entry(collection.clone()).or_default();
        for h in heads {
            coll.heads.insert(h.id.clone(), h.clone());
        }
        Ok(())
    }

    async fn load_sequences(&self, collection: &CollectionName, state: &RebuiltSequences) -> Result<()> {
        let mut all = self.lock();
        let coll = all.entry(collection.clone()).or_default();
        coll.cv = coll.cv.max(state.last_cv);
        coll.counters_from = state.counters_from;
        coll.pruned = state.pruned.clone();
        coll.pruned_through = coll.pruned_through.max(state.pruned_through);
        Ok(())
    }

    async fn rebuild_progress(&self) -> Result<Option<String>> {
        Ok(self.progress().clone())
    }

    async fn set_rebuild_progress(&self, progress: Option<&str>) -> Result<()> {
        *self.progress() = progress.map(str::to_owned);
        Ok(())
    }
}

impl MemoryMetaStore {
    fn progress(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.rebuild_progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}
