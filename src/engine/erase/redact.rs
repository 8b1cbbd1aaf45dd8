//! Redacting erased items' records in the ledger: each segment that holds one is rewritten under
//! its own key with those records replaced by `{"redacted": {id, ov, cv, at, digest}}`. Digests
//! stay, so the segment's root, its seal and its writer's chain still verify (checked before
//! the segment is written back). This process's pending records are flushed first, so none of
//! the item's records is written out after the redaction.

use std::collections::HashSet;

use bytes::Bytes;

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId};
use crate::engine::rebuild::history::{read_segments, segment_keys};
use crate::engine::versioning::Engine;

impl Engine {
    /// Redact the records of `ids` in every ledger segment of `collection`; returns how many
    /// records were redacted now (0 when a previous run did it all).
    pub(super) async fn redact_ledger(&self, collection: &CollectionName, ids: &[ItemId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.flush_ledger().await?;
        let ids: HashSet<&ItemId> = ids.iter().collect();
        let keys = segment_keys(self).await?;
        let Some(keys) = keys.get(collection.as_str()) else {
            return Ok(0);
        };
        let mut redacted = 0;
        // A segment at a time: segments are read whole, and a collection may have many.
        for key in keys {
            for (mut segment, _) in read_segments(self, std::slice::from_ref(key)).await? {
                let mut changed = 0;
                let (database, name) = (segment.database.clone(), segment.collection.clone());
                for r in segment.records.iter_mut() {
                    if !r.is_redacted() && ids.contains(r.id()) {
                        r.redact(&database, &name);
                        changed += 1;
                    }
                }
                if changed == 0 {
                    continue;
                }
                if !segment.root_holds() {
                    return Err(Error::Corrupt(format!(
                        "{}: its root does not hold after redaction (a record was changed before)",
                        key.key()
                    )));
                }
                self.payload_store()
                    .put(&key.key(), Bytes::from(segment.encode()?))
                    .await?;
                redacted += changed;
            }
        }
        Ok(redacted)
    }
}
