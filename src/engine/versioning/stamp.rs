//! Idempotency: the stamp a write with a caller's key records (the key and a fingerprint of what
//! was asked), and the one-write-per-key rule that replays the recorded outcome instead of writing
//! twice.

use std::time::Duration;

use super::Engine;
use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, ItemId, RequestStamp, WriteOutcome};

/// Replays tried while a recorded key is not yet readable: 5 ms doubling to 250 ms, about 1.6 s in
/// all, well past a healthy replica set's replication lag.
const KEY_ACK_TRIES: u32 = 12;

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
            // The key is recorded but the replay can't read it: the first attempt is committed on
            // the primary and not yet acknowledged by a majority, which is all replays read (M3).
            Err(Error::RequestKeyTaken(_)) => self.replay_once_acknowledged(collection, stamp).await,
            other => other,
        }
    }

    /// Wait, a bounded time, for the write already recorded under this stamp's key to become
    /// readable: replication normally takes milliseconds. Past the bound (a lagging secondary, or a
    /// failover that may roll the first attempt back) the outcome is honestly unknown — and a retry
    /// with the same key is safe — rather than "already exists", which would tell the client its
    /// own write failed.
    async fn replay_once_acknowledged(
        &self,
        collection: &CollectionName,
        stamp: &RequestStamp,
    ) -> Result<(ItemId, WriteOutcome)> {
        let mut delay = Duration::from_millis(5);
        for tried in 1..=KEY_ACK_TRIES {
            if let Some(first) = self.replay(collection, stamp).await? {
                return Ok(first);
            }
            if tried < KEY_ACK_TRIES {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        }
        Err(Error::OutcomeUnknown(format!(
            "a write with the idempotency key `{}` is recorded but not yet acknowledged by a majority",
            stamp.key
        )))
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
