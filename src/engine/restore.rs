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
use serde::Serialize;

use super::error::{Error, Result};
use super::model::VersionTarget;
use super::model::{
    Attribution, CollectionName, Head, ItemId, Op, PayloadRef, Timestamp, VersionEntry, WriteOutcome, now, payload_key,
};
use super::query::Filter;
use super::store::{HistoryPoint, ListQuery, RefWrite};
use super::versioning::Engine;
use super::versioning::NewContent;

/// How many times an item written concurrently during the restore is re-examined (with a
/// growing pause: a conflict may be another transaction still holding the item, as in
/// single writes).
const ITEM_ATTEMPTS: u32 = 20;

/// How many times a page whose batch met a concurrent write is examined again before it is done
/// item by item (so one busy item can't keep the rest of its page from being restored).
const PAGE_ATTEMPTS: usize = 2;

/// A page: its items' heads, each with its version at the restore point (`None`: created after it).
type Work = Vec<(Head, Option<Target>)>;

/// An item's version at a point in history, and where it was found.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub entry: VersionEntry,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The version index.
    Index,
    /// A retention manifest (see [`super::retention::Pruned`]).
    Manifest { payload_kept: bool },
}

impl Target {
    /// Found in the manifest of a run that deleted payloads: its object may be gone.
    fn payload_may_be_gone(&self) -> bool {
        self.origin == Origin::Manifest { payload_kept: false }
    }

    fn indexed(entry: VersionEntry) -> Self {
        Target {
            entry,
            origin: Origin::Index,
        }
    }

    fn pruned(p: super::retention::Pruned) -> Self {
        Target {
            entry: p.entry,
            origin: Origin::Manifest {
                payload_kept: p.payload_kept,
            },
        }
    }
}

/// Pages of [`Engine::restore_collection`] being written at once.
const RESTORE_PAGES_IN_FLIGHT: usize = 3;

/// What the restore would do (dry run) or did, for one page or summed over pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCounts {
    /// Items looked at.
    pub examined: u64,
    /// Items given back their data at the target.
    pub restored: u64,
    /// Items logically deleted (created after the target, or deleted at the target).
    pub deleted: u64,
    /// Items already equal to their state at the target.
    pub unchanged: u64,
}

impl RestoreCounts {
    pub fn add(&mut self, other: &RestoreCounts) {
        self.examined += other.examined;
        self.restored += other.restored;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
    }
}

/// One page of a collection restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePage {
    pub counts: RestoreCounts,
    /// Continue after this id; `None` when the collection is done.
    pub next_after_id: Option<ItemId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Restore,
    Delete,
    Keep,
}

fn action(head: &Head, target: Option<&Target>) -> Action {
    match target.map(|t| &t.entry) {
        Some(t) if !t.deleted => {
            if head.deleted() || head.checksum != t.checksum {
                Action::Restore
            } else {
                Action::Keep
            }
        }
        // Created after the target, or deleted at the target.
        _ if head.deleted() => Action::Keep,
        _ => Action::Delete,
    }
}

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
            let writes: Vec<RefWrite> = work
                .iter()
                .filter_map(|(head, target)| ref_write(head, target.as_ref(), who))
                .collect();
            if writes.is_empty() || self.meta().append_by_reference(collection, writes).await?.is_some() {
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
    async fn versions_at_point(
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
        let from_manifests: Vec<Option<super::retention::Pruned>> = futures::stream::iter(pruned)
            .map(|id| async move { self.pruned_at(collection, &id, point).await })
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
    pub(super) async fn list_as_of(
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
                if (query.include_deleted || !t.entry.deleted) && query.filter.matches(&t.entry.meta) {
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

    /// One item of a page that kept changing: append its version alone, looking at its head
    /// again whenever it was written meanwhile. Returns the head it was last examined at (now
    /// equal to its target state, or left alone because it already was).
    async fn restore_item(
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
                backoff(attempt).await;
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
                if self
                    .meta()
                    .append_by_reference(collection, vec![write])
                    .await?
                    .is_some()
                {
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
        let stamp = super::versioning::stamp(who, collection, "restore", Some(id), expected_ov, &body)?;
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

    /// An item's version by ov or time: from the index or, once pruned, from its manifests.
    async fn target_of(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<Target>> {
        let indexed = match target {
            VersionTarget::Ov(ov) => self.meta().version(collection, id, ov).await?,
            VersionTarget::At(at) => self.meta().version_as_of(collection, id, at).await?,
        };
        if let Some(entry) = indexed {
            return Ok(Some(Target::indexed(entry)));
        }
        let found = self.pruned_where(collection, id, |v| target.admits(v)).await?;
        Ok(found.map(Target::pruned))
    }

    async fn restore_once(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
        expected_ov: Option<u64>,
        who: &Attribution,
        stamp: Option<&super::model::RequestStamp>,
    ) -> Result<WriteOutcome> {
        let wanted = target;
        self.prepare(collection).await?;
        for attempt in 0..ITEM_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            // Looked up on every round: retention may move it from the index into a manifest.
            let target = self
                .target_of(collection, id, wanted)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{collection}/{id} at {wanted}")))?;
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
            if let Some(cv) = self.meta().append_by_reference(collection, vec![write]).await? {
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
        stamp: Option<&super::model::RequestStamp>,
    ) -> Result<WriteOutcome> {
        let (ov, write_id) = target.payload();
        let key = payload_key(collection, &head.id, ov, write_id);
        let bytes = self.payload_store().get(&key).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "the data of {collection}/{} v{} (retention pruned it with its payload)",
                head.id, target.ov
            ))
        })?;
        let expected = super::envelope::Expected {
            database: self.database(),
            collection,
            id: &head.id,
            ov,
            write_id,
            checksum: &target.checksum,
        };
        let decoded = super::envelope::decode(&bytes, &expected)?;
        let data = self.new_data(collection, decoded.data)?;
        self.write_once(
            collection,
            &head.id,
            Op::Restore,
            Some(head.ov),
            NewContent::Data(data),
            None,
            who,
            stamp,
        )
        .await
    }
}

/// Whether bringing `head` to `target` takes a copy of the target's data (see
/// [`Engine::restore_by_copy`]) rather than a reference.
fn copies(head: &Head, target: &Target) -> bool {
    target.payload_may_be_gone() && action(head, Some(target)) == Action::Restore
}

/// Jittered exponential pause, 1 ms … 64 ms: a holder's transaction is short (no payload upload
/// for a restore, one for a single write).
async fn backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % cap;
    tokio::time::sleep(std::time::Duration::from_millis(1 + jitter)).await;
}

/// The append that brings `head` to its target state, or `None` when it is already there.
fn ref_write(head: &Head, target: Option<&Target>, who: &Attribution) -> Option<RefWrite> {
    match (action(head, target), target) {
        (Action::Keep, _) => None,
        (Action::Restore, Some(t)) => Some(restore_write(head, t, who)),
        _ => Some(delete_write(head, who)),
    }
}

/// A new version of `head`'s item: its coordinates, time and attribution, with the data of the
/// payload object named by `payload`.
fn ref_entry(head: &Head, op: Op, payload: (u64, &str), who: &Attribution) -> VersionEntry {
    let write_id = uuid::Uuid::now_v7().simple().to_string();
    VersionEntry {
        id: head.id.clone(),
        ov: head.ov + 1,
        cv: 0,
        op,
        // Per item, time never runs backwards (as in single writes).
        at: head.updated_at.max(now()),
        actor: who.actor.clone(),
        reason: who.reason.clone(),
        payload_ref: Some(PayloadRef {
            of: write_id.clone(),
            ov: payload.0,
            write_id: payload.1.to_owned(),
            function_ids: head.function_ids.clone(),
        }),
        write_id,
        size: 0,
        checksum: String::new(),
        meta: Default::default(),
        deleted: false,
        request: None,
    }
}

/// Bring back `target`'s data: the new version names the payload object that holds it.
fn restore_write(head: &Head, target: &Target, who: &Attribution) -> RefWrite {
    let source = (target.origin == Origin::Index).then_some(target.entry.ov);
    let target = &target.entry;
    let mut v = ref_entry(head, Op::Restore, target.payload(), who);
    v.size = target.size;
    v.checksum = target.checksum.clone();
    v.meta = target.meta.clone();
    RefWrite {
        expected_ov: head.ov,
        // Restoring a deleted item to the data it still holds keeps its inline copy.
        keep_inline: head.checksum == target.checksum,
        version: v,
        source,
    }
}

/// A logical delete that keeps the current data: the new version names the current payload.
fn delete_write(head: &Head, who: &Attribution) -> RefWrite {
    let mut v = ref_entry(head, Op::Delete, head.payload(), who);
    v.size = head.size;
    v.checksum = head.checksum.clone();
    v.meta = head.meta.clone();
    v.deleted = true;
    RefWrite {
        expected_ov: head.ov,
        keep_inline: true,
        version: v,
        // The head's own data: its entry is the item's latest, which retention always keeps.
        source: None,
    }
}
