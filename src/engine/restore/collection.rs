//! Append-only restore of a whole collection to an earlier point (cv or time).
//!
//! For every item whose state differs from its state at the target, one version is appended that
//! equals that state; items created after the target are logically deleted. The work goes in
//! pages of item ids: each page is independent, so a restore can stop anywhere and continue
//! from the last page's cursor. Redoing a page does nothing twice: an item that already equals
//! its target state is left alone (states are compared by data checksum and deleted flag).
//!
//! Versions are appended **by reference** (see `docs/design.md`): a restored version names the
//! target version's existing payload object instead of copying it, and a delete names the
//! current one, so a restore costs no payload request at all. A page's versions are appended in
//! one batch (one cv allocation, one transaction) with a precondition per item; when an item
//! changed meanwhile, the page's items are examined again, and a page that keeps changing is done
//! item by item. A page is the fixed set of items its listing returned, so pages are independent
//! and a whole-collection restore writes several at once.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use super::plan::{Action, RestoreCounts, RestorePage, Target, action, ref_write};
use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, Head, ItemId, Timestamp, VersionEntry};
use crate::engine::query::Filter;
use crate::engine::retention::manifests::Pruned;
use crate::engine::store::{HistoryPoint, ListQuery, RefWrite};
use crate::engine::versioning::Engine;

/// How many times a page whose batch met a concurrent write is examined again before it is done
/// item by item (so one busy item can't keep the rest of its page from being restored).
pub(super) const PAGE_ATTEMPTS: usize = 2;

/// A page: its items' heads, each with its version at the restore point (`None`: created after it).
pub(super) type Work = Vec<(Head, Option<Target>)>;

/// Pages of [`Engine::restore_collection`] being written at once.
pub(super) const RESTORE_PAGES_IN_FLIGHT: usize = 3;

impl Engine {
    /// How many items a collection has; the total for a restore's progress.
    pub async fn count_items(&self, collection: &CollectionName) -> Result<u64> {
        self.meta().count_items(collection).await
    }

    /// Restore (or, with `dry_run`, plan) one page of up to `limit` items after `after_id`.
    pub async fn restore_collection_page(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        after_id: Option<ItemId>,
        limit: usize,
        dry_run: bool,
        who: &Attribution,
    ) -> Result<RestorePage> {
        if limit == 0 || limit > 1000 {
            return Err(Error::validation("limit", "must be between 1 and 1000"));
        }
        if !dry_run {
            self.prepare(collection).await?;
        }
        let (work, next_after_id) = self.examine_page(collection, point, after_id, limit).await?;
        let counts = self.apply_page(collection, point, work, dry_run, who).await?;
        Ok(RestorePage { counts, next_after_id })
    }

    /// Bring a page's items to their target state: one batch; if an item changed meanwhile,
    /// the same items are examined again, and done item by item if that keeps happening. A page
    /// is a fixed set of items, so pages are independent of each other.
    async fn apply_page(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        work: Work,
        dry_run: bool,
        who: &Attribution,
    ) -> Result<RestoreCounts> {
        // Items whose target's payload may be gone are done one by one (copied when their data
        // changes): rare, and never by reference.
        let (alone, mut work): (Work, Work) = work
            .into_iter()
            .partition(|(_, t)| t.as_ref().is_some_and(Target::payload_may_be_gone));
        let alone: Work = if dry_run {
            alone
        } else {
            futures::stream::iter(alone)
                .map(|(head, target)| self.restore_item(collection, head, target, point, who))
                .buffer_unordered(16)
                .try_collect()
                .await?
        };
        for attempt in 1..=PAGE_ATTEMPTS {
            if dry_run {
                break;
            }
            let writes: Vec<(&Head, RefWrite)> = work
                .iter()
                .filter_map(|(head, target)| ref_write(head, target.as_ref(), who).map(|w| (head, w)))
                .collect();
            if writes.is_empty() || self.append_refs(collection, writes).await?.is_some() {
                break;
            }
            if attempt >= PAGE_ATTEMPTS {
                // Written meanwhile, again: item by item, so only the busy items wait.
                work = futures::stream::iter(work)
                    .map(|(head, target)| self.restore_item(collection, head, target, point, who))
                    .buffer_unordered(16)
                    .try_collect()
                    .await?;
                break;
            }
            // Their targets can't have changed, only their heads.
            let ids: Vec<ItemId> = work.iter().map(|(h, _)| h.id.clone()).collect();
            let mut heads: HashMap<ItemId, Head> = self
                .meta()
                .heads_without_data(collection, &ids)
                .await?
                .into_iter()
                .map(|h| (h.id.clone(), h))
                .collect();
            for (head, _) in &mut work {
                *head = heads
                    .remove(&head.id)
                    .ok_or_else(|| Error::Corrupt(format!("{collection}/{} lost its head", head.id)))?;
            }
        }
        work.extend(alone);
        let mut counts = RestoreCounts {
            examined: work.len() as u64,
            ..Default::default()
        };
        for (head, target) in &work {
            match action(head, target.as_ref()) {
                Action::Restore => counts.restored += 1,
                Action::Delete => counts.deleted += 1,
                Action::Keep => counts.unchanged += 1,
            }
        }
        Ok(counts)
    }

    /// One page's heads, each with its version at the point (`None`: created after it), and the
    /// cursor of the next page.
    async fn examine_page(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        after_id: Option<ItemId>,
        limit: usize,
    ) -> Result<(Work, Option<ItemId>)> {
        let query = ListQuery {
            filter: Filter::default(),
            after_id,
            limit,
            descending: false,
            include_deleted: true,
        };
        let heads = self.meta().list_heads_without_data(collection, &query).await?;
        let ids: Vec<ItemId> = heads.iter().map(|h| h.id.clone()).collect();
        let mut targets = self.versions_at_point(collection, &ids, point).await?;
        let next_after_id = (heads.len() == limit).then(|| ids.last().cloned()).flatten();
        let work = heads
            .into_iter()
            .map(|h| {
                let t = targets.remove(&h.id);
                (h, t)
            })
            .collect();
        Ok((work, next_after_id))
    }

    /// Each item's version at `point`: from the index or, for an item whose versions that early
    /// were all pruned, from its retention manifests. Items created after the point are absent.
    pub(super) async fn versions_at_point(
        &self,
        collection: &CollectionName,
        ids: &[ItemId],
        point: HistoryPoint,
    ) -> Result<HashMap<ItemId, Target>> {
        let mut found: HashMap<ItemId, Target> = self
            .meta()
            .versions_at(collection, ids, point)
            .await?
            .into_iter()
            .map(|v| (v.id.clone(), Target::indexed(v)))
            .collect();
        let missing: Vec<ItemId> = ids.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
        if missing.is_empty() {
            return Ok(found);
        }
        // Retention removes a prefix of an item's versions: one whose oldest entry left is not its
        // create had some pruned, and its version at the point may be among them. Otherwise it
        // was created after the point.
        let pruned: Vec<ItemId> = self
            .meta()
            .oldest_versions(collection, &missing)
            .await?
            .into_iter()
            .filter(|v| v.ov > 0)
            .map(|v| v.id)
            .collect();
        let from_manifests: Vec<Option<Pruned>> = futures::stream::iter(pruned)
            .map(|id| async move { self.manifests().at(collection, &id, point).await })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        for p in from_manifests.into_iter().flatten() {
            found.insert(p.entry.id.clone(), Target::pruned(p));
        }
        Ok(found)
    }

    /// For each item in the query's id order, its version current at `at` (from the index or the
    /// retention manifests), if it matches the query: the filter applies to that version's
    /// metadata, deleted versions only with `include_deleted`. Heads are walked in pages, so an
    /// item whose versions at `at` were pruned is not missed.
    pub(crate) async fn list_as_of(
        &self,
        collection: &CollectionName,
        at: Timestamp,
        query: &ListQuery,
    ) -> Result<Vec<VersionEntry>> {
        let mut heads_query = ListQuery {
            filter: Filter::default(),
            after_id: query.after_id.clone(),
            limit: query.limit.clamp(100, 1000),
            descending: query.descending,
            include_deleted: true,
        };
        let mut found = Vec::new();
        loop {
            let heads = self.meta().list_heads_without_data(collection, &heads_query).await?;
            let ids: Vec<ItemId> = heads.into_iter().map(|h| h.id).collect();
            let mut versions = self.versions_at_point(collection, &ids, HistoryPoint::At(at)).await?;
            for id in &ids {
                let Some(t) = versions.remove(id) else { continue };
                // An erased version is never listed (it has nothing to show).
                if (query.include_deleted || !t.entry.deleted)
                    && !t.entry.erased()
                    && query.filter.matches(&t.entry.meta)
                {
                    found.push(t.entry);
                    if found.len() == query.limit {
                        return Ok(found);
                    }
                }
            }
            if ids.len() < heads_query.limit {
                return Ok(found);
            }
            heads_query.after_id = ids.last().cloned();
        }
    }

    /// Restore (or plan) the whole collection, page by page; `progress(sums, total)` is called
    /// after each page. Pages are listed one after the other (each starts after the last id of
    /// the one before) and written [`RESTORE_PAGES_IN_FLIGHT`] at a time: they hold different
    /// items, and overlapping them keeps mongod busy through each batch's round trips.
    pub async fn restore_collection(
        &self,
        collection: &CollectionName,
        point: HistoryPoint,
        dry_run: bool,
        who: &Attribution,
        mut progress: impl FnMut(&RestoreCounts, u64),
    ) -> Result<RestoreCounts> {
        let total = self.count_items(collection).await?;
        if !dry_run {
            self.prepare(collection).await?;
        }
        let size = self.settings().restore_page.clamp(1, 1000);
        type Listing<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Work, Option<ItemId>)>> + Send + 'a>>;
        // The next page being listed (`None` once the last one was); the pages being written.
        let mut listing: Option<Listing<'_>> = Some(Box::pin(self.examine_page(collection, point, None, size)));
        let mut writing = futures::stream::FuturesOrdered::new();
        let mut sums = RestoreCounts::default();
        loop {
            let list_more = listing.is_some() && writing.len() < RESTORE_PAGES_IN_FLIGHT;
            let listed = async {
                match listing.as_mut() {
                    Some(list) => list.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                listed = listed, if list_more => {
                    let (work, next) = listed?;
                    writing.push_back(self.apply_page(collection, point, work, dry_run, who));
                    listing = next.map(|after| -> Listing<'_> {
                        Box::pin(self.examine_page(collection, point, Some(after), size))
                    });
                }
                Some(counts) = writing.next() => {
                    sums.add(&counts?);
                    progress(&sums, total);
                }
                else => break,
            }
        }
        Ok(sums)
    }
}
