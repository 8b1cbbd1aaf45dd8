//! Collection routes: restore of a whole collection (page by page), counters and their reset,
//! bulk tiering and version retention — the operations over every item of a collection.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Result};
use super::extract::{ApiJson, ApiQuery, CollectionPath, attribution, int64};
use super::state::AppState;
use crate::engine::{HistoryPoint, ItemId, PrunePolicy, PruneReport, RestoreCounts, TieringReport, Timestamp, Totals};

/// The collection routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(restore_collection))
        .routes(routes!(counters))
        .routes(routes!(reset_counters))
        .routes(routes!(process_collection))
        .routes(routes!(prune))
}

/// Who writes and why, for writes without an optimistic lock.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttributionQuery {
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    actor: Option<String>,
    #[param(max_length = 1024, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    reason: Option<String>,
}

/// One page of a collection restore.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreCollectionRequest {
    /// Restore to the state after the write with this cv…
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    pub cv: Option<u64>,
    /// …or to the state at this time (RFC 3339). Exactly one of the two.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<Timestamp>,
    /// Only count what would be done.
    #[serde(default)]
    pub dry_run: bool,
    /// Continue after this item id (the previous page's `nextAfterId`).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    pub after_id: Option<String>,
    /// Items in this page, 1-1000 (default 500).
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The result of one page of a collection restore.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCollectionResponse {
    pub counts: RestoreCounts,
    /// Pass as `afterId` to continue; absent when the collection is done.
    pub next_after_id: Option<String>,
    /// Items in the collection (for progress).
    pub total: u64,
}

/// Restore a collection to a cv or a time, one page of items per call: items whose state differs
/// get a version equal to their state then; items created later are logically deleted. Pages are
/// idempotent, so an interrupted restore continues from `nextAfterId` (or simply starts over).
#[utoipa::path(post, path = "/v1/{db}/{collection}/restore", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path), AttributionQuery),
    request_body = RestoreCollectionRequest,
    responses(
        (status = 200, body = RestoreCollectionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restore_collection(
    State(state): State<AppState>,
    caller: Caller,
    path: CollectionPath,
    ApiQuery(q): ApiQuery<AttributionQuery>,
    ApiJson(req): ApiJson<RestoreCollectionRequest>,
) -> Result<Json<RestoreCollectionResponse>> {
    let engine = state.engine(&path.db)?;
    let point = match (req.cv, req.at) {
        (Some(cv), None) => HistoryPoint::Cv(cv),
        (None, Some(at)) => HistoryPoint::At(at),
        _ => return Err(ApiError::bad_request("give exactly one of `cv` and `at`")),
    };
    let after_id = req
        .after_id
        .map(|a| a.parse::<ItemId>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("`afterId`: {e}")))?;
    let limit = req.limit.unwrap_or(crate::engine::settings::RESTORE_PAGE);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    // A page restore is idempotent by itself (it compares states), so it takes no key.
    let who = attribution(&caller, &HeaderMap::new(), q.actor, q.reason)?;
    let total = engine.count_items(&path.collection).await?;
    let page = engine
        .restore_collection_page(&path.collection, point, after_id, limit, req.dry_run, &who)
        .await?;
    Ok(Json(RestoreCollectionResponse {
        counts: page.counts,
        next_after_id: page.next_after_id.map(|i| i.to_string()),
        total,
    }))
}

/// The collection's counters: totals per operation and the configured conditional rules, counted
/// from the version index (every acknowledged write exactly once).
#[utoipa::path(get, path = "/v1/{db}/{collection}/counters", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path)),
    responses(
        (status = 200, body = Totals),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn counters(State(state): State<AppState>, path: CollectionPath) -> Result<Json<Totals>> {
    let engine = state.engine(&path.db)?;
    Ok(Json(engine.totals(&path.collection).await?))
}

/// Reset the collection's counters: counting starts after the current cv.
#[utoipa::path(post, path = "/v1/{db}/{collection}/counters/reset", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path)),
    responses(
        (status = 200, body = Totals),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn reset_counters(State(state): State<AppState>, path: CollectionPath) -> Result<Json<Totals>> {
    let engine = state.engine(&path.db)?;
    engine.reset_totals(&path.collection).await?;
    Ok(Json(engine.totals(&path.collection).await?))
}

/// Which items a tiering run moves.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessRequest {
    /// Items not written for this many hours become `processed` (at most 10,000 years).
    #[schema(minimum = 0, maximum = 87_600_000)]
    pub ttl_hours: f64,
    #[serde(default)]
    pub dry_run: bool,
}

/// Cost tiering: items not written for `ttlHours` become `processed` (their payload then lives
/// only in S3; reads fetch it transparently). Reports head bytes per item before and after.
#[utoipa::path(post, path = "/v1/{db}/{collection}/process", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path)),
    request_body = ProcessRequest,
    responses(
        (status = 200, body = TieringReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn process_collection(
    State(state): State<AppState>,
    path: CollectionPath,
    ApiJson(req): ApiJson<ProcessRequest>,
) -> Result<Json<TieringReport>> {
    let engine = state.engine(&path.db)?;
    at_most("ttlHours", req.ttl_hours, 87_600_000.0)?;
    Ok(Json(
        engine
            .mark_processed_by_ttl(&path.collection, req.ttl_hours, req.dry_run, |_| {})
            .await?,
    ))
}

/// The documented `maximum` of an age (the engine checks the rest: finite, not negative).
fn at_most(field: &str, value: f64, max: f64) -> Result<()> {
    if value > max {
        return Err(ApiError::from(crate::engine::Error::validation(
            field,
            format!("must be at most {max} (10,000 years)"),
        )));
    }
    Ok(())
}

/// A retention run over a collection's version index.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneRequest {
    /// Keep each item's last N versions (at least 1).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "int64")]
    pub keep_last: Option<u64>,
    /// Keep versions younger than this many days (at most 10,000 years).
    #[schema(minimum = 0, maximum = 3_650_000)]
    pub max_age_days: Option<f64>,
    /// Also delete pruned versions' payloads (they then can no longer be read).
    #[serde(default)]
    pub delete_payloads: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// Version retention: prune old entries from the version index (kept as manifests in the
/// backups bucket, so pruned versions stay readable while their payloads exist).
#[utoipa::path(post, path = "/v1/{db}/{collection}/prune", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path)),
    request_body = PruneRequest,
    responses(
        (status = 200, body = PruneReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn prune(
    State(state): State<AppState>,
    path: CollectionPath,
    ApiJson(req): ApiJson<PruneRequest>,
) -> Result<Json<PruneReport>> {
    let engine = state.engine(&path.db)?;
    if let Some(days) = req.max_age_days {
        at_most("maxAgeDays", days, 3_650_000.0)?;
    }
    let policy = PrunePolicy {
        keep_last: req.keep_last,
        max_age_days: req.max_age_days,
        delete_payloads: req.delete_payloads,
    };
    Ok(Json(
        engine.prune_versions(&path.collection, &policy, req.dry_run).await?,
    ))
}
