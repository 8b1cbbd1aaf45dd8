//! Scrub's part for packs: a pack none of whose members any version still names — in the index
//! or, with its payload kept, in a retention manifest — is deleted once it is older than the
//! orphan grace (every write that could still commit into it has passed its commit deadline:
//! members' write ids are older than their pack). Members are looked up by their item, so the
//! cost is one index read (and one manifest listing) per member of each old pack.

use serde::Serialize;

use super::format::{self, Member};
use crate::engine::error::Result;
use crate::engine::model::CollectionName;
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
    /// Dead packs deleted.
    pub deleted: u64,
}

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
                let named = self.named_members(&c, key, &footer.members).await?;
                report.named += named;
                if named > 0 {
                    continue;
                }
                report.dead += 1;
                if delete {
                    store.delete(key).await?;
                    report.deleted += 1;
                }
            }
            after = Some(last);
        }
        Ok(report)
    }

    /// How many members of the pack at `key` a version (indexed, or pruned with its payload
    /// kept) names as where its data is.
    async fn named_members(&self, c: &CollectionName, key: &str, members: &[Member]) -> Result<u64> {
        let in_this_pack = |pack: Option<&crate::engine::model::PackSlot>| pack.is_some_and(|p| p.key == key);
        let mut named = 0;
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
                    named += 1;
                    continue 'members;
                }
            }
            let kept = self.manifests().kept_payloads(c, &m.id).await?;
            if kept
                .iter()
                .any(|(ov, w, pack)| (*ov, w.as_str()) == (m.ov, m.write_id.as_str()) && in_this_pack(pack.as_ref()))
            {
                named += 1;
            }
        }
        Ok(named)
    }
}

/// `chronos-packs/<collection>/<uuidv7>.pack` → the collection and when the pack was written.
fn parse_pack_key(key: &str) -> Option<(CollectionName, u64)> {
    let rest = key.strip_prefix(format::PACKS_PREFIX)?;
    let (c, file) = rest.split_once('/')?;
    let id = uuid::Uuid::try_parse(file.strip_suffix(".pack")?).ok()?;
    Some((c.parse().ok()?, began_ms(&id)?))
}
