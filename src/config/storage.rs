//! Where a logical database's data lives, with its secrets revealed: what configuration and
//! routing resolve to, and what `connect` opens. Plain data, so configuration names no backend
//! type (`connect.rs` turns [`S3Access`] into the S3 store's connection).

use std::fmt;
use std::path::PathBuf;

/// Where a logical database keeps its data.
// Built once per database when its engine opens: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// SQLite + local files in a directory.
    Embedded { dir: PathBuf },
    /// MongoDB + S3.
    Remote(RemoteStorage),
}

/// A database on MongoDB + S3. `Debug` hides the MongoDB URI (it may carry a password) as
/// [`S3Access`]'s hides the keys.
#[derive(Clone, PartialEq)]
pub struct RemoteStorage {
    pub mongo_uri: String,
    pub db_name: String,
    pub s3: S3Access,
    pub json_bucket: String,
    pub content_bucket: String,
    pub backups_bucket: String,
    /// Buckets with S3 Object Lock (created so, and probed; see `engine::backends::s3_lock`).
    pub object_lock: bool,
}

impl fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("mongo_uri", &"<redacted>")
            .field("db_name", &self.db_name)
            .field("s3", &self.s3)
            .field("json_bucket", &self.json_bucket)
            .field("content_bucket", &self.content_bucket)
            .field("backups_bucket", &self.backups_bucket)
            .field("object_lock", &self.object_lock)
            .finish()
    }
}

/// What is needed to reach an S3 endpoint. Secrets never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Access {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub force_path_style: bool,
}

impl fmt::Debug for S3Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Access")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}
