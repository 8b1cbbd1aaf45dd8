//! The in-memory payload store: a sorted map of keys to bytes, for tests. Not durable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use crate::engine::error::Result;
use crate::engine::store::{ByteRange, PayloadStore};

#[derive(Default, Clone)]
pub struct MemoryPayloadStore {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl MemoryPayloadStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PayloadStore for MemoryPayloadStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        // Suspend like real I/O would, so concurrent writers really interleave in tests.
        tokio::task::yield_now().await;
        self.lock().insert(key.to_owned(), body);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.lock().get(key).cloned())
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        Ok(self.lock().get(key).map(|body| range.slice(body)))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    async fn presign_get(&self, _key: &str, _ttl: std::time::Duration) -> Result<Option<String>> {
        Ok(None)
    }

    fn location(&self) -> String {
        "memory".to_owned()
    }

    async fn exists(&self) -> Result<bool> {
        Ok(true)
    }

    async fn create(&self) -> Result<()> {
        Ok(())
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .filter(|k| start_after.is_none_or(|s| k.as_str() > s))
            .take(limit)
            .cloned()
            .collect())
    }
}
