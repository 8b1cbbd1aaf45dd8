//! Erasure inside packs: an erased item's envelopes are overwritten with spaces where they lie,
//! so the other members keep their slots and nothing else changes; a pack whose members are all
//! erased is deleted.
//!
//! Two erasures may rewrite one pack at once, each from what it read. So a rewrite never
//! redacts only its own items: it redacts every member that *any* erasure record of the
//! collection names, and after writing it reads the records and the pack again, and writes again
//! until the pack holds every redaction the records ask for. The last write to a pack is then
//! followed by its writer's check, which sees every record made before it, and an erasure
//! recorded after that check finds its item unredacted and writes again itself (records are
//! written before anything is erased; S3 reads its own writes).

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;

use super::filter::Probe;
use super::format::{self, Member};
use crate::engine::error::{Error, Result};
use crate::engine::ledger::erasures;
use crate::engine::model::{CollectionName, ItemId};
use crate::engine::store::keys_under_matching;
use crate::engine::versioning::Engine;

/// Rounds of write-and-check before an erasure gives up on a pack (it is finished when run again).
const ROUNDS: usize = 5;

/// Past this many items, filters rule out too few packs to be worth testing: at 32, about one
/// pack in four without any of them says "maybe" (1 − (1 − 1/120)³²).
const FILTER_IDS_MAX: usize = 32;

impl Engine {
    /// Remove the envelopes of every erased item from the collection's packs; returns how many
    /// packs were rewritten or deleted. Only the packs whose key says they may hold one of `ids`
    /// are looked into ([`filter`](super::filter)): a pack written before keys had a filter, and
    /// every pack when `ids` are too many for filters to rule much out, has its footer read.
    pub(crate) async fn redact_packs(&self, collection: &CollectionName, ids: &[ItemId]) -> Result<u64> {
        let probes: Vec<Probe> = ids.iter().map(Probe::of).collect();
        let prefix = format::collection_prefix(collection);
        let keys = keys_under_matching(self.payload_store(), &prefix, |k| may_hold_any(k, &probes)).await?;
        let mine: HashSet<&ItemId> = ids.iter().collect();
        let mut changed = 0;
        // A "maybe" holding none of them (about 1 pack in 120 per item) costs one footer read.
        let mut footers = std::pin::pin!(self.footers_of(keys));
        while let Some((key, footer)) = footers.try_next().await? {
            if footer.members.iter().any(|m| mine.contains(&m.id)) {
                changed += u64::from(self.redact_pack(collection, &key).await?);
            }
        }
        Ok(changed)
    }

    /// Bring one pack in line with the erasure records (see the module doc); `true` when it
    /// was rewritten or deleted.
    pub(super) async fn redact_pack(&self, collection: &CollectionName, key: &str) -> Result<bool> {
        let store = self.payload_store();
        let mut changed = false;
        for _ in 0..ROUNDS {
            let erased = self.erased_ids(collection).await?;
            let Some(body) = store.get(key).await? else {
                return Ok(changed);
            };
            let footer = super::format::decode_footer(&body)?
                .ok_or_else(|| Error::Corrupt(format!("{key}: the pack's footer is cut short")))?;
            let doomed: Vec<&Member> = footer.members.iter().filter(|m| erased.contains(&m.id)).collect();
            if doomed.len() == footer.members.len() {
                store.delete(key).await?;
                return Ok(true);
            }
            if doomed.iter().all(|m| blank(&body, m)) {
                return Ok(changed);
            }
            store.put(key, blanked(&body, &doomed)).await?;
            changed = true;
        }
        Err(Error::Contended(format!(
            "{key} (erasures kept rewriting it; run the erasure again)"
        )))
    }

    async fn erased_ids(&self, collection: &CollectionName) -> Result<HashSet<ItemId>> {
        let records = erasures::all(self.payload_store(), self.database(), Some(collection)).await?;
        Ok(records
            .into_iter()
            .flat_map(|e| e.items.into_iter().map(|i| i.id))
            .collect())
    }
}

/// Whether the object at `key` is a pack that may hold one of the probed items.
fn may_hold_any(key: &str, probes: &[Probe]) -> bool {
    key.ends_with(".pack")
        && match format::parse_key(key) {
            Some((_, Some(filter))) if probes.len() <= FILTER_IDS_MAX => probes.iter().any(|&p| filter.may_hold(p)),
            _ => true,
        }
}

fn range(body: &Bytes, m: &Member) -> std::ops::Range<usize> {
    let from = (m.offset as usize).min(body.len());
    from..(m.offset.saturating_add(m.len) as usize).min(body.len())
}

/// Whether a member's bytes are already spaces.
fn blank(body: &Bytes, m: &Member) -> bool {
    body[range(body, m)].iter().all(|b| *b == b' ')
}

/// The pack with these members' bytes overwritten by spaces (same length: no slot moves).
fn blanked(body: &Bytes, members: &[&Member]) -> Bytes {
    let mut out = BytesMut::from(&body[..]);
    for m in members {
        out[range(body, m)].fill(b' ');
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pack::format::{Entry, encode};

    #[test]
    fn an_erasure_looks_into_the_packs_that_may_hold_its_items() {
        let c: CollectionName = "c".parse().unwrap();
        let id = |s: &str| -> ItemId { s.parse().unwrap() };
        let (a, b) = (id("a"), id("b"));
        let key = format::new_key(&c, [&a].into_iter());
        assert!(!may_hold_any(&key, &[Probe::of(&b)]));
        assert!(may_hold_any(&key, &[Probe::of(&b), Probe::of(&a)]));
        // Too many items to rule packs out by filter: every pack is looked into.
        let ruled_out = |p: &Probe| !may_hold_any(&key, std::slice::from_ref(p));
        let many: Vec<Probe> = (0..)
            .map(|i| Probe::of(&id(&format!("x{i}"))))
            .filter(ruled_out)
            .take(FILTER_IDS_MAX + 1)
            .collect();
        assert!(!may_hold_any(&key, &many[..FILTER_IDS_MAX]) && may_hold_any(&key, &many));
        // A pack written before keys had filters is looked into; an own-key payload is no pack.
        assert!(may_hold_any(
            "chronos-packs/c/0192f0c1a2b37c4d8e9f0a1b2c3d4e5f.pack",
            &[Probe::of(&b)]
        ));
        assert!(!may_hold_any("c/a/v0.w.json", &[Probe::of(&a)]));
    }

    #[test]
    fn blanking_keeps_every_other_slot() {
        let c: CollectionName = "c".parse().unwrap();
        let (a, b): (ItemId, ItemId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let e = |id, env: &'static [u8]| Entry {
            id,
            ov: 0,
            write_id: "w",
            envelope: env,
        };
        let (body, footer) = encode("db", &c, &[e(&a, b"secret-of-a"), e(&b, b"data-of-b")]).unwrap();
        let out = blanked(&body, &[&footer.members[0]]);
        assert_eq!(out.len(), body.len());
        assert!(blank(&out, &footer.members[0]) && !blank(&out, &footer.members[1]));
        let m = &footer.members[1];
        assert_eq!(&out[m.offset as usize..(m.offset + m.len) as usize], b"data-of-b");
        assert!(!out.windows(6).any(|w| w == b"secret"));
        assert_eq!(super::super::format::decode_footer(&out).unwrap().unwrap(), footer);
    }
}
