//! The in-memory metadata store: the reference the conformance suite checks the other stores
//! against. Not durable; not for production.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, Op, PayloadRef, RequestKey, State, Timestamp, VersionEntry};
use crate::engine::query::Filter;
use crate::engine::store::rules::{HEAD_OVERHEAD, after, check_precondition, next_head, ref_head};
use crate::engine::store::sidecar::SideKind;
use crate::engine::store::signal::{CommitSignals, CommitWatch};
use crate::engine::store::{
    CommitError, HeadChange, Held, HistoryPoint, HistoryStart, ListQuery, MetaRead, MetaRestore, MetaUpkeep, MetaWrite,
    PendingWrite, PrunedVersion, RefWrite, Repoint, TierBatch, TierQuery, repoint,
};

#[derive(Default, Debug)]
pub(super) struct Collection {
    pub(super) cv: u64,
    pub(super) counters_from: u64,
    /// Retention's tallies since `counters_from`, per counter name.
    pub(super) pruned: HashMap<String, u64>,
    /// The highest cv retention removed from `versions`.
    pub(super) pruned_through: u64,
    pub(super) heads: HashMap<ItemId, Head>,
    pub(super) versions: BTreeMap<(ItemId, u64), VersionEntry>,
    /// Idempotency keys → the version written under each.
    pub(super) requests: HashMap<RequestKey, (ItemId, u64)>,
    /// One async lock per item: held by a pending write, like a row lock.
    locks: HashMap<ItemId, Arc<tokio::sync::Mutex<()>>>,
}

/// Side records by (collection, kind, item) (see `sidecar.rs`).
pub(super) type Sides = HashMap<(CollectionName, SideKind, ItemId), String>;

#[derive(Default, Clone)]
pub struct MemoryMetaStore {
    collections: Arc<Mutex<HashMap<CollectionName, Collection>>>,
    /// Idempotency-key lookups still to answer "not recorded" (see [`Self::lag_key_lookups`]).
    key_lookup_lag: Arc<AtomicUsize>,
    /// Wakes change feeds after commits.
    signals: CommitSignals,
    /// What a rebuild recorded of its progress (see `rebuild.rs`).
    pub(super) rebuild_progress: Arc<Mutex<Option<String>>>,
    /// Side records (see `sidecar.rs`).
    pub(super) sides: Arc<Mutex<Sides>>,
    /// Erasure records by id.
    erasures: Arc<Mutex<BTreeMap<String, String>>>,
}

impl MemoryMetaStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the next `n` idempotency-key lookups answer "not recorded", as MongoDB's majority
    /// reads do for a write committed on the primary but not yet replicated: how the engine's
    /// wait for such a write is tested without a replica set held back.
    pub fn lag_key_lookups(&self, n: usize) {
        self.key_lookup_lag.store(n, Ordering::SeqCst);
    }

    /// Everything the store holds, as text: what a test searches for bytes that must be gone
    /// (an erasure's), the way it would read every document of a MongoDB database.
    pub fn dump(&self) -> String {
        format!(
            "{:?} {:?} {:?}",
            *self.lock(),
            self.rebuild_progress.lock().unwrap_or_else(|p| p.into_inner()),
            self.erasures.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<CollectionName, Collection>> {
        self.collections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemoryPending {
    store: MemoryMetaStore,
    change: HeadChange,
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    _item: OwnedMutexGuard<()>,
}

#[async_trait]
impl PendingWrite for MemoryPending {
    async fn commit(self: Box<Self>, version: VersionEntry) -> Result<(), CommitError> {
        crate::engine::store::in_time(self.change.commit_by)?;
        let mut all = self.store.lock();
        let coll = all.entry(self.change.collection.clone()).or_default();
        if let Some(r) = &version.request {
            if coll.requests.contains_key(&r.key) {
                return Err(CommitError::NotCommitted {
                    error: Error::RequestKeyTaken(format!("a write with idempotency key {}", r.key)),
                    retry: false,
                });
            }
            coll.requests.insert(r.key.clone(), (self.change.id.clone(), self.ov));
        }
        let head = next_head(&self.change, self.previous.as_ref(), self.ov, self.cv, &version);
        coll.versions.insert((self.change.id.clone(), self.ov), version);
        coll.heads.insert(self.change.id.clone(), head);
        drop(all);
        self.store.signals.announce(&self.change.collection, self.cv);
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl MetaWrite for MemoryMetaStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn prepare_collection(&self, collection: &CollectionName, _indexed: &[String]) -> Result<()> {
        self.lock().entry(collection.clone()).or_default();
        Ok(())
    }

    async fn begin_write(&self, change: HeadChange) -> Result<Held> {
        let item_lock = {
            let mut all = self.lock();
            let coll = all.entry(change.collection.clone()).or_default();
            coll.locks.entry(change.id.clone()).or_default().clone()
        };
        let guard = item_lock.lock_owned().await;
        let mut all = self.lock();
        let coll = all.entry(change.collection.clone()).or_default();
        let previous = coll.heads.get(&change.id).cloned();
        check_precondition(&change, previous.as_ref())?;
        coll.cv += 1;
        let cv = coll.cv;
        let ov = previous.as_ref().map_or(0, |p| p.ov + 1);
        drop(all);
        let write = Box::new(MemoryPending {
            store: self.clone(),
            change,
            previous: previous.clone(),
            ov,
            cv,
            _item: guard,
        });
        Ok(Held {
            previous,
            ov,
            cv,
            together: 1,
            write,
        })
    }

    async fn version_by_request(&self, collection: &CollectionName, key: &RequestKey) -> Result<Option<VersionEntry>> {
        let lagging = self
            .key_lookup_lag
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lagging {
            return Ok(None);
        }
        let all = self.lock();
        Ok(all.get(collection).and_then(|c| {
            c.requests
                .get(key)
                .and_then(|(id, ov)| c.versions.get(&(id.clone(), *ov)))
                .cloned()
        }))
    }
}

#[async_trait]
impl MetaRead for MemoryMetaStore {
    async fn head(&self, collection: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        Ok(self.lock().get(collection).and_then(|c| c.heads.get(id).cloned()))
    }

    async fn version(&self, collection: &CollectionName, id: &ItemId, ov: u64) -> Result<Option<VersionEntry>> {
        Ok(self
            .lock()
            .get(collection)
            .and_then(|c| c.versions.get(&(id.clone(), ov)).cloned()))
    }

    async fn version_as_of(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        at: Timestamp,
    ) -> Result<Option<VersionEntry>> {
        let all = self.lock();
        let Some(c) = all.get(collection) else {
            return Ok(None);
        };
        Ok(c.versions
            .range((id.clone(), 0)..=(id.clone(), u64::MAX))
            .rev()
            .map(|(_, v)| v)
            .find(|v| v.at <= at)
            .cloned())
    }

    async fn versions(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>> {
        let all = self.lock();
        let Some(c) = all.get(collection) else {
            return Ok(vec![]);
        };
        let start = after_ov.map_or(0, |o| o.saturating_add(1));
        Ok(c.versions
            .range((id.clone(), start)..=(id.clone(), u64::MAX))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn list_heads(&self, collection: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        let all = self.lock();
        let Some(c) = all.get(collection) else {
            return Ok(vec![]);
        };
        let mut heads: Vec<&Head> = c
            .heads
            .values()
            .filter(|h| q.include_deleted || !h.deleted())
            .filter(|h| after(&h.id, q))
            .filter(|h| q.filter.matches(&h.meta))
            .collect();
        sort_by_id(&mut heads, |h| &h.id, q.descending);
        Ok(heads.into_iter().take(q.limit).cloned().collect())
    }

    async fn versions_after(
        &self,
        collection: &CollectionName,
        after_cv: u64,
        limit: usize,
    ) -> Result<Vec<VersionEntry>> {
        let all = self.lock();
        let Some(c) = all.get(collection) else {
            return Ok(vec![]);
        };
        // A scan: the in-memory store is a reference for tests, not a database.
        let mut found: Vec<&VersionEntry> = c.versions.values().filter(|v| v.cv > after_cv).collect();
        found.sort_by_key(|v| v.cv);
        Ok(found.into_iter().take(limit).cloned().collect())
    }

    async fn watch_commits(&self, collection: &CollectionName) -> Result<CommitWatch> {
        Ok(self.signals.watch(collection))
    }

    async fn history_start(&self, collection: &CollectionName) -> Result<HistoryStart> {
        let all = self.lock();
        Ok(all
            .get(collection)
            .map_or_else(HistoryStart::default, |c| HistoryStart {
                oldest_cv: c.versions.values().map(|v| v.cv).min(),
                pruned_through: c.pruned_through,
            }))
    }
}

#[async_trait]
impl MetaRestore for MemoryMetaStore {
    async fn versions_at(
        &self,
        collection: &CollectionName,
        ids: &[ItemId],
        point: HistoryPoint,
    ) -> Result<Vec<VersionEntry>> {
        let all = self.lock();
        let Some(c) = all.get(collection) else {
            return Ok(vec![]);
        };
        Ok(ids
            .iter()
            .filter_map(|id| {
                c.versions
                    .range((id.clone(), 0)..=(id.clone(), u64::MAX))
                    .rev()
                    .map(|(_, v)| v)
                    .find(|v| point.includes(v))
                    .cloned()
            })
            .collect())
    }

    async fn append_by_reference(
        &self,
        collection: &CollectionName,
        writes: Vec<RefWrite>,
        commit_by: Timestamp,
    ) -> Result<Option<u64>> {
        // Hold every item like a pending write would, in id order so two restores can't deadlock
        // (single writes hold one item at a time).
        let mut ids: Vec<ItemId> = writes.iter().map(|w| w.version.id.clone()).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != writes.len() {
            return Err(Error::validation("writes", "one write per item"));
        }
        let locks: Vec<_> = {
            let mut all = self.lock();
            let coll = all.entry(collection.clone()).or_default();
            ids.iter()
                .map(|id| coll.locks.entry(id.clone()).or_default().clone())
                .collect()
        };
        let mut _held = Vec::with_capacity(locks.len());
        for l in locks {
            _held.push(l.lock_owned().await);
        }
        let mut all = self.lock();
        let coll = all.entry(collection.clone()).or_default();
        let unchanged = writes.iter().all(|w| {
            coll.heads
                .get(&w.version.id)
                .is_some_and(|h| h.ov == w.expected_ov && w.version.ov == h.ov + 1)
                && w.source.is_none_or(|ov| {
                    coll.versions
                        .get(&(w.version.id.clone(), ov))
                        .is_some_and(|v| v.payload_ref.as_ref().and_then(PayloadRef::pack_key) == w.copied_pack())
                })
        });
        if !unchanged {
            return Ok(None);
        }
        if let Some(r) = writes.iter().find_map(|w| w.version.request.as_ref())
            && coll.requests.contains_key(&r.key)
        {
            return Err(Error::RequestKeyTaken(format!(
                "a write with idempotency key {}",
                r.key
            )));
        }
        crate::engine::store::refs_in_time(commit_by)?;
        let first = coll.cv + 1;
        for w in writes {
            coll.cv += 1;
            let cv = coll.cv;
            let Some(previous) = coll.heads.get(&w.version.id) else {
                return Err(Error::Corrupt("a head vanished under its lock".into()));
            };
            let head = ref_head(previous, &w, cv);
            let mut v = w.version;
            v.cv = cv;
            if let Some(r) = &v.request {
                coll.requests.insert(r.key.clone(), (v.id.clone(), v.ov));
            }
            coll.versions.insert((v.id.clone(), v.ov), v);
            coll.heads.insert(head.id.clone(), head);
        }
        let last = coll.cv;
        drop(all);
        self.signals.announce(collection, last);
        Ok(Some(first))
    }

    async fn count_items(&self, collection: &CollectionName) -> Result<u64> {
        Ok(self.lock().get(collection).map_or(0, |c| c.heads.len() as u64))
    }
}

#[async_trait]
impl MetaUpkeep for MemoryMetaStore {
    async fn count_versions(
        &self,
        collection: &CollectionName,
        after_cv: u64,
        filter: &Filter,
    ) -> Result<HashMap<Op, u64>> {
        let all = self.lock();
        let mut counts = HashMap::new();
        for v in all.get(collection).into_iter().flat_map(|c| c.versions.values()) {
            if v.cv > after_cv && filter.matches(&v.meta) {
                *counts.entry(v.op).or_default() += 1;
            }
        }
        Ok(counts)
    }

    async fn counters_from(&self, collection: &CollectionName) -> Result<u64> {
        Ok(self.lock().get(collection).map_or(0, |c| c.counters_from))
    }

    async fn reset_counters(&self, collection: &CollectionName) -> Result<u64> {
        let mut all = self.lock();
        let c = all.entry(collection.clone()).or_default();
        c.counters_from = c.cv;
        c.pruned.clear();
        Ok(c.cv)
    }

    async fn pruned_counts(&self, collection: &CollectionName) -> Result<HashMap<String, u64>> {
        Ok(self
            .lock()
            .get(collection)
            .map(|c| c.pruned.clone())
            .unwrap_or_default())
    }

    async fn mark_processed(&self, collection: &CollectionName, query: &TierQuery) -> Result<TierBatch> {
        let dry_run = query.dry_run;
        let mut all = self.lock();
        let Some(c) = all.get_mut(collection) else {
            return Ok(TierBatch::default());
        };
        let mut ids: Vec<ItemId> = c
            .heads
            .values()
            .filter(|h| h.state == State::New && h.updated_at < query.older_than)
            .filter(|h| {
                query.only.as_ref().is_none_or(|o| &h.id == o) && query.after_id.as_ref().is_none_or(|a| &h.id > a)
            })
            .map(|h| h.id.clone())
            .collect();
        ids.sort();
        ids.truncate(query.limit);
        let mut batch = TierBatch::default();
        for id in &ids {
            if let Some(h) = c.heads.get_mut(id) {
                let inline = h.inline.as_ref().map_or(0, |d| d.len() as u64);
                batch.bytes_before += HEAD_OVERHEAD + inline;
                batch.bytes_after += HEAD_OVERHEAD + if dry_run { inline } else { 0 };
                if !dry_run {
                    h.inline = None;
                    h.state = State::Processed;
                }
            }
        }
        batch.ids = ids;
        Ok(batch)
    }

    async fn items_with_versions_matching(
        &self,
        collection: &CollectionName,
        filter: &Filter,
        after_id: Option<&ItemId>,
        limit: usize,
    ) -> Result<Vec<ItemId>> {
        let all = self.lock();
        let mut ids: Vec<ItemId> = Vec::new();
        // The index is in (id, ov) order, so matching ids come out sorted.
        for ((id, _), v) in all.get(collection).into_iter().flat_map(|c| c.versions.iter()) {
            if ids.len() >= limit {
                break;
            }
            if after_id.is_none_or(|a| id > a) && ids.last() != Some(id) && filter.matches(&v.meta) {
                ids.push(id.clone());
            }
        }
        Ok(ids)
    }

    async fn put_erasure(&self, id: &str, record: &str) -> Result<()> {
        let mut erasures = self.erasures.lock().unwrap_or_else(|p| p.into_inner());
        erasures.insert(id.to_owned(), record.to_owned());
        Ok(())
    }

    async fn erasure_records(&self) -> Result<Vec<String>> {
        let erasures = self.erasures.lock().unwrap_or_else(|p| p.into_inner());
        Ok(erasures.values().cloned().collect())
    }

    async fn repoint_payload(&self, collection: &CollectionName, id: &ItemId, moving: Repoint<'_>) -> Result<u64> {
        let mut all = self.lock();
        let Some(c) = all.get_mut(collection) else { return Ok(0) };
        let versions = c
            .versions
            .range_mut((id.clone(), 0)..=(id.clone(), u64::MAX))
            .map(|(_, v)| v);
        let refs = versions
            .filter_map(|v| v.payload_ref.as_mut())
            .chain(c.heads.get_mut(id).and_then(|h| h.payload_ref.as_mut()));
        Ok(refs
            .filter_map(|r| repoint(r, &moving))
            .filter(|changed| *changed)
            .count() as u64)
    }

    async fn delete_versions(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        versions: &[PrunedVersion],
    ) -> Result<u64> {
        let mut all = self.lock();
        let Some(c) = all.get_mut(collection) else { return Ok(0) };
        let mut removed = 0;
        for p in versions {
            if let Some(v) = c.versions.remove(&(id.clone(), p.ov)) {
                removed += 1;
                c.pruned_through = c.pruned_through.max(v.cv);
                if v.cv > c.counters_from {
                    for name in &p.counts {
                        *c.pruned.entry(name.clone()).or_default() += 1;
                    }
                }
                if let Some(r) = v.request {
                    c.requests.remove(&r.key);
                }
            }
        }
        Ok(removed)
    }
}

fn sort_by_id<T>(items: &mut [&T], id: impl Fn(&T) -> &ItemId, descending: bool) {
    items.sort_by(|a, b| {
        let o = id(a).cmp(id(b));
        if descending { o.reverse() } else { o }
    });
}
