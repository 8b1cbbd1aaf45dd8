//! Item routes: create, read (latest, `?ov=`, `?at=`), update, delete, enrich, history, restore
//! of one item and tiering of one item; and how a write's outcome and a record are shown.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Result};
use super::extract::{
    ApiJson, ApiQuery, CollectionPath, ItemPath, JsonObject, JsonObjects, Precondition, attribution, filter_param,
    int64, query_error,
};
use super::present::{
    Presentation, Queued, Shown, WriteResult, etag, json_response, submitted_response, write_text_json,
};
use super::state::AppState;
use crate::engine::{
    CollectionName, Engine, ItemId, ListOptions, ReadOptions, Submitted, Timestamp, VersionEntry, VersionTarget,
    WriteRequest,
};

/// The item routes, with their part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete, enrich))
        .routes(routes!(history))
        .routes(routes!(restore_item))
        .routes(routes!(process_item))
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
    pub items: Vec<Shown>,
    /// Pass as `afterId` for the next page; absent on the last page.
    pub next_after_id: Option<String>,
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
    ApiQuery(q): ApiQuery<CreateQuery>,
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
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let filter = filter_param(q.filter.as_deref())?;
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
    let presentation = Presentation::from_query(q.content.as_deref(), q.presign, q.ttl_seconds)?;
    if opts.fields.is_none() && presentation.shows_text(&engine, &path.collection) {
        return list_as_text(&engine, &path.collection, &opts, &presentation).await;
    }
    let page = engine.list(&path.collection, &opts).await.map_err(query_error)?;
    let mut items = Vec::with_capacity(page.records.len());
    for r in page.records {
        items.push(presentation.show(&engine, &path.collection, r).await?);
    }
    Ok(Json(ListResponse {
        items,
        next_after_id: page.next_after_id.map(|i| i.to_string()),
    })
    .into_response())
}

/// A page whose records show as their stored data text: the same JSON as a [`ListResponse`],
/// written without parsing each record's data into a tree and serialising it again.
async fn list_as_text(
    engine: &Engine,
    collection: &CollectionName,
    opts: &ListOptions,
    presentation: &Presentation,
) -> Result<Response> {
    let page = engine.list_text(collection, opts).await.map_err(query_error)?;
    // Each record: its data, then a `_system` block of ~300 bytes.
    let size: usize = page.records.iter().map(|r| r.data_json.len() + 320).sum();
    let mut out = Vec::with_capacity(size + 64);
    out.extend_from_slice(b"{\"items\":[");
    for (i, r) in page.records.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_text_json(collection, &r, &mut out) {
            let shown = presentation.show(engine, collection, r.parse(collection)?).await?;
            serde_json::to_writer(&mut out, &shown).map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }
    out.extend_from_slice(b"],\"nextAfterId\":");
    let next = page.next_after_id.map(|i| i.to_string());
    serde_json::to_writer(&mut out, &next).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'}');
    Ok(json_response(out))
}

/// Read an item: the latest version, or `?ov=` / `?at=`.
#[utoipa::path(get, path = "/v1/{db}/{collection}/items/{id}", tag = "items",
    params(("db" = String, Path), ("collection" = String, Path), ("id" = String, Path), GetQuery),
    responses(
        (status = 200, description = "The record: its data plus a `_system` block", body = Object, headers(("ETag" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
        (status = 422, description = "`presign` on a database without S3", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, path: ItemPath, ApiQuery(q): ApiQuery<GetQuery>) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let opts = ReadOptions {
        include_deleted: q.include_deleted,
    };
    let target = match (q.ov, q.at) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give `ov` or `at`, not both")),
        (Some(ov), None) => Some(VersionTarget::Ov(ov)),
        (None, Some(at)) => {
            let at: Timestamp = at
                .parse()
                .map_err(|e| ApiError::bad_request(format!("`at` must be an RFC 3339 time: {e}")))?;
            Some(VersionTarget::At(at))
        }
        (None, None) => None,
    };
    let presentation = Presentation::from_query(q.content.as_deref(), q.presign, q.ttl_seconds)?;
    let (collection, id) = (&path.collection, &path.id);
    // Read as text: a record shown as stored is never parsed (see `write_text_json`).
    let record = match target {
        Some(target) => engine.get_at_text(collection, id, target, opts).await?,
        None => engine.get_latest_text(collection, id, opts).await?,
    };
    let tag = etag(record.ov);
    let mut body = Vec::new();
    let mut response =
        if presentation.shows_text(&engine, collection) && write_text_json(collection, &record, &mut body) {
            json_response(body)
        } else {
            let record = record.parse(collection)?;
            Json(presentation.show(&engine, collection, record).await?).into_response()
        };
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 409, description = "Version conflict (expectedOv)", body = ErrorBody),
        (status = 412, description = "If-Match failed", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WriteQuery>,
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WriteQuery>,
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    path: ItemPath,
    ApiQuery(q): ApiQuery<HistoryQuery>,
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn enrich(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EnrichQuery>,
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restore_item(
    State(state): State<AppState>,
    caller: Caller,
    path: ItemPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(req): ApiJson<RestoreItemRequest>,
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
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn process_item(State(state): State<AppState>, path: ItemPath) -> Result<Json<Processed>> {
    let engine = state.engine(&path.db)?;
    let changed = engine.mark_item_processed(&path.collection, &path.id).await?;
    Ok(Json(Processed { changed }))
}
