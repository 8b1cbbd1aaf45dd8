//! Every payload a collection has in the JSON bucket, wherever it lies: at a version's own key or
//! inside a pack. What reads the buckets without the index (rebuild, verify) lists them this way.

use std::fmt;

use bytes::Bytes;
use futures::TryStreamExt;

use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId, PackSlot, PayloadLoc, payload_key};
use crate::engine::store::keys_under;
use crate::engine::versioning::Engine;

/// One stored payload: the version it claims to be, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredPayload {
    pub id: ItemId,
    pub ov: u64,
    pub write_id: String,
    /// `None`: at its own key ([`payload_key`]).
    pub pack: Option<PackSlot>,
}

impl StoredPayload {
    pub fn loc(&self) -> PayloadLoc<'_> {
        PayloadLoc {
            ov: self.ov,
            write_id: &self.write_id,
            pack: self.pack.as_ref(),
        }
    }
}

/// For people and reports: the key, or the pack and byte range.
pub struct Where<'a>(pub &'a CollectionName, pub &'a StoredPayload);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, p) = (self.0, self.1);
        match &p.pack {
            None => f.write_str(&payload_key(c, &p.id, p.ov, &p.write_id)),
            Some(s) => write!(f, "{}@{}+{} ({c}/{} v{})", s.key, s.offset, s.len, p.id, p.ov),
        }
    }
}

impl Engine {
    /// Every payload of `collection`: objects at their own keys, then the members of its packs.
    pub async fn stored_payloads(&self, collection: &CollectionName) -> Result<Vec<StoredPayload>> {
        let own = keys_under(self.payload_store(), &format!("{collection}/")).await?;
        let mut out: Vec<StoredPayload> = own.iter().filter_map(|k| own_key(k)).collect();
        let mut footers = std::pin::pin!(self.collection_footers(collection).await?);
        while let Some((key, footer)) = footers.try_next().await? {
            if footer.database != self.database() || footer.collection != collection.as_str() {
                continue; // not this collection's, whatever its key says
            }
            out.extend(footer.members.iter().map(|m| StoredPayload {
                id: m.id.clone(),
                ov: m.ov,
                write_id: m.write_id.clone(),
                pack: Some(super::format::Footer::slot(&key, m)),
            }));
        }
        Ok(out)
    }

    /// The bytes of a stored payload (`None` once gone).
    pub async fn read_stored(&self, collection: &CollectionName, p: &StoredPayload) -> Result<Option<Bytes>> {
        self.fetch_payload(collection, &p.id, p.loc()).await
    }
}

/// `<collection>/<id>/v<ov>.<write id>.json` ([`payload_key`]) → the payload it is (scrub takes
/// keys apart this way too).
pub(crate) fn own_key(key: &str) -> Option<StoredPayload> {
    let mut parts = key.split('/');
    let (_, id, file) = (parts.next(), parts.next(), parts.next());
    if parts.next().is_some() {
        return None;
    }
    let (ov, write_id) = file?.strip_prefix('v')?.strip_suffix(".json")?.split_once('.')?;
    if write_id.is_empty() || !ov.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(StoredPayload {
        id: id?.parse().ok()?,
        ov: ov.parse().ok()?,
        write_id: write_id.to_owned(),
        pack: None,
    })
}
