//! Admin routes (`/v1/admin/…`, admin scope): validation of each database's backends, bucket
//! creation, an S3 round-trip test, verifying a database's history against its buckets and
//! rebuilding its metadata from them, health of every database, and a graceful shutdown.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ErrorBody, Result};
use super::extract::ApiJson;
use super::state::AppState;
use crate::engine::rebuild::verify::VerifyReport;
use crate::engine::rebuild::{RebuildOptions, RebuildReport};
use crate::engine::{Check, StoreStatus};

/// The admin routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(validate))
        .routes(routes!(ensure_buckets))
        .routes(routes!(s3_test))
        .routes(routes!(verify))
        .routes(routes!(rebuild))
        .routes(routes!(health))
        .routes(routes!(shutdown))
}

/// The findings of a validation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    /// True when every check passed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// Validate a database's configuration against reality: each backend reachable, buckets
/// present, permissions enough. Lists the issues with recommendations.
#[utoipa::path(get, path = "/v1/admin/databases/{db}/validate", tag = "admin",
    params(("db" = String, Path)),
    responses((status = 200, body = Validation), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn validate(State(state): State<AppState>, Path(db): Path<String>) -> Result<Json<Validation>> {
    let checks = state.engine(&db)?.validate().await;
    Ok(Json(Validation {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsureBuckets {
    /// Create the buckets that are missing.
    #[serde(default)]
    pub create_if_missing: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// Find, and optionally create, every bucket a database uses.
#[utoipa::path(post, path = "/v1/admin/databases/{db}/buckets", tag = "admin",
    params(("db" = String, Path)), request_body = EnsureBuckets,
    responses((status = 200, body = Vec<StoreStatus>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn ensure_buckets(
    State(state): State<AppState>,
    Path(db): Path<String>,
    ApiJson(req): ApiJson<EnsureBuckets>,
) -> Result<Json<Vec<StoreStatus>>> {
    let engine = state.engine(&db)?;
    Ok(Json(engine.ensure_stores(req.create_if_missing, req.dry_run).await?))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Test {
    /// Milliseconds for a PUT, GET and DELETE of a probe object.
    pub round_trip_ms: u64,
}

/// Write, read back and delete a probe object in the database's payload bucket.
#[utoipa::path(post, path = "/v1/admin/databases/{db}/s3-test", tag = "admin",
    params(("db" = String, Path)),
    responses((status = 200, body = S3Test), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn s3_test(State(state): State<AppState>, Path(db): Path<String>) -> Result<Json<S3Test>> {
    let round_trip_ms = state.engine(&db)?.test_payload_store().await?;
    Ok(Json(S3Test { round_trip_ms }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRequest {
    /// Objects whose write began less than this many seconds ago are not called orphans
    /// (default: the engine's orphan grace; at most 30 days).
    #[schema(maximum = 2592000)]
    pub grace_secs: Option<u64>,
}

/// Check the database's history against its buckets: every indexed version against its ledger
/// record and its object, every object against a version, the ledger's roots and chains. Reads
/// every object: for a large database prefer `chronos verify`.
#[utoipa::path(post, path = "/v1/admin/databases/{db}/verify", tag = "admin",
    params(("db" = String, Path)), request_body = VerifyRequest,
    responses((status = 200, body = VerifyReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    Path(db): Path<String>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyReport>> {
    let engine = state.engine(&db)?;
    if req.grace_secs.is_some_and(|g| g > 2_592_000) {
        return Err(super::error::ApiError::bad_request(
            "`graceSecs` is at most 2592000 (30 days)",
        ));
    }
    let grace = req
        .grace_secs
        .map_or(engine.settings().orphan_grace, std::time::Duration::from_secs);
    Ok(Json(engine.verify(grace).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebuildRequest {
    /// Write into a metadata store that already holds data.
    #[serde(default)]
    pub force: bool,
    /// Also take objects above their item's last committed version that extend its history.
    #[serde(default)]
    pub accept_unconfirmed: bool,
}

/// Rebuild the database's metadata (heads, version index, sequences, idempotency keys, counters)
/// from its buckets, into an empty metadata store (409 `already_exists` when it holds data, unless
/// `force`). A rebuild cut short goes on where it stopped when asked again.
#[utoipa::path(post, path = "/v1/admin/databases/{db}/rebuild", tag = "admin",
    params(("db" = String, Path)), request_body = RebuildRequest,
    responses((status = 200, body = RebuildReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn rebuild(
    State(state): State<AppState>,
    Path(db): Path<String>,
    ApiJson(req): ApiJson<RebuildRequest>,
) -> Result<Json<RebuildReport>> {
    let options = RebuildOptions {
        force: req.force,
        accept_unconfirmed: req.accept_unconfirmed,
    };
    Ok(Json(state.engine(&db)?.rebuild(&options, &|_| {}).await?))
}

/// Named apart from `/healthz`'s `Health` in the document (same-named schemas overwrite each other).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DatabasesHealth)]
pub struct Health {
    /// True when every database's backends answer.
    pub ok: bool,
    /// Per database: `ok`, or what failed.
    pub databases: BTreeMap<String, String>,
}

/// Health of every database (the detailed form of /readyz).
#[utoipa::path(get, path = "/v1/admin/health", tag = "admin",
    responses((status = 200, body = Health), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let mut databases = BTreeMap::new();
    for (key, engine) in state.databases() {
        let status = match engine.ping().await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        databases.insert(key.clone(), status);
    }
    Json(Health {
        ok: databases.values().all(|s| s == "ok"),
        databases,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShuttingDown {
    pub status: String,
}

/// Stop serving: new connections are refused, in-flight requests finish, then the process exits.
#[utoipa::path(post, path = "/v1/admin/shutdown", tag = "admin",
    responses((status = 202, body = ShuttingDown), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn shutdown(State(state): State<AppState>) -> (StatusCode, Json<ShuttingDown>) {
    state.request_shutdown();
    (
        StatusCode::ACCEPTED,
        Json(ShuttingDown {
            status: "draining".into(),
        }),
    )
}
