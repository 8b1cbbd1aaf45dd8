//! Erasure routes (admin scope on the database): erase one item, or every item a filter on
//! indexed metadata finds in any of its versions, across all versions (see `engine::erase`);
//! and the erasure records. The answer is the erasure's record: what went, who asked and why.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ErrorBody, Result};
use super::extract::{ApiJson, CollectionPath, ItemPath};
use super::state::AppState;
use crate::engine::{EraseRequest, EraseTarget, Erasure};

/// The erasure routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(erase_item))
        .routes(routes!(erase_matching))
        .routes(routes!(erasures))
}

/// Why one item is erased.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EraseItemRequest {
    /// Why (recorded in the erasure record; required, not only spaces).
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub reason: String,
}

/// Which items are erased, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EraseMatchingRequest {
    /// A filter on indexed metadata (the list filter's subset, not empty): every item with a
    /// version that matches is erased, so a subject id changed later is still found.
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Why (recorded in the erasure record; required, not only spaces).
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub reason: String,
}

/// Erase an item across all its versions: its payloads, content, inline data, metadata and
/// ledger records go; a tombstone per version stays (ov and cv gapless, the id taken), and reads
/// then answer 410 `erased`. Asked again while an erasure of it is unfinished, finishes it.
#[utoipa::path(post, path = "/v1/{db}/{collection}/items/{id}/erase", tag = "erasure",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    request_body = EraseItemRequest,
    responses(
        (status = 200, body = Erasure),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn erase_item(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    ApiJson(req): ApiJson<EraseItemRequest>,
) -> Result<Json<Erasure>> {
    let engine = state.engine(&path.db)?;
    let request = EraseRequest {
        target: EraseTarget::Item(path.id),
        actor: caller.name().map(str::to_owned),
        reason: req.reason,
    };
    Ok(Json(engine.erase(&path.collection, &request).await?))
}

/// Erase every item with a version whose indexed metadata matches the filter, each across all
/// its versions (see the item erase). Asked again with the same filter while that erasure is
/// unfinished, finishes it.
#[utoipa::path(post, path = "/v1/{db}/{collection}/erase", tag = "erasure",
    params(("db" = String, Path), ("collection" = String, Path)),
    request_body = EraseMatchingRequest,
    responses(
        (status = 200, body = Erasure),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn erase_matching(
    State(state): State<AppState>,
    caller: Caller,
    path: CollectionPath,
    ApiJson(req): ApiJson<EraseMatchingRequest>,
) -> Result<Json<Erasure>> {
    let engine = state.engine(&path.db)?;
    let request = EraseRequest {
        target: EraseTarget::Matching(req.filter),
        actor: caller.name().map(str::to_owned),
        reason: req.reason,
    };
    Ok(Json(engine.erase(&path.collection, &request).await?))
}

/// The collection's erasure records, oldest first (the append-only account of erasures).
#[utoipa::path(get, path = "/v1/{db}/{collection}/erasures", tag = "erasure",
    params(("db" = String, Path), ("collection" = String, Path)),
    responses(
        (status = 200, body = Vec<Erasure>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn erasures(State(state): State<AppState>, path: CollectionPath) -> Result<Json<Vec<Erasure>>> {
    let engine = state.engine(&path.db)?;
    Ok(Json(engine.erasures(Some(&path.collection)).await?))
}
