//! A subscriber of a collection's feed: it takes the tail's batches while it is at the tail, and
//! reads the index on its own, page by page, while it is behind (a resume point far back, or it
//! fell more than the tail's queue behind), until it reaches the tail again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::filter::ChangeFilter;
use super::hub::{Batch, Hub};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, VersionEntry};
use crate::engine::versioning::Engine;

/// Versions per read of a subscriber catching up on its own.
const CATCH_UP_PAGE: usize = 500;

/// A live feed of one collection's changes from a resume point; see [`Subscription::next`].
pub struct Subscription {
    engine: Arc<Engine>,
    collection: CollectionName,
    hub: Arc<Hub>,
    batches: broadcast::Receiver<Arc<Batch>>,
    filter: ChangeFilter,
    /// Everything up to here was delivered (or left out by the filter, or settled as a gap).
    cursor: u64,
    /// Not known to be at the tail: take from the recent batches or read on its own.
    behind: bool,
    /// When reading on its own stopped at a gap: look again after this long at the latest.
    held_back: Option<Duration>,
}

impl Engine {
    /// Follow `collection`'s changes after cv `after` that `filter` admits. `HistoryPruned` at
    /// once when retention already cut into the resume point (and later from
    /// [`Subscription::next`], should it cut in while this subscriber is behind).
    pub async fn subscribe(
        self: &Arc<Self>,
        collection: &CollectionName,
        after: u64,
        filter: ChangeFilter,
    ) -> Result<Subscription> {
        super::frontier::check_cursor(after)?;
        self.complete_after(collection, after).await?;
        let hub = self.feeds().hub(collection);
        let (batches, start_tail) = hub.join();
        if start_tail {
            tokio::spawn(self.clone().run_tail(collection.clone(), hub.clone(), after));
        }
        Ok(Subscription {
            engine: self.clone(),
            collection: collection.clone(),
            hub,
            batches,
            filter,
            cursor: after,
            behind: true,
            held_back: None,
        })
    }
}

impl Subscription {
    /// Resume after this cv to continue where this subscription is.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next changes the filter admits, in cv order, never empty: waits until there are some.
    /// Each committed version comes once, after every version with a smaller cv.
    pub async fn next(&mut self) -> Result<Vec<VersionEntry>> {
        loop {
            if self.behind {
                if let Some((versions, through)) = self.hub.recent_after(self.cursor) {
                    self.behind = false;
                    self.held_back = None;
                    if let Some(found) = self.take(versions, through) {
                        return Ok(found);
                    }
                } else {
                    let page = self
                        .engine
                        .settled_page(&self.collection, self.cursor, CATCH_UP_PAGE)
                        .await?;
                    self.held_back = page.wait;
                    // At the end of what is visible: the tail's batches take over from here.
                    self.behind = page.full;
                    if let Some(found) = self.take(page.versions, page.frontier) {
                        return Ok(found);
                    }
                    if page.full {
                        continue;
                    }
                }
            }
            let received = match self.held_back {
                Some(wait) => tokio::select! {
                    received = self.batches.recv() => received,
                    () = tokio::time::sleep(wait) => {
                        self.behind = true;
                        continue;
                    }
                },
                None => self.batches.recv().await,
            };
            match received {
                Ok(batch) => match batch.after_cursor(self.cursor) {
                    Some((versions, through)) => {
                        self.held_back = None;
                        if let Some(found) = self.take(versions.to_vec(), through) {
                            return Ok(found);
                        }
                    }
                    None => self.behind = true,
                },
                Err(RecvError::Lagged(_)) => self.behind = true,
                Err(RecvError::Closed) => {
                    return Err(Error::Corrupt("the change feed's tail went away".into()));
                }
            }
        }
    }

    /// Move the cursor to `through` and keep what the filter admits; `None` when that is nothing.
    fn take(&mut self, mut versions: Vec<VersionEntry>, through: u64) -> Option<Vec<VersionEntry>> {
        self.cursor = self.cursor.max(through);
        versions.retain(|v| self.filter.admits(v));
        (!versions.is_empty()).then_some(versions)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave();
    }
}
