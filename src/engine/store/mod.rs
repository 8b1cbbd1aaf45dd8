//! The two narrow store traits every backend implements.
//!
//! A backend pair (metadata store + payload store) is exercised by one shared conformance suite
//! (`tests/it/conformance/`), the way `object_store` runs one `integration.rs` for every backend.

#[cfg(feature = "testing")]
pub mod decorators;
mod payload;
pub mod queue;
pub mod rules;
pub mod sidecar;
pub mod signal;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::model::{
    CollectionName, Content, Head, ItemId, Op, PackSlot, PayloadRef, RequestKey, Timestamp, VersionEntry,
};
use super::query::Filter;

pub use payload::{ByteRange, LockMode, ObjectLockStatus, PayloadStore, PutOptions};

/// The change a write makes to an item's head, prepared by the engine and applied atomically by
/// the metadata store together with the matching [`VersionEntry`].
#[derive(Debug, Clone)]
pub struct HeadChange {
    pub collection: CollectionName,
    pub id: ItemId,
    pub op: Op,
    /// Optimistic lock: the write only applies if the head is at this ov. `None` = last writer wins.
    pub expected_ov: Option<u64>,
    pub write_id: String,
    pub at: Timestamp,
    /// The new data; `None` keeps the current data (a logical delete).
    pub data: Option<NewData>,
    /// Added to the head's `functionIds` (enrichment provenance).
    pub function_id: Option<String>,
    /// The caller's idempotency key, if any (the version entry records it): a store that commits
    /// writes in groups keeps two writes with one key in different groups.
    pub request_key: Option<RequestKey>,
    /// Commit before this time or not at all: after it, scrub may take the payload uploaded under
    /// `write_id` for an orphan and delete it (see [`rules::commit_window`]). Every store
    /// checks it right before its commit, with [`in_time`].
    pub commit_by: Timestamp,
}

/// A payload's bytes moving to another place (see [`MetaUpkeep::repoint_payload`]).
#[derive(Debug, Clone, Copy)]
pub struct Repoint<'a> {
    /// The payload `(ov, write_id)` whose references move.
    pub payload: (u64, &'a str),
    /// Where the mover copied the bytes from: a pack's key, or `None` for the payload's own
    /// object. Only references still naming it move, so of two movers racing (compaction and a
    /// hold) the later can't point the versions at a copy of a place they no longer use.
    pub from: Option<&'a str>,
    /// The new place: a pack slot, or `None` for the payload's own object.
    pub to: Option<&'a PackSlot>,
}

/// [`MetaUpkeep::repoint_payload`] on one stored reference: `Some(changed)` when `r` names the
/// payload at `moving.from` (changed: whether its slot was not `moving.to` yet).
pub fn repoint(r: &mut PayloadRef, moving: &Repoint<'_>) -> Option<bool> {
    if (r.ov, r.write_id.as_str()) != moving.payload || r.pack_key() != moving.from {
        return None;
    }
    let changed = r.pack.as_ref() != moving.to;
    r.pack = moving.to.cloned();
    Some(changed)
}

/// Whether a write may still commit (see [`HeadChange::commit_by`]). A write that is too late
/// is not committed; the engine removes its payload and redoes it with a fresh write id.
pub fn in_time(commit_by: Timestamp) -> Result<(), CommitError> {
    if super::model::now() < commit_by {
        return Ok(());
    }
    Err(CommitError::NotCommitted {
        error: Error::metadata(
            "the write took too long to reach its commit (its payload could already be taken for an orphan); retry",
        ),
        retry: true,
    })
}

/// Every key under `prefix`, page by page ([`PayloadStore::list`]). For listings the caller
/// holds whole anyway; a walk over a whole bucket (scrub) pages on its own.
pub async fn keys_under(store: &dyn PayloadStore, prefix: &str) -> Result<Vec<String>> {
    keys_under_matching(store, prefix, |_| true).await
}

/// The keys under `prefix` that `keep` keeps, listed page by page: only those are held in memory.
pub async fn keys_under_matching(
    store: &dyn PayloadStore,
    prefix: &str,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(prefix, after.as_deref(), 1000).await?;
        let Some(last) = page.last().cloned() else { break };
        keys.extend(page.into_iter().filter(|k| keep(k)));
        after = Some(last);
    }
    Ok(keys)
}

/// [`in_time`] for an append by reference, whose errors are the store's own.
pub fn refs_in_time(commit_by: Timestamp) -> Result<()> {
    match in_time(commit_by) {
        Ok(()) => Ok(()),
        Err(CommitError::NotCommitted { error, .. } | CommitError::Unknown(error)) => Err(error),
    }
}

/// Data a write puts into the head.
#[derive(Debug, Clone)]
pub struct NewData {
    pub content: Content,
    /// Indexed metadata extracted from the data.
    pub meta: Map<String, Value>,
    /// Whether the data is small enough to keep inline in the head.
    pub inline: bool,
}

/// A write that holds its item: the head change is staged, the payload can now be uploaded, and
/// the write becomes visible only on [`PendingWrite::commit`]. Dropping it without committing
/// abandons the write.
#[async_trait]
pub trait PendingWrite: Send {
    /// Make the head change and the version entry durable, atomically. A version whose
    /// idempotency key is already recorded for the collection is refused (`NotCommitted`).
    async fn commit(self: Box<Self>, version: VersionEntry) -> Result<(), CommitError>;
    /// Give the item back without changing anything.
    async fn abort(self: Box<Self>);
}

/// A write that holds its item (see [`MetaWrite::begin_write`]): where it starts from, and the
/// [`PendingWrite`] that finishes it.
pub struct Held {
    /// The head before this write; `None` for a create.
    pub previous: Option<Head>,
    /// The object version this write will produce.
    pub ov: u64,
    /// The collection version this write was given.
    pub cv: u64,
    /// How many writes the store opened together with this one (1 alone; a group's size): their
    /// payloads are uploaded at about the same moment, so a packer waits for them all.
    pub together: usize,
    pub write: Box<dyn PendingWrite>,
}

/// Why a commit failed, and whether the write might have happened anyway.
#[derive(Debug)]
pub enum CommitError {
    /// Definitely not committed: the payload may be removed, and `retry` says whether another
    /// attempt may succeed.
    NotCommitted { error: Error, retry: bool },
    /// The store could not confirm the outcome; the write may be visible. Its payload must stay.
    Unknown(Error),
}

/// One version appended by reference (collection restore): see
/// [`MetaRestore::append_by_reference`].
#[derive(Debug, Clone)]
pub struct RefWrite {
    /// Precondition: the head is still at this ov, i.e. nothing was written to the item since the
    /// engine examined it. The entry's `ov` is `expected_ov + 1`.
    pub expected_ov: u64,
    /// The entry to append, with `payload_ref` naming the payload object (its `of` is the entry's
    /// own write id); the store fills in `cv`. The new head takes the entry's ov, cv, write id,
    /// time (never backwards), deleted flag, size, checksum, meta and reference; it keeps
    /// `insertedAt` and `functionIds`.
    pub version: VersionEntry,
    /// Whether the head keeps its inline data: yes when the data is unchanged (a delete). When it
    /// changes, the inline copy is dropped and the head becomes `processed` (its data lives only
    /// in the referenced payload object), because reading the data to inline it would cost the
    /// very payload GET that restoring by reference avoids.
    pub keep_inline: bool,
    /// The ov of the index entry whose data the version takes (a restore of an indexed version,
    /// or a delete keeping the head's data): the append fails (`Ok(None)`) unless that entry is
    /// still in the index **and still names the pack the version copies** ([`RefWrite::copied_pack`]),
    /// and writes to it in the same transaction. So retention can't remove the entry and then
    /// delete its payload object without seeing this version (see
    /// `Engine::delete_pruned_payloads`), and a slot copied before compaction or a hold moved the
    /// bytes is never committed, however long the restore took (the old pack may be gone).
    pub source: Option<u64>,
}

impl RefWrite {
    /// The key of the pack whose slot the version copies (`None`: the payload's own object).
    pub fn copied_pack(&self) -> Option<&str> {
        self.version.payload_ref.as_ref()?.pack_key()
    }
}

/// A version retention removes from the index, with the counters it counts toward.
#[derive(Debug, Clone)]
pub struct PrunedVersion {
    pub ov: u64,
    pub cv: u64,
    /// Counter names (`counters.rs`), kept as pruned tallies when the version goes.
    pub counts: Vec<String>,
}

/// Which items a listing returns, in item-id order.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Filter,
    /// Start after this id (exclusive), in the listing's direction.
    pub after_id: Option<ItemId>,
    pub limit: usize,
    pub descending: bool,
    pub include_deleted: bool,
}

/// A point in a collection's history: after the write with this cv, or at this time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HistoryPoint {
    Cv(u64),
    At(Timestamp),
}

impl HistoryPoint {
    /// Whether a version was written at or before this point.
    pub fn includes(&self, v: &VersionEntry) -> bool {
        match *self {
            HistoryPoint::Cv(cv) => v.cv <= cv,
            HistoryPoint::At(at) => v.at <= at,
        }
    }
}

/// Which `new` items one batch of cost tiering takes: those last written before `older_than` — or
/// exactly `only`, if given — up to `limit` of them after `after_id`, in id order. With `dry_run`,
/// nothing changes and the batch only reports.
#[derive(Debug, Clone)]
pub struct TierQuery {
    pub older_than: Timestamp,
    pub only: Option<ItemId>,
    pub after_id: Option<ItemId>,
    pub limit: usize,
    pub dry_run: bool,
}

/// One batch of cost tiering: which items were (or would be) made `processed`, and the size of
/// their head documents before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierBatch {
    pub ids: Vec<ItemId>,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Heads, the version index and the collection-version sequence: everything a backend's metadata
/// store does, as the five parts its callers use ([`MetaWrite`], [`MetaRead`], [`MetaRestore`],
/// [`MetaUpkeep`], [`MetaRebuild`]) and the per-item side records ([`sidecar::MetaSidecar`]).
/// Implemented for every type that implements them all, so `Arc<dyn MetaStore>` is what the
/// engine holds.
pub trait MetaStore: MetaWrite + MetaRead + MetaRestore + MetaUpkeep + MetaRebuild + sidecar::MetaSidecar {}

impl<T: MetaWrite + MetaRead + MetaRestore + MetaUpkeep + MetaRebuild + sidecar::MetaSidecar> MetaStore for T {}

/// What the write path needs: reach the store, prepare a collection, hold and commit a write, and
/// find the version an idempotency key already wrote.
#[async_trait]
pub trait MetaWrite: Send + Sync + 'static {
    /// Verify the backend is reachable and can give the guarantees the engine needs.
    async fn ping(&self) -> Result<()>;
    /// Create what a collection needs: its indexes, including one per indexed property (and
    /// drop indexes of properties no longer indexed). Idempotent; the engine calls it once per
    /// collection per process, never per write.
    async fn prepare_collection(&self, collection: &CollectionName, indexed: &[String]) -> Result<()>;
    /// Start a write: allocate the next cv, check the precondition and hold the item until the
    /// returned write ([`Held::write`]) commits or is dropped.
    ///
    /// Errors: `NotFound` (update/delete of a missing or deleted item), `AlreadyExists` (create of
    /// a taken id), `VersionConflict`, `Contended`.
    async fn begin_write(&self, change: HeadChange) -> Result<Held>;
    /// The version written under this idempotency key, if any (keys are unique per collection
    /// and remembered as long as their version is in the index).
    async fn version_by_request(&self, collection: &CollectionName, key: &RequestKey) -> Result<Option<VersionEntry>>;
}

/// What the reads need: heads, one item's versions, and listings of heads.
#[async_trait]
pub trait MetaRead: Send + Sync + 'static {
    async fn head(&self, collection: &CollectionName, id: &ItemId) -> Result<Option<Head>>;
    async fn version(&self, collection: &CollectionName, id: &ItemId, ov: u64) -> Result<Option<VersionEntry>>;
    /// The latest version written at or before `at`.
    async fn version_as_of(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        at: Timestamp,
    ) -> Result<Option<VersionEntry>>;
    /// Versions in ov order, starting after `after_ov`; at most `limit`.
    async fn versions(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>>;
    /// Heads matching the query (the filter applies to their indexed metadata).
    async fn list_heads(&self, collection: &CollectionName, query: &ListQuery) -> Result<Vec<Head>>;
    /// Versions of every item with cv above `after_cv`, in cv order; at most `limit`: the change
    /// feed's read. Only committed versions (on MongoDB: majority-committed, so a version the
    /// feed delivered can't be rolled back).
    async fn versions_after(
        &self,
        collection: &CollectionName,
        after_cv: u64,
        limit: usize,
    ) -> Result<Vec<VersionEntry>>;
    /// Where the collection's history in the index begins (see [`HistoryStart`]).
    async fn history_start(&self, collection: &CollectionName) -> Result<HistoryStart>;
    /// A signal that wakes after versions of `collection` were committed, by this process or
    /// (where the backend can tell) any other, from the moment this returns: a reader that reads
    /// the index after taking it misses no commit.
    async fn watch_commits(&self, collection: &CollectionName) -> Result<signal::CommitWatch>;
}

/// Where a collection's history in the version index begins: what a change feed needs to tell a
/// resume point that is still complete from one retention has cut into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStart {
    /// The oldest cv still in the index; `None` when it is empty.
    pub oldest_cv: Option<u64>,
    /// The highest cv retention has removed from the index (0: none). Retention removes a prefix
    /// of each *item's* versions, so removed cvs are scattered below this mark: a feed resuming
    /// after a cv below it would silently miss versions, one resuming at or above it misses none.
    pub pruned_through: u64,
}

/// What a collection restore needs beyond the reads: heads without their data, versions at a point
/// in history, and appends that reuse existing payload objects.
#[async_trait]
pub trait MetaRestore: MetaRead + Send + Sync + 'static {
    /// The heads of these items (those that exist, in any order), without inline data: a
    /// restore's second look at a page.
    async fn heads_without_data(&self, collection: &CollectionName, ids: &[ItemId]) -> Result<Vec<Head>> {
        let mut heads = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(mut h) = self.head(collection, id).await? {
                h.inline = None;
                heads.push(h);
            }
        }
        Ok(heads)
    }
    /// [`MetaRead::list_heads`] without the inline data (`inline` is `None`), for work that needs
    /// only the heads' coordinates and checksums (a restore): a page of hot heads is mostly data.
    async fn list_heads_without_data(&self, collection: &CollectionName, query: &ListQuery) -> Result<Vec<Head>> {
        let mut heads = self.list_heads(collection, query).await?;
        for h in &mut heads {
            h.inline = None;
        }
        Ok(heads)
    }
    /// For each of `ids`, its latest version at `point` in the index (items created later, and
    /// items whose versions that early were all pruned, are absent).
    async fn versions_at(
        &self,
        collection: &CollectionName,
        ids: &[ItemId],
        point: HistoryPoint,
    ) -> Result<Vec<VersionEntry>>;
    /// For each of `ids`, its oldest version left in the index (retention removes a prefix of an
    /// item's versions, so an oldest ov above 0 means some were pruned).
    async fn oldest_versions(&self, collection: &CollectionName, ids: &[ItemId]) -> Result<Vec<VersionEntry>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.versions(collection, id, None, 1).await?);
        }
        Ok(found)
    }
    /// Append versions that reuse existing payload objects (see [`RefWrite`]), all or nothing:
    /// allocate consecutive cvs for them, move each head if it is still at its `expected_ov`,
    /// and insert the entries, atomically. `Ok(Some(cv))`: committed, the first write got `cv`,
    /// the next `cv + 1` and so on. `Ok(None)`: nothing was written because some item changed (or
    /// is being written) meanwhile; the caller re-examines and tries again.
    ///
    /// Like a write, an append takes cvs, so it commits before `commit_by` or not at all (checked
    /// right before the commit with [`refs_in_time`]): a change feed waits for a cv that is taken
    /// but not yet visible only that long (see `docs/design.md`, "Change feed"). Too late, nothing
    /// is written and the error is retryable (`Unavailable`).
    async fn append_by_reference(
        &self,
        collection: &CollectionName,
        writes: Vec<RefWrite>,
        commit_by: Timestamp,
    ) -> Result<Option<u64>>;
    /// How many items the collection has (deleted ones included).
    async fn count_items(&self, collection: &CollectionName) -> Result<u64>;
}

/// What counters, tiering and retention need: counts over the index, moving data out of heads, and
/// removing versions from the index.
#[async_trait]
pub trait MetaUpkeep: Send + Sync + 'static {
    /// Versions with cv above `after_cv` whose metadata matches `filter`, counted per op.
    async fn count_versions(
        &self,
        collection: &CollectionName,
        after_cv: u64,
        filter: &Filter,
    ) -> Result<std::collections::HashMap<Op, u64>>;
    /// The cv after which counters count (0 until the first reset).
    async fn counters_from(&self, collection: &CollectionName) -> Result<u64>;
    /// Make counters start after the collection's current cv; returns that cv.
    async fn reset_counters(&self, collection: &CollectionName) -> Result<u64>;
    /// What retention removed from the index since the counters' mark, per counter name (see
    /// [`MetaUpkeep::delete_versions`]); a reset of the counters empties it.
    async fn pruned_counts(&self, collection: &CollectionName) -> Result<std::collections::HashMap<String, u64>>;
    /// Drop the inline data of the items `query` selects and mark them `processed` (with
    /// `dry_run`, only report). A write racing with this is never affected: the conditions are
    /// re-checked atomically per item.
    async fn mark_processed(&self, collection: &CollectionName, query: &TierQuery) -> Result<TierBatch>;
    /// Ids of the items with a version in the index whose metadata matches `filter`, in id order,
    /// after `after_id`, at most `limit`: an erasure by subject must find an item whose latest
    /// version no longer names the subject.
    async fn items_with_versions_matching(
        &self,
        collection: &CollectionName,
        filter: &Filter,
        after_id: Option<&ItemId>,
        limit: usize,
    ) -> Result<Vec<ItemId>>;
    /// Store an erasure record (opaque JSON text, see `ledger::erasures`) under its id,
    /// replacing the one of that id (an erasure is recorded started, then done): the metadata
    /// store's copy of the append-only account of erasures, beside the payload bucket's.
    async fn put_erasure(&self, id: &str, record: &str) -> Result<()>;
    /// Every erasure record the store holds, in id order.
    async fn erasure_records(&self) -> Result<Vec<String>>;
    /// Make every version of item `id` whose data is the payload `moving.payload` — its own, or
    /// one it refers to — and the head, if it does, name `moving.to` as where those bytes lie,
    /// as long as it still names `moving.from`. For a packed payload that moves (a hold copies it
    /// to its own key, compaction into a new pack); the old place keeps the same bytes until
    /// nothing can name it, so a reader never misses them, and running it again is harmless.
    /// Returns how many versions and heads changed (0: none named `from` any more).
    async fn repoint_payload(&self, collection: &CollectionName, id: &ItemId, moving: Repoint<'_>) -> Result<u64>;
    /// Remove these versions of an item from the index (retention); returns how many went.
    /// Atomically with that, each version removed now whose cv is above the counters' mark is
    /// added to the collection's pruned tallies under its counter names, so counters computed
    /// from the index don't drop, and the collection's [`HistoryStart::pruned_through`] rises to
    /// the highest cv removed (a counter reset leaves it alone: it is about the index, not the
    /// counters).
    async fn delete_versions(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        versions: &[PrunedVersion],
    ) -> Result<u64>;
}

/// A collection's counters state as a rebuild finds it in the buckets (see
/// [`MetaRebuild::load_sequences`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuiltSequences {
    /// The highest cv any version of the collection took: the sequence goes on after it.
    pub last_cv: u64,
    /// The counters' mark (the cv of the last reset; 0 if never reset).
    pub counters_from: u64,
    /// What retention pruned since the mark, per counter name.
    pub pruned: std::collections::HashMap<String, u64>,
    /// The highest cv retention removed from the index ([`HistoryStart::pruned_through`]): a
    /// rebuilt index lacks the pruned versions, so without it a change feed would resume across
    /// them silently.
    pub pruned_through: u64,
}

/// What rebuilding the metadata from the buckets needs (`engine::rebuild`): to know whether the
/// store already holds data, and to load heads, index entries and each collection's sequences in
/// bulk — a handful of commands per thousand versions, never one per version. Every load is
/// idempotent, so a rebuild killed midway is resumed by running it again over what it loaded.
///
/// The loads assume [`MetaWrite::prepare_collection`] ran for the collection first: the stores
/// rely on its unique indexes (on `(item, ov)` and on idempotency keys) to leave an entry loaded
/// twice as it is and to refuse a key on two versions.
#[async_trait]
pub trait MetaRebuild: Send + Sync + 'static {
    /// Whether any collection has a head or a version entry (a rebuild refuses to write into a
    /// store that does, unless told to).
    async fn holds_data(&self) -> Result<bool>;
    /// Insert version entries of one collection, all of them or — on a resume — those whose
    /// `(id, ov)` is not in the index yet (one already there is left as it is). Idempotency keys
    /// (`request`) and references (`payload_ref`) are stored as a write stores them. An
    /// idempotency key already recorded on another version is refused (`RequestKeyTaken`).
    async fn load_versions(&self, collection: &CollectionName, entries: &[VersionEntry]) -> Result<()>;
    /// Insert these heads, replacing any head of the same id.
    async fn load_heads(&self, collection: &CollectionName, heads: &[Head]) -> Result<()>;
    /// Set the collection's cv sequence to at least `last_cv`, and its counters' mark and pruned
    /// tallies to exactly these.
    async fn load_sequences(&self, collection: &CollectionName, state: &RebuiltSequences) -> Result<()>;
    /// The progress a rebuild recorded (opaque to the store; `None` when no rebuild is under way).
    async fn rebuild_progress(&self) -> Result<Option<String>>;
    /// Record (or with `None` clear) a rebuild's progress.
    async fn set_rebuild_progress(&self, progress: Option<&str>) -> Result<()>;
}
