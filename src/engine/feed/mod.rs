//! The change feed: a collection's versions in cv order, from any resume point retention has not
//! cut into. The version index is the log; what this adds is the frontier rule ([`frontier`]:
//! never deliver past a cv that may still be committed, never wait for one that can't be) and the
//! 410 when a resume point is older than what retention keeps.
//!
//! Readers: [`Engine::changes`] pages on request (JSON); [`Engine::subscribe`] follows the
//! collection live (SSE), woken by the store's commit signal through one shared tail per
//! collection (`hub.rs`, `tail.rs`, `subscription.rs`).
//!
//! The guarantee: each committed version is delivered once, in cv order, per collection and per
//! connection; across reconnects at least once (a client resumes from the last cv it processed).

mod filter;
pub mod frontier;
pub mod hub;
mod subscription;
mod tail;

use std::time::{Duration, Instant};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, VersionEntry, now};
use crate::engine::versioning::Engine;
pub use filter::ChangeFilter;
use frontier::{Visible, settle};
pub use subscription::Subscription;

/// The most versions one page of the feed returns.
pub const MAX_LIMIT: usize = 1000;

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
        frontier::check_cursor(after)?;
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

    /// `HistoryPruned` when retention removed a version after cv `after` from the index.
    pub(crate) async fn complete_after(&self, collection: &CollectionName, after: u64) -> Result<()> {
        let start = self.meta().history_start(collection).await?;
        if start.pruned_through > after {
            return Err(Error::HistoryPruned {
                after,
                oldest_cv: start.oldest_cv,
                pruned_through: start.pruned_through,
            });
        }
        Ok(())
    }

    /// Read up to `limit` versions after `after` and keep those the frontier rule lets go.
    pub(crate) async fn settled_page(&self, collection: &CollectionName, after: u64, limit: usize) -> Result<Settled> {
        let mut visible = self.meta().versions_after(collection, after, limit).await?;
        let read_all = visible.len() == limit;
        // After the read: retention removes entries and raises the mark in one transaction, so a
        // version this read missed because it was pruned shows in the mark read now.
        self.complete_after(collection, after).await?;
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
