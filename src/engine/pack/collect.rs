//! Scrub's part for packs: a pack none of whose members any version still names — in the index
//! or, with its payload kept, in a retention manifest — is deleted once it is older than the
//! orphan grace (every write that could still commit into it has passed its commit deadline:
//! members' write ids are older than their pack). Members are looked up by their item, so the
//! cost is one index read (and one manifest listing) per member of each old pack.
//!
//! **Compaction.** A pack whose named members hold less than half its members' bytes is
//! rewritten: the named envelopes go into a new pack, the versions naming them are repointed
//! there, and the new pack is blanked like any other for erasures recorded meanwhile. The old
//! pack is deleted only after the orphan grace has passed *since the repointing*, and only if no
//! version names it then (one committed while the repointing ran). A restore by reference that
//! copied an old slot before the repointing and appends after it is refused by the store (its
//! source entry no longer names that pack: `RefWrite::source`), whenever it comes.

use serde::Serialize;

use super::format::{self, Entry, Member};
use crate::engine::error::Result;
use crate::engine::model::CollectionName;
use crate::engine::store::Repoint;
use crate::engine::store::rules::began_ms;
use crate::engine::versioning::Engine;

/// What scrub found among packs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackReport {
    /// Packs examined.
    pub packs: u64,
    /// Members of the old packs that a version names (their data is in use).
    pub named: u64,
    /// Younger than the grace: members may still be committing.
    pub young: u64,
    /// Named by no version.
    pub dead: u64,
    /// Mostly dead: their named members were moved into new packs.
    pub compacted: u64,
    /// Mostly dead but left as they are: a retention manifest names a member, and a manifest is
    /// never repointed, so the pack stays whatever compaction did (a copy would only be deleted
    /// again by the next scrub).
    pub pinned: u64,
    /// Packs deleted (dead ones, and compacted ones once nothing names them).
    pub deleted: u64,
}

/// Compaction rewrites a pack whose named members hold less than this share of its bytes.
const COMPACT_BELOW: f64 = 0.5;

impl Engine {
    /// Find (with `delete`, remove) the packs of `collection` — or of every collection — that no
    /// version names any more.
    pub(crate) async fn scrub_packs(
        &self,
        collection: Option<&CollectionName>,
        grace: std::time::Duration,
        delete: bool,
    ) -> Result<PackReport> {
        let store = self.payload_store();
        let prefix = match collection {
            Some(c) => format::collection_prefix(c),
            None => format::PACKS_PREFIX.to_owned(),
        };
        let now_ms = u64::try_from(crate::engine::model::now().as_millisecond()).unwrap_or(0);
        let mut report = PackReport::default();
        let mut compacted = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let keys = store.list(&prefix, after.as_deref(), 1000).await?;
            let Some(last) = keys.last().cloned() else { break };
            for key in &keys {
                let Some((c, written_ms)) = parse_pack_key(key) else {
                    continue;
                };
                report.packs += 1;
                if u128::from(now_ms.saturating_sub(written_ms)) < grace.as_millis() {
                    report.young += 1;
                    continue;
                }
                let Some(footer) = self.pack_footer(key).await? else {
                    continue;
                };
                let (named, pinned) = self.named_members(&c, key, &footer.members).await?;
                report.named += named.len() as u64;
                if named.is_empty() {
                    report.dead += 1;
                    if delete {
                        store.delete(key).await?;
                        report.deleted += 1;
                    }
                    continue;
                }
                let bytes = |ms: &[&Member]| ms.iter().map(|m| m.len).sum::<u64>() as f64;
                let all: Vec<&Member> = footer.members.iter().collect();
                if delete && bytes(&named) < COMPACT_BELOW * bytes(&all) {
                    if pinned {
                        report.pinned += 1;
                        continue;
                    }
                    let named = named.into_iter().cloned().collect();
                    self.compact_pack(&c, key, named).await?;
                    report.compacted += 1;
                    compacted.push((c, key.clone()));
                }
            }
            after = Some(last);
        }
        if !compacted.is_empty() {
            // See the module doc: a slot copied just before the repointing is committed (or
            // given up) within the grace.
            tokio::time::sleep(grace).await;
            for (c, key) in compacted {
                let Some(footer) = self.pack_footer(&key).await? else {
                    continue;
                };
                if self.named_members(&c, &key, &footer.members).await?.0.is_empty() {
                    store.delete(&key).await?;
                    report.deleted += 1;
                }
            }
        }
        Ok(report)
    }

    /// Move the named members of the pack at `key` into a new pack (see the module doc).
    async fn compact_pack(&self, c: &CollectionName, key: &str, named: Vec<Member>) -> Result<()> {
        let store = self.payload_store();
        let Some(body) = store.get(key).await? else {
            return Ok(());
        };
        let entries: Vec<Entry<'_>> = named
            .iter()
            .filter_map(|m| {
                let end = usize::try_from(m.offset.checked_add(m.len)?).ok()?;
                Some(Entry {
                    id: &m.id,
                    ov: m.ov,
                    write_id: &m.write_id,
                    envelope: body.get(usize::try_from(m.offset).ok()?..end)?,
                })
            })
            .collect();
        let new_key = format::new_key(c, entries.iter().map(|e| e.id));
        let (packed, footer) = format::encode(self.database(), c, &entries)?;
        store.put(&new_key, packed).await?;
        for m in &footer.members {
            let slot = format::Footer::slot(&new_key, m);
            // Only where it still names this pack: a hold may have moved it meanwhile.
            let moving = Repoint {
                payload: (m.ov, &m.write_id),
                from: Some(key),
                to: Some(&slot),
            };
            self.meta().repoint_payload(c, &m.id, moving).await?;
        }
        // An erasure recorded while the envelopes were copied must not find them again here.
        self.redact_pack(c, &new_key).await?;
        Ok(())
    }

    /// The members of the pack at `key` that a version (indexed, or pruned with its payload
    /// kept) names as where its data is, and whether a retention manifest names one of them
    /// (then only the index's names could be moved elsewhere: the pack must stay).
    async fn named_members<'m>(
        &self,
        c: &CollectionName,
        key: &str,
        members: &'m [Member],
    ) -> Result<(Vec<&'m Member>, bool)> {
        let in_this_pack = |pack: Option<&crate::engine::model::PackSlot>| pack.is_some_and(|p| p.key == key);
        let mut named = Vec::new();
        let mut in_manifest = false;
        'members: for m in members {
            let mut after = None;
            loop {
                let page = self.meta().versions(c, &m.id, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.ov);
                if page.iter().any(|v| {
                    let loc = v.payload();
                    loc.is_own(m.ov, &m.write_id) && in_this_pack(loc.pack)
                }) {
                    named.push(m);
                    continue 'members;
                }
            }
            let kept = self.manifests().kept_payloads(c, &m.id).await?;
            if kept
                .iter()
                .any(|(ov, w, pack)| (*ov, w.as_str()) == (m.ov, m.write_id.as_str()) && in_this_pack(pack.as_ref()))
            {
                named.push(m);
                in_manifest = true;
            }
        }
        Ok((named, in_manifest))
    }
}

/// `chronos-packs/<collection>/<uuidv7>[.m<filter>].pack` → the collection and when the pack
/// was written.
fn parse_pack_key(key: &str) -> Option<(CollectionName, u64)> {
    let rest = key.strip_prefix(format::PACKS_PREFIX)?;
    let (c, _) = rest.split_once('/')?;
    let (id, _) = format::parse_key(key)?;
    Some((c.parse().ok()?, began_ms(&id)?))
}
