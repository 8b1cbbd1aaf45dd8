//! `PUT/GET/DELETE /v1/{db}/{collection}/items/{id}/hold`: an item's legal hold (see
//! `engine::hold`). Setting and lifting one needs `admin`: a hold overrides retention and erasure,
//! which are admin's.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ErrorBody, Result};
use super::extract::{ApiJson, ItemPath};
use super::state::AppState;
use crate::engine::LegalHold;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_hold, set_hold, release_hold))
}

/// Why an item is put on hold.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldRequest {
    /// A case number, a ticket: why the item must be kept.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// An item's hold state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldState {
    /// Whether the item is held now (by a legal hold or its collection's retention hold).
    pub held: bool,
    /// Why, when held.
    pub reason: Option<String>,
    /// The legal hold, if one is set.
    pub legal_hold: Option<LegalHold>,
}

async fn state_of(state: &AppState, path: &ItemPath) -> Result<HoldState> {
    let engine = state.engine(&path.db)?;
    let reason = engine.held_because(&path.collection, &path.id).await?;
    Ok(HoldState {
        held: reason.is_some(),
        reason,
        legal_hold: engine.legal_hold(&path.collection, &path.id).await?,
    })
}

/// Whether the item is held, and why.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items/{id}/hold", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = HoldState),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_hold(State(state): State<AppState>, path: ItemPath) -> Result<Json<HoldState>> {
    Ok(Json(state_of(&state, &path).await?))
}

/// Put a legal hold on the item (replacing an earlier one): until it is released, retention
/// skips the item and erasing it is refused with 409 `held`.
#[utoipa::path(put, path = "/v1/{db}/{collection}/items/{id}/hold", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    request_body = HoldRequest,
    responses(
        (status = 200, body = HoldState),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn set_hold(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    ApiJson(req): ApiJson<HoldRequest>,
) -> Result<Json<HoldState>> {
    let engine = state.engine(&path.db)?;
    engine
        .set_hold(&path.collection, &path.id, &req.reason, caller.name())
        .await?;
    Ok(Json(state_of(&state, &path).await?))
}

/// Release the item's legal hold (a collection's retention hold still applies until it expires).
#[utoipa::path(delete, path = "/v1/{db}/{collection}/items/{id}/hold", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = HoldState),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn release_hold(State(state): State<AppState>, path: ItemPath) -> Result<Json<HoldState>> {
    let engine = state.engine(&path.db)?;
    engine.release_hold(&path.collection, &path.id).await?;
    Ok(Json(state_of(&state, &path).await?))
}
