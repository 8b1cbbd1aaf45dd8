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

pub mod memory;
pub mod mongo;
pub mod sqlite;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::model::{Attribution, CollectionName, ItemId, RequestKey, Timestamp, WriteOutcome, now};
use super::versioning::{Engine, Enrichment, VersionTarget};

/// How the queue retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Runs of one operation (the first, failed write not counted) before it becomes a dead letter.
    pub max_attempts: u32,
    /// The first retry waits about this long; each further one twice as long (with jitter).
    pub base_delay: Duration,
    /// No retry waits longer than this.
    pub max_delay: Duration,
    /// A claimed operation belongs to its worker this long; then another worker may take it.
    pub lease: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            lease: Duration::from_secs(30),
        }
    }
}

impl QueueSettings {
    /// When attempt `attempt` (1-based) that just failed should be retried: exponential backoff
    /// with "equal jitter" (half fixed, half random), so retries of many operations spread out.
    pub fn retry_at(&self, attempt: u32, from: Timestamp) -> Timestamp {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let random = if jitter_ms == 0 {
            0
        } else {
            (uuid::Uuid::new_v4().as_u128() as u64) % jitter_ms
        };
        let delay = half + Duration::from_millis(random);
        from + jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::from_secs(60))
    }
}

/// An operation's id: a time-ordered UUID (32 hex digits), so listings come out oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperationId(String);

impl OperationId {
    pub fn generate() -> Self {
        OperationId(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OperationId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::validation("operationId", "must be 32 lowercase hex digits"));
        }
        Ok(OperationId(s.to_owned()))
    }
}

impl TryFrom<String> for OperationId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<OperationId> for String {
    fn from(id: OperationId) -> String {
        id.0
    }
}

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A write as data: what the API received, so it can be made now or later by a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum WriteRequest {
    Create {
        id: ItemId,
        /// The id was generated for the caller (it is not part of what the caller asked, so a
        /// retry under the same idempotency key, without an id, is the same request).
        #[serde(default)]
        id_generated: bool,
        data: Map<String, Value>,
    },
    Update {
        id: ItemId,
        data: Map<String, Value>,
        expected_ov: Option<u64>,
    },
    Delete {
        id: ItemId,
        expected_ov: Option<u64>,
    },
    Enrich {
        id: ItemId,
        patches: Vec<Map<String, Value>>,
        function_id: Option<String>,
        expected_ov: Option<u64>,
    },
    Restore {
        id: ItemId,
        target: VersionTarget,
        expected_ov: Option<u64>,
    },
}

impl WriteRequest {
    pub fn id(&self) -> &ItemId {
        match self {
            WriteRequest::Create { id, .. }
            | WriteRequest::Update { id, .. }
            | WriteRequest::Delete { id, .. }
            | WriteRequest::Enrich { id, .. }
            | WriteRequest::Restore { id, .. } => id,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            WriteRequest::Create { .. } => "create",
            WriteRequest::Update { .. } => "update",
            WriteRequest::Delete { .. } => "delete",
            WriteRequest::Enrich { .. } => "enrich",
            WriteRequest::Restore { .. } => "restore",
        }
    }
}

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationStatus {
    /// Waiting for its next attempt (`dueAt`).
    Pending,
    /// Claimed by a worker now.
    Running,
    /// Written; `result` says where.
    Succeeded,
    /// Failed permanently or ran out of attempts; kept in the dead letters until retried or
    /// cancelled.
    Dead,
    /// Cancelled by a caller before it was written.
    Cancelled,
}

impl OperationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Pending => "pending",
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Dead => "dead",
            OperationStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for OperationStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => OperationStatus::Pending,
            "running" => OperationStatus::Running,
            "succeeded" => OperationStatus::Succeeded,
            "dead" => OperationStatus::Dead,
            "cancelled" => OperationStatus::Cancelled,
            other => return Err(Error::Corrupt(format!("unknown operation status `{other}`"))),
        })
    }
}

/// Where a queued write landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationResult {
    #[schema(value_type = String)]
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// What never changes about an operation: the write and who asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: OperationId,
    pub collection: CollectionName,
    pub request: WriteRequest,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// The key every attempt writes with: one version, however often the job runs.
    pub request_key: RequestKey,
    pub created_at: Timestamp,
}

/// A queued write and its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub job: Job,
    pub status: OperationStatus,
    /// Attempts made by workers so far.
    pub attempts: u32,
    pub due_at: Timestamp,
    pub last_error: Option<String>,
    pub result: Option<OperationResult>,
    pub updated_at: Timestamp,
}

impl Operation {
    fn new(job: Job, error: &Error, due_at: Timestamp) -> Self {
        let at = job.created_at;
        Operation {
            job,
            status: OperationStatus::Pending,
            attempts: 0,
            due_at,
            last_error: Some(error.to_string()),
            result: None,
            updated_at: at,
        }
    }
}

/// How a claimed operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    Succeeded(OperationResult),
    Retry { due_at: Timestamp, error: String },
    Dead { error: String },
}

/// How many operations are in each live state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
}

/// Durable storage of operations and dead letters. Every method is atomic on its own.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Store a new operation. `OutcomeUnknown` when it failed but may have been stored anyway.
    async fn enqueue(&self, op: &Operation) -> Result<()>;
    /// Take the operation due first (pending and due, or running with an expired lease), mark
    /// it running for `lease`, count the attempt, and return it with a fresh claim token.
    async fn claim(&self, now: Timestamp, lease: Duration) -> Result<Option<(Operation, String)>>;
    /// Record how a claimed operation ended; `false` (nothing changed) when `token` no longer
    /// holds it. `Dead` moves it to the dead letters.
    async fn settle(&self, id: &OperationId, token: &str, settlement: Settlement, now: Timestamp) -> Result<bool>;
    /// The operation, live or dead.
    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>>;
    /// Operations in one state, by id, after `after`; at most `limit`.
    async fn list(&self, status: OperationStatus, after: Option<&OperationId>, limit: usize) -> Result<Vec<Operation>>;
    async fn stats(&self) -> Result<QueueStats>;
    /// Move a dead letter back to the queue, due now with its attempts reset; `false` if it
    /// isn't a dead letter.
    async fn revive(&self, id: &OperationId, now: Timestamp) -> Result<bool>;
    /// Cancel a pending operation or a dead letter; returns the status it had (`None`: unknown
    /// id). Running, succeeded and cancelled operations are left as they are.
    async fn cancel(&self, id: &OperationId, now: Timestamp) -> Result<Option<OperationStatus>>;
}

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
