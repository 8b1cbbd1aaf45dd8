//! Item routes: create, read (latest, `?ov=`, `?at=`), update, delete, history.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Result};
use super::extract::{Body, CollectionPath, ItemPath, JsonObject, JsonObjects, Precondition, Q, int64};
use crate::engine::{
    Attribution, CollectionName, ContentMode, Engine, HistoryPoint, ItemId, ListOptions, PrunePolicy, PruneReport,
    ReadOptions, Record, RequestKey, RestoreCounts, Submitted, TieringReport, Timestamp, Totals, VersionEntry,
    VersionTarget, WriteOutcome, WriteRequest,
};

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

/// A page of an item's version index.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    pub versions: Vec<VersionInfo>,
    /// Pass as `afterOv` for the next page; absent on the last page.
    pub next_after_ov: Option<u64>,
}

/// One version of an item, without its data.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub ov: u64,
    pub cv: u64,
    /// CREATE, UPDATE, DELETE or RESTORE.
    pub op: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// Size of the data in bytes.
    pub size: u64,
    /// SHA-256 of the data (hex).
    pub checksum: String,
    pub deleted: bool,
}

impl From<VersionEntry> for VersionInfo {
    fn from(v: VersionEntry) -> Self {
        VersionInfo {
            ov: v.ov,
            cv: v.cv,
            op: v.op.as_str().to_owned(),
            at: v.at,
            actor: v.actor,
            reason: v.reason,
            size: v.size,
            checksum: v.checksum,
            deleted: v.deleted,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Choose the item id (letters, digits, `_ - . :`; at most 128). Generated when absent.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    id: Option<String>,
    /// Whom the write is made for. With auth on the version records `<token name>/<actor>` (the
    /// token always shows); without, this as given.
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    actor: Option<String>,
    /// Why.
    #[param(max_length = 1024, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Optimistic lock: the write applies only if the item is at this ov (or use `If-Match`).
    #[param(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    expected_ov: Option<u64>,
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    actor: Option<String>,
    #[param(max_length = 1024, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    reason: Option<String>,
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Read this object version.
    #[param(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    ov: Option<u64>,
    /// Read the version current at this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    at: Option<String>,
    /// Return deleted items and delete versions too.
    #[serde(default)]
    include_deleted: bool,
    /// Content properties as their value (`inline`, the default) or as stored references (`ref`).
    #[param(pattern = "^(inline|ref)$")]
    content: Option<String>,
    /// Add presigned URLs: `_system.payloadUrl` and a `url` in each content reference.
    #[serde(default)]
    presign: bool,
    /// How long presigned URLs stay valid (1-604800 s, default 900).
    #[param(minimum = 1, maximum = 604800)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start after this ov (from `nextAfterOv`).
    #[param(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    after_ov: Option<u64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    #[serde(default)]
    include_deleted: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// JSON filter on indexed properties: `{"status": "open", "n": {"$gte": 10}}`. Operators:
    /// $eq $ne $in $nin $gt $gte $lt $lte $exists.
    filter: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Continue after this id (from `nextAfterId`).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    after_id: Option<String>,
    /// `id` (default) or `-id` for descending.
    #[param(pattern = "^(id|-id)$")]
    sort: Option<String>,
    #[serde(default)]
    include_deleted: bool,
    /// List the collection as it was at this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    at: Option<String>,
    /// Comma-separated top-level properties to return.
    fields: Option<String>,
    /// Content properties as their value (`inline`, the default) or as stored references (`ref`).
    #[param(pattern = "^(inline|ref)$")]
    content: Option<String>,
    /// Add presigned URLs: `_system.payloadUrl` and a `url` in each content reference.
    #[serde(default)]
    presign: bool,
    /// How long presigned URLs stay valid (1-604800 s, default 900).
    #[param(minimum = 1, maximum = 604800)]
    ttl_seconds: Option<u64>,
}

/// A page of records.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    /// Records: data plus `_system`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// Pass as `afterId` for the next page; absent on the last page.
    pub next_after_id: Option<String>,
}

/// The `Idempotency-Key` header: a retried write with the same key returns the first outcome.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn attribution(
    caller: &Caller,
    headers: &HeaderMap,
    actor: Option<String>,
    reason: Option<String>,
) -> Result<Attribution> {
    let request_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<RequestKey>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)")
                })?,
        ),
    };
    for (name, value, max) in [("actor", &actor, 256), ("reason", &reason, 1024)] {
        if let Some(v) = value
            && (v.len() > max || v.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(format!(
                "`{name}` must be at most {max} bytes without control characters"
            )));
        }
    }
    // With auth on, the audit trail names the token that wrote; `?actor=` may only add whom it
    // acts for (`token/actor`), never stand in for another token's name.
    let actor = match (caller.name(), actor) {
        (Some(token), Some(on_behalf)) => Some(format!("{token}/{on_behalf}")),
        (Some(token), None) => Some(token.to_owned()),
        (None, actor) => actor,
    };
    Ok(Attribution {
        actor,
        reason,
        request_key,
    })
}

fn etag(ov: u64) -> HeaderValue {
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
fn submitted_response(db: &str, status: StatusCode, submitted: Submitted, location: Option<String>) -> Response {
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

/// A record as the API shows it: the data with a `_system` block.
/// How a read shows content properties and whether it presigns URLs.
struct Presentation {
    mode: ContentMode,
    presign: Option<Duration>,
}

impl Presentation {
    fn from_query(content: Option<&str>, presign: bool, ttl_seconds: Option<u64>) -> Result<Self> {
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

    async fn show(&self, engine: &Engine, collection: &CollectionName, mut record: Record) -> Result<Value> {
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

/// Create an item (ov 0).
#[utoipa::path(post, path = "/v1/{db}/{collection}/items", tag = "items",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Retrying with the same key returns the first outcome and never writes twice", pattern = "^[!-~]{1,255}$"), ("db" = String, Path, description = "Database (tenant) key"), ("collection" = String, Path), CreateQuery),
    request_body(content = Object, description = "The item's data: any JSON object (`_system` is ignored)"),
    responses(
        (status = 202, description = "Queued for retry after a transient backend failure", body = Queued, headers(("Location" = String))),
        (status = 201, description = "Created", body = WriteResult, headers(("ETag" = String), ("Location" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Id taken", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: CollectionPath,
    headers: HeaderMap,
    Q(q): Q<CreateQuery>,
    JsonObject(data): JsonObject,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let id =
        q.id.map(|s| s.parse::<ItemId>())
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    let who = attribution(&caller, &headers, q.actor, q.reason)?;
    let request = WriteRequest::Create {
        id_generated: id.is_none(),
        id: id.unwrap_or_else(ItemId::generate),
        data,
    };
    let submitted = engine.submit(&path.collection, request, &who).await?;
    let location = match &submitted {
        Submitted::Done { id, .. } => Some(format!("/v1/{}/{}/items/{id}", path.db, path.collection)),
        Submitted::Queued(_) => None,
    };
    Ok(submitted_response(&path.db, StatusCode::CREATED, submitted, location))
}

/// List items by indexed metadata, in id order, paged.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ListQuery),
    responses(
        (status = 200, body = ListResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`presign` on a database without S3", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    path: CollectionPath,
    Q(q): Q<ListQuery>,
) -> Result<Json<ListResponse>> {
    let engine = state.engine(&path.db)?;
    let filter = match q.filter.as_deref() {
        None | Some("") => Value::Null,
        Some(text) => {
            serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("`filter` is not valid JSON: {e}")))?
        }
    };
    let descending = match q.sort.as_deref() {
        None | Some("id") => false,
        Some("-id") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`sort` must be `id` or `-id`, not `{other}`"
            )));
        }
    };
    let at =
        q.at.map(|at| at.parse::<Timestamp>())
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("`at` must be an RFC 3339 time: {e}")))?;
    let after_id = q
        .after_id
        .map(|a| a.parse::<ItemId>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("`afterId`: {e}")))?;
    let opts = ListOptions {
        filter,
        after_id,
        limit: q.limit.unwrap_or(100),
        descending,
        include_deleted: q.include_deleted,
        at,
        fields: q.fields.map(|f| {
            f.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }),
    };
    let page = engine.list(&path.collection, &opts).await.map_err(|e| match e {
        // A bad filter or limit is a malformed request here, not invalid data.
        crate::engine::Error::Validation { field, reason } => {
            ApiError::bad_request(format!("invalid {field}: {reason}")).with_details(json!({"field": field}))
        }
        other => other.into(),
    })?;
    let presentation = Presentation::from_query(q.content.as_deref(), q.presign, q.ttl_seconds)?;
    let mut items = Vec::with_capacity(page.records.len());
    for r in page.records {
        items.push(presentation.show(&engine, &path.collection, r).await?);
    }
    Ok(Json(ListResponse {
        items,
        next_after_id: page.next_after_id.map(|i| i.to_string()),
    }))
}

/// Read an item: the latest version, or `?ov=` / `?at=`.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items/{id}", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path), GetQuery),
    responses(
        (status = 200, description = "The record: its data plus a `_system` block", body = Object, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`presign` on a database without S3", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, path: ItemPath, Q(q): Q<GetQuery>) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let opts = ReadOptions {
        include_deleted: q.include_deleted,
    };
    let record = match (q.ov, q.at) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give `ov` or `at`, not both")),
        (Some(ov), None) => engine.get_version(&path.collection, &path.id, ov, opts).await?,
        (None, Some(at)) => {
            let at: Timestamp = at
                .parse()
                .map_err(|e| ApiError::bad_request(format!("`at` must be an RFC 3339 time: {e}")))?;
            engine.get_as_of(&path.collection, &path.id, at, opts).await?
        }
        (None, None) => engine.get_latest(&path.collection, &path.id, opts).await?,
    };
    let tag = etag(record.ov);
    let presentation = Presentation::from_query(q.content.as_deref(), q.presign, q.ttl_seconds)?;
    let mut response = Json(presentation.show(&engine, &path.collection, record).await?).into_response();
    response.headers_mut().insert(header::ETAG, tag);
    Ok(response)
}

/// Replace an item's data (ov + 1). Optimistic locking with `If-Match` or `expectedOv`.
#[utoipa::path(put, path = "/v1/{db}/{collection}/items/{id}", tag = "items",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Retrying with the same key returns the first outcome and never writes twice", pattern = "^[!-~]{1,255}$"), ("db" = String, Path), ("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ov the write expects, e.g. \"3\"", pattern = "^(\\*|(W/)?\"?[0-9]{1,18}\"?)$"), WriteQuery),
    request_body(content = Object, description = "The new data"),
    responses(
        (status = 202, description = "Queued for retry after a transient backend failure", body = Queued, headers(("Location" = String))),
        (status = 200, body = WriteResult, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Version conflict (expectedOv)", body = ErrorBody),
        (status = 412, description = "If-Match failed", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    Q(q): Q<WriteQuery>,
    JsonObject(data): JsonObject,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let pre = Precondition::from_request(&headers, q.expected_ov)?;
    let who = attribution(&caller, &headers, q.actor, q.reason)?;
    let request = WriteRequest::Update {
        id: path.id.clone(),
        data,
        expected_ov: pre.ov(),
    };
    let submitted = engine
        .submit(&path.collection, request, &who)
        .await
        .map_err(|e| pre.map_err(e))?;
    Ok(submitted_response(&path.db, StatusCode::OK, submitted, None))
}

/// Logically delete an item: a new version marked deleted (the data is kept).
#[utoipa::path(delete, path = "/v1/{db}/{collection}/items/{id}", tag = "items",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Retrying with the same key returns the first outcome and never writes twice", pattern = "^[!-~]{1,255}$"), ("db" = String, Path), ("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ov the delete expects", pattern = "^(\\*|(W/)?\"?[0-9]{1,18}\"?)$"), WriteQuery),
    responses(
        (status = 202, description = "Queued for retry after a transient backend failure", body = Queued, headers(("Location" = String))),
        (status = 200, body = WriteResult, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    Q(q): Q<WriteQuery>,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let pre = Precondition::from_request(&headers, q.expected_ov)?;
    let who = attribution(&caller, &headers, q.actor, q.reason)?;
    let request = WriteRequest::Delete {
        id: path.id.clone(),
        expected_ov: pre.ov(),
    };
    let submitted = engine
        .submit(&path.collection, request, &who)
        .await
        .map_err(|e| pre.map_err(e))?;
    Ok(submitted_response(&path.db, StatusCode::OK, submitted, None))
}

/// An item's version index, oldest first, paged.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items/{id}/versions", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path), HistoryQuery),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    path: ItemPath,
    Q(q): Q<HistoryQuery>,
) -> Result<Json<HistoryPage>> {
    let engine = state.engine(&path.db)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    let opts = ReadOptions {
        include_deleted: q.include_deleted,
    };
    let versions = engine
        .history(&path.collection, &path.id, q.after_ov, limit, opts)
        .await?;
    let next_after_ov = (versions.len() == limit)
        .then(|| versions.last().map(|v| v.ov))
        .flatten();
    Ok(Json(HistoryPage {
        versions: versions.into_iter().map(VersionInfo::from).collect(),
        next_after_ov,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnrichQuery {
    /// The enrichment function: recorded in `_system.functionIds`.
    #[param(min_length = 1, max_length = 256)]
    function_id: Option<String>,
    #[param(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    expected_ov: Option<u64>,
    #[param(max_length = 256, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    actor: Option<String>,
    #[param(max_length = 1024, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    reason: Option<String>,
}

/// Enrich an item: deep-merge the patch (or each patch of an array, in order) into its data as
/// one new version. Absent keys keep, `null` overwrites, arrays are unioned (objects matched by
/// `id`/`_id`).
#[utoipa::path(patch, path = "/v1/{db}/{collection}/items/{id}", tag = "items",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Retrying with the same key returns the first outcome and never writes twice", pattern = "^[!-~]{1,255}$"), ("db" = String, Path), ("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ov the enrichment expects", pattern = "^(\\*|(W/)?\"?[0-9]{1,18}\"?)$"), EnrichQuery),
    request_body(content = Object, description = "A patch object, or an array of patch objects"),
    responses(
        (status = 202, description = "Queued for retry after a transient backend failure", body = Queued, headers(("Location" = String))),
        (status = 200, body = WriteResult, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn enrich(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    Q(q): Q<EnrichQuery>,
    JsonObjects(patches): JsonObjects,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let pre = Precondition::from_request(&headers, q.expected_ov)?;
    let who = attribution(&caller, &headers, q.actor, q.reason)?;
    let request = WriteRequest::Enrich {
        id: path.id.clone(),
        patches,
        function_id: q.function_id,
        expected_ov: pre.ov(),
    };
    let submitted = engine
        .submit(&path.collection, request, &who)
        .await
        .map_err(|e| pre.map_err(e))?;
    Ok(submitted_response(&path.db, StatusCode::OK, submitted, None))
}

/// Which version an item restore brings back: exactly one of `ov` and `at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreItemRequest {
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "int64")]
    pub ov: Option<u64>,
    /// RFC 3339.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<Timestamp>,
}

/// Restore an item: append a version equal to an earlier one. A deleted item is undeleted.
#[utoipa::path(post, path = "/v1/{db}/{collection}/items/{id}/restore", tag = "items",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Retrying with the same key returns the first outcome and never writes twice", pattern = "^[!-~]{1,255}$"), ("db" = String, Path), ("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ov the restore expects", pattern = "^(\\*|(W/)?\"?[0-9]{1,18}\"?)$"), WriteQuery),
    request_body = RestoreItemRequest,
    responses(
        (status = 202, description = "Queued for retry after a transient backend failure", body = Queued, headers(("Location" = String))),
        (status = 200, body = WriteResult, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restore_item(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    Q(q): Q<WriteQuery>,
    Body(req): Body<RestoreItemRequest>,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let target = match (req.ov, req.at) {
        (Some(ov), None) => VersionTarget::Ov(ov),
        (None, Some(at)) => VersionTarget::At(at),
        _ => return Err(ApiError::bad_request("give exactly one of `ov` and `at`")),
    };
    let pre = Precondition::from_request(&headers, q.expected_ov)?;
    let who = attribution(&caller, &headers, q.actor, q.reason)?;
    let request = WriteRequest::Restore {
        id: path.id.clone(),
        target,
        expected_ov: pre.ov(),
    };
    let submitted = engine
        .submit(&path.collection, request, &who)
        .await
        .map_err(|e| pre.map_err(e))?;
    Ok(submitted_response(&path.db, StatusCode::OK, submitted, None))
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
    Q(q): Q<AttributionQuery>,
    Body(req): Body<RestoreCollectionRequest>,
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
    Body(req): Body<ProcessRequest>,
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

/// Whether an item changed state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Processed {
    /// `false` if the item already was `processed`.
    pub changed: bool,
}

/// Make one item `processed` now.
#[utoipa::path(post, path = "/v1/{db}/{collection}/items/{id}/process", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = Processed),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn process_item(State(state): State<AppState>, path: ItemPath) -> Result<Json<Processed>> {
    let engine = state.engine(&path.db)?;
    let changed = engine.mark_item_processed(&path.collection, &path.id).await?;
    Ok(Json(Processed { changed }))
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
    Body(req): Body<PruneRequest>,
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
