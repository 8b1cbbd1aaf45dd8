//! Restore of one item to an earlier version: by reference when the target's payload object is
//! certainly there, else by copying its data through the write protocol; retried while the item
//! is written concurrently. A collection restore falls back on it for items that keep changing.

use super::plan::{Origin, Target, commit_by, copies, ref_write, restore_write};
use crate::engine::error::{Error, Result};
use crate::engine::ledger::LedgerRecord;
use crate::engine::model::VersionTarget;
use crate::engine::model::{Attribution, CollectionName, Head, ItemId, Op, VersionEntry, WriteOutcome};
use crate::engine::store::{HistoryPoint, RefWrite};
use crate::engine::versioning::Engine;
use crate::engine::versioning::{NewContent, WriteIntent, contention_backoff};

/// How many times an item written concurrently during the restore is re-examined (with a
/// growing pause: a conflict may be another transaction still holding the item, as in
/// single writes).
pub(super) const ITEM_ATTEMPTS: u32 = 20;

impl Engine {
    /// One item of a page that kept changing: append its version alone, looking at its head
    /// again whenever it was written meanwhile. Returns the head it was last examined at (now
    /// equal to its target state, or left alone because it already was).
    pub(super) async fn restore_item(
        &self,
        collection: &CollectionName,
        mut head: Head,
        target: Option<Target>,
        point: HistoryPoint,
        who: &Attribution,
    ) -> Result<(Head, Option<Target>)> {
        let mut target = target;
        for attempt in 0..ITEM_ATTEMPTS {
            if attempt > 0 {
                contention_backoff(attempt).await;
            }
            if let Some(t) = target.as_ref().filter(|t| copies(&head, t)) {
                match self.restore_by_copy(collection, &head, &t.entry, who, None).await {
                    Ok(_) => return Ok((head, target)),
                    Err(Error::VersionConflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            } else {
                let Some(write) = ref_write(&head, target.as_ref(), who) else {
                    return Ok((head, target));
                };
                if self.append_refs(collection, vec![(&head, write)]).await?.is_some() {
                    return Ok((head, target));
                }
            }
            // Its target state can't have changed, only its head, and where the target is kept
            // (retention may have moved it from the index into a manifest).
            if target.as_ref().is_some_and(|t| t.origin == Origin::Index) {
                target = self
                    .versions_at_point(collection, std::slice::from_ref(&head.id), point)
                    .await?
                    .remove(&head.id);
            }
            head = self
                .meta()
                .head(collection, &head.id)
                .await?
                .ok_or_else(|| Error::Corrupt(format!("{collection}/{} lost its head", head.id)))?;
        }
        Err(Error::Contended(format!("{collection} restore to {point:?}")))
    }

    /// Append a version equal to an earlier one (by ov or by time), by reference to that
    /// version's payload. Restoring a deleted item undeletes it. Nothing is rewritten: history
    /// only grows.
    pub async fn restore_object(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
        expected_ov: Option<u64>,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        let body = match target {
            VersionTarget::Ov(ov) => serde_json::json!({"ov": ov}),
            VersionTarget::At(at) => serde_json::json!({"at": at}),
        };
        let stamp = crate::engine::versioning::stamp::stamp(who, collection, "restore", Some(id), expected_ov, &body)?;
        let (_, outcome) = self
            .once_per_key(collection, stamp.as_ref(), || async {
                let outcome = self
                    .restore_once(collection, id, target, expected_ov, who, stamp.as_ref())
                    .await?;
                Ok((id.clone(), outcome))
            })
            .await?;
        Ok(outcome)
    }

    /// Append versions by reference (see [`MetaRestore::append_by_reference`]), each over the head
    /// it was built from, and note the committed ones for the ledger. `Ok(None)`: nothing was
    /// written (an item changed meanwhile).
    ///
    /// [`MetaRestore::append_by_reference`]: crate::engine::store::MetaRestore::append_by_reference
    pub(super) async fn append_refs(
        &self,
        collection: &CollectionName,
        writes: Vec<(&Head, RefWrite)>,
    ) -> Result<Option<u64>> {
        let records: Vec<LedgerRecord> = writes
            .iter()
            // A reference keeps the item's insertedAt and functionIds (see `RefWrite::version`).
            .map(|(head, w)| LedgerRecord::new(&w.version, &head.system(), Some(head)))
            .collect();
        let writes: Vec<RefWrite> = writes.into_iter().map(|(_, w)| w).collect();
        // Fenced on age like every write (see `plan::commit_by`).
        let commit_by = commit_by(&writes, self.settings().orphan_grace);
        let first = self.meta().append_by_reference(collection, writes, commit_by).await?;
        if let Some(cv) = first {
            // The store gave the batch consecutive cvs, in order.
            let committed = records.into_iter().zip(cv..).map(|(mut r, cv)| {
                r.cv = cv;
                r
            });
            self.ledger().record(collection, committed);
        }
        Ok(first)
    }

    /// An item's version by ov or time: from the index or, once pruned, from its manifests.
    async fn target_of(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<Target>> {
        if let Some(entry) = self.indexed_version(collection, id, target).await? {
            return Ok(Some(Target::indexed(entry)));
        }
        let found = self.manifests().find(collection, id, |v| target.admits(v)).await?;
        Ok(found.map(Target::pruned))
    }

    async fn restore_once(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
        expected_ov: Option<u64>,
        who: &Attribution,
        stamp: Option<&crate::engine::model::RequestStamp>,
    ) -> Result<WriteOutcome> {
        let wanted = target;
        self.prepare(collection).await?;
        for attempt in 0..ITEM_ATTEMPTS {
            if attempt > 0 {
                contention_backoff(attempt).await;
            }
            // Looked up on every round: retention may move it from the index into a manifest.
            let target = self
                .target_of(collection, id, wanted)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{collection}/{id} at {wanted}")))?;
            if target.entry.erased() {
                return Err(Error::Erased(format!("{collection}/{id} v{}", target.entry.ov)));
            }
            if target.entry.deleted {
                return Err(Error::validation(
                    "target",
                    format!(
                        "version {} of {collection}/{id} is a delete; restore a version before it",
                        target.entry.ov
                    ),
                ));
            }
            let head = self
                .meta()
                .head(collection, id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{collection}/{id}")))?;
            if head.erased() {
                return Err(Error::Erased(format!("{collection}/{id}")));
            }
            if let Some(expected) = expected_ov
                && expected != head.ov
            {
                return Err(Error::VersionConflict {
                    item: format!("{collection}/{id}"),
                    expected,
                    current: head.ov,
                });
            }
            if target.payload_may_be_gone() {
                match self.restore_by_copy(collection, &head, &target.entry, who, stamp).await {
                    Err(Error::VersionConflict { .. }) if expected_ov.is_none() => continue,
                    other => return other,
                }
            }
            let mut write = restore_write(&head, &target, who);
            write.version.request = stamp.cloned();
            let (ov, at) = (write.version.ov, write.version.at);
            if let Some(cv) = self.append_refs(collection, vec![(&head, write)]).await? {
                return Ok(WriteOutcome {
                    ov,
                    cv,
                    at,
                    replayed: false,
                });
            }
            // Written meanwhile: with an expected ov that is a conflict (next round), without
            // one the last writer wins and we go again from the new head.
        }
        Err(Error::Contended(format!("{collection}/{id}")))
    }

    /// Append `target`'s data as a new version with a payload object of its own, for a version
    /// whose object a retention run may have deleted: a reference to it could dangle, a copy
    /// either has the data or fails cleanly.
    async fn restore_by_copy(
        &self,
        collection: &CollectionName,
        head: &Head,
        target: &VersionEntry,
        who: &Attribution,
        stamp: Option<&crate::engine::model::RequestStamp>,
    ) -> Result<WriteOutcome> {
        let loc = target.payload();
        let (ov, write_id) = (loc.ov, loc.write_id);
        let bytes = self.fetch_payload(collection, &head.id, loc).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "the data of {collection}/{} v{} (retention pruned it with its payload)",
                head.id, target.ov
            ))
        })?;
        let expected = crate::engine::envelope::Expected {
            database: self.database(),
            collection,
            id: &head.id,
            ov,
            write_id,
            checksum: &target.checksum,
        };
        let decoded = self.decode_payload(&bytes, &expected).await?;
        let data = self.new_data(collection, decoded.data)?;
        let intent = WriteIntent {
            op: Op::Restore,
            expected_ov: Some(head.ov),
            content: NewContent::Data(data),
            function_id: None,
            stamp: stamp.cloned(),
        };
        self.write_once(collection, &head.id, who, intent).await
    }
}
