//! A collection's history as the buckets alone tell it: the ledger's records, the retention
//! manifests' pruned versions and the payload objects. Which versions count as committed is
//! decided here (see `docs/design.md`, "Rebuilding from the buckets"):
//!
//! 1. a version a ledger segment names (the writer notes versions only after their commit);
//! 2. a version a retention manifest names (it was in the index);
//! 3. a payload object that a committed version names as its predecessor (`prev`), read from the
//!    object's own envelope — this recovers versions whose writer died before its next flush.
//!
//! Anything else is not a version: an object of an ov that a committed version already has is a
//! loser's or an aborted write's orphan; an object above an item's last committed version is
//! *unconfirmed* — a write that may have died before its commit, or one that committed in the last
//! flush interval before its process died. Those are reported and left out unless asked for.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt};

use crate::engine::envelope;
use crate::engine::error::{Error, Result};
use crate::engine::ledger::erasures;
use crate::engine::ledger::{LEDGER_PREFIX, LedgerRecord, Segment, SegmentKey};
use crate::engine::model::{CollectionName, ItemId, Op, PackSlot, payload_key};
use crate::engine::pack::stored::{StoredPayload, Where};
use crate::engine::versioning::Engine;

/// How many objects are read at once.
const READ_AHEAD: usize = 32;

/// One item's versions, by ov.
pub type ItemVersions = BTreeMap<u64, LedgerRecord>;

/// What the buckets say about one collection.
#[derive(Default)]
pub struct CollectionHistory {
    /// Committed versions per item (pruned ones included).
    pub items: HashMap<ItemId, ItemVersions>,
    /// `(id, ov)` of versions kept only in retention manifests.
    pub pruned: std::collections::HashSet<(ItemId, u64)>,
    /// Pruned versions' counter names with their cv (tallies are counted after the reset mark).
    pub pruned_counts: Vec<(u64, Vec<String>)>,
    /// The highest cv of any committed version.
    pub last_cv: u64,
    /// Payloads above their item's last committed version.
    pub unconfirmed: Vec<StoredPayload>,
    /// Versions a committed successor names whose object is gone (a version restored by
    /// reference in the last flush interval of a process that died: it has no object).
    pub lost: Vec<String>,
    pub segments: u64,
    pub recovered_from_objects: u64,
    /// Items an erasure record names: their versions come back only as tombstones, and no
    /// object of theirs is taken for a version.
    pub erased: std::collections::HashSet<ItemId>,
}

/// Every segment key in the payload bucket, by collection.
pub async fn segment_keys(engine: &Engine) -> Result<BTreeMap<String, Vec<SegmentKey>>> {
    let store = engine.payload_store();
    let mut out: BTreeMap<String, Vec<SegmentKey>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let keys = store.list(LEDGER_PREFIX, after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else { break };
        for k in keys.iter().filter_map(|k| SegmentKey::parse(k)) {
            out.entry(k.collection.clone()).or_default().push(k);
        }
        after = Some(last);
    }
    for keys in out.values_mut() {
        keys.sort();
    }
    Ok(out)
}

/// Read and decode these segments (with their seals, for a verify's chain check).
pub async fn read_segments(engine: &Engine, keys: &[SegmentKey]) -> Result<Vec<(Segment, String)>> {
    let store = engine.payload_store();
    let database = engine.database();
    futures::stream::iter(keys.iter().cloned())
        .map(|k| async move {
            let bytes = store
                .get(&k.key())
                .await?
                .ok_or_else(|| Error::Corrupt(format!("{} vanished while it was read", k.key())))?;
            let segment = Segment::decode(&bytes, &k, database)?;
            let seal = segment.seal();
            Ok::<_, Error>((segment, seal))
        })
        .buffered(READ_AHEAD)
        .try_collect()
        .await
}

impl CollectionHistory {
    /// Read a collection's history from the buckets.
    pub async fn read(engine: &Engine, collection: &CollectionName, segments: &[SegmentKey]) -> Result<Self> {
        let mut h = CollectionHistory::default();
        // Three independent reads, each a sequence of round trips: overlapped, not one after the
        // other (listing the objects is the longest: a page of 1000 keys per request).
        let mut pruned_entries = Vec::new();
        let (segments, objects, manifests) = futures::join!(
            read_segments(engine, segments),
            engine.stored_payloads(collection),
            engine
                .manifests()
                .each_in_collection(collection, |id, p, counts| pruned_entries.push((id.clone(), p, counts))),
        );
        manifests?;
        for (segment, _) in segments? {
            h.segments += 1;
            for r in segment.records {
                h.add(r.record())?;
            }
        }
        for (id, p, counts) in pruned_entries {
            h.pruned.insert((id.clone(), p.entry.ov));
            h.pruned_counts.push((p.entry.cv, counts));
            h.last_cv = h.last_cv.max(p.entry.cv);
            // A manifest's entry lacks what only a head needs; the ledger's record (if any) wins.
            let versions = h.items.entry(id).or_default();
            versions.entry(p.entry.ov).or_insert_with(|| pruned_record(&p.entry));
        }
        h.apply_erasures(engine, collection).await?;
        let objects = objects?;
        let places = where_stored(&objects);
        h.confirm_from_objects(engine, collection, objects).await?;
        h.relocate(&places);
        Ok(h)
    }

    /// The denylist: every version of an item an erasure names becomes its tombstone, even if a
    /// record escaped redaction (an erasure cut short, a segment written late), and its counter
    /// names count as tallies, as in the store the erasure left.
    async fn apply_erasures(&mut self, engine: &Engine, collection: &CollectionName) -> Result<()> {
        let records = erasures::all(engine.payload_store(), engine.database(), Some(collection)).await?;
        for item in records.into_iter().flat_map(|e| e.items) {
            let versions = self.items.entry(item.id.clone()).or_default();
            for r in versions.values_mut().filter(|r| r.op != Op::Erased) {
                *r = LedgerRecord::tombstone(&r.id, r.ov, r.cv, r.at);
            }
            for v in item.versions {
                self.last_cv = self.last_cv.max(v.cv);
                versions
                    .entry(v.ov)
                    .or_insert_with(|| LedgerRecord::tombstone(&item.id, v.ov, v.cv, v.at));
                self.pruned_counts.push((v.cv, v.counts));
            }
            self.erased.insert(item.id);
        }
        Ok(())
    }

    fn add(&mut self, r: LedgerRecord) -> Result<()> {
        self.last_cv = self.last_cv.max(r.cv);
        let versions = self.items.entry(r.id.clone()).or_default();
        match versions.get(&r.ov) {
            // An erased version's tombstone (a redacted record) wins over any copy of the record.
            Some(known) if known.op == Op::Erased => Ok(()),
            Some(known) if known.write_id != r.write_id && r.op != Op::Erased => Err(Error::Corrupt(format!(
                "the ledger names two versions {} of {}: writes {} and {}",
                r.ov, r.id, known.write_id, r.write_id
            ))),
            _ => {
                versions.insert(r.ov, r);
                Ok(())
            }
        }
    }

    /// Name where each packed payload lies now, not where its record says it was written: a
    /// hold or compaction moved it since (the same bytes), and the old place may be gone.
    fn relocate(&mut self, places: &HashMap<(ItemId, u64, String), Option<PackSlot>>) {
        for (id, versions) in &mut self.items {
            for r in versions.values_mut() {
                let Some(pr) = r.payload_ref.as_mut().filter(|pr| pr.pack.is_some()) else {
                    continue;
                };
                if let Some(place) = places.get(&(id.clone(), pr.ov, pr.write_id.clone())) {
                    pr.pack = place.clone();
                }
            }
        }
    }

    /// Rule 3 of the module doc, and the unconfirmed objects above each item's last version.
    async fn confirm_from_objects(
        &mut self,
        engine: &Engine,
        collection: &CollectionName,
        objects: Vec<StoredPayload>,
    ) -> Result<()> {
        let mut by_item: HashMap<ItemId, Vec<StoredPayload>> = HashMap::new();
        for o in objects {
            by_item.entry(o.id.clone()).or_default().push(o);
        }
        for (id, mut objects) in by_item {
            if self.erased.contains(&id) {
                continue; // an object whose delete failed: never a version again
            }
            // From the newest down: a version recovered here may name its own predecessor.
            objects.sort_by_key(|o| std::cmp::Reverse(o.ov));
            for o in objects {
                let versions = self.items.entry(id.clone()).or_default();
                if versions.contains_key(&o.ov) {
                    continue; // committed (this object or a loser's), nothing to learn
                }
                let named = versions
                    .get(&(o.ov + 1))
                    .and_then(|next| next.prev.as_ref())
                    .is_some_and(|p| p.ov == o.ov && p.write_id == o.write_id);
                let last = versions.keys().next_back().copied();
                if named {
                    let record = read_object(engine, collection, &o).await?;
                    self.last_cv = self.last_cv.max(record.cv);
                    self.recovered_from_objects += 1;
                    self.items.entry(id.clone()).or_default().insert(o.ov, record);
                } else if last.is_none_or(|l| o.ov > l) {
                    self.unconfirmed.push(o);
                }
            }
            // A committed version whose predecessor is neither recorded nor an object.
            let versions = self.items.get(&id).cloned().unwrap_or_default();
            for (ov, r) in &versions {
                if let Some(p) = &r.prev
                    && *ov > 0
                    && !versions.contains_key(&(ov - 1))
                {
                    self.lost.push(payload_key(collection, &id, p.ov, &p.write_id));
                }
            }
        }
        Ok(())
    }

    /// Take the unconfirmed objects that extend their item's chain (what `--accept-unconfirmed`
    /// asks for): in ov order, each must name the item's last version as its predecessor.
    pub async fn accept_unconfirmed(&mut self, engine: &Engine, collection: &CollectionName) -> Result<u64> {
        let objects = std::mem::take(&mut self.unconfirmed);
        let mut accepted = 0;
        let mut records = Vec::new();
        for o in objects {
            let record = read_object(engine, collection, &o).await?;
            records.push((o, record));
        }
        records.sort_by(|a, b| (&a.1.id, a.1.ov).cmp(&(&b.1.id, b.1.ov)));
        for (key, r) in records {
            let versions = self.items.entry(r.id.clone()).or_default();
            let extends = match versions.iter().next_back() {
                Some((_, last)) => r.ov == last.ov + 1 && r.follows(last),
                None => r.ov == 0 && r.prev.is_none(),
            };
            if extends {
                self.last_cv = self.last_cv.max(r.cv);
                versions.insert(r.ov, r);
                accepted += 1;
            } else {
                self.unconfirmed.push(key);
            }
        }
        Ok(accepted)
    }
}

/// Where each stored payload is, for [`CollectionHistory::relocate`]: its own key (`None`) if it
/// has one — a held version's, which is the one locked — else the newest pack holding it (pack
/// keys are UUIDv7: compaction's copy is newer than the pack it emptied).
fn where_stored(objects: &[StoredPayload]) -> HashMap<(ItemId, u64, String), Option<PackSlot>> {
    let mut places: HashMap<(ItemId, u64, String), Option<PackSlot>> = HashMap::new();
    for o in objects {
        let place = places
            .entry((o.id.clone(), o.ov, o.write_id.clone()))
            .or_insert(o.pack.clone());
        let newer = match (&*place, &o.pack) {
            (Some(known), Some(this)) => this.key > known.key,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            *place = o.pack.clone();
        }
    }
    places
}

/// A version's record from its own envelope, checked to be the version it is stored as.
async fn read_object(engine: &Engine, collection: &CollectionName, o: &StoredPayload) -> Result<LedgerRecord> {
    let key = Where(collection, o);
    let bytes = engine
        .read_stored(collection, o)
        .await?
        .ok_or_else(|| Error::Corrupt(format!("{key} vanished while it was read")))?;
    let d = envelope::describe(&bytes).map_err(|e| Error::Corrupt(format!("{key}: {e}")))?;
    let r = &d.record;
    let stored_as = r.id == o.id && r.ov == o.ov && r.write_id == o.write_id;
    if d.database != engine.database() || d.collection != collection.as_str() || !stored_as || !d.data_intact {
        return Err(Error::Corrupt(format!(
            "{key}: the object does not hold the version it is stored as"
        )));
    }
    let mut record = d.record;
    if let Some(slot) = &o.pack {
        // The envelope was written before its slot was known: the version names it by a
        // reference to itself, as the write's own record did.
        record.payload_ref = Some(crate::engine::pack::self_ref(
            record.ov,
            &record.write_id,
            &record.function_ids,
            slot.clone(),
        ));
    }
    Ok(record)
}

/// A record for a version known only from a manifest (its ledger record is lost): enough for the
/// index, which is all a pruned version needs.
fn pruned_record(e: &crate::engine::model::VersionEntry) -> LedgerRecord {
    // Only `insertedAt` and `functionIds` are not in the entry: the entry's time and the
    // reference's function ids stand in (a pruned version is never an item's head).
    let system = crate::engine::model::SystemFields {
        inserted_at: e.at,
        updated_at: e.at,
        deleted_at: None,
        deleted: e.deleted,
        function_ids: e
            .payload_ref
            .as_ref()
            .map(|r| r.function_ids.clone())
            .unwrap_or_default(),
        state: crate::engine::model::State::Processed,
    };
    LedgerRecord::new(e, &system, None)
}
