//! Cost tiering: the `new` → `processed` state machine.
//!
//! While an item is `new`, its head carries the data inline so a hot read costs one metadata
//! command. Once it has not been written for a TTL, the inline copy is dropped and the item
//! becomes `processed`: the head keeps only indexed metadata and pointers, the payload lives only
//! in S3, and reads fetch it from there transparently. The next write makes it `new` again.
//! Work goes in batches in id order, so a collection is never loaded into memory.

use serde::Serialize;

use super::error::{Error, Result};
use super::model::{CollectionName, ItemId, now};
use super::store::TierQuery;
use super::versioning::Engine;

const BATCH: usize = 500;

/// What a tiering run did (or, dry, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TieringReport {
    pub dry_run: bool,
    /// Items made (or that would be made) `processed`.
    pub processed: u64,
    /// Metadata-store bytes of those items' heads before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Per item, for comparison.
    pub bytes_per_item_before: u64,
    pub bytes_per_item_after: u64,
}

impl Engine {
    /// Mark every `new` item not written for `ttl_hours` as `processed`, in batches;
    /// `progress(processed so far)` is called after each batch.
    pub async fn mark_processed_by_ttl(
        &self,
        collection: &CollectionName,
        ttl_hours: f64,
        dry_run: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<TieringReport> {
        if !ttl_hours.is_finite() || ttl_hours < 0.0 {
            return Err(Error::validation("ttlHours", "must be a number of hours, 0 or more"));
        }
        let ttl = jiff::SignedDuration::try_from_secs_f64(ttl_hours * 3600.0)
            .map_err(|_| Error::validation("ttlHours", "too large"))?;
        let cutoff = now()
            .checked_sub(ttl)
            .map_err(|_| Error::validation("ttlHours", "reaches before the epoch"))?;
        let mut report = TieringReport {
            dry_run,
            ..Default::default()
        };
        let mut after: Option<ItemId> = None;
        loop {
            let query = TierQuery {
                older_than: cutoff,
                only: None,
                after_id: after.take(),
                limit: BATCH,
                dry_run,
            };
            let batch = self.meta().mark_processed(collection, &query).await?;
            report.processed += batch.ids.len() as u64;
            report.bytes_before += batch.bytes_before;
            report.bytes_after += batch.bytes_after;
            progress(report.processed);
            if batch.ids.len() < BATCH {
                break;
            }
            after = batch.ids.last().cloned();
        }
        report.bytes_per_item_before = report.bytes_before.checked_div(report.processed).unwrap_or(0);
        report.bytes_per_item_after = report.bytes_after.checked_div(report.processed).unwrap_or(0);
        Ok(report)
    }

    /// Mark one item `processed` now. `false` if it already was.
    pub async fn mark_item_processed(&self, collection: &CollectionName, id: &ItemId) -> Result<bool> {
        let head = self.meta().head(collection, id).await?;
        if head.is_none() {
            return Err(Error::NotFound(format!("{collection}/{id}")));
        }
        // "Not written after the far future": any `new` item qualifies.
        let query = TierQuery {
            older_than: jiff::Timestamp::MAX,
            only: Some(id.clone()),
            after_id: None,
            limit: 1,
            dry_run: false,
        };
        let batch = self.meta().mark_processed(collection, &query).await?;
        Ok(!batch.ids.is_empty())
    }
}
