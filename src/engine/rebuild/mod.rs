//! Rebuild a database's metadata (heads, version index, cv sequences, idempotency keys, counters'
//! marks and pruned tallies) from its buckets alone, into an empty metadata store; and verify a
//! database's history against its buckets ([`verify`]), and prove one version part of it
//! ([`proof`]).
//!
//! The buckets describe themselves (`engine::ledger`); [`history`] decides which versions are
//! committed. The rebuild loads each collection in bulk through `MetaRebuild` and records which
//! collections it finished, so one that is killed midway goes on where it stopped when run again
//! (loads are idempotent; a collection half loaded is loaded again).

pub mod history;
pub mod proof;
pub mod verify;

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use self::history::{CollectionHistory, segment_keys};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, VersionEntry};
use crate::engine::store::RebuiltSequences;
use crate::engine::versioning::Engine;

/// Versions (and heads) per load call.
const LOAD_BATCH: usize = 1000;

/// Load calls in flight at once.
const LOADS_IN_FLIGHT: usize = 4;

/// How a rebuild runs.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Write into a store that already holds data (the loads replace heads and add versions).
    pub force: bool,
    /// Also take unconfirmed objects that extend their item's history (see [`history`]): they may
    /// be writes that never committed.
    pub accept_unconfirmed: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    pub collections: u64,
    /// Collections a previous, interrupted run had finished (skipped).
    pub resumed_past: u64,
    pub segments: u64,
    /// Version entries loaded into the index.
    pub versions: u64,
    pub heads: u64,
    /// Versions kept only in retention manifests (not in the index, as before).
    pub pruned: u64,
    /// Versions taken from their objects because a later version names them.
    pub recovered_from_objects: u64,
    /// Unconfirmed objects taken (with `acceptUnconfirmed`).
    pub accepted_unconfirmed: u64,
    /// Objects above their item's last committed version, left out; up to 100 keys listed.
    pub unconfirmed: u64,
    pub unconfirmed_keys: Vec<String>,
    /// Versions a committed successor names that are nowhere; up to 100 listed.
    pub lost: Vec<String>,
    pub seconds: f64,
    /// Of `seconds`: reading the buckets (segments, manifests, the object listing).
    pub reading_seconds: f64,
    /// Of `seconds`: loading the metadata store.
    pub loading_seconds: f64,
    pub versions_per_second: f64,
}

/// Where a rebuild stands, for a progress bar.
#[derive(Debug, Clone)]
pub struct RebuildProgress {
    pub collection: String,
    pub done_collections: u64,
    pub total_collections: u64,
    pub versions: u64,
}

/// Recorded in the metadata store while a rebuild runs (see `MetaRebuild::rebuild_progress`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mark {
    done: BTreeSet<String>,
}

impl Engine {
    /// Rebuild this database's metadata from its buckets (see the module doc). Refuses a store
    /// that holds data unless `force`, or unless it is a rebuild's own, unfinished work.
    pub async fn rebuild(
        &self,
        options: &RebuildOptions,
        progress: &(dyn Fn(&RebuildProgress) + Sync),
    ) -> Result<RebuildReport> {
        let started = Instant::now();
        let mut mark: Mark = match self.meta().rebuild_progress().await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None if !options.force && self.meta().holds_data().await? => {
                return Err(Error::AlreadyExists(
                    "data in the metadata store (rebuild into an empty one, or force it)".into(),
                ));
            }
            None => Mark::default(),
        };
        self.meta().set_rebuild_progress(Some(&encode(&mark)?)).await?;
        let segments = segment_keys(self).await?;
        let mut report = RebuildReport {
            collections: segments.len() as u64,
            ..Default::default()
        };
        for (n, (name, keys)) in segments.iter().enumerate() {
            let collection: CollectionName = name.parse()?;
            progress(&RebuildProgress {
                collection: name.clone(),
                done_collections: n as u64,
                total_collections: report.collections,
                versions: report.versions,
            });
            if mark.done.contains(name) {
                report.resumed_past += 1;
                continue;
            }
            self.rebuild_collection(&collection, keys, options, &mut report).await?;
            mark.done.insert(name.clone());
            self.meta().set_rebuild_progress(Some(&encode(&mark)?)).await?;
        }
        self.meta().set_rebuild_progress(None).await?;
        report.seconds = started.elapsed().as_secs_f64();
        report.versions_per_second = report.versions as f64 / report.seconds.max(1e-9);
        progress(&RebuildProgress {
            collection: String::new(),
            done_collections: report.collections,
            total_collections: report.collections,
            versions: report.versions,
        });
        Ok(report)
    }

    async fn rebuild_collection(
        &self,
        collection: &CollectionName,
        segments: &[crate::engine::ledger::SegmentKey],
        options: &RebuildOptions,
        report: &mut RebuildReport,
    ) -> Result<()> {
        self.ensure_indexes(collection).await?;
        let reading = Instant::now();
        let mut h = CollectionHistory::read(self, collection, segments).await?;
        if options.accept_unconfirmed {
            report.accepted_unconfirmed += h.accept_unconfirmed(self, collection).await?;
        }
        report.segments += h.segments;
        report.recovered_from_objects += h.recovered_from_objects;
        report.unconfirmed += h.unconfirmed.len() as u64;
        report.unconfirmed_keys.extend(
            h.unconfirmed
                .iter()
                .take(100usize.saturating_sub(report.unconfirmed_keys.len()))
                .map(|o| crate::engine::pack::stored::Where(collection, o).to_string()),
        );
        report
            .lost
            .extend(h.lost.iter().take(100usize.saturating_sub(report.lost.len())).cloned());

        let mut entries: Vec<VersionEntry> = Vec::new();
        let mut heads: Vec<Head> = Vec::new();
        let mut ids: Vec<_> = h.items.keys().cloned().collect();
        ids.sort();
        for id in &ids {
            let versions = &h.items[id];
            if let Some((_, latest)) = versions.iter().next_back() {
                heads.push(latest.head());
            }
            for (ov, r) in versions {
                if h.pruned.contains(&(id.clone(), *ov)) {
                    report.pruned += 1;
                } else {
                    entries.push(r.entry());
                }
            }
        }
        report.reading_seconds += reading.elapsed().as_secs_f64();
        let loading = Instant::now();
        // A few batches in flight: each is one round trip the store spends mostly waiting on
        // its disk, and batches are independent (heads after versions, so a head is never
        // loaded before the entries it stands for).
        futures::stream::iter(entries.chunks(LOAD_BATCH).map(<[VersionEntry]>::to_vec))
            .map(|batch| async move { self.meta().load_versions(collection, &batch).await })
            .buffer_unordered(LOADS_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        futures::stream::iter(heads.chunks(LOAD_BATCH).map(<[Head]>::to_vec))
            .map(|batch| async move { self.meta().load_heads(collection, &batch).await })
            .buffer_unordered(LOADS_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        let counters_from = crate::engine::ledger::resets::last(self.payload_store(), collection).await?;
        let pruned_through = h.pruned_counts.iter().map(|(cv, _)| *cv).max().unwrap_or(0);
        let mut pruned: HashMap<String, u64> = HashMap::new();
        for (cv, names) in std::mem::take(&mut h.pruned_counts) {
            if cv > counters_from {
                for name in names {
                    *pruned.entry(name).or_default() += 1;
                }
            }
        }
        let state = RebuiltSequences {
            last_cv: h.last_cv.max(counters_from),
            counters_from,
            pruned,
            pruned_through,
        };
        self.meta().load_sequences(collection, &state).await?;
        // The metadata store's copy of the collection's erasure records.
        for e in crate::engine::ledger::erasures::all(self.payload_store(), self.database(), Some(collection)).await? {
            let json = serde_json::to_string(&e).map_err(|err| Error::Corrupt(format!("an erasure record: {err}")))?;
            self.meta().put_erasure(&e.id, &json).await?;
        }
        report.loading_seconds += loading.elapsed().as_secs_f64();
        report.versions += entries.len() as u64;
        report.heads += heads.len() as u64;
        Ok(())
    }
}

fn encode(mark: &Mark) -> Result<String> {
    serde_json::to_string(mark).map_err(|e| Error::Corrupt(e.to_string()))
}
