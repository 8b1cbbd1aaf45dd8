//! Payload-store decorators for tests and benchmarks (cargo feature `testing`): [`Counting`]
//! counts and times the requests a store serves, [`Faulty`] makes it fail or stall on demand.
//!
//! They were hand-copied into the bench and the tests; one version here keeps them forwarding
//! every trait method (`clippy::missing_trait_methods` fails the build when a method with a
//! default is added and not forwarded), as object_store's `limit.rs`/`throttle.rs` do. The
//! default build leaves them out: nothing in the product decorates a store this way.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteRange, ObjectLockStatus, PayloadStore, PutOptions};
use crate::engine::error::{Error, Result};

/// Requests counted by [`Counting`] (or recorded by hand, for requests made around the engine),
/// with their total time.
#[derive(Debug, Default)]
pub struct RequestCounter {
    requests: AtomicU64,
    nanos: AtomicU64,
}

impl RequestCounter {
    /// Count one request that took `took`.
    pub fn record(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Requests so far and their total time.
    pub fn snapshot(&self) -> (u64, Duration) {
        (
            self.requests.load(Ordering::Relaxed),
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        )
    }
}

/// A payload store that counts and times every request to the store it wraps.
pub struct Counting<P: ?Sized> {
    inner: Arc<P>,
    counter: Arc<RequestCounter>,
}

impl<P: PayloadStore + ?Sized> Counting<P> {
    pub fn new(inner: Arc<P>, counter: Arc<RequestCounter>) -> Self {
        Counting { inner, counter }
    }

    async fn timed<T>(&self, request: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = request.await;
        self.counter.record(started.elapsed());
        out
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<P: PayloadStore + ?Sized> PayloadStore for Counting<P> {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.timed(self.inner.put(key, body)).await
    }
    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<()> {
        self.timed(self.inner.put_with(key, body, options)).await
    }
    async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        self.inner.object_lock_status().await
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<()> {
        self.inner.set_legal_hold(key, on).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.timed(self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        self.timed(self.inner.get_range(key, range)).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.timed(self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.timed(self.inner.list(prefix, start_after, limit)).await
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        // Presigning is local signing, not a request: nothing to count.
        self.inner.presign_get(key, ttl).await
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn exists(&self) -> Result<bool> {
        self.timed(self.inner.exists()).await
    }
    async fn create(&self) -> Result<()> {
        self.timed(self.inner.create()).await
    }
}

/// Fault switches for [`Faulty`], shared with the test that flips them.
pub struct Faults {
    pub fail_puts: AtomicBool,
    /// Payload writes whose key contains one of these fail (one item's S3 PUTs).
    pub fail_puts_containing: Mutex<Vec<String>>,
    /// Payload writes whose key contains one of these are held like `hold_puts` (one slow item).
    pub hold_puts_containing: Mutex<Vec<String>>,
    /// Payload reads whose key contains one of these are held like writes (a slow GET).
    pub hold_reads_containing: Mutex<Vec<String>>,
    /// How many payload writes are being held now.
    pub holding: AtomicUsize,
    /// Payload writes wait (like a stalled S3 PUT) until [`Faults::release_one`].
    pub hold_puts: AtomicBool,
    /// The n-th payload listing from now (1: the next one) is held like a write; 0: none.
    pub hold_listing: AtomicUsize,
    /// Signalled when a held write arrives.
    pub held: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_puts: AtomicBool::new(false),
            fail_puts_containing: Mutex::default(),
            hold_puts_containing: Mutex::default(),
            hold_reads_containing: Mutex::default(),
            holding: AtomicUsize::new(0),
            hold_puts: AtomicBool::new(false),
            hold_listing: AtomicUsize::new(0),
            held: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Faults {
    /// Let one held payload write go on.
    pub fn release_one(&self) {
        self.release.add_permits(1);
    }

    /// Wait here until [`Faults::release_one`], counted in `holding`.
    async fn hold(&self) {
        self.holding.fetch_add(1, Ordering::SeqCst);
        self.held.notify_one();
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
        self.holding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wait until `n` payload requests (writes, listings, reads) are held.
    pub async fn until_holding(&self, n: usize) {
        while self.holding.load(Ordering::SeqCst) < n {
            self.held.notified().await;
        }
    }
}

/// Whether `key` contains one of the strings in `list`.
fn names(list: &Mutex<Vec<String>>, key: &str) -> bool {
    list.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|s| key.contains(s.as_str()))
}

/// A payload store that fails writes on demand the way an unreachable S3 server does
/// (`Unavailable`), passing everything else through.
pub struct Faulty<P: ?Sized> {
    inner: Arc<P>,
    faults: Arc<Faults>,
}

impl<P: PayloadStore + ?Sized> Faulty<P> {
    pub fn new(inner: Arc<P>, faults: Arc<Faults>) -> Self {
        Faulty { inner, faults }
    }

    /// What the switched-on faults do to a PUT of `key`: hold it, or fail it.
    async fn before_put(&self, key: &str) -> Result<()> {
        if names(&self.faults.hold_puts_containing, key) || self.faults.hold_puts.load(Ordering::SeqCst) {
            self.faults.hold().await;
        }
        if names(&self.faults.fail_puts_containing, key) || self.faults.fail_puts.load(Ordering::SeqCst) {
            return Err(Error::payload("injected fault: connection refused"));
        }
        Ok(())
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<P: PayloadStore + ?Sized> PayloadStore for Faulty<P> {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.before_put(key).await?;
        self.inner.put(key, body).await
    }
    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<()> {
        self.before_put(key).await?;
        self.inner.put_with(key, body, options).await
    }
    async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        self.inner.object_lock_status().await
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<()> {
        self.inner.set_legal_hold(key, on).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        if names(&self.faults.hold_reads_containing, key) {
            self.faults.hold().await;
        }
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        if names(&self.faults.hold_reads_containing, key) {
            self.faults.hold().await;
        }
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let countdown = self
            .faults
            .hold_listing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if countdown == Ok(1) {
            self.faults.hold().await;
        }
        self.inner.list(prefix, start_after, limit).await
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        self.inner.presign_get(key, ttl).await
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn exists(&self) -> Result<bool> {
        self.inner.exists().await
    }
    async fn create(&self) -> Result<()> {
        self.inner.create().await
    }
}
