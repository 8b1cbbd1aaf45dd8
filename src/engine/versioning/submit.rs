//! The front door of writes: [`Engine::submit`] makes a write now and, when a backend fails
//! transiently, has the retry queue keep it (`crate::engine::retry`); the queue's worker runs the
//! kept ones through the same [`Engine::apply`]. The queue's rules live in `retry.rs`; the writes
//! are made here, in the core, so a write never enters through the queue's module.

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::engine::error::{Error, Result};
use crate::engine::model::{Attribution, CollectionName, Enrichment, ItemId, WriteOutcome};
use crate::engine::retry::Submitted;
use crate::engine::store::queue::{Operation, OperationId, OperationStatus, QueueStats, WriteRequest};

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
        self.retry.keep(collection, request, who, error).await
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
        let Some(claimed) = self.retry.claim().await? else {
            return Ok(false);
        };
        let outcome = self
            .apply(&claimed.op.job.collection, &claimed.op.job.request, &claimed.who)
            .await;
        self.retry.settle(claimed, outcome).await?;
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

    pub async fn operation(&self, id: &OperationId) -> Result<Operation> {
        self.retry.operation(id).await
    }

    pub async fn queue_stats(&self) -> Result<QueueStats> {
        self.retry.stats().await
    }

    pub async fn list_operations(
        &self,
        status: OperationStatus,
        after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Vec<Operation>> {
        self.retry.list(status, after, limit).await
    }

    /// Put a dead letter back in the queue (due now, attempts reset).
    pub async fn retry_dead_letter(&self, id: &OperationId) -> Result<Operation> {
        self.retry.revive(id).await
    }

    /// Cancel a pending operation or a dead letter.
    pub async fn cancel_operation(&self, id: &OperationId) -> Result<Operation> {
        self.retry.cancel(id).await
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
                if let Ok(s) = engine.queue_stats().await {
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
