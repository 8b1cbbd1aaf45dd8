//! Write packing: the payloads of writes made together stored as one object (a *pack*), each
//! version naming its slot (pack key, offset, length) through a reference to itself
//! ([`PayloadRef`] with `pack`), and read back with one ranged GET. `format` is the object,
//! `packer` gathers the payloads; this file holds what the rest of the engine asks of packs.
//! See docs/design.md "Write packing".

pub mod collect;
pub mod filter;
pub mod format;
pub mod packer;
pub mod redact;
pub mod stored;

use bytes::Bytes;

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, PackSlot, PayloadLoc, PayloadRef, VersionEntry};
use crate::engine::store::{ByteRange, keys_under};
use crate::engine::versioning::Engine;
use format::Footer;

/// How much of a pack's end is read to find its footer in one GET (64 members' footer is ~8 KiB).
const FOOTER_READ: u64 = 16 * 1024;

/// Footer reads in flight when a whole collection's packs are read (erasure, rebuild, verify):
/// one GET after another would make them take a round trip per pack.
const FOOTERS_IN_FLIGHT: usize = 32;

impl Engine {
    /// The bytes of the payload at `loc`: its own object, or its slot of a pack (one ranged GET).
    /// `None` when the object is not there.
    pub(crate) async fn fetch_payload(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        loc: PayloadLoc<'_>,
    ) -> Result<Option<Bytes>> {
        let store = self.payload_store();
        match loc.pack {
            None => store.get(&loc.key(collection, id)).await,
            Some(slot) => {
                let range = ByteRange::Slice {
                    offset: slot.offset,
                    len: slot.len,
                };
                let bytes = store.get_range(&slot.key, range).await?;
                // A cut-short slot is not the envelope: say so rather than fail to parse it.
                Ok(bytes.filter(|b| b.len() as u64 == slot.len))
            }
        }
    }

    /// Copy a packed payload to its version's own key (unless it is there already), for what
    /// needs an object of its own: a presigned URL (it can't name a byte range).
    pub(crate) async fn standalone_copy(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        loc: PayloadLoc<'_>,
    ) -> Result<()> {
        let key = loc.key(collection, id);
        let store = self.payload_store();
        if store.get_range(&key, ByteRange::Last(1)).await?.is_some() {
            return Ok(());
        }
        let bytes = self
            .fetch_payload(collection, id, loc)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("the pack holding {key} is missing")))?;
        store.put(&key, bytes).await
    }

    /// A pack's footer: which versions it holds, where. `None` when the pack is not there.
    pub(crate) async fn pack_footer(&self, key: &str) -> Result<Option<Footer>> {
        let store = self.payload_store();
        let Some(tail) = store.get_range(key, ByteRange::Last(FOOTER_READ)).await? else {
            return Ok(None);
        };
        if let Some(footer) = format::decode_footer(&tail)? {
            return Ok(Some(footer));
        }
        let need = format::footer_len(&tail)?.saturating_add(format::TRAILER);
        let Some(tail) = store.get_range(key, ByteRange::Last(need)).await? else {
            return Ok(None);
        };
        format::decode_footer(&tail)?
            .map(Some)
            .ok_or_else(|| Error::Corrupt(format!("{key}: the pack's footer is cut short")))
    }

    /// The footers of a collection's packs, in key order (see [`Engine::footers_of`]).
    pub(crate) async fn collection_footers(
        &self,
        collection: &CollectionName,
    ) -> Result<impl futures::Stream<Item = Result<(String, Footer)>> + '_> {
        Ok(self.footers_of(self.pack_keys(collection).await?))
    }

    /// The footers of the packs at `keys`, read [`FOOTERS_IN_FLIGHT`] at a time and handed on as
    /// they come (a collection's footers together can be large); a pack gone meanwhile is left out.
    pub(crate) fn footers_of(&self, keys: Vec<String>) -> impl futures::Stream<Item = Result<(String, Footer)>> + '_ {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(keys)
            .map(move |key| async move { Ok(self.pack_footer(&key).await?.map(|f| (key, f))) })
            .buffered(FOOTERS_IN_FLIGHT)
            .try_filter_map(|found| async move { Ok(found) })
    }

    /// The keys of a collection's packs.
    pub(crate) async fn pack_keys(&self, collection: &CollectionName) -> Result<Vec<String>> {
        let mut keys = keys_under(self.payload_store(), &format::collection_prefix(collection)).await?;
        keys.retain(|k| k.ends_with(".pack"));
        Ok(keys)
    }
}

/// A version as it reads without where its bytes lie: no pack slot, and no reference to itself
/// (which only ever carries a slot). Descriptions of one version written at different times — the
/// envelope, the ledger record, the index after a move — compare equal this way.
pub fn unlocated(mut v: VersionEntry) -> VersionEntry {
    if let Some(r) = &mut v.payload_ref {
        r.pack = None;
        if (r.of.as_str(), r.ov, r.write_id.as_str()) == (v.write_id.as_str(), v.ov, v.write_id.as_str()) {
            v.payload_ref = None;
        }
    }
    v
}

/// The reference a packed version makes to itself: its own (ov, write id) in `slot`.
pub fn self_ref(ov: u64, write_id: &str, function_ids: &[String], slot: PackSlot) -> PayloadRef {
    PayloadRef {
        of: write_id.to_owned(),
        ov,
        write_id: write_id.to_owned(),
        function_ids: function_ids.to_vec(),
        pack: Some(slot),
    }
}
