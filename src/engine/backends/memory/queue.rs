//! The in-memory queue: the reference for the queue conformance tests. Not durable.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::error::Result;
use crate::engine::model::Timestamp;
use crate::engine::store::queue::{Operation, OperationId, OperationStatus, QueueStats, QueueStore, Settlement};
use crate::engine::store::rules::lease_end;

#[derive(Default, Debug)]
struct State {
    /// Live and finished operations, with the claim token and lease of running ones.
    queue: BTreeMap<OperationId, (Operation, Option<(String, Timestamp)>)>,
    dead: BTreeMap<OperationId, Operation>,
}

#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything the queue holds, as text (see `MemoryMetaStore::dump`).
    pub fn dump(&self) -> String {
        format!("{:?}", *self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a queued operation may be claimed now.
fn claimable(op: &Operation, lease: &Option<(String, Timestamp)>, now: Timestamp) -> bool {
    match op.status {
        OperationStatus::Pending => op.due_at <= now,
        OperationStatus::Running => lease.as_ref().is_some_and(|(_, until)| *until < now),
        _ => false,
    }
}

#[async_trait]
impl QueueStore for MemoryQueue {
    async fn enqueue(&self, op: &Operation) -> Result<()> {
        self.lock().queue.insert(op.job.id.clone(), (op.clone(), None));
        Ok(())
    }

    async fn claim(&self, now: Timestamp, lease: Duration) -> Result<Option<(Operation, String)>> {
        let mut state = self.lock();
        let due = state
            .queue
            .iter()
            .filter(|(_, (op, l))| claimable(op, l, now))
            .min_by_key(|(_, (op, _))| op.due_at)
            .map(|(id, _)| id.clone());
        let Some(id) = due else { return Ok(None) };
        let Some((op, l)) = state.queue.get_mut(&id) else {
            return Ok(None);
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        op.status = OperationStatus::Running;
        op.attempts += 1;
        op.updated_at = now;
        *l = Some((token.clone(), lease_end(now, lease)));
        Ok(Some((op.clone(), token)))
    }

    async fn settle(&self, id: &OperationId, token: &str, settlement: Settlement, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let holds = state.queue.get(id).is_some_and(|(op, l)| {
            op.status == OperationStatus::Running && l.as_ref().is_some_and(|(t, _)| t == token)
        });
        if !holds {
            return Ok(false);
        }
        let Some((mut op, _)) = state.queue.remove(id) else {
            return Ok(false);
        };
        op.updated_at = now;
        match settlement {
            Settlement::Succeeded(result) => {
                op.status = OperationStatus::Succeeded;
                op.result = Some(result);
                state.queue.insert(id.clone(), (op, None));
            }
            Settlement::Retry { due_at, error } => {
                op.status = OperationStatus::Pending;
                op.due_at = due_at;
                op.last_error = Some(error);
                state.queue.insert(id.clone(), (op, None));
            }
            Settlement::Dead { error } => {
                op.status = OperationStatus::Dead;
                op.last_error = Some(error);
                state.dead.insert(id.clone(), op);
            }
        }
        Ok(true)
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>> {
        let state = self.lock();
        Ok(state
            .queue
            .get(id)
            .map(|(op, _)| op.clone())
            .or_else(|| state.dead.get(id).cloned()))
    }

    async fn list(&self, status: OperationStatus, after: Option<&OperationId>, limit: usize) -> Result<Vec<Operation>> {
        let state = self.lock();
        let after_ok = |id: &OperationId| after.is_none_or(|a| id > a);
        Ok(match status {
            OperationStatus::Dead => state
                .dead
                .iter()
                .filter(|(id, _)| after_ok(id))
                .map(|(_, op)| op.clone())
                .take(limit)
                .collect(),
            _ => state
                .queue
                .iter()
                .filter(|(id, (op, _))| after_ok(id) && op.status == status)
                .map(|(_, (op, _))| op.clone())
                .take(limit)
                .collect(),
        })
    }

    async fn stats(&self) -> Result<QueueStats> {
        let state = self.lock();
        let count = |s| state.queue.values().filter(|(op, _)| op.status == s).count() as u64;
        Ok(QueueStats {
            pending: count(OperationStatus::Pending),
            running: count(OperationStatus::Running),
            dead: state.dead.len() as u64,
        })
    }

    async fn revive(&self, id: &OperationId, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let Some(mut op) = state.dead.remove(id) else {
            return Ok(false);
        };
        op.status = OperationStatus::Pending;
        op.attempts = 0;
        op.due_at = now;
        op.updated_at = now;
        state.queue.insert(id.clone(), (op, None));
        Ok(true)
    }

    async fn cancel(&self, id: &OperationId, now: Timestamp) -> Result<Option<OperationStatus>> {
        let mut state = self.lock();
        if let Some(mut op) = state.dead.remove(id) {
            op.status = OperationStatus::Cancelled;
            op.updated_at = now;
            state.queue.insert(id.clone(), (op, None));
            return Ok(Some(OperationStatus::Dead));
        }
        let Some((op, _)) = state.queue.get_mut(id) else {
            return Ok(None);
        };
        let was = op.status;
        if was == OperationStatus::Pending {
            op.status = OperationStatus::Cancelled;
            op.updated_at = now;
        }
        Ok(Some(was))
    }

    async fn forget(&self, id: &OperationId) -> Result<()> {
        let mut state = self.lock();
        state.queue.remove(id);
        state.dead.remove(id);
        Ok(())
    }
}
