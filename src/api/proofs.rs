//! `GET /v1/{db}/{collection}/items/{id}/proof?ov=`: the proof that a version is part of the
//! recorded history (see `engine::rebuild::proof`), for clients that check it offline.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ErrorBody, Result};
use super::extract::{ApiQuery, ItemPath, int64};
use super::state::AppState;
use crate::engine::rebuild::proof::Proof;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(proof))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProofQuery {
    /// The version to prove.
    #[param(minimum = 0, required = true)]
    #[serde(default, deserialize_with = "int64")]
    ov: Option<u64>,
}

/// The proof that a version is part of the recorded history: its ledger record, the segment that
/// holds it and the Merkle path from the record's digest to the segment's root.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items/{id}/proof", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path), ProofQuery),
    responses(
        (status = 200, body = Proof),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn proof(
    State(state): State<AppState>,
    path: ItemPath,
    ApiQuery(q): ApiQuery<ProofQuery>,
) -> Result<Json<Proof>> {
    let engine = state.engine(&path.db)?;
    let ov =
        q.ov.ok_or_else(|| super::error::ApiError::bad_request("`ov` is required"))?;
    Ok(Json(engine.proof(&path.collection, &path.id, ov).await?))
}
