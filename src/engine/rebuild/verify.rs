//! Verify a database's history against its buckets: every version in the index must match its
//! ledger record and its object, every object must be a version, and the ledger must be intact.
//! What it reports (each finding names the object or version):
//!
//! - **missing**: an index entry whose object is gone, or a ledger version the index lacks;
//! - **altered**: an object whose bytes no longer match its version (data checksum, header, or its
//!   link to the previous version), an index entry that differs from its ledger record, or a
//!   ledger segment whose Merkle root or chain does not hold;
//! - **orphaned**: an object no version owns (older than the grace, so not a write in flight) —
//!   a forged object lands here;
//! - **dangling**: a version restored by reference whose referenced object is gone;
//! - **unconfirmed**: an index entry no ledger segment names (the last flush interval of a process
//!   that died, or an entry added behind the engine's back).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::history::{read_segments, segment_keys};
use crate::engine::envelope;
use crate::engine::error::Result;
use crate::engine::ledger::LedgerRecord;
use crate::engine::model::{CollectionName, ItemId, VersionEntry, payload_key};
use crate::engine::pack::stored::{StoredPayload, Where};
use crate::engine::store::ListQuery;
use crate::engine::store::rules::began_ms;
use crate::engine::versioning::Engine;

/// At most this many findings of each kind are listed (all are counted).
const LISTED: usize = 1000;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub collection: String,
    /// The object or segment key.
    pub key: String,
    pub detail: String,
}

/// What a verify found.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub collections: u64,
    pub versions: u64,
    pub objects: u64,
    pub segments: u64,
    pub missing: Vec<Finding>,
    pub altered: Vec<Finding>,
    pub orphaned: Vec<Finding>,
    pub dangling: Vec<Finding>,
    pub unconfirmed: Vec<Finding>,
    pub seconds: f64,
    pub versions_per_second: f64,
}

impl VerifyReport {
    /// Whether nothing was found wrong (unconfirmed entries are not wrong by themselves).
    pub fn intact(&self) -> bool {
        self.missing.is_empty() && self.altered.is_empty() && self.orphaned.is_empty() && self.dangling.is_empty()
    }

    /// The findings by kind, what is wrong first (so a list cut short shows those).
    pub fn by_kind(&self) -> [(&'static str, &[Finding]); 5] {
        [
            ("missing", &self.missing),
            ("altered", &self.altered),
            ("orphaned", &self.orphaned),
            ("dangling", &self.dangling),
            ("unconfirmed", &self.unconfirmed),
        ]
    }
}

fn push(list: &mut Vec<Finding>, collection: &CollectionName, key: String, detail: impl Into<String>) {
    if list.len() < LISTED {
        list.push(Finding {
            collection: collection.to_string(),
            key,
            detail: detail.into(),
        });
    }
}

impl Engine {
    /// Verify the history of this database (see the module doc). Objects younger than `grace`
    /// are never called orphans (their writes may be in flight).
    pub async fn verify(&self, grace: Duration) -> Result<VerifyReport> {
        self.verify_reporting(grace, &|_, _| {}).await
    }

    /// [`Engine::verify`], telling `progress` after each collection how many are done and the
    /// report so far (`collections` in it is how many there are).
    pub async fn verify_reporting(
        &self,
        grace: Duration,
        progress: &(dyn Fn(u64, &VerifyReport) + Sync),
    ) -> Result<VerifyReport> {
        let started = std::time::Instant::now();
        self.flush_ledger().await?;
        let mut report = VerifyReport::default();
        let segments = segment_keys(self).await?;
        report.collections = segments.len() as u64;
        for (done, (name, keys)) in (1..).zip(&segments) {
            let collection: CollectionName = name.parse()?;
            // The ledger: roots, and each writer's chain without holes.
            let mut ledger: HashMap<(ItemId, u64), LedgerRecord> = HashMap::new();
            let mut chains: HashMap<String, (u64, String)> = HashMap::new();
            for (segment, hash) in read_segments(self, keys).await? {
                report.segments += 1;
                let key = segment.key().key();
                if !segment.root_holds() {
                    push(
                        &mut report.altered,
                        &collection,
                        key.clone(),
                        "the segment's records do not match its Merkle root",
                    );
                }
                match chains.get(&segment.writer) {
                    Some((seq, prev)) if segment.seq != seq + 1 || segment.prev.as_ref() != Some(prev) => {
                        push(
                            &mut report.altered,
                            &collection,
                            key.clone(),
                            "the writer's chain of segments is broken here (a segment before it is missing or changed)",
                        );
                    }
                    None if segment.seq != 0 || segment.prev.is_some() => {
                        push(
                            &mut report.altered,
                            &collection,
                            key.clone(),
                            "the writer's first segments are missing",
                        );
                    }
                    _ => {}
                }
                chains.insert(segment.writer.clone(), (segment.seq, hash));
                for r in segment.records {
                    ledger.insert((r.id().clone(), r.ov()), r.record());
                }
            }
            self.verify_collection(&collection, ledger, grace, &mut report).await?;
            progress(done, &report);
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.versions_per_second = report.versions as f64 / report.seconds.max(1e-9);
        Ok(report)
    }

    async fn verify_collection(
        &self,
        collection: &CollectionName,
        mut ledger: HashMap<(ItemId, u64), LedgerRecord>,
        grace: Duration,
        report: &mut VerifyReport,
    ) -> Result<()> {
        // Every index entry, by item.
        let mut index: Vec<VersionEntry> = Vec::new();
        let mut after_id = None;
        loop {
            let query = ListQuery {
                filter: Default::default(),
                after_id: after_id.clone(),
                limit: 1000,
                descending: false,
                include_deleted: true,
            };
            let heads = self.meta().list_heads_without_data(collection, &query).await?;
            let Some(last) = heads.last() else { break };
            after_id = Some(last.id.clone());
            for head in &heads {
                let mut after_ov = None;
                loop {
                    let page = self.meta().versions(collection, &head.id, after_ov, 1000).await?;
                    let Some(v) = page.last() else { break };
                    after_ov = Some(v.ov);
                    index.extend(page);
                }
            }
        }
        let mut pruned: HashSet<(ItemId, u64)> = HashSet::new();
        let mut owned: HashSet<String> = HashSet::new();
        self.manifests()
            .each_in_collection(collection, |id, p, _| {
                pruned.insert((id.clone(), p.entry.ov));
                owned.insert(name(collection, id, p.entry.payload()));
            })
            .await?;
        let objects: HashMap<String, StoredPayload> = self
            .stored_payloads(collection)
            .await?
            .into_iter()
            .map(|o| (Where(collection, &o).to_string(), o))
            .collect();
        report.objects += objects.len() as u64;
        report.versions += index.len() as u64;

        // The index against the ledger and the objects.
        let by_ov: HashMap<(ItemId, u64), &VersionEntry> = index.iter().map(|v| ((v.id.clone(), v.ov), v)).collect();
        let mut to_read = Vec::new();
        for v in &index {
            if v.erased() {
                // A tombstone has no object; it only has to match its (redacted) ledger record.
                if ledger
                    .remove(&(v.id.clone(), v.ov))
                    .is_some_and(|r| !same_version(&r.entry(), v))
                {
                    push(
                        &mut report.altered,
                        collection,
                        format!("{collection}/{}/v{}", v.id, v.ov),
                        format!("the tombstone of v{} differs from its ledger record", v.ov),
                    );
                }
                continue;
            }
            let key = name(collection, &v.id, v.payload());
            owned.insert(key.clone());
            match ledger.remove(&(v.id.clone(), v.ov)) {
                Some(r) if !same_version(&r.entry(), v) => {
                    push(
                        &mut report.altered,
                        collection,
                        key.clone(),
                        format!("the index entry of v{} differs from its ledger record", v.ov),
                    );
                }
                Some(_) => {}
                None => push(
                    &mut report.unconfirmed,
                    collection,
                    key.clone(),
                    format!("v{} is in no ledger segment", v.ov),
                ),
            }
            let own = v.payload().is_own(v.ov, &v.write_id);
            if !objects.contains_key(&key) {
                if own {
                    push(
                        &mut report.missing,
                        collection,
                        key,
                        format!("the object of v{} is gone", v.ov),
                    );
                } else {
                    push(
                        &mut report.dangling,
                        collection,
                        key,
                        format!("v{} refers to an object that is gone", v.ov),
                    );
                }
            } else if own && let Some(o) = objects.get(&key) {
                to_read.push((key, o.clone(), v.clone()));
            }
        }
        for ((id, ov), r) in ledger {
            if !pruned.contains(&(id.clone(), ov)) {
                let key = payload_key(collection, &id, ov, &r.write_id);
                push(
                    &mut report.missing,
                    collection,
                    key,
                    format!("the ledger's v{ov} is not in the index"),
                );
            }
        }
        // Each object against its version, and its link to the previous one.
        let mut reads = futures::stream::iter(to_read)
            .map(|(key, o, v)| async move { (self.read_stored(collection, &o).await, key, v) })
            .buffer_unordered(32);
        while let Some((bytes, key, v)) = reads.next().await {
            let v = &v;
            let problem = match bytes? {
                None => Some("the object vanished while it was read".to_owned()),
                Some(bytes) => match envelope::describe(&bytes) {
                    Err(e) => Some(format!("not a version object: {e}")),
                    Ok(d) => {
                        let previous = v.ov.checked_sub(1).and_then(|p| by_ov.get(&(v.id.clone(), p)));
                        let link_ok = match (&d.record.prev, previous) {
                            (Some(p), Some(prev)) => {
                                p.ov == prev.ov
                                    && p.write_id == prev.write_id
                                    && p.checksum == prev.checksum
                                    && p.cv == prev.cv
                            }
                            (None, None) => v.ov == 0,
                            // The previous version was pruned: its link is checked against the
                            // manifest by a rebuild, not here.
                            (Some(_), None) => true,
                            (None, Some(_)) => false,
                        };
                        if !d.data_intact {
                            Some("its data does not match its checksum".to_owned())
                        } else if d.database != self.database()
                            || d.collection != collection.as_str()
                            || !same_version(&d.record.entry(), v)
                        {
                            Some(format!("it does not hold v{} as the index describes it", v.ov))
                        } else if !link_ok {
                            Some(format!("its link to v{} does not match", v.ov.saturating_sub(1)))
                        } else {
                            None
                        }
                    }
                },
            };
            if let Some(detail) = problem {
                push(&mut report.altered, collection, key, detail);
            }
        }
        // Objects no version owns.
        let now_ms = crate::engine::model::now().as_millisecond().max(0) as u64;
        let grace_ms = grace.as_millis() as u64;
        for (key, o) in &objects {
            if owned.contains(key) {
                continue;
            }
            let began = uuid::Uuid::try_parse(&o.write_id).ok().and_then(|u| began_ms(&u));
            let young = began.is_some_and(|b| now_ms.saturating_sub(b) < grace_ms);
            if !young {
                push(
                    &mut report.orphaned,
                    collection,
                    key.clone(),
                    "no version owns this object",
                );
            }
        }
        Ok(())
    }
}

/// How reports name a version's payload: its key, or its pack and byte range.
fn name(collection: &CollectionName, id: &ItemId, loc: crate::engine::model::PayloadLoc<'_>) -> String {
    let stored = StoredPayload {
        id: id.clone(),
        ov: loc.ov,
        write_id: loc.write_id.to_owned(),
        pack: loc.pack.cloned(),
    };
    Where(collection, &stored).to_string()
}

/// Whether two descriptions of a version agree on everything but where its bytes lie: a packed
/// version's slot is written into the index after its envelope, and moves when a hold or
/// compaction moves the bytes (same bytes, new place), so the ledger's and the envelope's copies
/// may name an older place or none.
fn same_version(a: &VersionEntry, b: &VersionEntry) -> bool {
    crate::engine::pack::unlocated(a.clone()) == crate::engine::pack::unlocated(b.clone())
}
