//! The S3 payload store (any S3-compatible server: AWS, SeaweedFS, MinIO, Ceph…).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, timeout::TimeoutConfig};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::s3_error::s3_err;
use crate::engine::error::{Error, Failure, Result};
use crate::engine::store::{ByteRange, ObjectLockStatus, PayloadStore, PutOptions};

/// What is needed to reach an S3 endpoint. Secrets never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Connection {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub force_path_style: bool,
}

impl std::fmt::Debug for S3Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Connection")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

impl S3Connection {
    /// Build a client: create one per endpoint and share it (it pools connections).
    pub fn client(&self) -> Client {
        // Install ring as rustls' provider once, so nothing pulls in a C crypto library.
        crate::install_crypto_provider();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(self.force_path_style)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "chronos-config",
            ))
            // SigV4 already signs a SHA-256 of every body; extra CRC trailers only cost time and
            // trip up some S3-compatible servers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    // Below the 45 s a write may take to its commit (`store::rules::commit_window`): a
                    // PUT that slow fails as itself instead of making its write miss the window.
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .http_client(http)
            .build();
        Client::from_conf(config)
    }
}

/// One bucket of an S3 endpoint.
#[derive(Clone)]
pub struct S3PayloadStore {
    client: Client,
    bucket: String,
    /// The database asked for Object Lock: the bucket is created with it, and
    /// `object_lock_status` probes it (see `s3_lock.rs`).
    object_lock: bool,
}

impl S3PayloadStore {
    /// One GET of the whole object or, with `range`, of those bytes.
    async fn get_object(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Bytes>> {
        let started = std::time::Instant::now();
        let result = async {
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .set_range(range.map(|r| r.header()))
                .send()
                .await
            {
                Ok(out) => out,
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
                Err(e) => return Err(s3_err("get", key, e)),
            };
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| Error::payload(Failure::new(format!("get {key}: {e}"), e)))?;
            Ok(Some(body.into_bytes()))
        }
        .await;
        observe("get", started, &result);
        result
    }

    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3PayloadStore {
            client,
            bucket: bucket.into(),
            object_lock: false,
        }
    }

    /// Create the bucket with S3 Object Lock (and so versioning), and report on it.
    pub fn with_object_lock(mut self, object_lock: bool) -> Self {
        self.object_lock = object_lock;
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket if it does not exist. Returns whether it was created.
    pub async fn ensure_bucket(&self) -> Result<bool> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(false),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {}
            Err(e) => return Err(s3_err("head bucket", &self.bucket, e)),
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .set_object_lock_enabled_for_bucket(self.object_lock.then_some(true))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if e.err().is_bucket_already_owned_by_you() || e.err().is_bucket_already_exists() =>
            {
                Ok(false)
            }
            Err(e) => Err(s3_err("create bucket", &self.bucket, e)),
        }
    }

    /// Delete every object under `prefix`, then the bucket itself if nothing else is left in it
    /// (what others keep there is not the caller's to empty). A bucket that is not there counts
    /// as dropped. Returns whether the bucket was kept because it holds objects outside `prefix`.
    /// Irreversible: for a database's `deletionPolicy: Delete`.
    pub async fn drop_prefix(&self, prefix: &str) -> Result<bool> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let bucket = &self.bucket;
        loop {
            let listed = match self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(1000)
                .send()
                .await
            {
                Ok(l) => l,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_bucket()) => return Ok(false),
                Err(e) => return Err(s3_err("list", bucket, e)),
            };
            let ids: Vec<ObjectIdentifier> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                break;
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::payload(Failure::new(format!("delete objects {bucket}: {e}"), e)))?;
            self.client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_err("delete objects", bucket, e))?;
        }
        let others = match self.client.list_objects_v2().bucket(bucket).max_keys(1).send().await {
            Ok(l) => l.key_count().unwrap_or_default() > 0 || !l.contents().is_empty(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_bucket()) => return Ok(false),
            Err(e) => return Err(s3_err("list", bucket, e)),
        };
        if others {
            return Ok(true);
        }
        match self.client.delete_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(false),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| matches!(s.meta().code(), Some("NoSuchBucket" | "BucketNotEmpty"))) =>
            {
                Ok(false)
            }
            Err(e) => Err(s3_err("delete bucket", bucket, e)),
        }
    }
}

/// Backend call latency for /metrics.
fn observe<T>(call: &'static str, started: std::time::Instant, result: &Result<T>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(
        "chronos_backend_call_duration_seconds",
        "backend" => "s3", "call" => call, "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl PayloadStore for S3PayloadStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("put", key, e));
        observe("put", started, &result);
        result
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        self.get_object(key, Some(range)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("delete", key, e));
        observe("delete", started, &result);
        result
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| Error::validation("ttlSeconds", e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| s3_err("presign", key, e))?;
        Ok(Some(request.uri().to_owned()))
    }

    fn location(&self) -> String {
        format!("s3 bucket {}", self.bucket)
    }

    async fn exists(&self) -> Result<bool> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) => Err(s3_err("head bucket", &self.bucket, e)),
        }
    }

    async fn create(&self) -> Result<()> {
        self.ensure_bucket().await.map(|_| ())
    }

    async fn put_with(&self, key: &str, body: Bytes, options: &PutOptions) -> Result<()> {
        if !self.object_lock || options.is_plain() {
            return self.put(key, body).await;
        }
        let started = std::time::Instant::now();
        let result = super::s3_lock::put_locked(&self.client, &self.bucket, key, body, options).await;
        observe("put", started, &result);
        result
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<()> {
        if !self.object_lock {
            return Ok(());
        }
        super::s3_lock::set_legal_hold(&self.client, &self.bucket, key, on).await
    }

    async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        if !self.object_lock {
            return Ok(ObjectLockStatus::NotRequested);
        }
        super::s3_lock::probe(&self.client, &self.bucket).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .max_keys(limit.min(1000) as i32)
            .send()
            .await
            .map_err(|e| s3_err("list", prefix, e))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect())
    }
}
