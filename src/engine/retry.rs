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
use std::time::Duration;

use super::error::{Error, Result};
use super::model::{Attribution, CollectionName, Enrichment, ItemId, WriteOutcome, now};
use super::store::queue::{
    Job, Operation, OperationId, OperationResult, OperationStatus, QueueStats, QueueStore, Settlement, WriteRequest,
};
use super::versioning::Engine;

/// What [`Engine::submit`] did.
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

impl Engine {
    /// Make a write now; when a backend fails transiently and this database has a queue, keep
    /// it as an operation for the worker instead (see the module docs for when that is safe).
    pub async fn submit(
        &self,
        collection: &CollectionName,
        request: WriteRequest,
        who: &Attribution,
    ) -> Result<Submitted> {
        let error = match self.apply(collection, &request, who).await {
            Ok((id, outcome)) => return Ok(Submitted::Done { id, outcome }),
            Err(e) => e,
        };
        let Some(queue) = self.queue() else { return Err(error) };
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
        let due = self.queue_settings().retry_at(1, created_at);
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

    /// Make a write now (no queueing).
    pub async fn apply(
        &self,
        collection: &CollectionName,
        request: &WriteRequest,
        who: &Attribution,
    ) -> Result<(ItemId, WriteOutcome)> {
        match request {
            WriteRequest::Create { id, id_generated, data } => {
                self.create_as(collection, id.clone(), *id_generated, data.clone(), who)
                    .await
            }
            WriteRequest::Update { id, data, expected_ov } => {
                let o = self.update(collection, id, data.clone(), *expected_ov, who).await?;
                Ok((id.clone(), o))
            }
            WriteRequest::Delete { id, expected_ov } => {
                let o = self.delete(collection, id, *expected_ov, who).await?;
                Ok((id.clone(), o))
            }
            WriteRequest::Enrich {
                id,
                patches,
                function_id,
                expected_ov,
            } => {
                let enrichment = Enrichment {
                    function_id: function_id.clone(),
                    expected_ov: *expected_ov,
                };
                let o = self.enrich(collection, id, patches, &enrichment, who).await?;
                Ok((id.clone(), o))
            }
            WriteRequest::Restore {
                id,
                target,
                expected_ov,
            } => {
                let o = self.restore_object(collection, id, *target, *expected_ov, who).await?;
                Ok((id.clone(), o))
            }
        }
    }

    /// Claim one due operation and run it; `false` when none was due.
    pub async fn run_queued_once(&self) -> Result<bool> {
        let Some(queue) = self.queue() else { return Ok(false) };
        let settings = self.queue_settings();
        let Some((op, token)) = queue.claim(now(), settings.lease).await? else {
            return Ok(false);
        };
        let who = Attribution {
            actor: op.job.actor.clone(),
            reason: op.job.reason.clone(),
            request_key: Some(op.job.request_key.clone()),
        };
        let settlement = match self.apply(&op.job.collection, &op.job.request, &who).await {
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
        Ok(true)
    }

    /// Run due operations with `concurrency` workers until none is due; returns how many ran.
    pub async fn drain_queue(&self, concurrency: usize) -> Result<u64> {
        // One claim first, so an idle queue costs one command per poll, not one per lane.
        if !self.run_queued_once().await? {
            return Ok(0);
        }
        let lane = || async {
            let mut ran = 0u64;
            while self.run_queued_once().await? {
                ran += 1;
            }
            Ok::<_, Error>(ran)
        };
        let lanes = futures::future::try_join_all((0..concurrency.max(1)).map(|_| lane())).await?;
        Ok(1 + lanes.into_iter().sum::<u64>())
    }

    fn queue_required(&self) -> Result<&Arc<dyn QueueStore>> {
        self.queue()
            .ok_or_else(|| Error::validation("queue", "this database has no retry queue"))
    }

    pub async fn operation(&self, id: &OperationId) -> Result<Operation> {
        self.queue_required()?
            .operation(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("operation {id}")))
    }

    pub async fn queue_stats(&self) -> Result<QueueStats> {
        self.queue_required()?.stats().await
    }

    pub async fn list_operations(
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
    pub async fn retry_dead_letter(&self, id: &OperationId) -> Result<Operation> {
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

    /// Cancel a pending operation or a dead letter.
    pub async fn cancel_operation(&self, id: &OperationId) -> Result<Operation> {
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

/// Run the queues of the databases `engines` returns until `stop` resolves: every `poll`, each
/// database's due operations are run (`concurrency` at a time per database). Every engine
/// replica may run this: claims are exclusive.
pub async fn work<F>(engines: F, concurrency: usize, poll: Duration, stop: impl std::future::Future<Output = ()>)
where
    F: Fn() -> Vec<(String, Arc<Engine>)>,
{
    tokio::pin!(stop);
    let mut last_stats = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let dbs = engines();
        let runs = dbs.iter().map(|(key, engine)| async move {
            if let Err(e) = engine.drain_queue(concurrency).await {
                tracing::warn!(db = %key, error = %e, "retry queue: could not run operations");
            }
        });
        futures::future::join_all(runs).await;
        // Queue depth for /metrics, every few seconds (three counts per database).
        if last_stats.elapsed() >= Duration::from_secs(5) {
            last_stats = std::time::Instant::now();
            for (key, engine) in &dbs {
                if let Some(queue) = engine.queue()
                    && let Ok(s) = queue.stats().await
                {
                    for (status, n) in [("pending", s.pending), ("running", s.running), ("dead", s.dead)] {
                        metrics::gauge!("chronos_queue_operations", "db" => key.clone(), "status" => status)
                            .set(n as f64);
                    }
                }
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}
