//! Counter resets in the payload bucket: a reset moves a collection's counters' mark to a cv, which
//! only the metadata store knew; an empty object `chronos-resets/<collection>/<cv>.json` per reset
//! lets a rebuild find the last mark (the highest cv) again.

use bytes::Bytes;

use crate::engine::error::Result;
use crate::engine::model::CollectionName;
use crate::engine::store::PayloadStore;

pub const RESETS_PREFIX: &str = "chronos-resets/";

fn key(collection: &CollectionName, cv: u64) -> String {
    format!("{RESETS_PREFIX}{collection}/{cv:020}.json")
}

/// Record that the counters of `collection` were reset to count after `cv`.
pub async fn record(store: &dyn PayloadStore, collection: &CollectionName, cv: u64) -> Result<()> {
    store.put(&key(collection, cv), Bytes::from_static(b"{}")).await
}

/// The cv of the collection's last recorded reset (0 if none).
pub async fn last(store: &dyn PayloadStore, collection: &CollectionName) -> Result<u64> {
    let prefix = format!("{RESETS_PREFIX}{collection}/");
    let mut after: Option<String> = None;
    let mut last = 0;
    loop {
        let keys = store.list(&prefix, after.as_deref(), 1000).await?;
        let Some(end) = keys.last().cloned() else { break };
        for k in &keys {
            let cv = k
                .strip_prefix(&prefix)
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok());
            last = last.max(cv.unwrap_or(0));
        }
        after = Some(end);
    }
    Ok(last)
}
