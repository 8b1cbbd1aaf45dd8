//! Commit signals: how a change feed learns that a collection has new versions without polling.
//! A store hands out a [`CommitWatch`] per collection and raises it after every commit that makes
//! versions visible; the value is the highest cv announced, but every announcement wakes the
//! watchers (a straggler's lower cv too). A watcher re-reads the index, which stays the truth: a
//! signal only says when to look.
//!
//! [`CommitSignals`] is the in-process notifier the stores that commit in this process (memory,
//! SQLite) share; MongoDB raises its watches from a change stream instead, so a commit by another
//! engine process wakes them too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::engine::model::CollectionName;

/// Changes (wakes its holder) after versions of its collection were committed.
pub type CommitWatch = watch::Receiver<u64>;

/// One signal per collection that someone watches; announcing to a collection nobody watches
/// costs a map lookup.
#[derive(Default, Clone)]
pub struct CommitSignals {
    senders: Arc<Mutex<HashMap<CollectionName, watch::Sender<u64>>>>,
}

impl CommitSignals {
    /// A watch of `collection`'s commits from now on.
    pub fn watch(&self, collection: &CollectionName) -> CommitWatch {
        let mut senders = self.lock();
        senders
            .entry(collection.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Versions up to `cv` (at least) of `collection` were committed.
    pub fn announce(&self, collection: &CollectionName, cv: u64) {
        let mut senders = self.lock();
        if let Some(sender) = senders.get(collection) {
            if sender.receiver_count() == 0 {
                senders.remove(collection);
            } else {
                sender.send_modify(|highest| *highest = (*highest).max(cv));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CollectionName, watch::Sender<u64>>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_announcement_wakes_the_watchers_of_its_collection_only() {
        let signals = CommitSignals::default();
        let (a, b): (CollectionName, CollectionName) = ("a".parse().unwrap(), "b".parse().unwrap());
        signals.announce(&a, 1); // nobody watches yet: nothing to do
        let mut wa = signals.watch(&a);
        let wb = signals.watch(&b);
        signals.announce(&a, 5);
        assert!(wa.has_changed().unwrap());
        assert_eq!(*wa.borrow_and_update(), 5);
        assert!(!wb.has_changed().unwrap(), "another collection's commit");
        signals.announce(&a, 3); // a straggler's lower cv still wakes
        assert!(wa.has_changed().unwrap());
        assert_eq!(*wa.borrow_and_update(), 5);
        drop((wa, wb));
        signals.announce(&a, 6);
        assert!(!signals.lock().contains_key(&a), "forgotten once nobody watches");
    }
}
