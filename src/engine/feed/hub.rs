//! Per collection, what the feed readers of one engine process share: when versions were first
//! seen (the frontier rule's sightings, so one reader's sighting settles a gap for all), and the
//! *tail*: one task per watched collection reads the index once per wake-up and publishes what it
//! let go as [`Batch`]es to every subscriber at the tail, so a commit costs one read however many
//! subscribers there are (see `tail.rs` and `subscription.rs`).
//!
//! Kept apart from the engine's code so the engine can hold it without the two files importing
//! each other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast};

use super::frontier::Sightings;
use crate::engine::model::{CollectionName, VersionEntry};

/// How many of the tail's latest batches a subscriber can join from.
const RECENT_BATCHES: usize = 64;
/// How many batches a subscriber may fall behind the tail before it reads on its own.
const QUEUED_BATCHES: usize = 256;

/// The hubs of an engine's collections, made on first use.
#[derive(Default)]
pub struct Feeds {
    hubs: Mutex<HashMap<CollectionName, Arc<Hub>>>,
}

impl Feeds {
    /// The hub of `collection`.
    pub(crate) fn hub(&self, collection: &CollectionName) -> Arc<Hub> {
        lock(&self.hubs).entry(collection.clone()).or_default().clone()
    }

    /// How many subscribers each collection's feed has now (collections with none left out).
    pub fn subscribers(&self) -> Vec<(CollectionName, usize)> {
        lock(&self.hubs)
            .iter()
            .map(|(c, hub)| (c.clone(), lock(&hub.state).subscribers))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What the tail let go in one read: everything in `(after, through]` that was committed, in cv
/// order (the feed's filters apply per subscriber).
#[derive(Debug)]
pub(crate) struct Batch {
    pub after: u64,
    pub through: u64,
    pub versions: Vec<VersionEntry>,
    /// Retention removed versions in `(after, through]`: a subscriber inside it must read on its
    /// own, to be told (`HistoryPruned`), never skip.
    pub pruned: bool,
}

impl Batch {
    /// What a subscriber at `cursor` takes from this batch: the versions above it, and its new
    /// cursor; `None` when the batch starts above the cursor or skips pruned history it needs.
    pub(crate) fn after_cursor(&self, cursor: u64) -> Option<(&[VersionEntry], u64)> {
        if self.through <= cursor {
            return Some((&[], cursor));
        }
        if self.after > cursor || self.pruned {
            return None;
        }
        let from = self.versions.partition_point(|v| v.cv <= cursor);
        Some((&self.versions[from..], self.through))
    }
}

/// One collection's shared feed state.
pub(crate) struct Hub {
    sightings: Mutex<Sightings>,
    batches: broadcast::Sender<Arc<Batch>>,
    state: Mutex<State>,
    /// A subscriber left: the tail checks whether it is still needed.
    left: Notify,
}

#[derive(Default)]
struct State {
    subscribers: usize,
    /// Whether the tail task runs.
    running: bool,
    recent: VecDeque<Arc<Batch>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            sightings: Mutex::default(),
            batches: broadcast::channel(QUEUED_BATCHES).0,
            state: Mutex::default(),
            left: Notify::new(),
        }
    }
}

impl Hub {
    pub(crate) fn sightings(&self) -> MutexGuard<'_, Sightings> {
        lock(&self.sightings)
    }

    /// A new subscriber: its receiver of the tail's batches, and whether the tail must be started
    /// (it was not running).
    pub(crate) fn join(&self) -> (broadcast::Receiver<Arc<Batch>>, bool) {
        let mut state = lock(&self.state);
        state.subscribers += 1;
        let batches = self.batches.subscribe();
        let start = !state.running;
        if start {
            state.running = true;
            state.recent.clear();
        }
        (batches, start)
    }

    pub(crate) fn leave(&self) {
        let mut state = lock(&self.state);
        state.subscribers = state.subscribers.saturating_sub(1);
        self.left.notify_one();
    }

    /// For the tail: whether to stop, because nobody subscribes any more (then it is marked
    /// stopped, so the next subscriber starts a new tail).
    pub(crate) fn stop_if_unwatched(&self) -> bool {
        let mut state = lock(&self.state);
        if state.subscribers == 0 {
            state.running = false;
            return true;
        }
        false
    }

    /// Resolves when a subscriber leaves (or has left since the last call).
    pub(crate) async fn someone_left(&self) {
        self.left.notified().await;
    }

    pub(crate) fn publish(&self, batch: Batch) {
        let batch = Arc::new(batch);
        let mut state = lock(&self.state);
        state.recent.push_back(batch.clone());
        if state.recent.len() > RECENT_BATCHES {
            state.recent.pop_front();
        }
        // No receiver is not an error: the tail stops at its next look.
        let _ = self.batches.send(batch);
    }

    /// What a subscriber at `cursor` can take from the tail's recent batches: the versions above
    /// it and its new cursor; `None` when they don't reach back to it.
    pub(crate) fn recent_after(&self, cursor: u64) -> Option<(Vec<VersionEntry>, u64)> {
        let state = lock(&self.state);
        let first = state.recent.front()?;
        if first.after > cursor {
            return None;
        }
        let mut taken = Vec::new();
        let mut at = cursor;
        for batch in &state.recent {
            let (versions, through) = batch.after_cursor(at)?;
            taken.extend_from_slice(versions);
            at = through;
        }
        Some((taken, at))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(after: u64, through: u64, cvs: &[u64]) -> Batch {
        let versions = cvs
            .iter()
            .map(|&cv| VersionEntry {
                id: "i".parse().unwrap(),
                ov: cv,
                cv,
                op: crate::engine::model::Op::Update,
                at: crate::engine::model::now(),
                actor: None,
                reason: None,
                write_id: String::new(),
                size: 0,
                checksum: String::new(),
                meta: Default::default(),
                deleted: false,
                request: None,
                payload_ref: None,
            })
            .collect();
        Batch {
            after,
            through,
            versions,
            pruned: false,
        }
    }

    fn cvs(v: &[VersionEntry]) -> Vec<u64> {
        v.iter().map(|v| v.cv).collect()
    }

    #[test]
    fn a_subscriber_takes_what_is_above_its_cursor_and_nothing_across_a_hole() {
        let b = batch(10, 15, &[11, 13, 15]);
        let (v, next) = b.after_cursor(10).unwrap();
        assert_eq!((cvs(v), next), (vec![11, 13, 15], 15));
        let (v, next) = b.after_cursor(12).unwrap();
        assert_eq!((cvs(v), next), (vec![13, 15], 15), "joined inside the batch");
        assert_eq!(
            b.after_cursor(15).map(|(v, n)| (v.len(), n)),
            Some((0, 15)),
            "already had it"
        );
        assert!(
            b.after_cursor(9).is_none(),
            "starts above the cursor: the subscriber is behind"
        );
        let pruned = Batch {
            pruned: true,
            ..batch(10, 15, &[])
        };
        assert!(pruned.after_cursor(12).is_none(), "never skips pruned history");
        assert!(pruned.after_cursor(15).is_some());
    }

    #[test]
    fn recent_batches_serve_a_cursor_they_reach_back_to() {
        let hub = Hub::default();
        let (_rx, start) = hub.join();
        assert!(start, "the first subscriber starts the tail");
        assert!(!hub.join().1, "the second does not");
        assert!(hub.recent_after(0).is_none(), "nothing yet");
        hub.publish(batch(5, 8, &[6, 8]));
        hub.publish(batch(8, 9, &[]));
        hub.publish(batch(9, 12, &[10, 12]));
        let (v, next) = hub.recent_after(7).unwrap();
        assert_eq!((cvs(&v), next), (vec![8, 10, 12], 12));
        assert_eq!(hub.recent_after(12).map(|(v, n)| (v.len(), n)), Some((0, 12)));
        assert!(hub.recent_after(4).is_none(), "older than the recent batches");
        hub.leave();
        assert!(!hub.stop_if_unwatched());
        hub.leave();
        assert!(hub.stop_if_unwatched(), "the last one left");
        assert!(hub.join().1, "a new subscriber starts it again");
        assert!(hub.recent_after(7).is_none(), "with nothing recent");
    }
}
