//! S3 Object Lock on the S3 payload store: writing an object with retention or a legal hold, and
//! finding out whether the server really enforces it.
//!
//! Some S3-compatible servers accept the Object Lock calls and headers and then let a delete
//! naming the object's version id through anyway (SeaweedFS has been reported to; see
//! `docs/design.md`, "Holds and Object Lock", for what the test server did). So nothing is
//! taken from the bucket's configuration alone: [`probe`] locks a scratch object and tries to
//! delete it.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockLegalHoldStatus, ObjectLockMode};
use base64::Engine as _;
use bytes::Bytes;
use md5::Digest as _;

use super::s3_error::s3_err;
use crate::engine::error::Result;
use crate::engine::model::now;
use crate::engine::store::{LockMode, ObjectLockStatus, PutOptions};

fn mode(m: LockMode) -> ObjectLockMode {
    match m {
        LockMode::Governance => ObjectLockMode::Governance,
        LockMode::Compliance => ObjectLockMode::Compliance,
    }
}

/// S3 wants a Content-MD5 (or a checksum) on any PUT that sets Object Lock values.
fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

/// PUT `key` with the Object Lock values of `options`.
pub(super) async fn put_locked(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    options: &PutOptions,
) -> Result<()> {
    let (retention_mode, until) = match options.retention {
        Some((m, until)) => (Some(mode(m)), Some(DateTime::from_secs(until.as_second()))),
        None => (None, None),
    };
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .content_md5(content_md5(&body))
        .set_object_lock_mode(retention_mode)
        .set_object_lock_retain_until_date(until)
        .set_object_lock_legal_hold_status(options.legal_hold.then_some(ObjectLockLegalHoldStatus::On))
        .body(ByteStream::from(body))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| s3_err("put", key, e))
}

/// Put (or lift) a legal hold on every version of `key` (a versioned bucket keeps them all).
pub(super) async fn set_legal_hold(client: &Client, bucket: &str, key: &str, on: bool) -> Result<()> {
    let status = if on {
        ObjectLockLegalHoldStatus::On
    } else {
        ObjectLockLegalHoldStatus::Off
    };
    let listed = client
        .list_object_versions()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .map_err(|e| s3_err("list versions", key, e))?;
    for v in listed.versions().iter().filter(|v| v.key() == Some(key)) {
        client
            .put_object_legal_hold()
            .bucket(bucket)
            .key(key)
            .set_version_id(v.version_id().map(str::to_owned))
            .legal_hold(
                aws_sdk_s3::types::ObjectLockLegalHold::builder()
                    .status(status.clone())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err("put legal hold", key, e))?;
    }
    Ok(())
}

/// Whether the bucket enforces Object Lock: its configuration must say `Enabled`, and a delete
/// naming the version id of a scratch object under a one-day GOVERNANCE retention must be
/// refused. The scratch object is removed afterwards with a governance bypass.
pub(super) async fn probe(client: &Client, bucket: &str) -> Result<ObjectLockStatus> {
    match client.get_object_lock_configuration().bucket(bucket).send().await {
        Ok(out) => {
            let enabled = out.object_lock_configuration().and_then(|c| c.object_lock_enabled());
            if enabled != Some(&ObjectLockEnabled::Enabled) {
                return Ok(ObjectLockStatus::NotEnabled);
            }
        }
        // AWS answers a bucket without it with 404 ObjectLockConfigurationNotFoundError.
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
            return Ok(ObjectLockStatus::NotEnabled);
        }
        Err(e) => return Err(s3_err("get object lock configuration", bucket, e)),
    }
    // `_chronos/` can't collide with data: collection names start with a letter or digit.
    let key = format!("_chronos/lock-probe/{}", uuid::Uuid::now_v7().simple());
    let body = Bytes::from_static(b"{\"probe\":\"object lock\"}");
    let until = now() + jiff::SignedDuration::from_hours(24);
    let put = client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .content_md5(content_md5(&body))
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(DateTime::from_secs(until.as_second()))
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| s3_err("put", &key, e))?;
    let Some(version) = put.version_id().map(str::to_owned) else {
        let _ = client.delete_object().bucket(bucket).key(&key).send().await;
        return Ok(ObjectLockStatus::NotEnforced(
            "the server gave the locked probe object no version id".into(),
        ));
    };
    let delete = client
        .delete_object()
        .bucket(bucket)
        .key(&key)
        .version_id(&version)
        .send()
        .await;
    match delete {
        Ok(_) => {
            let still_there = client
                .head_object()
                .bucket(bucket)
                .key(&key)
                .version_id(&version)
                .send()
                .await
                .is_ok();
            let what = if still_there {
                "succeeded, though the version is still there"
            } else {
                "succeeded and removed it"
            };
            Ok(ObjectLockStatus::NotEnforced(format!(
                "a DeleteObject naming the version id of a probe object under GOVERNANCE retention {what}"
            )))
        }
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 403 => {
            tracing::debug!(code = e.err().code(), "the locked probe object's delete was refused");
            // Leaves the probe in place for a day if this key may not bypass governance.
            let _ = client
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .version_id(&version)
                .bypass_governance_retention(true)
                .send()
                .await;
            Ok(ObjectLockStatus::Enforced)
        }
        Err(e) => Err(s3_err("delete version", &key, e)),
    }
}
