//! Retention manifests: the index entries of pruned versions, kept in the backups store —
//! `<collection>/<id>/manifests/<firstOv>-<lastOv>.json` under the database's prefix, naming
//! their database, collection and item. The engine holds one [`Manifests`] and asks it for
//! pruned versions (reads by ov or time, restores, scrub); retention writes through it. It knows
//! nothing of the engine, only the backups store and whose manifests it may read.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, Op, PayloadRef, Timestamp, VersionEntry, VersionTarget};
use crate::engine::store::{HistoryPoint, PayloadStore, PrunedVersion};

/// A pruned index entry, as kept in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestEntry {
    ov: u64,
    cv: u64,
    op: Op,
    at: Timestamp,
    actor: Option<String>,
    reason: Option<String>,
    write_id: String,
    size: u64,
    checksum: String,
    meta: Map<String, Value>,
    deleted: bool,
    /// A version appended by reference keeps naming the payload it uses after it is pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_ref: Option<PayloadRef>,
    /// The run that pruned this entry deleted the payload object it reads (unless a version
    /// appended by reference still used it then): a restore must copy the data, not refer to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    payload_deleted: bool,
    /// The counter names the version counted toward when it was pruned (its tally), so a rebuild
    /// from the buckets can restore the pruned tallies exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    counts: Vec<String>,
}

/// A manifest: the pruned entries of one item, naming whose they are, so a manifest of another
/// database (or item) is refused like another item's payload.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    database: String,
    collection: String,
    id: String,
    entries: Vec<ManifestEntry>,
}

impl ManifestEntry {
    fn from_entry(v: &VersionEntry) -> Self {
        ManifestEntry {
            ov: v.ov,
            cv: v.cv,
            op: v.op,
            at: v.at,
            actor: v.actor.clone(),
            reason: v.reason.clone(),
            write_id: v.write_id.clone(),
            size: v.size,
            checksum: v.checksum.clone(),
            meta: v.meta.clone(),
            deleted: v.deleted,
            payload_ref: v.payload_ref.clone(),
            payload_deleted: false,
            counts: Vec::new(),
        }
    }

    fn into_entry(self, id: &ItemId) -> VersionEntry {
        VersionEntry {
            id: id.clone(),
            ov: self.ov,
            cv: self.cv,
            op: self.op,
            at: self.at,
            actor: self.actor,
            reason: self.reason,
            write_id: self.write_id,
            size: self.size,
            checksum: self.checksum,
            meta: self.meta,
            deleted: self.deleted,
            payload_ref: self.payload_ref,
            // A pruned version's idempotency key is forgotten with it (see `version_by_request`).
            request: None,
        }
    }
}

fn manifest_prefix(collection: &CollectionName, id: &ItemId) -> String {
    format!("{collection}/{id}/manifests/")
}

/// The manifest stored under `key` (`None` when it is gone).
async fn read_manifest(backups: &dyn PayloadStore, key: &str) -> Result<Option<Manifest>> {
    let Some(bytes) = backups.get(key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("manifest {key}: {e}")))
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// A version kept only in a retention manifest.
#[derive(Debug, Clone)]
pub(crate) struct Pruned {
    pub entry: VersionEntry,
    /// Whether its payload object is sure to stay: `false` when the run that pruned it deleted
    /// payloads (`deletePayloads`), so the object may be gone.
    pub payload_kept: bool,
}

/// The manifests of one logical database: where they are kept (the backups store, if the
/// database has one) and whose they are, so one of another database is refused.
pub(crate) struct Manifests {
    database: String,
    store: Option<Arc<dyn PayloadStore>>,
}

impl Manifests {
    pub(crate) fn new(database: &str, store: Option<Arc<dyn PayloadStore>>) -> Self {
        Manifests {
            database: database.to_owned(),
            store,
        }
    }

    /// The backups store, if the database has one.
    pub(crate) fn backups(&self) -> Option<&Arc<dyn PayloadStore>> {
        self.store.as_ref()
    }

    /// Where manifests go: retention needs a backups store.
    pub(crate) fn backups_for_pruning(&self) -> Result<&Arc<dyn PayloadStore>> {
        self.store.as_ref().ok_or_else(|| {
            Error::validation(
                "retention",
                "pruning needs a backups store for its manifests (spacesConns[].backupsBucket)",
            )
        })
    }

    /// Write the manifest of an item's versions `doomed` (oldest first, not empty), marking those
    /// whose payload object the run deletes (`payload_deleted`), with the counter names each
    /// counts toward (`counts`, by ov).
    pub(crate) async fn write(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        doomed: &[VersionEntry],
        payload_deleted: impl Fn(&VersionEntry) -> bool,
        counts: &[PrunedVersion],
    ) -> Result<()> {
        let (Some(first), Some(last)) = (doomed.first(), doomed.last()) else {
            return Ok(());
        };
        let manifest = Manifest {
            database: self.database.clone(),
            collection: collection.to_string(),
            id: id.to_string(),
            entries: doomed
                .iter()
                .map(|v| ManifestEntry {
                    payload_deleted: payload_deleted(v),
                    counts: counts
                        .iter()
                        .find(|p| p.ov == v.ov)
                        .map(|p| p.counts.clone())
                        .unwrap_or_default(),
                    ..ManifestEntry::from_entry(v)
                })
                .collect(),
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| Error::Corrupt(e.to_string()))?;
        let key = format!(
            "{}{:020}-{:020}.json",
            manifest_prefix(collection, id),
            first.ov,
            last.ov
        );
        self.backups_for_pruning()?.put(&key, Bytes::from(body)).await?;
        Ok(())
    }

    /// Whether a manifest is this database's, of this item.
    fn belongs(&self, m: &Manifest, collection: &CollectionName, id: &ItemId) -> bool {
        (m.database.as_str(), m.collection.as_str(), m.id.as_str())
            == (self.database.as_str(), collection.as_str(), id.as_str())
    }

    /// The keys of an item's manifests.
    async fn keys(&self, backups: &dyn PayloadStore, collection: &CollectionName, id: &ItemId) -> Result<Vec<String>> {
        crate::engine::store::keys_under(backups, &manifest_prefix(collection, id)).await
    }

    /// Show `visit` every entry of an item's retention manifests.
    async fn each(&self, collection: &CollectionName, id: &ItemId, mut visit: impl FnMut(ManifestEntry)) -> Result<()> {
        let Some(backups) = &self.store else { return Ok(()) };
        for key in self.keys(backups.as_ref(), collection, id).await? {
            let Some(manifest) = read_manifest(backups.as_ref(), &key).await? else {
                continue;
            };
            if !self.belongs(&manifest, collection, id) {
                return Err(Error::Corrupt(format!(
                    "manifest {key} belongs to {}/{}/{}",
                    manifest.database, manifest.collection, manifest.id
                )));
            }
            manifest.entries.into_iter().for_each(&mut visit);
        }
        Ok(())
    }

    /// Every pruned version of a collection, with the counter names it counted toward: what a
    /// rebuild from the buckets needs (the versions stay out of the index, their tallies in).
    pub(crate) async fn each_in_collection(
        &self,
        collection: &CollectionName,
        mut visit: impl FnMut(&ItemId, Pruned, Vec<String>),
    ) -> Result<()> {
        let Some(backups) = &self.store else { return Ok(()) };
        let mut after: Option<String> = None;
        let prefix = format!("{collection}/");
        loop {
            let keys = backups.list(&prefix, after.as_deref(), 1000).await?;
            let Some(last) = keys.last().cloned() else { break };
            for key in keys.iter().filter(|k| k.contains("/manifests/")) {
                let Some(manifest) = read_manifest(backups.as_ref(), key).await? else {
                    continue;
                };
                let id: ItemId = manifest.id.parse()?;
                if (manifest.database.as_str(), manifest.collection.as_str())
                    != (self.database.as_str(), collection.as_str())
                    || key.as_str() != format!("{}{}", manifest_prefix(collection, &id), file_name(key))
                {
                    return Err(Error::Corrupt(format!(
                        "manifest {key} belongs to {}/{}/{}",
                        manifest.database, manifest.collection, manifest.id
                    )));
                }
                for mut e in manifest.entries {
                    let counts = std::mem::take(&mut e.counts);
                    let payload_kept = !e.payload_deleted;
                    let entry = e.into_entry(&id);
                    visit(&id, Pruned { entry, payload_kept }, counts);
                }
            }
            after = Some(last);
        }
        Ok(())
    }

    /// Turn every entry of an item's manifests into its erased version's tombstone (see
    /// `engine::erase`), rewriting each manifest under its own key; returns how many entries.
    /// Each keeps its ov, cv, time and counter names (so counters and a rebuild's tallies stay
    /// true); the rest goes. A manifest already rewritten is rewritten to the same bytes.
    pub(crate) async fn erase(&self, collection: &CollectionName, id: &ItemId) -> Result<u64> {
        let Some(backups) = &self.store else { return Ok(0) };
        let mut erased = 0;
        for key in self.keys(backups.as_ref(), collection, id).await? {
            let Some(mut manifest) = read_manifest(backups.as_ref(), &key).await? else {
                continue;
            };
            if !self.belongs(&manifest, collection, id) {
                continue; // not this item's: leave it to whoever it belongs to
            }
            for e in &mut manifest.entries {
                let tombstone = VersionEntry::tombstone_at(id, e.ov, e.cv, e.at);
                *e = ManifestEntry {
                    payload_deleted: true,
                    counts: std::mem::take(&mut e.counts),
                    ..ManifestEntry::from_entry(&tombstone)
                };
                erased += 1;
            }
            let body = serde_json::to_vec(&manifest).map_err(|e| Error::Corrupt(e.to_string()))?;
            backups.put(&key, Bytes::from(body)).await?;
        }
        Ok(erased)
    }

    /// `(ov, writeId)` of every version of an item kept only in retention manifests (scrub
    /// must not take their payloads for orphans).
    pub(crate) async fn write_ids(&self, collection: &CollectionName, id: &ItemId) -> Result<HashSet<(u64, String)>> {
        let mut out = HashSet::new();
        self.each(collection, id, |e| {
            out.insert((e.ov, e.write_id));
        })
        .await?;
        Ok(out)
    }

    /// The index entry of a pruned version (by ov, or the one current at a time).
    pub(crate) async fn version(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        target: VersionTarget,
    ) -> Result<Option<VersionEntry>> {
        let found = self.find(collection, id, |v| target.admits(v)).await?;
        Ok(found.map(|p| p.entry))
    }

    /// The latest version of an item at `point` that is kept only in the manifests (for items
    /// whose index has nothing that early).
    pub(crate) async fn at(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        point: HistoryPoint,
    ) -> Result<Option<Pruned>> {
        self.find(collection, id, |v| point.includes(v)).await
    }

    /// Where the pruned versions of an item whose payload was kept have their data (own keys
    /// and pack slots, as `VersionEntry::payload` names them): scrub keeps a pack while one of
    /// these is in it.
    pub(crate) async fn kept_payloads(
        &self,
        collection: &CollectionName,
        id: &ItemId,
    ) -> Result<Vec<(u64, String, Option<crate::engine::model::PackSlot>)>> {
        let mut kept = Vec::new();
        self.each(collection, id, |e| {
            if !e.payload_deleted {
                let entry = e.into_entry(id);
                let loc = entry.payload();
                kept.push((loc.ov, loc.write_id.to_owned(), loc.pack.cloned()));
            }
        })
        .await?;
        Ok(kept)
    }

    /// The latest pruned version of an item that `fits`.
    pub(crate) async fn find(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        fits: impl Fn(&VersionEntry) -> bool,
    ) -> Result<Option<Pruned>> {
        let mut best: Option<Pruned> = None;
        self.each(collection, id, |e| {
            let payload_kept = !e.payload_deleted;
            let entry = e.into_entry(id);
            if fits(&entry) && best.as_ref().is_none_or(|b| entry.ov > b.entry.ov) {
                best = Some(Pruned { entry, payload_kept });
            }
        })
        .await?;
        Ok(best)
    }
}
