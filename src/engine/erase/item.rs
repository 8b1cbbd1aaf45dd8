//! One item's erasure, step by step, each step idempotent so a cut-short erasure is finished by
//! running it again: the index entries become tombstones (their counter names kept as tallies),
//! the head becomes a tombstone, the retention manifests' entries become tombstones, and every
//! object under the item's key prefix goes (payloads of every version and of every failed
//! attempt, content blobs). The metadata goes first: from then on every read answers 410, and
//! an object whose delete fails is left for a later run — never served again.

use std::collections::HashSet;

use crate::engine::error::Result;
use crate::engine::ledger::erasures::ErasedItem;
use crate::engine::model::{CollectionName, Head, ItemId, State, VersionEntry};
use crate::engine::store::{PayloadStore, PrunedVersion};
use crate::engine::versioning::Engine;

/// How often the metadata step starts over when writes keep landing on the item meanwhile.
const ATTEMPTS: usize = 10;

impl Engine {
    /// Erase one item as planned (see the module doc); returns how many objects were deleted.
    pub(super) async fn erase_item(&self, collection: &CollectionName, planned: &ErasedItem) -> Result<u64> {
        self.tombstone_metadata(collection, planned).await?;
        self.manifests().erase(collection, &planned.id).await?;
        // An encrypted item's data key goes too: on an Object Lock bucket a delete only hides an
        // object behind a delete marker, and without its key no copy of the data opens again.
        self.shred_item_key(collection, &planned.id).await?;
        // Exactly the item's payload and content key spaces (`payload_key`, `content.rs`): a
        // bucket may be shared with the backups, whose manifests of the item stay as tombstones.
        let item = format!("{collection}/{}/", planned.id);
        let mut objects = delete_under(self.payload_store(), &format!("{item}v")).await?;
        if let Some(content) = self.content_store() {
            objects += delete_under(content, &format!("{item}content/")).await?;
        }
        Ok(objects)
    }

    /// Turn the item's index entries and head into tombstones. A write that lands meanwhile (its
    /// version above the tombstoned head) is erased too, by going round again.
    async fn tombstone_metadata(&self, collection: &CollectionName, planned: &ErasedItem) -> Result<()> {
        let id = &planned.id;
        for _ in 0..ATTEMPTS {
            let Some(head) = self.meta().head(collection, id).await? else {
                return Ok(());
            };
            let index = self.all_versions(collection, id).await?;
            let live: Vec<&VersionEntry> = index.iter().filter(|v| !v.erased()).collect();
            let present: HashSet<u64> = index.iter().map(|v| v.ov).collect();
            let latest = index.last().map(|v| (v.ov, v.cv, v.at));
            if live.is_empty() && head.erased() && latest.is_none_or(|(ov, _, _)| ov == head.ov) {
                return Ok(());
            }
            let mut pruned = Vec::with_capacity(live.len());
            for v in &live {
                let counts = match planned.versions.iter().find(|p| p.ov == v.ov) {
                    Some(p) => p.counts.clone(),
                    None => self.counter_names(collection, v)?,
                };
                pruned.push(PrunedVersion {
                    ov: v.ov,
                    cv: v.cv,
                    counts,
                });
            }
            let mut tombstones: Vec<VersionEntry> = live.iter().map(|v| v.tombstone()).collect();
            // Planned versions missing from the index: a run cut short between removing entries
            // and loading their tombstones.
            tombstones.extend(
                planned
                    .versions
                    .iter()
                    .filter(|p| !present.contains(&p.ov))
                    .map(|p| VersionEntry::tombstone_at(id, p.ov, p.cv, p.at)),
            );
            if !pruned.is_empty() {
                self.meta().delete_versions(collection, id, &pruned).await?;
            }
            if !tombstones.is_empty() {
                self.meta().load_versions(collection, &tombstones).await?;
            }
            let (ov, cv, at) = tombstones
                .iter()
                .map(|t| (t.ov, t.cv, t.at))
                .chain(latest)
                .max_by_key(|(ov, _, _)| *ov)
                .unwrap_or((head.ov, head.cv, head.updated_at));
            self.meta()
                .load_heads(collection, &[tombstone_head(&head, ov, cv, at)])
                .await?;
        }
        Err(crate::engine::error::Error::Contended(format!(
            "{collection}/{id} (writes kept landing while it was erased)"
        )))
    }

    /// Remove the erased items' operations from the retry queue (their bodies hold the data).
    pub(super) async fn cancel_queued(&self, collection: &CollectionName, ids: &[ItemId]) -> Result<u64> {
        let ids: HashSet<ItemId> = ids.iter().cloned().collect();
        self.retry().forget_items(collection, &ids).await
    }
}

/// The head an erasure leaves: the item's place (ov, cv, time, insertion) and nothing else. It
/// reads as deleted (writes find no item) and erased (no data checksum: reads answer 410).
fn tombstone_head(head: &Head, ov: u64, cv: u64, at: crate::engine::model::Timestamp) -> Head {
    Head {
        id: head.id.clone(),
        ov,
        cv,
        write_id: String::new(),
        inserted_at: head.inserted_at,
        updated_at: at,
        deleted_at: Some(at),
        function_ids: Vec::new(),
        state: State::Processed,
        size: 0,
        checksum: String::new(),
        meta: Default::default(),
        inline: None,
        payload_ref: None,
    }
}

/// Delete every object under `prefix`; returns how many.
async fn delete_under(store: &dyn PayloadStore, prefix: &str) -> Result<u64> {
    let keys = crate::engine::store::keys_under(store, prefix).await?;
    for k in &keys {
        store.delete(k).await?;
    }
    Ok(keys.len() as u64)
}
