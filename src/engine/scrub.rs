//! Scrub: find (and optionally delete) orphaned payloads.
//!
//! An orphan is a payload object `<collection>/<id>/v<ov>.<writeId>.json` whose `(id, ov,
//! writeId)` has no version entry, neither in the index nor in a retention manifest. Orphans
//! come from a process that died between the payload PUT and the commit, or from an aborted
//! write whose clean-up failed (see `docs/design.md`, "Orphaned payloads"). They cost storage,
//! never correctness: reads go through the index.
//!
//! A write's payload exists before its commit, so a key without an entry may belong to a write
//! still in flight. The write id is a UUIDv7 taken before the write begins, and every store
//! refuses to commit a write later than `store::rules::commit_window` after it, so a key whose write id is
//! older than the grace period ([`ORPHAN_GRACE`], shared with the engines' settings) can no
//! longer become committed. Younger keys are counted, never reported.
//!
//! The bucket is listed in pages; memory stays bounded by the page size and by the number of
//! orphans listed in the report (the rest are only counted).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::error::Result;
use super::model::{CollectionName, ItemId};
use super::settings::ORPHAN_GRACE;
use super::store::rules::began_ms;
use super::versioning::Engine;

/// How a scrub runs.
#[derive(Debug, Clone)]
pub struct ScrubOptions {
    /// Only this collection (else the whole payload bucket).
    pub collection: Option<CollectionName>,
    /// Keys whose write began less than this long ago are never orphans (writes in flight).
    pub grace: Duration,
    /// Delete the orphans found.
    pub delete: bool,
    /// Keys listed per request.
    pub page_size: usize,
    /// At most this many orphans (and unrecognised keys) are listed in the report.
    pub max_listed: usize,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            collection: None,
            grace: ORPHAN_GRACE,
            delete: false,
            page_size: 1000,
            max_listed: 1000,
        }
    }
}

/// One orphaned payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    pub key: String,
    pub collection: String,
    pub id: String,
    pub ov: u64,
    pub write_id: String,
    /// Seconds since its write began.
    pub age_secs: u64,
    /// Whether this scrub deleted it.
    pub deleted: bool,
}

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubReport {
    /// Keys examined.
    pub scanned: u64,
    /// Keys of versions in the index.
    pub committed: u64,
    /// Keys of versions pruned from the index but kept in a retention manifest.
    pub pruned: u64,
    /// Keys without an entry whose write is younger than the grace period (maybe in flight).
    pub young: u64,
    /// Orphans found (all of them, also those beyond `max_listed`).
    pub orphans: u64,
    /// Orphans deleted.
    pub deleted: u64,
    /// The orphans, up to `max_listed` of them.
    pub orphan_keys: Vec<Orphan>,
    /// Keys that are not payload keys of this engine (never deleted); up to `max_listed`.
    pub unrecognized: Vec<String>,
    /// How many keys were not recognised (all of them).
    pub unrecognized_count: u64,
    /// Packs (`engine.packWrites`): those no version names any more are deleted like orphans.
    pub packs: crate::engine::pack::collect::PackReport,
}

/// A payload key taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PayloadKey {
    collection: CollectionName,
    id: ItemId,
    ov: u64,
    write_id: String,
    /// When the write began (from the UUIDv7 write id).
    began_ms: u64,
}

/// `<collection>/<id>/v<ov>.<writeId>.json`, with a UUIDv7 write id; `None` for anything else.
fn parse_key(key: &str) -> Option<PayloadKey> {
    let p = super::pack::stored::own_key(key)?;
    let began_ms = began_ms(&uuid::Uuid::try_parse(&p.write_id).ok()?)?;
    Some(PayloadKey {
        collection: key.split('/').next()?.parse().ok()?,
        id: p.id,
        ov: p.ov,
        write_id: p.write_id,
        began_ms,
    })
}

/// An item, as (collection, id).
type ItemKey = (CollectionName, ItemId);

enum Class {
    Committed,
    /// No matching index entry: pruned, young or an orphan.
    NotIndexed(PayloadKey),
    Unrecognized,
}

impl Engine {
    /// Find the orphaned payloads of one collection or of the whole payload store (see the
    /// module documentation); with `delete`, remove them. The store is this database's own
    /// (other databases sharing the bucket live under other key prefixes).
    pub async fn scrub(&self, opts: &ScrubOptions) -> Result<ScrubReport> {
        self.scrub_reporting(opts, &|_| {}).await
    }

    /// [`Engine::scrub`], telling `progress` the report so far after each page of keys (a
    /// bucket of millions of objects takes a while to list).
    pub async fn scrub_reporting(
        &self,
        opts: &ScrubOptions,
        progress: &(dyn Fn(&ScrubReport) + Sync),
    ) -> Result<ScrubReport> {
        let store = self.payload_store();
        let prefix = opts.collection.as_ref().map_or(String::new(), |c| format!("{c}/"));
        let page_size = opts.page_size.clamp(1, 1000);
        let mut report = ScrubReport::default();
        // Keys of one item are contiguous in a listing, so one item's pruned entries are cached
        // (and read again on a miss: see `is_pruned`).
        let mut pruned_cache: Option<(ItemKey, HashSet<(u64, String)>)> = None;
        let mut after: Option<String> = None;
        loop {
            let keys = store.list(&prefix, after.as_deref(), page_size).await?;
            let Some(last) = keys.last().cloned() else { break };
            let now_ms = u64::try_from(super::model::now().as_millisecond()).unwrap_or(0);
            // The ledger, the reset marks and the erasure records describe versions; they are
            // never payloads.
            let keys = keys.into_iter().filter(|k| {
                !k.starts_with(super::ledger::LEDGER_PREFIX)
                    && !k.starts_with(super::ledger::resets::RESETS_PREFIX)
                    && !k.starts_with(super::ledger::erasures::ERASURES_PREFIX)
                    // Packs are shared by many versions: examined below, pack by pack.
                    && !k.starts_with(super::pack::format::PACKS_PREFIX)
            });
            let classes: Vec<(String, Result<Class>)> = futures::stream::iter(keys)
                .map(|key| async move {
                    let class = self.classify(&key).await;
                    (key, class)
                })
                .buffered(16)
                .collect()
                .await;
            for (key, class) in classes {
                report.scanned += 1;
                let k = match class? {
                    Class::Committed => {
                        report.committed += 1;
                        continue;
                    }
                    Class::Unrecognized => {
                        report.unrecognized_count += 1;
                        if report.unrecognized.len() < opts.max_listed {
                            report.unrecognized.push(key);
                        }
                        continue;
                    }
                    Class::NotIndexed(k) => k,
                };
                if self.is_pruned(&k, &mut pruned_cache).await? {
                    report.pruned += 1;
                    continue;
                }
                let age_ms = now_ms.saturating_sub(k.began_ms);
                if u128::from(age_ms) < opts.grace.as_millis() {
                    report.young += 1;
                    continue;
                }
                report.orphans += 1;
                let deleted = if opts.delete {
                    store.delete(&key).await?;
                    report.deleted += 1;
                    true
                } else {
                    false
                };
                if report.orphan_keys.len() < opts.max_listed {
                    report.orphan_keys.push(Orphan {
                        collection: k.collection.to_string(),
                        id: k.id.to_string(),
                        ov: k.ov,
                        write_id: k.write_id,
                        age_secs: age_ms / 1000,
                        deleted,
                        key,
                    });
                }
            }
            after = Some(last);
            progress(&report);
        }
        report.packs = self
            .scrub_packs(opts.collection.as_ref(), opts.grace, opts.delete)
            .await?;
        Ok(report)
    }

    /// Whether a key without an index entry is a pruned version's, from the item's manifests.
    /// The cache (one item's entries) is read again when it misses: retention may have pruned
    /// the item since it was filled, and a manifest is written before its entries leave the
    /// index, so a read after the key was classified sees them.
    async fn is_pruned(&self, k: &PayloadKey, cache: &mut Option<(ItemKey, HashSet<(u64, String)>)>) -> Result<bool> {
        let item = (k.collection.clone(), k.id.clone());
        let wanted = (k.ov, k.write_id.clone());
        if let Some((cached, set)) = cache.as_ref()
            && *cached == item
            && set.contains(&wanted)
        {
            return Ok(true);
        }
        let pruned = self.manifests().write_ids(&k.collection, &k.id).await?;
        let found = pruned.contains(&wanted);
        *cache = Some((item, pruned));
        Ok(found)
    }

    async fn classify(&self, key: &str) -> Result<Class> {
        let Some(k) = parse_key(key) else {
            return Ok(Class::Unrecognized);
        };
        match self.meta().version(&k.collection, &k.id, k.ov).await? {
            Some(entry) if entry.write_id == k.write_id => Ok(Class::Committed),
            _ => Ok(Class::NotIndexed(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_strictly() {
        let w = uuid::Uuid::now_v7().simple().to_string();
        let k = parse_key(&format!("c/a.b:c/v12.{w}.json")).unwrap();
        assert_eq!((k.collection.as_str(), k.id.as_str(), k.ov), ("c", "a.b:c", 12));
        assert_eq!(k.write_id, w);
        let id: ItemId = "a.b:c".parse().unwrap();
        let c: CollectionName = "c".parse().unwrap();
        assert_eq!(parse_key(&crate::engine::model::payload_key(&c, &id, 12, &w)), Some(k));
        for bad in [
            format!("c/a/v1.{w}"),
            format!("c/a/1.{w}.json"),
            format!("c/a/v.{w}.json"),
            format!("c/a/v+1.{w}.json"),
            "c/a/v1.json".to_owned(),
            format!("c/a/v1.{w}.json/x"),
            // The layout before the write id's folder was flattened away.
            format!("c/a/v1/{w}.json"),
            format!("c/../v1.{w}.json"),
            "c/a/v1.not-a-uuid.json".to_owned(),
            format!("c/a/manifests/{w}.json"),
            // A UUIDv4 carries no time.
            format!("c/a/v1.{}.json", uuid::Uuid::new_v4().simple()),
        ] {
            assert!(parse_key(&bad).is_none(), "{bad} parsed");
        }
    }
}
