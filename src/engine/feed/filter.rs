//! A feed reader's filter: the list's safe query subset on each version's own indexed metadata,
//! and the ops to keep. Applied after the frontier rule, so the cursor moves past what it leaves
//! out.

use serde_json::Value;

use crate::engine::error::Result;
use crate::engine::model::{CollectionName, Op, VersionEntry};
use crate::engine::query::Filter;
use crate::engine::versioning::Engine;

/// Which versions a reader wants: those whose indexed metadata matches `filter` (the query
/// subset, on the version's own metadata) and whose op is one of `ops` (empty: every op).
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    filter: Filter,
    ops: Vec<Op>,
}

impl ChangeFilter {
    pub fn admits(&self, v: &VersionEntry) -> bool {
        (self.ops.is_empty() || self.ops.contains(&v.op)) && self.filter.matches(&v.meta)
    }
}

impl Engine {
    /// Compile a feed's filter for `collection`: `filter` in the list's safe subset (indexed
    /// properties only; `Value::Null` for none) and the ops to keep (empty: all).
    pub fn change_filter(&self, collection: &CollectionName, filter: &Value, ops: Vec<Op>) -> Result<ChangeFilter> {
        let filter = Filter::parse(filter, &|p| self.is_indexed(collection, p))?;
        Ok(ChangeFilter { filter, ops })
    }
}
