//! The records every path writes and reads: ~1 KiB bodies with an indexed `status`, the same
//! on the engine, over HTTP and on the floor, so the paths compare like for like.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

/// Distinct values of the indexed `status` property: a list page filters on one of them.
pub const STATUSES: u64 = 20;

/// Records per list page.
pub const LIST_LIMIT: usize = 20;

/// ~1 KiB records: the size of a typical business document.
pub static BODY: LazyLock<String> = LazyLock::new(|| "lorem ipsum dolor sit amet, ".repeat(28));

/// A record: ~1 KiB, an indexed `status`, a counter.
pub fn record(n: u64, owner: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), format!("s{}", n % STATUSES).into());
    m.insert("n".into(), n.into());
    m.insert("owner".into(), format!("client-{owner}").into());
    m.insert("title".into(), format!("record {n}").into());
    m.insert("tags".into(), json!(["bench", "chronos"]));
    m.insert("body".into(), BODY.as_str().into());
    m
}

pub fn patch(n: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("enriched".into(), json!({"by": "bench", "n": n}));
    m
}

/// The id of pool item `k`.
pub fn pool_id(k: usize) -> String {
    format!("p{k:06}")
}
