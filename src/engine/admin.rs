//! Administration: is everything reachable and usable, do the buckets exist, and can they be
//! created. Each check says what is wrong and what to do about it.

use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::error::{Error, Result};
use super::store::PayloadStore;
use super::versioning::Engine;

/// One finding of [`Engine::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `metadata`, `payloads`, `backups` or `objectLock`.
    pub component: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when `ok` is false.
    pub recommendation: Option<String>,
}

/// A store's bucket (directory), as found or created by [`Engine::ensure_stores`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub role: String,
    pub location: String,
    pub existed: bool,
    /// Created by this call (never with `dryRun`).
    pub created: bool,
}

impl Engine {
    fn stores(&self) -> Vec<(&'static str, &dyn PayloadStore)> {
        let mut stores: Vec<(&'static str, &dyn PayloadStore)> = vec![("payloads", self.payload_store())];
        if let Some(b) = self.manifests().backups() {
            stores.push(("backups", b.as_ref()));
        }
        stores
    }

    /// Check every backend: the metadata store answers and supports transactions; each bucket
    /// exists and accepts a write, a read and a delete of a probe object.
    pub async fn validate(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        checks.push(match self.meta().ping().await {
            Ok(()) => Check {
                component: "metadata".into(),
                ok: true,
                detail: "reachable, transactions supported".into(),
                recommendation: None,
            },
            Err(e) => Check {
                component: "metadata".into(),
                ok: false,
                recommendation: Some(match e {
                    Error::Unsupported(_) => {
                        "run MongoDB as a replica set (one node is enough) or a sharded cluster".into()
                    }
                    _ => "check mongoUris (host, port, credentials) and that MongoDB is running".into(),
                }),
                detail: e.to_string(),
            },
        });
        for (role, store) in self.stores() {
            checks.push(match probe(store).await {
                Ok(ms) => Check {
                    component: role.into(),
                    ok: true,
                    detail: format!("{}: write, read and delete work ({ms} ms)", store.location()),
                    recommendation: None,
                },
                Err(ProbeError::Missing) => Check {
                    component: role.into(),
                    ok: false,
                    detail: format!("{} does not exist", store.location()),
                    recommendation: Some(
                        "create it: POST /v1/admin/databases/{db}/buckets with createIfMissing".into(),
                    ),
                },
                Err(ProbeError::Failed(e)) => Check {
                    component: role.into(),
                    ok: false,
                    detail: format!("{}: {e}", store.location()),
                    recommendation: Some(
                        "check the endpoint and credentials; the key needs PutObject, GetObject, DeleteObject and \
                         ListBucket on the bucket"
                            .into(),
                    ),
                },
            });
        }
        if let Some(check) = self.object_lock_check().await {
            checks.push(check);
        }
        checks
    }

    /// The Object Lock finding, when the database asked for Object Lock.
    async fn object_lock_check(&self) -> Option<Check> {
        use super::store::ObjectLockStatus as S;
        let location = self.payload_store().location();
        let (ok, detail, recommendation) = match self.object_lock_status().await {
            Ok(S::NotRequested) => return None,
            Ok(S::Enforced) => (
                true,
                format!("{location}: Object Lock enforced (a locked probe object's delete was refused)"),
                None,
            ),
            Ok(S::NotEnabled) => (
                false,
                format!("{location}: bucket has no Object Lock"),
                Some(
                    "Object Lock can only be turned on when a bucket is created: create a new bucket with objectLock                      and move the data"
                        .to_owned(),
                ),
            ),
            Ok(S::NotEnforced(why)) => (
                false,
                format!("{location}: not enforced by this S3 server ({why})"),
                Some(
                    "holds still keep items from retention and erasure in Chronos, but the objects themselves are                      not locked: use an S3 server that enforces Object Lock for WORM"
                        .to_owned(),
                ),
            ),
            Err(e) => (
                false,
                format!("{location}: Object Lock probe failed: {e}"),
                Some("the key needs PutObject, DeleteObject, GetBucketObjectLockConfiguration and BypassGovernanceRetention".to_owned()),
            ),
        };
        Some(Check {
            component: "objectLock".into(),
            ok,
            detail,
            recommendation,
        })
    }

    /// Write, read back and delete a probe object in the payload store; returns milliseconds.
    pub async fn test_payload_store(&self) -> Result<u64> {
        match probe(self.payload_store()).await {
            Ok(ms) => Ok(ms),
            Err(ProbeError::Missing) => Err(Error::payload(format!(
                "{} does not exist",
                self.payload_store().location()
            ))),
            Err(ProbeError::Failed(e)) => Err(e),
        }
    }

    /// Find (and with `create_if_missing`, create) every bucket this database uses.
    pub async fn ensure_stores(&self, create_if_missing: bool, dry_run: bool) -> Result<Vec<StoreStatus>> {
        let mut out = Vec::new();
        for (role, store) in self.stores() {
            let existed = store.exists().await?;
            let created = !existed && create_if_missing && !dry_run;
            if created {
                store.create().await?;
            }
            out.push(StoreStatus {
                role: role.into(),
                location: store.location(),
                existed,
                created,
            });
        }
        Ok(out)
    }
}

enum ProbeError {
    Missing,
    Failed(Error),
}

async fn probe(store: &dyn PayloadStore) -> Result<u64, ProbeError> {
    if !store.exists().await.map_err(ProbeError::Failed)? {
        return Err(ProbeError::Missing);
    }
    // `_chronos/` can't collide with data: collection names start with a letter or digit.
    let key = format!("_chronos/probe/{}", uuid::Uuid::now_v7().simple());
    let body = Bytes::from_static(b"{\"probe\":true}");
    let started = Instant::now();
    store.put(&key, body.clone()).await.map_err(ProbeError::Failed)?;
    let back = store.get(&key).await.map_err(ProbeError::Failed)?;
    store.delete(&key).await.map_err(ProbeError::Failed)?;
    if back.as_ref() != Some(&body) {
        return Err(ProbeError::Failed(Error::payload(
            "the probe object read back differently",
        )));
    }
    Ok(started.elapsed().as_millis() as u64)
}
