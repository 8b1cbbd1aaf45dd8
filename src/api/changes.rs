//! The change feed route: `GET /v1/{db}/{collection}/changes`, a collection's versions in cv
//! order from a resume point, as a JSON page (`{changes, next}`) or, with
//! `Accept: text/event-stream`, as Server-Sent Events that stay open (`id:` = cv, so a browser's
//! `Last-Event-ID` resumes; comments as heartbeats). See `engine::feed` for the guarantee.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, Result};
use super::extract::{ApiQuery, CollectionPath, filter_param, int64, query_error};
use super::items::VersionInfo;
use super::present::record_json;
use super::state::AppState;
use crate::engine::{ChangeFilter, CollectionName, Engine, Op, VersionEntry, VersionTarget};

/// Heartbeats keep proxies from closing an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The change feed's route, with its part of the OpenAPI document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(changes))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Resume after this cv (the last one processed, or a page's `next`); 0 or absent: from the
    /// beginning. A `Last-Event-ID` header takes precedence.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    #[serde(default, deserialize_with = "int64")]
    after: Option<u64>,
    /// Versions read for a JSON page, 1-1000 (default 100); the filter may return fewer.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// JSON filter on the versions' indexed properties, as for listing items.
    filter: Option<String>,
    /// Comma-separated operations to keep: CREATE, UPDATE, DELETE, RESTORE.
    #[param(pattern = "^(CREATE|UPDATE|DELETE|RESTORE)(,(CREATE|UPDATE|DELETE|RESTORE))*$")]
    ops: Option<String>,
    /// `data` adds each version's data.
    #[param(pattern = "^data$")]
    include: Option<String>,
}

/// One version in the feed: the item, the version as in an item's history, and its metadata.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub id: String,
    #[serde(flatten)]
    pub version: VersionInfo,
    /// The version's indexed metadata.
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
    /// The version's record (data plus `_system`), with `include=data`.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangesResponse {
    pub changes: Vec<Change>,
    /// Pass as `after` for the next page (it moves past versions the filter leaves out).
    pub next: u64,
    /// More versions can be read at once.
    pub more: bool,
    /// A cv right after `next` is taken but not committed yet; the versions behind it follow
    /// within this many milliseconds.
    pub held_back_ms: Option<u64>,
}

/// A collection's versions in cv order from a resume point: every committed version once, never
/// one with a smaller cv after a larger one (a cv taken and not yet committed holds the feed at
/// most the engine's orphan grace). JSON page, or `Accept: text/event-stream` for Server-Sent
/// Events (`event: change`, `id:` = cv, heartbeat comments every 15 s, `event: error` with the
/// error body and its `status` before a stream ends on an error). 410 `history_pruned` when retention removed versions after the
/// resume point (`details.prunedThrough`: resume there or later; `details.oldestCv`).
#[utoipa::path(get, path = "/v1/{db}/{collection}/changes", tag = "collections",
    params(("db" = String, Path), ("collection" = String, Path), ChangesQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume after this cv (what a browser's EventSource sends when it reconnects)", pattern = "^[0-9]{1,19}$")),
    responses(
        (status = 200, content(
            (ChangesResponse = "application/json"),
            (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 410, description = "The resume point is older than retention keeps", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn changes(
    State(state): State<AppState>,
    path: CollectionPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Response> {
    let engine = state.engine(&path.db)?;
    let after = match headers.get("last-event-id") {
        Some(id) => id
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|cv| i64::try_from(*cv).is_ok())
            .ok_or_else(|| ApiError::bad_request("`Last-Event-ID` must be a cv (a whole number)"))?,
        None => q.after.unwrap_or(0),
    };
    let include_data = match q.include.as_deref() {
        None => false,
        Some("data") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`include` must be `data`, not `{other}`"
            )));
        }
    };
    let filter = feed_filter(&engine, &path.collection, q.filter.as_deref(), q.ops.as_deref())?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if wants_stream {
        let sub = engine
            .subscribe(&path.collection, after, filter)
            .await
            .map_err(query_error)?;
        return Ok(stream(state, engine, path.db, path.collection, sub, include_data).into_response());
    }
    let limit = q.limit.unwrap_or(100);
    let page = engine
        .changes(&path.collection, after, limit, &filter)
        .await
        .map_err(query_error)?;
    let mut changes = Vec::with_capacity(page.changes.len());
    for v in page.changes {
        changes.push(change(&engine, &path.collection, v, include_data).await?);
    }
    Ok(Json(ChangesResponse {
        changes,
        next: page.next,
        more: page.full,
        held_back_ms: page.held_back.map(|d| d.as_millis() as u64),
    })
    .into_response())
}

/// The feed's filter from the query: a malformed one is a bad request, as for listing.
fn feed_filter(engine: &Engine, c: &CollectionName, filter: Option<&str>, ops: Option<&str>) -> Result<ChangeFilter> {
    let filter = filter_param(filter)?;
    // Given, `ops` names at least one operation and nothing else (an empty `ops=` or `CREATE,`
    // is a mistake, not "all": the document's pattern says so too).
    let ops = match ops {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|s| {
                s.parse::<Op>().map_err(|_| {
                    ApiError::bad_request(format!("`ops`: `{s}` is not CREATE, UPDATE, DELETE or RESTORE"))
                })
            })
            .collect::<Result<Vec<Op>>>()?,
    };
    engine.change_filter(c, &filter, ops).map_err(query_error)
}

async fn change(engine: &Engine, c: &CollectionName, mut v: VersionEntry, include_data: bool) -> Result<Change> {
    let data = if include_data {
        let record = engine
            .get_at(
                c,
                &v.id,
                VersionTarget::Ov(v.ov),
                crate::engine::ReadOptions { include_deleted: true },
            )
            .await?;
        Some(record_json(c, record))
    } else {
        None
    };
    let id = v.id.to_string();
    let meta = std::mem::take(&mut v.meta);
    Ok(Change {
        id,
        version: VersionInfo::from(v),
        meta,
        data,
    })
}

/// Counts a collection's open streams in `chronos_feed_subscribers` while it lives.
struct Subscribed(Vec<(&'static str, String)>);

impl Subscribed {
    fn new(db: &str, c: &CollectionName) -> Self {
        let labels = vec![("db", db.to_owned()), ("collection", c.to_string())];
        metrics::gauge!("chronos_feed_subscribers", &labels).increment(1.0);
        Subscribed(labels)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        metrics::gauge!("chronos_feed_subscribers", &self.0).decrement(1.0);
    }
}

/// The SSE response: one `change` event per version; an `error` event (the error body) ends it;
/// so does the server's shutdown (the client resumes elsewhere from its last id).
fn stream(
    state: AppState,
    engine: std::sync::Arc<Engine>,
    db: String,
    collection: CollectionName,
    sub: crate::engine::Subscription,
    include_data: bool,
) -> impl IntoResponse {
    let subscribed = Subscribed::new(&db, &collection);
    let lag =
        metrics::histogram!("chronos_feed_delivery_lag_seconds", "db" => db, "collection" => collection.to_string());
    let events = futures::stream::unfold(Some(sub), move |sub| {
        let (engine, collection, lag) = (engine.clone(), collection.clone(), lag.clone());
        async move {
            let mut sub = sub?;
            let batch = match sub.next().await {
                Ok(batch) => batch,
                Err(e) => return Some((vec![error_event(e.into())], None)),
            };
            let mut events = Vec::with_capacity(batch.len());
            for v in batch {
                let at = v.at;
                match change(&engine, &collection, v, include_data).await {
                    Ok(c) => {
                        events.push(change_event(&c));
                        let lag_secs = crate::engine::model::now().duration_since(at).as_secs_f64();
                        lag.record(lag_secs.max(0.0));
                    }
                    Err(e) => {
                        events.push(error_event(e));
                        return Some((events, None));
                    }
                }
            }
            Some((events, Some(sub)))
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<Event, Infallible>)))
    .take_until(async move { state.shutdown_requested().await })
    .map(move |event| {
        let _ = &subscribed;
        event
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
}

fn change_event(c: &Change) -> Event {
    Event::default()
        .event("change")
        .id(c.version.cv.to_string())
        .json_data(c)
        .unwrap_or_else(|e| error_event(ApiError::internal(format!("could not encode a change: {e}"))))
}

fn error_event(e: ApiError) -> Event {
    // The status too: the stream's own status was 200 long ago.
    let body = json!({"status": e.status.as_u16(), "code": e.code, "message": e.message, "details": e.details});
    Event::default().event("error").data(body.to_string())
}
