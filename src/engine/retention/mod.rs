//! Version retention: keep the version index bounded.
//!
//! A policy keeps the last `keepLast` versions of each item and/or those younger than
//! `maxAgeDays` (a version is kept if either says so; the latest version is always kept). Older
//! index entries are first written to a manifest in the backups store —
//! `<collection>/<id>/manifests/<firstOv>-<lastOv>.json` under the database's prefix, naming its
//! database, collection and item — and then removed from the metadata store. Payloads stay in the payload store unless the policy says otherwise, so reads by ov or
//! time of a pruned version still work: they find its entry in the manifests.
//!
//! This file is the policy and the prune run; `manifests` reads and writes the manifests, and is
//! what the engine asks for pruned versions.

pub(crate) mod manifests;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, Timestamp, VersionEntry, now, payload_key};
use crate::engine::query::Filter;
use crate::engine::store::{ListQuery, PrunedVersion};
use crate::engine::versioning::Engine;

const PAGE: usize = 200;

/// What to keep.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrunePolicy {
    /// Keep each item's last N versions.
    pub keep_last: Option<u64>,
    /// Keep versions younger than this many days.
    pub max_age_days: Option<f64>,
    /// Also delete the pruned versions' payloads (default: keep them, so they stay readable).
    #[serde(default)]
    pub delete_payloads: bool,
}

/// What a retention run did (or, dry, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub dry_run: bool,
    pub items_examined: u64,
    pub versions_pruned: u64,
    /// Items left alone because they are held (a legal hold or the collection's retention hold).
    pub items_held: u64,
}

impl PrunePolicy {
    fn validate(&self) -> Result<()> {
        if self.keep_last.is_none() && self.max_age_days.is_none() {
            return Err(Error::validation("policy", "give keepLast and/or maxAgeDays"));
        }
        if self.keep_last == Some(0) {
            return Err(Error::validation(
                "keepLast",
                "must be at least 1 (the latest version is always kept)",
            ));
        }
        if let Some(d) = self.max_age_days
            && !(d.is_finite() && d >= 0.0)
        {
            return Err(Error::validation("maxAgeDays", "must be a number of days, 0 or more"));
        }
        Ok(())
    }

    /// Whether a version of an item whose latest ov is `latest` is kept.
    fn keeps(&self, v: &VersionEntry, latest: u64, cutoff: Option<Timestamp>) -> bool {
        let by_count = self.keep_last.is_some_and(|n| v.ov + n > latest);
        let by_age = cutoff.is_some_and(|c| v.at >= c);
        v.ov == latest || by_count || by_age
    }

    /// The time before which versions are too old to keep by age.
    fn cutoff(&self) -> Result<Option<Timestamp>> {
        let Some(days) = self.max_age_days else { return Ok(None) };
        jiff::SignedDuration::try_from_secs_f64(days * 86_400.0)
            .ok()
            .and_then(|age| now().checked_sub(age).ok())
            .map(Some)
            .ok_or_else(|| Error::validation("maxAgeDays", "too large"))
    }
}

/// One item's prune, planned from a scan of its index. A run carries it out with
/// [`Engine::unindex_pruned`] then [`Engine::delete_pruned_payloads`]; the steps are public so
/// tests can put other writes between them.
#[derive(Debug, Clone)]
pub struct ItemPrune {
    collection: CollectionName,
    id: ItemId,
    /// The index entries to move into a manifest, oldest first.
    doomed: Vec<VersionEntry>,
    /// Payload objects the run deletes if nothing uses them any more (empty unless the policy
    /// says `deletePayloads`).
    candidates: std::collections::BTreeSet<String>,
}

impl ItemPrune {
    /// How many versions the prune removes from the index.
    pub fn versions(&self) -> u64 {
        self.doomed.len() as u64
    }
}

impl Engine {
    /// Prune the version index of a collection by `policy`, in pages of items.
    pub async fn prune_versions(
        &self,
        collection: &CollectionName,
        policy: &PrunePolicy,
        dry_run: bool,
    ) -> Result<PruneReport> {
        policy.validate()?;
        self.manifests().backups_for_pruning()?;
        let cutoff = policy.cutoff()?;
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        let mut query = ListQuery {
            filter: Filter::default(),
            after_id: None,
            limit: PAGE,
            descending: false,
            include_deleted: true,
        };
        loop {
            let heads = self.meta().list_heads(collection, &query).await?;
            let pruned: Vec<Option<u64>> = futures::stream::iter(heads.iter().cloned())
                .map(|h| self.prune_item(collection, h, policy, cutoff, dry_run))
                .buffer_unordered(8)
                .try_collect()
                .await?;
            report.items_examined += heads.len() as u64;
            report.versions_pruned += pruned.iter().flatten().sum::<u64>();
            report.items_held += pruned.iter().filter(|p| p.is_none()).count() as u64;
            if heads.len() < PAGE {
                return Ok(report);
            }
            query.after_id = heads.last().map(|h| h.id.clone());
        }
    }

    /// How many versions of the item went (or would go); `None` when it is held and was skipped.
    async fn prune_item(
        &self,
        collection: &CollectionName,
        head: Head,
        policy: &PrunePolicy,
        cutoff: Option<Timestamp>,
        dry_run: bool,
    ) -> Result<Option<u64>> {
        if let Some(reason) = self.hold_reason(collection, &head.id, Some(&head)).await? {
            tracing::debug!(%collection, id = %head.id, %reason, "retention skips a held item");
            return Ok(None);
        }
        let Some(plan) = self.plan_prune(collection, &head, policy, cutoff).await? else {
            return Ok(Some(0));
        };
        let n = plan.versions();
        if !dry_run {
            self.unindex_pruned(&plan).await?;
            self.delete_pruned_payloads(plan).await?;
        }
        Ok(Some(n))
    }

    /// Plan the prune of one item by `policy` (`None`: nothing to prune).
    pub async fn plan_item_prune(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        policy: &PrunePolicy,
    ) -> Result<Option<ItemPrune>> {
        policy.validate()?;
        let head = self
            .meta()
            .head(collection, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{collection}/{id}")))?;
        self.plan_prune(collection, &head, policy, policy.cutoff()?).await
    }

    async fn plan_prune(
        &self,
        collection: &CollectionName,
        head: &Head,
        policy: &PrunePolicy,
        cutoff: Option<Timestamp>,
    ) -> Result<Option<ItemPrune>> {
        let mut doomed = Vec::new();
        // Payload objects that kept versions read: a version restored by reference may use the
        // payload of a version pruned here, so that payload must stay.
        let mut kept_payloads = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = self.meta().versions(collection, &head.id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.ov);
            for v in page {
                if policy.keeps(&v, head.ov, cutoff) {
                    kept_payloads.insert(v.payload().key(collection, &head.id));
                } else {
                    doomed.push(v);
                }
            }
        }
        if doomed.is_empty() {
            return Ok(None);
        }
        // Only objects the doomed versions own: one a pruned reference reads belongs to an older
        // version, whose own run decided whether it goes.
        let candidates = if policy.delete_payloads {
            doomed
                .iter()
                .filter(|v| v.payload().is_own(v.ov, &v.write_id))
                .map(|v| payload_key(collection, &head.id, v.ov, &v.write_id))
                .filter(|k| !kept_payloads.contains(k))
                .collect()
        } else {
            Default::default()
        };
        Ok(Some(ItemPrune {
            collection: collection.clone(),
            id: head.id.clone(),
            doomed,
            candidates,
        }))
    }

    /// Write the plan's manifest, then remove its entries from the index.
    pub async fn unindex_pruned(&self, plan: &ItemPrune) -> Result<()> {
        let (collection, doomed) = (&plan.collection, &plan.doomed);
        if doomed.is_empty() {
            return Ok(());
        }
        // The manifest first: a crash after it leaves entries in both places, never in neither.
        let payload_deleted = |v: &VersionEntry| plan.candidates.contains(&v.payload().key(collection, &plan.id));
        let pruned = doomed
            .iter()
            .map(|v| {
                Ok(PrunedVersion {
                    ov: v.ov,
                    cv: v.cv,
                    counts: self.counter_names(collection, v)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.manifests()
            .write(collection, &plan.id, doomed, payload_deleted, &pruned)
            .await?;
        self.meta().delete_versions(collection, &plan.id, &pruned).await?;
        Ok(())
    }

    /// Delete the payload objects of the plan's versions that nothing uses (with `deletePayloads`).
    ///
    /// Run after [`Engine::unindex_pruned`]: the item's index is read again, so a version
    /// appended by reference since the plan's scan keeps the object it uses. One appended later
    /// can't use a deleted object: an append by reference to an index entry fails once the entry
    /// is gone, and a restore of a version whose manifest entry says `payloadDeleted` copies the
    /// data instead.
    pub async fn delete_pruned_payloads(&self, plan: ItemPrune) -> Result<()> {
        let mut doomed = plan.candidates;
        if doomed.is_empty() {
            return Ok(());
        }
        let mut after = None;
        loop {
            let page = self.meta().versions(&plan.collection, &plan.id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.ov);
            for v in &page {
                doomed.remove(&v.payload().key(&plan.collection, &plan.id));
            }
        }
        for key in doomed {
            self.payload_store().delete(&key).await?;
        }
        Ok(())
    }
}
