//! A logical database's share of its buckets: every object key starts with `<database>/`.
//!
//! Routed databases use their backend's three buckets unless they override them, so several
//! databases' payloads, content and manifests can sit side by side in one bucket. [`Prefixed`]
//! puts a store's whole key space under the database's prefix, and [`Engine::for_database`]
//! applies it to all three stores at once: keys, listings (scrub), retention manifests and
//! presigned URLs then stay inside the database without any of them knowing about it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::error::{Error, Result};
use super::model::ItemId;
use super::settings::EngineSettings;
use super::store::queue::QueueStore;
use super::store::{ByteRange, MetaStore, ObjectLockStatus, PayloadStore, PutOptions};
use super::versioning::Engine;

/// A payload store seen through one database's prefix: keys given are relative to
/// `<database>/`, and listings return relative keys of that prefix only.
pub struct Prefixed {
    inner: Arc<dyn PayloadStore>,
    prefix: String,
}

impl Prefixed {
    /// `prefix` comes from [`database_prefix`].
    pub fn new(inner: Arc<dyn PayloadStore>, prefix: &str) -> Self {
        Prefixed {
            inner,
            prefix: prefix.to_owned(),
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// `<database>/`, for a database key: no `/`, and not `.` or `..`, so one database's prefix can
/// never contain another's keys. Whatever removes a database's objects uses it too.
pub fn database_prefix(database: &str) -> Result<String> {
    // Database keys follow the item-id rules (routing checks them the same way).
    database
        .parse::<ItemId>()
        .map_err(|_| Error::validation("database", format!("`{database}` is not a database key")))?;
    Ok(format!("{database}/"))
}

#[async_trait]
impl PayloadStore for Prefixed {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.inner.put(&self.full(key), body).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.get(&self.full(key)).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        self.inner.get_range(&self.full(key), range).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.full(key)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let start_after = start_after.map(|s| self.full(s));
        let keys = self
            .inner
            .list(&self.full(prefix), start_after.as_deref(), limit)
            .await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }

    async fn presign_get(&self, key: &str, ttl: std::time::Duration) -> Result<Option<String>> {
        self.inner.presign_get(&self.full(key), ttl).await
    }

    fn location(&self) -> String {
        format!("{} (under {})", self.inner.location(), self.prefix)
    }

    async fn exists(&self) -> Result<bool> {
        self.inner.exists().await
    }

    async fn create(&self) -> Result<()> {
        self.inner.create().await
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<()> {
        self.inner.put_with(&self.full(key), body, options).await
    }

    async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        self.inner.object_lock_status().await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<()> {
        self.inner.set_legal_hold(&self.full(key), on).await
    }
}

/// The backends of one logical database, as they come from the configuration.
pub struct Stores {
    pub meta: Arc<dyn MetaStore>,
    /// The JSON bucket (version payloads).
    pub payloads: Arc<dyn PayloadStore>,
    /// The backups bucket (retention manifests).
    pub backups: Arc<dyn PayloadStore>,
    /// The content bucket (content properties).
    pub content: Arc<dyn PayloadStore>,
    pub queue: Arc<dyn QueueStore>,
}

impl Engine {
    /// The engine of logical database `database` (its key, as the API addresses it) over
    /// `stores`: every object it writes, reads, lists or presigns is under `<database>/` in each
    /// bucket, and its payload envelopes and manifests name `database`. Buckets may therefore be
    /// shared with other databases.
    pub fn for_database(database: &str, stores: Stores, settings: EngineSettings) -> Result<Engine> {
        let prefix = database_prefix(database)?;
        let own = |store: Arc<dyn PayloadStore>| -> Arc<dyn PayloadStore> { Arc::new(Prefixed::new(store, &prefix)) };
        Ok(Engine::new(stores.meta, own(stores.payloads), settings)
            .with_database(database)
            .with_backups(own(stores.backups))
            .with_content(own(stores.content))
            .with_queue(stores.queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backends::MemoryPayloadStore;

    #[tokio::test]
    async fn keys_listings_and_prefixes_stay_inside_the_database() {
        let bucket = Arc::new(MemoryPayloadStore::new());
        let a = Prefixed::new(bucket.clone(), &database_prefix("a").unwrap());
        let ab = Prefixed::new(bucket.clone(), &database_prefix("ab").unwrap());
        a.put("c/x/v0/w.json", Bytes::from_static(b"a")).await.unwrap();
        ab.put("c/x/v0/w.json", Bytes::from_static(b"ab")).await.unwrap();
        assert_eq!(
            bucket.list("", None, 10).await.unwrap(),
            ["a/c/x/v0/w.json", "ab/c/x/v0/w.json"]
        );
        assert_eq!(a.get("c/x/v0/w.json").await.unwrap().unwrap(), "a");
        assert_eq!(a.list("", None, 10).await.unwrap(), ["c/x/v0/w.json"]);
        assert_eq!(ab.list("c/", None, 10).await.unwrap(), ["c/x/v0/w.json"]);
        assert!(a.list("", Some("c/x/v0/w.json"), 10).await.unwrap().is_empty());
        a.delete("c/x/v0/w.json").await.unwrap();
        assert_eq!(ab.get("c/x/v0/w.json").await.unwrap().unwrap(), "ab");
        for bad in ["", ".", "..", "a/b", "../a"] {
            assert!(database_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
