//! The retry queue over HTTP: the outcome of a queued write (`/v1/{db}/_operations/{id}`),
//! cancelling it, queue statistics, and listing, retrying and cancelling dead letters.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, Result};
use super::extract::ApiQuery;
use super::state::AppState;
use crate::engine::store::queue::OperationResult;
use crate::engine::{Operation, OperationId, OperationStatus, QueueStats, Timestamp};

/// The queue routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get, cancel))
        .routes(routes!(retry))
        .routes(routes!(stats))
        .routes(routes!(list))
}

/// A queued write and how far it got.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationView {
    pub operation_id: String,
    pub status: OperationStatus,
    pub collection: String,
    /// The item written.
    pub id: String,
    /// create, update, delete, enrich or restore.
    pub op: String,
    /// Attempts made by the queue's workers so far.
    pub attempts: u32,
    /// When the next attempt is due (pending operations).
    #[schema(value_type = String, format = DateTime)]
    pub due_at: Timestamp,
    pub last_error: Option<String>,
    /// Where the write landed (succeeded operations).
    pub result: Option<OperationResult>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<Operation> for OperationView {
    fn from(op: Operation) -> Self {
        OperationView {
            operation_id: op.job.id.to_string(),
            status: op.status,
            collection: op.job.collection.to_string(),
            id: op.job.request.id().to_string(),
            op: op.job.request.name().to_owned(),
            attempts: op.attempts,
            due_at: op.due_at,
            last_error: op.last_error,
            result: op.result,
            created_at: op.job.created_at,
            updated_at: op.updated_at,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct OperationPath {
    db: String,
    operation_id: String,
}

impl OperationPath {
    fn id(&self) -> Result<OperationId> {
        self.operation_id
            .parse()
            .map_err(|_| ApiError::bad_request("`operationId` must be 32 lowercase hex digits"))
    }
}

/// The state of a queued write.
#[utoipa::path(get, path = "/v1/{db}/_operations/{operation_id}", tag = "queue",
    params(("db" = String, Path), ("operation_id" = String, Path, pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, body = OperationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Path(path): Path<OperationPath>) -> Result<Json<OperationView>> {
    let id = path.id()?;
    let op = state.engine(&path.db)?.operation(&id).await?;
    Ok(Json(op.into()))
}

/// Cancel a pending queued write or a dead letter (409 when it is running or finished).
#[utoipa::path(delete, path = "/v1/{db}/_operations/{operation_id}", tag = "queue",
    params(("db" = String, Path), ("operation_id" = String, Path, pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, body = OperationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, Path(path): Path<OperationPath>) -> Result<Json<OperationView>> {
    let id = path.id()?;
    let op = state.engine(&path.db)?.cancel_operation(&id).await?;
    Ok(Json(op.into()))
}

/// Put a dead letter back in the queue: due now, attempts reset.
#[utoipa::path(post, path = "/v1/{db}/_operations/{operation_id}/retry", tag = "queue",
    params(("db" = String, Path), ("operation_id" = String, Path, pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, body = OperationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn retry(State(state): State<AppState>, Path(path): Path<OperationPath>) -> Result<Json<OperationView>> {
    let id = path.id()?;
    let op = state.engine(&path.db)?.retry_dead_letter(&id).await?;
    Ok(Json(op.into()))
}

/// How many queued writes wait, run, or are dead letters.
#[utoipa::path(get, path = "/v1/{db}/_queue", tag = "queue",
    params(("db" = String, Path)),
    responses((status = 200, body = QueueStats), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn stats(State(state): State<AppState>, Path(db): Path<String>) -> Result<Json<QueueStats>> {
    Ok(Json(state.engine(&db)?.queue_stats().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// pending (default), running, succeeded, dead or cancelled.
    #[param(pattern = "^(pending|running|succeeded|dead|cancelled)$")]
    status: Option<String>,
    /// Continue after this operation id (from `nextAfterId`).
    #[param(pattern = "^[0-9a-f]{32}$")]
    after_id: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of operations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationPage {
    pub operations: Vec<OperationView>,
    /// Pass as `afterId` for the next page; absent on the last page.
    pub next_after_id: Option<String>,
}

/// List queued writes in one state, oldest first (`status=dead` lists the dead letters).
#[utoipa::path(get, path = "/v1/{db}/_queue/operations", tag = "queue",
    params(("db" = String, Path), ListQuery),
    responses((status = 200, body = OperationPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path(db): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OperationPage>> {
    let status = match q.status.as_deref().unwrap_or("pending") {
        "pending" => OperationStatus::Pending,
        "running" => OperationStatus::Running,
        "succeeded" => OperationStatus::Succeeded,
        "dead" => OperationStatus::Dead,
        "cancelled" => OperationStatus::Cancelled,
        other => {
            return Err(ApiError::bad_request(format!(
                "`status` must be pending, running, succeeded, dead or cancelled, not `{other}`"
            )));
        }
    };
    let after = q
        .after_id
        .map(|a| a.parse::<OperationId>())
        .transpose()
        .map_err(|_| ApiError::bad_request("`afterId` must be an operation id (32 lowercase hex digits)"))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let ops = state
        .engine(&db)?
        .list_operations(status, after.as_ref(), limit)
        .await?;
    let next_after_id = (ops.len() == limit)
        .then(|| ops.last().map(|o| o.job.id.to_string()))
        .flatten();
    Ok(Json(OperationPage {
        operations: ops.into_iter().map(OperationView::from).collect(),
        next_after_id,
    }))
}
