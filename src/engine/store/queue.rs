//! The retry queue's contract: an operation (a write kept as data, with its progress) and the
//! [`QueueStore`] that keeps operations durably in a database's metadata store. Every backend
//! implements it beside its metadata store; the engine's retry logic (`engine::retry`) drives it.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, RequestKey, Timestamp, VersionTarget};

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
    /// A write that failed now, kept for its first retry at `due_at`.
    pub(crate) fn new(job: Job, error: &Error, due_at: Timestamp) -> Self {
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
    /// Remove the operation for good, whatever its state, live or dead (an erasure: its body
    /// holds the erased item's data). Removing an unknown id is not an error. A worker that
    /// holds it then can no longer settle it.
    async fn forget(&self, id: &OperationId) -> Result<()>;
}
