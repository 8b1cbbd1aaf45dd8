//! The tail of a collection's feed: while anyone subscribes, one task per collection per engine
//! process waits for the store's commit signal (MongoDB: a change stream; embedded: the
//! in-process notifier), reads the index once, applies the frontier rule and publishes what it
//! let go to every subscriber. No subscriber polls; without commits nothing is read, except when
//! a gap holds versions back and the task looks again once it settles.

use std::sync::Arc;
use std::time::Duration;

use super::MAX_LIMIT;
use super::hub::{Batch, Hub};
use crate::engine::error::Error;
use crate::engine::model::CollectionName;
use crate::engine::store::signal::CommitWatch;
use crate::engine::versioning::Engine;

/// The longest pause between attempts while the store fails.
const MAX_PAUSE: Duration = Duration::from_secs(10);

impl Engine {
    /// Follow `collection` from cv `start` until the hub has no subscriber left.
    pub(crate) async fn run_tail(self: Arc<Self>, collection: CollectionName, hub: Arc<Hub>, start: u64) {
        let mut frontier = start;
        let mut signal: Option<CommitWatch> = None;
        let mut pause = Duration::from_millis(100);
        loop {
            if hub.stop_if_unwatched() {
                return;
            }
            if signal.is_none() {
                // Taken before the read, so no commit after the read goes unnoticed.
                match self.meta().watch_commits(&collection).await {
                    Ok(w) => signal = Some(w),
                    Err(error) => {
                        tracing::warn!(%collection, %error, "change feed: can't watch commits; trying again");
                        pause = self.pause(&hub, pause).await;
                        continue;
                    }
                }
            }
            let wait = match self.settled_page(&collection, frontier, MAX_LIMIT).await {
                Ok(page) => {
                    pause = Duration::from_millis(100);
                    if page.frontier > frontier {
                        hub.publish(Batch {
                            after: frontier,
                            through: page.frontier,
                            versions: page.versions,
                            pruned: false,
                        });
                        frontier = page.frontier;
                    }
                    if page.full {
                        continue;
                    }
                    page.wait
                }
                Err(Error::HistoryPruned { pruned_through, .. }) => {
                    // Subscribers below the mark are told when they read on their own.
                    hub.publish(Batch {
                        after: frontier,
                        through: pruned_through,
                        versions: vec![],
                        pruned: true,
                    });
                    frontier = pruned_through;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%collection, %error, "change feed: reading the index failed; trying again");
                    pause = self.pause(&hub, pause).await;
                    continue;
                }
            };
            let Some(commits) = signal.as_mut() else { continue };
            tokio::select! {
                changed = commits.changed() => if changed.is_err() {
                    // The store dropped the signal (its stream broke for good): take a new one.
                    signal = None;
                },
                () = tokio::time::sleep(wait.unwrap_or(MAX_PAUSE)), if wait.is_some() => {}
                () = hub.someone_left() => {}
            }
        }
    }

    /// Wait `pause` (or until a subscriber leaves); the next pause is twice as long.
    async fn pause(&self, hub: &Hub, pause: Duration) -> Duration {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = hub.someone_left() => {}
        }
        (pause * 2).min(MAX_PAUSE)
    }
}
