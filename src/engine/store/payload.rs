//! The payload store: object storage for the JSON of every version (one bucket, or directory,
//! per store instance), with what Object Lock needs.

use async_trait::async_trait;
use bytes::Bytes;

use crate::engine::error::Result;
use crate::engine::model::Timestamp;

/// Object storage for payloads: one bucket (or directory) per store instance.
#[async_trait]
pub trait PayloadStore: Send + Sync + 'static {
    /// Store `body` under `key`, replacing nothing: keys are unique per write attempt.
    async fn put(&self, key: &str, body: Bytes) -> Result<()>;
    /// `None` when the key does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Part of the object at `key` (one ranged GET on S3): a packed version's envelope, or a
    /// pack's footer. `None` when the key does not exist; a range past the object's end is
    /// cut at the end. The default reads the whole object, for stores where that costs the same.
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        Ok(self.get(key).await?.map(|body| range.slice(&body)))
    }
    /// Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Keys under `prefix` after `start_after`, at most `limit`, in the store's listing order:
    /// byte order on AWS S3, memory and local files, but not on every S3-compatible server
    /// (SeaweedFS lists a "directory"'s keys first). Paging by the last key seen visits every key
    /// once; callers must not depend on the order beyond that.
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// A URL that GETs `key` without credentials until `ttl` passes; `None` when this kind of
    /// store can't presign.
    async fn presign_get(&self, key: &str, ttl: std::time::Duration) -> Result<Option<String>>;
    /// Where the store is, for people (bucket name, directory); never a secret.
    fn location(&self) -> String;
    /// Whether the bucket (directory) exists.
    async fn exists(&self) -> Result<bool>;
    /// Create the bucket (directory); existing already is fine.
    async fn create(&self) -> Result<()>;
    /// [`PayloadStore::put`] with S3 Object Lock settings for the object. Stores that can't
    /// lock objects store it plainly: the engine's holds still keep the item (see
    /// `engine::hold`), and [`PayloadStore::object_lock_status`] says the bucket does not.
    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<()> {
        let _ = options;
        self.put(key, body).await
    }
    /// Put (or lift) an S3 Object Lock legal hold on every stored version of `key`; nothing on
    /// stores that can't lock objects.
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<()> {
        let _ = (key, on);
        Ok(())
    }
    /// Whether objects written here can really be locked (found by a probe on S3).
    async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        Ok(ObjectLockStatus::NotRequested)
    }
}

/// Which bytes of an object [`PayloadStore::get_range`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `len` bytes from `offset`.
    Slice { offset: u64, len: u64 },
    /// The last `len` bytes (all of a shorter object).
    Last(u64),
}

impl ByteRange {
    /// These bytes of a whole object.
    pub fn slice(&self, body: &Bytes) -> Bytes {
        let size = body.len() as u64;
        let (from, to) = match *self {
            ByteRange::Slice { offset, len } => (offset.min(size), offset.saturating_add(len).min(size)),
            ByteRange::Last(len) => (size.saturating_sub(len), size),
        };
        body.slice(from as usize..to as usize)
    }

    /// The HTTP `Range` header value.
    pub fn header(&self) -> String {
        match *self {
            ByteRange::Slice { offset, len } => format!("bytes={offset}-{}", offset + len.max(1) - 1),
            ByteRange::Last(len) => format!("bytes=-{len}"),
        }
    }
}

/// How one object is locked when written (S3 Object Lock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Retention: the object can't be deleted or overwritten before this time.
    pub retention: Option<(LockMode, Timestamp)>,
    /// A legal hold: the object can't be deleted until the hold is lifted.
    pub legal_hold: bool,
}

impl PutOptions {
    pub fn is_plain(&self) -> bool {
        self.retention.is_none() && !self.legal_hold
    }
}

/// S3 Object Lock's retention modes: GOVERNANCE can be lifted by a caller allowed to bypass it,
/// COMPLIANCE by nobody until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    /// The name S3 gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// What a bucket does with Object Lock, as [`PayloadStore::object_lock_status`] found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "status", content = "detail")]
pub enum ObjectLockStatus {
    /// The database did not ask for Object Lock (or the store is not S3).
    NotRequested,
    /// Asked for, but the bucket has no Object Lock configuration.
    NotEnabled,
    /// The bucket says it has Object Lock, but a delete naming the version id of a locked probe
    /// object succeeded: the server does not enforce it.
    NotEnforced(String),
    /// A delete of a locked probe object's version was refused.
    Enforced,
}
