//! Legal holds and retention holds: what keeps an item from being pruned or erased.
//!
//! An item is held when someone put a legal hold on it (kept as a side record, see
//! `store::sidecar`: a hold is not a version of the item) or when its collection has a
//! retention hold (`hold: {mode, days}`) and its latest write is younger than `days`. Retention
//! skips held items and reports them; erase asks [`Engine::refuse_if_held`] first and answers
//! 409 `held`.
//!
//! Holding an item here does not by itself lock its objects in S3: that needs a bucket with
//! Object Lock, where the payload store writes the collection's retention (and a legal hold
//! set before the write) as Object Lock headers — and a server that enforces them, which
//! [`Engine::object_lock_status`](crate::engine::Engine::object_lock_status) finds out.

use serde::{Deserialize, Serialize};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, Timestamp, now};
use crate::engine::settings::HoldRule;
use crate::engine::store::sidecar::SideKind;
use crate::engine::store::{ObjectLockStatus, PutOptions, Repoint};
use crate::engine::versioning::Engine;

/// A legal hold on one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegalHold {
    /// Why the item is held (a case number, a ticket).
    pub reason: String,
    /// Who set it (the caller's token name or `actor`), when known.
    pub by: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// The longest reason a hold keeps.
const REASON_MAX: usize = 1024;

impl Engine {
    /// Put a legal hold on an existing item (replacing any earlier one); returns it.
    pub async fn set_hold(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        reason: &str,
        by: Option<&str>,
    ) -> Result<LegalHold> {
        if reason.trim().is_empty() || reason.len() > REASON_MAX {
            return Err(Error::validation("reason", "expected 1 to 1024 characters"));
        }
        if self.meta().head(collection, id).await?.is_none() {
            return Err(Error::NotFound(format!("{collection}/{id}")));
        }
        let hold = LegalHold {
            reason: reason.to_owned(),
            by: by.map(str::to_owned),
            at: now(),
        };
        let record = serde_json::to_string(&hold).map_err(|e| Error::Corrupt(format!("hold: {e}")))?;
        self.meta().put_side(collection, SideKind::Hold, id, &record).await?;
        self.lock_objects(collection, id, true).await?;
        Ok(hold)
    }

    /// Lift the legal hold; returns whether there was one.
    pub async fn release_hold(&self, collection: &CollectionName, id: &ItemId) -> Result<bool> {
        let had = self.meta().delete_side(collection, SideKind::Hold, id).await?;
        self.lock_objects(collection, id, false).await?;
        Ok(had)
    }

    /// Put (or lift) an S3 legal hold on the payload objects of the item's indexed versions
    /// (a no-op unless the bucket has Object Lock). Set again when asked again, so a hold set
    /// while an earlier call failed midway ends up on every object.
    async fn lock_objects(&self, collection: &CollectionName, id: &ItemId, on: bool) -> Result<()> {
        let (mut after, mut moved_meanwhile) = (None, 0);
        loop {
            let page = self.meta().versions(collection, id, after, 1000).await?;
            let Some(last) = page.last() else { return Ok(()) };
            let mut again = false;
            // Versions restored by reference name the same payload: it moves once per page (the
            // page's copies of the others are stale after the first move).
            let mut moved = std::collections::HashSet::new();
            for v in &page {
                let loc = v.payload();
                if let (true, Some(pack)) = (on, loc.pack)
                    && moved.insert((loc.ov, loc.write_id))
                {
                    // A lock binds a whole object, and a pack holds other items too: the held
                    // version moves to its own key first (its pack bytes stay until scrub).
                    self.standalone_copy(collection, id, loc).await?;
                    let moving = Repoint {
                        payload: (loc.ov, loc.write_id),
                        from: Some(&pack.key),
                        to: None,
                    };
                    // Nothing named that pack any more: compaction moved the bytes meanwhile,
                    // so this page is read again and moved from where they are now.
                    again |= self.meta().repoint_payload(collection, id, moving).await? == 0;
                }
                self.payload_store()
                    .set_legal_hold(&loc.key(collection, id), on)
                    .await?;
            }
            if again {
                moved_meanwhile += 1;
                if moved_meanwhile > 5 {
                    return Err(Error::Contended(format!("{collection}/{id}: payloads keep moving")));
                }
                continue;
            }
            after = Some(last.ov);
        }
    }

    /// The item's legal hold, if any.
    pub async fn legal_hold(&self, collection: &CollectionName, id: &ItemId) -> Result<Option<LegalHold>> {
        let Some(record) = self.meta().side(collection, SideKind::Hold, id).await? else {
            return Ok(None);
        };
        serde_json::from_str(&record)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("hold of {collection}/{id}: {e}")))
    }

    /// Whether the item may not be erased or pruned now (a legal hold, or its collection's
    /// retention hold); the erase path asks this.
    pub async fn is_held(&self, collection: &CollectionName, id: &ItemId) -> Result<bool> {
        Ok(self.hold_reason(collection, id, None).await?.is_some())
    }

    /// Why the item is held (`None`: it is not); 404 for an item that does not exist.
    pub async fn held_because(&self, collection: &CollectionName, id: &ItemId) -> Result<Option<String>> {
        let head = self
            .meta()
            .head(collection, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{collection}/{id}")))?;
        self.hold_reason(collection, id, Some(&head)).await
    }

    /// [`Engine::is_held`] as an error: `Held` with the reason, for paths that must refuse.
    pub async fn refuse_if_held(&self, collection: &CollectionName, id: &ItemId) -> Result<()> {
        match self.hold_reason(collection, id, None).await? {
            Some(reason) => Err(Error::Held(format!("{collection}/{id}"), reason)),
            None => Ok(()),
        }
    }

    /// Why the item is held, if it is; `head` saves a read when the caller has it.
    pub(crate) async fn hold_reason(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        head: Option<&Head>,
    ) -> Result<Option<String>> {
        if let Some(h) = self.legal_hold(collection, id).await? {
            return Ok(Some(format!("legal hold: {}", h.reason)));
        }
        let Some(rule) = self.hold_rule(collection) else {
            return Ok(None);
        };
        let updated_at = match head {
            Some(h) => Some(h.updated_at),
            None => self.meta().head(collection, id).await?.map(|h| h.updated_at),
        };
        Ok(updated_at
            .and_then(|at| retained_until(at, rule))
            .filter(|until| *until > now())
            .map(|until| format!("{} retention until {until}", rule.mode.as_str())))
    }

    /// How a version of the item written at `at` is locked in S3: the collection's retention
    /// hold as Object Lock retention, and a legal hold when the item has one. Only collections
    /// with a hold rule pay the legal hold's lookup; the payload store ignores both unless its
    /// bucket was created with Object Lock.
    pub(crate) async fn put_options(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        at: Timestamp,
    ) -> Result<PutOptions> {
        let Some(rule) = self.hold_rule(collection) else {
            return Ok(PutOptions::default());
        };
        Ok(PutOptions {
            retention: retained_until(at, rule).map(|until| (rule.mode, until)),
            legal_hold: self.legal_hold(collection, id).await?.is_some(),
        })
    }

    /// What the payload bucket does with Object Lock (a probe on S3; see `backends::s3_lock`).
    pub async fn object_lock_status(&self) -> Result<ObjectLockStatus> {
        self.payload_store().object_lock_status().await
    }

    /// The collection's retention hold, if it has one.
    pub fn hold_rule(&self, collection: &CollectionName) -> Option<HoldRule> {
        self.map(collection).and_then(|m| m.hold)
    }
}

/// When a version written at `at` stops being retained by `rule` (`None` past the calendar).
pub fn retained_until(at: Timestamp, rule: HoldRule) -> Option<Timestamp> {
    at.checked_add(jiff::SignedDuration::from_hours(i64::from(rule.days) * 24))
        .ok()
}
