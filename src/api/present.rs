//! How the API shows what the engine returns: a write's outcome (201/200 with its ETag, or 202
//! when queued) and a record (its data with a `_system` block, content inline or as references,
//! URLs presigned on request).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::error::{ApiError, Result};
use crate::engine::{CollectionName, ContentMode, Engine, ItemId, Record, Submitted, Timestamp, WriteOutcome};

/// The result of a write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    pub id: String,
    /// The object version this write produced (0 for a create).
    pub ov: u64,
    /// The collection version: orders all writes of the collection.
    pub cv: u64,
    /// When the version was written (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

pub fn etag(ov: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{ov}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A write accepted for later: it met a transient backend failure and waits in the retry queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// Poll `GET /v1/{db}/_operations/{operationId}` for the outcome.
    pub operation_id: String,
    /// Always `queued`.
    pub status: String,
    /// The item the write is for.
    pub id: String,
    /// Why the write could not be made now.
    pub reason: Option<String>,
}

/// The response to a submitted write: 201/200 when made now (with `Idempotency-Replayed: true`
/// when an earlier request with the same key made it), 202 when queued.
pub fn submitted_response(db: &str, status: StatusCode, submitted: Submitted, location: Option<String>) -> Response {
    match submitted {
        Submitted::Done { id, outcome } => {
            let mut response = write_response(status, &id, outcome, location);
            if outcome.replayed {
                response
                    .headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Submitted::Queued(op) => {
            let location = format!("/v1/{db}/_operations/{}", op.job.id);
            let body = Queued {
                operation_id: op.job.id.to_string(),
                status: "queued".to_owned(),
                id: op.job.request.id().to_string(),
                reason: op.last_error,
            };
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            if let Ok(loc) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, loc);
            }
            response
        }
    }
}

fn write_response(status: StatusCode, id: &ItemId, o: WriteOutcome, location: Option<String>) -> Response {
    let mut response = (
        status,
        Json(WriteResult {
            id: id.to_string(),
            ov: o.ov,
            cv: o.cv,
            at: o.at,
        }),
    )
        .into_response();
    response.headers_mut().insert(header::ETAG, etag(o.ov));
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, loc);
    }
    response
}

/// How a read shows content properties and whether it presigns URLs.
pub struct Presentation {
    mode: ContentMode,
    presign: Option<Duration>,
}

impl Presentation {
    pub fn from_query(content: Option<&str>, presign: bool, ttl_seconds: Option<u64>) -> Result<Self> {
        let ttl = Duration::from_secs(ttl_seconds.unwrap_or(900));
        if ttl.is_zero() || ttl > Duration::from_secs(604_800) {
            return Err(ApiError::bad_request(
                "`ttlSeconds` must be between 1 and 604800 (7 days)",
            ));
        }
        let mode = match (content, presign) {
            (_, true) => ContentMode::Presigned(ttl),
            (None | Some("inline"), false) => ContentMode::Inline,
            (Some("ref"), false) => ContentMode::Reference,
            (Some(other), false) => {
                return Err(ApiError::bad_request(format!(
                    "`content` must be `inline` or `ref`, not `{other}`"
                )));
            }
        };
        Ok(Presentation {
            mode,
            presign: presign.then_some(ttl),
        })
    }

    pub async fn show(&self, engine: &Engine, collection: &CollectionName, mut record: Record) -> Result<Value> {
        engine.resolve_content(collection, &mut record, self.mode).await?;
        let url = match self.presign {
            Some(ttl) => Some(engine.presign_payload(collection, &record, ttl).await?),
            None => None,
        };
        let mut out = record_json(collection, record);
        if let Some(url) = url {
            out[crate::engine::model::SYSTEM_KEY]["payloadUrl"] = Value::String(url);
        }
        Ok(out)
    }
}

/// A record as the API shows it: the data with a `_system` block.
pub fn record_json(collection: &CollectionName, r: Record) -> Value {
    let mut out = r.data;
    out.insert(
        crate::engine::model::SYSTEM_KEY.to_owned(),
        json!({
            "id": r.id,
            "collection": collection,
            "ov": r.ov,
            "cv": r.cv,
            "insertedAt": r.system.inserted_at,
            "updatedAt": r.system.updated_at,
            "deletedAt": r.system.deleted_at,
            "deleted": r.system.deleted,
            "functionIds": r.system.function_ids,
            "state": r.system.state,
        }),
    );
    Value::Object(out)
}
