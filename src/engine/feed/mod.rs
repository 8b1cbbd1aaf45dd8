//! The change feed: a collection's versions in cv order, from any resume point retention has not
//! cut into. The version index is the log; what this adds is the frontier rule ([`frontier`]:
//! never deliver past a cv that may still be committed, never wait for one that can't be) and the
//! 410 when a resume point is older than what retention keeps.
//!
//! The guarantee: each committed version is delivered once, in cv order, per collection and per
//! connection; across reconnects at least once (a client resumes from the last cv it processed).

pub mod frontier;
pub mod hub;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Op, VersionEntry, now};
use crate::engine::query::Filter;
use crate::engine::versioning::Engine;
use frontier::{Visible, settle};

/// The most versions one page of the feed returns.
pub const MAX_LIMIT: usize = 1000;

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

/// One page of a collection's changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage {
    /// The versions after the resume point that the filter admits, in cv order.
    pub changes: Vec<VersionEntry>,
    /// Resume after this cv for the next page: everything up to it was delivered or settled
    /// (versions the filter left out included). Equal to the resume point when nothing moved.
    pub next: u64,
    /// A cv right after `next` was taken but is not visible yet: versions above it wait at most
    /// this long (see [`frontier`]).
    pub held_back: Option<Duration>,
    /// The page read as many versions as it could: more may follow at once.
    pub full: bool,
}

impl Engine {
    /// Compile a feed's filter for `collection`: `filter` in the list's safe subset (indexed
    /// properties only; `Value::Null` for none) and the ops to keep (empty: all).
    pub fn change_filter(&self, collection: &CollectionName, filter: &Value, ops: Vec<Op>) -> Result<ChangeFilter> {
        let filter = Filter::parse(filter, &|p| self.is_indexed(collection, p))?;
        Ok(ChangeFilter { filter, ops })
    }

    /// The changes after cv `after`: at most `limit` (1 to [`MAX_LIMIT`]) versions are read, and
    /// those `filter` admits are returned. `HistoryPruned` when retention removed a version
    /// after `after` from the index.
    pub async fn changes(
        &self,
        collection: &CollectionName,
        after: u64,
        limit: usize,
        filter: &ChangeFilter,
    ) -> Result<ChangesPage> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::validation("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        let page = self.settled_page(collection, after, limit).await?;
        let mut changes = page.versions;
        changes.retain(|v| filter.admits(v));
        Ok(ChangesPage {
            changes,
            next: page.frontier,
            held_back: page.wait,
            full: page.full,
        })
    }

    /// Read up to `limit` versions after `after` and keep those the frontier rule lets go.
    pub(crate) async fn settled_page(&self, collection: &CollectionName, after: u64, limit: usize) -> Result<Settled> {
        let mut visible = self.meta().versions_after(collection, after, limit).await?;
        let read_all = visible.len() == limit;
        // After the read: retention removes entries and raises the mark in one transaction, so a
        // version this read missed because it was pruned shows in the mark read now.
        let start = self.meta().history_start(collection).await?;
        if start.pruned_through > after {
            return Err(Error::HistoryPruned {
                after,
                oldest_cv: start.oldest_cv,
                pruned_through: start.pruned_through,
            });
        }
        let seen_at = Instant::now();
        let grace = self.settings().orphan_grace;
        let hub = self.feeds().hub(collection);
        let outcome = {
            let mut sightings = hub.sightings();
            if let Some(top) = visible.last() {
                sightings.saw(top.cv, seen_at);
            }
            sightings.forget_settled(seen_at, grace);
            let rule: Vec<Visible> = visible.iter().map(|v| Visible { cv: v.cv, at: v.at }).collect();
            settle(after, &rule, &sightings, seen_at, now(), grace)
        };
        visible.truncate(outcome.count);
        visible.retain(|v| v.cv > after);
        Ok(Settled {
            versions: visible,
            frontier: outcome.frontier.max(after),
            wait: outcome.wait,
            full: read_all && outcome.wait.is_none(),
        })
    }
}

/// A read of the index after the frontier rule: what may be delivered, up to where.
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    /// In cv order, all above the resume point.
    pub versions: Vec<VersionEntry>,
    pub frontier: u64,
    /// A gap holds versions back for at most this long.
    pub wait: Option<Duration>,
    /// The read returned as many versions as it asked for, and none is held back.
    pub full: bool,
}
