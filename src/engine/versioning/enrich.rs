//! Enrichment: deep-merge patches into an item's latest data as one new version.
//!
//! The merge is computed *before* the item is held, from the head as read (one `find`; the data
//! is usually inline there), and written as an ordinary update whose precondition is the ov it
//! was computed from. So an enrichment holds its item no longer than an update does and joins
//! group commit like one. Nothing is lost to a concurrent writer: if the item moved on between
//! the read and the write, the precondition fails and — unless the caller named the ov it
//! expects, which makes that a conflict to report — the enrichment reads the new head and merges
//! again, a bounded number of times. See `docs/design.md`, "Enrichment".

use serde_json::{Map, Value};

use super::stamp::stamp;
use super::{Engine, NewContent, WriteIntent, contention_backoff};
use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, Enrichment, Head, ItemId, Op, RequestStamp, WriteOutcome};
use crate::engine::store::NewData;
use crate::engine::store::rules::precondition;

/// How many times an enrichment without an expected ov reads and merges again after losing its
/// item to a concurrent writer, before it answers `Contended` (each round, one of the racing
/// writers wins, so this bounds the wait, not the progress).
const MERGE_ATTEMPTS: u32 = 40;

impl Engine {
    /// Enrich an item: deep-merge `patches` in order into its latest data (see [`merge`]), as
    /// one new version. `function_id` is added to `_system.functionIds`. Concurrent enrichments
    /// lose nothing: each is written on the version it merged into, or merged again.
    ///
    /// [`merge`]: crate::engine::merge
    pub async fn enrich(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        patches: &[Map<String, Value>],
        enrichment: &Enrichment,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        if patches.is_empty() {
            return Err(Error::validation("patches", "at least one patch is needed"));
        }
        if let Some(f) = &enrichment.function_id
            && (f.is_empty() || f.len() > 256)
        {
            return Err(Error::validation("functionId", "must be 1-256 characters"));
        }
        let body = serde_json::json!({"patches": patches, "functionId": enrichment.function_id});
        let stamp = stamp(who, collection, "enrich", Some(id), enrichment.expected_ov, &body)?;
        self.prepare(collection).await?;
        let (_, outcome) = self
            .once_per_key(collection, stamp.as_ref(), || async {
                let outcome = self
                    .enrich_once(collection, id, patches, enrichment, who, stamp.as_ref())
                    .await?;
                Ok((id.clone(), outcome))
            })
            .await?;
        Ok(outcome)
    }

    /// Read the head, merge, and write on that ov; again from the new head while concurrent
    /// writers win the item (only when the caller expects no particular ov).
    async fn enrich_once(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        patches: &[Map<String, Value>],
        enrichment: &Enrichment,
        who: &Attribution,
        stamp: Option<&RequestStamp>,
    ) -> Result<WriteOutcome> {
        for attempt in 0..MERGE_ATTEMPTS {
            if attempt > 0 {
                contention_backoff(attempt).await;
            }
            let head = self.meta.head(collection, id).await?;
            // Missing, deleted, erased or not at the caller's ov: refused as the write would be.
            precondition(collection, id, Op::Update, enrichment.expected_ov, head.as_ref())?;
            let head = head.ok_or_else(|| Error::NotFound(format!("{collection}/{id}")))?;
            let data = self.merged(collection, &head, patches).await?;
            let intent = WriteIntent {
                op: Op::Update,
                // The merge is right only over the version it read.
                expected_ov: Some(head.ov),
                content: NewContent::Data(data),
                function_id: enrichment.function_id.clone(),
                stamp: stamp.cloned(),
            };
            match self.write_once(collection, id, who, intent).await {
                // Someone wrote since the read: merge into theirs (the caller asked for no ov).
                Err(Error::VersionConflict { .. }) if enrichment.expected_ov.is_none() => {}
                other => return other,
            }
        }
        Err(Error::Contended(format!("{collection}/{id}")))
    }

    /// `head`'s data with `patches` merged in, offloaded and checked like any new data.
    async fn merged(
        &self,
        collection: &CollectionName,
        head: &Head,
        patches: &[Map<String, Value>],
    ) -> Result<NewData> {
        let data = self.record_of_head(collection, head.clone()).await?.data;
        // Merging megabytes is CPU work: off the runtime's threads, so other requests go on.
        let patches = patches.to_vec();
        let mut data = tokio::task::spawn_blocking(move || {
            let mut data = data;
            for patch in &patches {
                crate::engine::merge::merge_object(&mut data, patch);
            }
            data
        })
        .await
        .map_err(|e| Error::Corrupt(format!("the merge did not finish: {e}")))?;
        // Content objects are content-addressed: offloading again after a lost round rewrites
        // the same keys, and leaves nothing another version could miss.
        self.contents
            .offload(self.map(collection), collection, &head.id, &mut data)
            .await?;
        self.new_data(collection, data)
    }
}
