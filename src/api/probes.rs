//! Operational routes: liveness, readiness, Prometheus metrics, the OpenAPI document. All but
//! `/metrics` are public (no bearer token), which their `security(())` says in the document, so
//! they say nothing about tenants once tokens exist: `/readyz` then names no database and no
//! backend error (those go to the log). `/metrics` labels series by database, so with tokens it
//! needs a `metrics` (or cluster-wide `admin`) token — see auth/mod.rs.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::present::json_response;
use super::state::AppState;

/// The probe routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: every database's backends answer.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    for (key, engine) in state.databases() {
        let problem = match tokio::time::timeout(Duration::from_secs(3), engine.ping()).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "backends did not answer within 3 s".to_owned(),
        };
        tracing::warn!(database = %key, %problem, "not ready");
        let message = if state.tokens().is_some() {
            "a database's backends do not answer (the engine's log says which)".to_owned()
        } else {
            format!("database `{key}`: {problem}")
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            message,
        ));
    }
    Ok(Json(Health { status: "ready".into() }))
}

/// Metrics in the Prometheus text format. Public without a tokens file; with one, a `metrics`
/// (or `admin`) token for every database (`"*"`).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.render_metrics(),
    )
        .into_response()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    json_response(state.openapi_json())
}
