//! Keeps a database's data from being dropped while a reconcile is writing to it.
//!
//! Deleting a `ChronosDatabase` with `deletionPolicy: Delete` drops its MongoDB database. A
//! collection reconcile that looked at the database just before the deletion began could still
//! be creating indexes (or a restore writing versions), and that would bring the dropped
//! database back. All of them run in this (leader-elected, so the only active) operator
//! process, so a process-local gate per database closes the race: writers enter through the
//! gate, and the drop first closes it — refusing newcomers — and waits until everyone inside has
//! left.
//!
//! Gates are keyed by the database's UID, so a new database of the same name starts open. A
//! closed gate stays in memory (a few bytes per deleted database over the operator's life).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Default)]
pub struct DataGates {
    gates: Mutex<HashMap<String, Gate>>,
    left: Notify,
}

#[derive(Default)]
struct Gate {
    inside: usize,
    closed: bool,
}

/// Held while writing to a database's data; leaving lets a waiting drop go on.
pub struct Pass<'a> {
    gates: &'a DataGates,
    key: String,
}

impl DataGates {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Gate>> {
        // Counters only: a poisoned lock still holds valid counts.
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enter the gate of database `uid`; `None` once its data is being dropped.
    pub fn enter(&self, uid: &str) -> Option<Pass<'_>> {
        let mut gates = self.lock();
        let gate = gates.entry(uid.to_owned()).or_default();
        if gate.closed {
            return None;
        }
        gate.inside += 1;
        Some(Pass {
            gates: self,
            key: uid.to_owned(),
        })
    }

    /// Close the gate of database `uid` for good and wait until everyone inside has left.
    pub async fn close(&self, uid: &str) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            // Registered before looking, so a pass dropped in between still wakes us.
            left.as_mut().enable();
            {
                let mut gates = self.lock();
                let gate = gates.entry(uid.to_owned()).or_default();
                gate.closed = true;
                if gate.inside == 0 {
                    return;
                }
            }
            left.await;
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Some(gate) = self.gates.lock().get_mut(&self.key) {
            gate.inside = gate.inside.saturating_sub(1);
        }
        self.gates.left.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drop_waits_for_writers_inside_and_refuses_newcomers() {
        let gates = DataGates::default();
        let writer = gates.enter("db-1").unwrap();
        let other_db = gates.enter("db-2").unwrap();
        let close = gates.close("db-1");
        tokio::pin!(close);
        // The writer is still inside: the drop must wait.
        assert!(futures::poll!(close.as_mut()).is_pending());
        assert!(gates.enter("db-1").is_none(), "no one enters a gate being closed");
        drop(writer);
        close.await;
        assert!(gates.enter("db-1").is_none(), "the gate stays closed");
        drop(other_db);
        assert!(gates.enter("db-2").is_some(), "other databases are unaffected");
    }
}
