//! Idempotency: the stamp a write with a caller's key records (the key and a fingerprint of what
//! was asked), and the one-write-per-key rule that replays the recorded outcome instead of writing
//! twice.

use super::Engine;
use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, ItemId, RequestStamp, WriteOutcome};

impl Engine {
    /// Make a write under an idempotency stamp at most once: a write already made under its key
    /// answers with its first outcome instead of running `attempt`, and so does an attempt that
    /// lost to a concurrent one with the same key.
    pub(crate) async fn once_per_key<F, Fut>(
        &self,
        collection: &CollectionName,
        stamp: Option<&RequestStamp>,
        attempt: F,
    ) -> Result<(ItemId, WriteOutcome)>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(ItemId, WriteOutcome)>>,
    {
        let Some(stamp) = stamp else { return attempt().await };
        if let Some(first) = self.replay(collection, stamp).await? {
            return Ok(first);
        }
        match attempt().await {
            // A retry racing with its first attempt (or arriving after it) fails its
            // precondition or its key's uniqueness: if the key is recorded now, that is the answer.
            Err(e @ (Error::AlreadyExists(_) | Error::NotFound(_) | Error::VersionConflict { .. })) => {
                match self.replay(collection, stamp).await? {
                    Some(first) => Ok(first),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// The first outcome of the write made under this stamp's key, if there was one.
    async fn replay(
        &self,
        collection: &CollectionName,
        stamp: &RequestStamp,
    ) -> Result<Option<(ItemId, WriteOutcome)>> {
        let Some(v) = self.meta.version_by_request(collection, &stamp.key).await? else {
            return Ok(None);
        };
        if v.request.as_ref().is_some_and(|r| r.fingerprint != stamp.fingerprint) {
            return Err(Error::IdempotencyKeyReused(format!(
                "`{}` was already used for a different request (on {collection}/{}); use a new key",
                stamp.key, v.id
            )));
        }
        let outcome = WriteOutcome {
            ov: v.ov,
            cv: v.cv,
            at: v.at,
            replayed: true,
        };
        Ok(Some((v.id, outcome)))
    }
}

/// The idempotency stamp of a write whose caller gave a key: the key and a fingerprint of what
/// was asked (operation, item, precondition and body), so the same key can't be replayed for a
/// different request.
pub(crate) fn stamp(
    who: &Attribution,
    collection: &CollectionName,
    op: &str,
    id: Option<&ItemId>,
    expected_ov: Option<u64>,
    body: &impl serde::Serialize,
) -> Result<Option<RequestStamp>> {
    use sha2::{Digest, Sha256};
    let Some(key) = &who.request_key else { return Ok(None) };
    let asked = serde_json::json!({
        "op": op,
        "collection": collection.as_str(),
        "id": id.map(ItemId::as_str),
        "expectedOv": expected_ov,
        "body": body,
    });
    let bytes = serde_json::to_vec(&asked).map_err(|e| Error::validation("data", e.to_string()))?;
    Ok(Some(RequestStamp {
        key: key.clone(),
        fingerprint: hex::encode(Sha256::digest(&bytes)),
    }))
}
