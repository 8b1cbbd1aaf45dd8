//! The durable retry queue: a write that meets a transient backend failure is kept in the
//! metadata store as an *operation* and retried by a worker until it lands, or moved to the dead
//! letters when it can't.
//!
//! Why nothing runs twice:
//! - Every queued operation carries an idempotency key (the caller's, or `op:<operationId>`), and
//!   the worker writes with it. A job that is run again — its worker died after the write
//!   committed but before it recorded success, or its lease ran out mid-write — finds its version
//!   under the key and records that outcome instead of writing a second version.
//! - A worker claims a job with a lease and a random claim token; settling the job requires the
//!   token, so a worker whose lease expired (and whose job someone else claimed) can't settle it.
//! - A write is queued only when it certainly did not happen (the failure came before the
//!   commit, or the commit was refused), or when the caller's own key makes a retry safe (an
//!   unknown commit outcome).
//!
//! Where the queue lives: in the database's metadata store (MongoDB collections
//! `chronos_queue` and `chronos_dead_letters`; tables in the embedded store). When MongoDB itself
//! is the failing backend the operation can't be kept durably, so the write is refused with 503
//! (`backend_unavailable`) and nothing is acknowledged; the caller retries with its idempotency
//! key. When the enqueue may have landed anyway, the answer is `outcome_unknown`.

use std::sync::Arc;

use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, ItemId, WriteOutcome, now};
use crate::engine::settings::QueueSettings;
use crate::engine::store::queue::{
    Job, Operation, OperationId, OperationResult, OperationStatus, QueueStats, QueueStore, Settlement, WriteRequest,
};

/// What [`Engine::submit`](crate::engine::Engine::submit) did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Done { id: ItemId, outcome: WriteOutcome },
    Queued(Box<Operation>),
}

/// Whether a failed write may succeed later without anyone changing anything.
fn transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. } | Error::OutcomeUnknown(_) | Error::Contended(_)
    )
}

/// The retry queue of one database, as the engine uses it: it keeps writes that failed
/// transiently, hands due ones out to be run again and records how they ended. The engine holds
/// one and makes the writes itself (`versioning/submit.rs`); this knows nothing of the engine.
pub(crate) struct Retry {
    /// The metadata store's queue; `None` when the database has none (nothing is kept).
    queue: Option<Arc<dyn QueueStore>>,
    settings: QueueSettings,
}

/// A claimed operation: what to write, for whom, and the token that settles it.
pub(crate) struct Claimed {
    pub op: Operation,
    token: String,
    pub who: Attribution,
}

impl Retry {
    pub(crate) fn new(queue: Option<Arc<dyn QueueStore>>, settings: QueueSettings) -> Self {
        Retry { queue, settings }
    }

    /// Keep a write that failed with `error` as an operation for the worker, when this database
    /// has a queue and keeping it is safe (see the module docs); otherwise hand the error back.
    pub(crate) async fn keep(
        &self,
        collection: &CollectionName,
        request: WriteRequest,
        who: &Attribution,
        error: Error,
    ) -> Result<Submitted> {
        let Some(queue) = &self.queue else { return Err(error) };
        let queueable = match &error {
            Error::Unavailable { .. } => true,
            // The write may have happened: only the caller's key can keep a retry from making it twice.
            Error::OutcomeUnknown(_) => who.request_key.is_some(),
            _ => false,
        };
        if !queueable {
            return Err(error);
        }
        let id = OperationId::generate();
        let request_key = match &who.request_key {
            Some(k) => k.clone(),
            None => format!("op:{id}").parse()?,
        };
        let created_at = now();
        let job = Job {
            id,
            collection: collection.clone(),
            request,
            actor: who.actor.clone(),
            reason: who.reason.clone(),
            request_key,
            created_at,
        };
        let due = self.settings.retry_at(1, created_at);
        let op = Operation::new(job, &error, due);
        match queue.enqueue(&op).await {
            Ok(()) => {
                tracing::warn!(operation = %op.job.id, %collection, item = %op.job.request.id(), %error,
                    "write queued for retry");
                Ok(Submitted::Queued(Box::new(op)))
            }
            Err(e @ Error::OutcomeUnknown(_)) => {
                // The job may be stored and run later: "nothing happened" would invite a blind
                // retry that writes twice.
                tracing::warn!(operation = %op.job.id, %collection, %error, queue_error = %e,
                    "write failed and may or may not have been queued");
                Err(Error::OutcomeUnknown(format!(
                    "{error}; it may have been queued as operation {}",
                    op.job.id
                )))
            }
            Err(e) => {
                // Not kept anywhere: refuse the write (nothing was acknowledged).
                tracing::warn!(%collection, %error, queue_error = %e, "write failed and could not be queued");
                Err(error)
            }
        }
    }

    /// Claim one due operation: it, its claim token, and who the write is made for (with the
    /// operation's idempotency key). `None` when none is due or there is no queue.
    pub(crate) async fn claim(&self) -> Result<Option<Claimed>> {
        let Some(queue) = &self.queue else { return Ok(None) };
        let settings = &self.settings;
        let Some((op, token)) = queue.claim(now(), settings.lease).await? else {
            return Ok(None);
        };
        let who = Attribution {
            actor: op.job.actor.clone(),
            reason: op.job.reason.clone(),
            request_key: Some(op.job.request_key.clone()),
        };
        Ok(Some(Claimed { op, token, who }))
    }

    /// Record how a claimed operation's write ended (`outcome`): landed, to be retried, or dead.
    pub(crate) async fn settle(&self, claimed: Claimed, outcome: Result<(ItemId, WriteOutcome)>) -> Result<()> {
        let Some(queue) = &self.queue else { return Ok(()) };
        let settings = &self.settings;
        let Claimed { op, token, .. } = claimed;
        let settlement = match outcome {
            Ok((id, o)) => Settlement::Succeeded(OperationResult {
                id,
                ov: o.ov,
                cv: o.cv,
                at: o.at,
            }),
            Err(e) if transient(&e) && op.attempts < settings.max_attempts => Settlement::Retry {
                due_at: settings.retry_at(op.attempts + 1, now()),
                error: e.to_string(),
            },
            Err(e) => Settlement::Dead { error: e.to_string() },
        };
        match &settlement {
            Settlement::Succeeded(r) => {
                tracing::info!(operation = %op.job.id, item = %r.id, ov = r.ov, attempts = op.attempts, "queued write landed")
            }
            Settlement::Retry { error, .. } => {
                tracing::warn!(operation = %op.job.id, attempts = op.attempts, %error, "queued write failed; will retry")
            }
            Settlement::Dead { error } => {
                tracing::warn!(operation = %op.job.id, attempts = op.attempts, %error, "queued write moved to dead letters")
            }
        }
        if !queue.settle(&op.job.id, &token, settlement, now()).await? {
            tracing::warn!(operation = %op.job.id, "lease lost before the outcome was recorded; the next run replays it");
        }
        Ok(())
    }

    fn queue_required(&self) -> Result<&Arc<dyn QueueStore>> {
        self.queue
            .as_ref()
            .ok_or_else(|| Error::validation("queue", "this database has no retry queue"))
    }

    pub(crate) async fn operation(&self, id: &OperationId) -> Result<Operation> {
        self.queue_required()?
            .operation(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("operation {id}")))
    }

    pub(crate) async fn stats(&self) -> Result<QueueStats> {
        self.queue_required()?.stats().await
    }

    pub(crate) async fn list(
        &self,
        status: OperationStatus,
        after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Vec<Operation>> {
        if limit == 0 || limit > 1000 {
            return Err(Error::validation("limit", "must be between 1 and 1000"));
        }
        self.queue_required()?.list(status, after, limit).await
    }

    /// Put a dead letter back in the queue (due now, attempts reset).
    pub(crate) async fn revive(&self, id: &OperationId) -> Result<Operation> {
        let queue = self.queue_required()?;
        if !queue.revive(id, now()).await? {
            let current = queue.operation(id).await?;
            return Err(match current {
                None => Error::NotFound(format!("operation {id}")),
                Some(op) => Error::validation(
                    "operationId",
                    format!("operation {id} is {}, not a dead letter", op.status.as_str()),
                ),
            });
        }
        self.operation(id).await
    }

    /// Remove every operation (in any state, dead letters too) that writes one of `ids` of
    /// `collection`: their bodies hold the items' data, which an erasure takes. Returns how many.
    pub(crate) async fn forget_items(
        &self,
        collection: &CollectionName,
        ids: &std::collections::HashSet<ItemId>,
    ) -> Result<u64> {
        let Some(queue) = &self.queue else { return Ok(0) };
        let mut forgotten = 0;
        for status in [
            OperationStatus::Pending,
            OperationStatus::Running,
            OperationStatus::Succeeded,
            OperationStatus::Dead,
            OperationStatus::Cancelled,
        ] {
            let mut after: Option<OperationId> = None;
            loop {
                let page = queue.list(status, after.as_ref(), 1000).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.job.id.clone());
                for op in &page {
                    if op.job.collection == *collection && ids.contains(op.job.request.id()) {
                        queue.forget(&op.job.id).await?;
                        forgotten += 1;
                    }
                }
            }
        }
        Ok(forgotten)
    }

    /// Cancel a pending operation or a dead letter.
    pub(crate) async fn cancel(&self, id: &OperationId) -> Result<Operation> {
        let queue = self.queue_required()?;
        match queue.cancel(id, now()).await? {
            None => Err(Error::NotFound(format!("operation {id}"))),
            Some(OperationStatus::Pending | OperationStatus::Dead) => self.operation(id).await,
            Some(other) => Err(Error::validation(
                "operationId",
                format!("operation {id} is {} and can't be cancelled", other.as_str()),
            )),
        }
    }
}
