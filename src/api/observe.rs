//! What every request leaves behind: a request id (taken from `x-request-id` or made), a log
//! line, the request counter and latency histogram, and the logged cause of a 5xx.
//!
//! The metric handles are resolved once per (route, method, status) and kept: asking the recorder
//! for them per request built three label strings and a key, hashed it and looked it up in the
//! registry, twice, on every request.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, InternalCause};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request id, structured log line, metrics, and the logging of 5xx causes.
pub(super) async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let mut response = next.run(req).await;
    let status = response.status();
    let elapsed = started.elapsed();

    if status.is_server_error() {
        let cause = response.extensions().get::<InternalCause>().map(|c| c.0.clone());
        tracing::error!(%request_id, %method, %route, status = status.as_u16(), cause = cause.as_deref().unwrap_or(""), "request failed");
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            response = ApiError::internal(format!("internal error; quote request id {request_id}"))
                .with_details(serde_json::json!({"requestId": request_id}))
                .into_response();
        }
    } else {
        tracing::info!(%request_id, %method, %route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request");
    }
    let handles = RequestMetrics::of(route, &method, status);
    handles.count.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The counter and histogram of one (route, method, status).
#[derive(Clone)]
struct RequestMetrics {
    count: metrics::Counter,
    duration: metrics::Histogram,
}

/// By route, then by (method, status): a route sees only a few of those, so a short list.
type Registry = HashMap<String, Vec<(Method, StatusCode, RequestMetrics)>>;

impl RequestMetrics {
    fn of(route: &str, method: &Method, status: StatusCode) -> RequestMetrics {
        // Process-wide, as the recorder the handles come from is.
        static KNOWN: OnceLock<RwLock<Registry>> = OnceLock::new();
        let known = KNOWN.get_or_init(Default::default);
        let find = |registry: &Registry| {
            registry
                .get(route)?
                .iter()
                .find(|(m, s, _)| m == method && *s == status)
                .map(|(_, _, h)| h.clone())
        };
        if let Some(found) = find(&known.read().unwrap_or_else(|p| p.into_inner())) {
            return found;
        }
        let mut registry = known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = find(&registry) {
            return found;
        }
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_string()),
            ("status", status.as_u16().to_string()),
        ];
        let made = RequestMetrics {
            count: metrics::counter!("chronos_http_requests_total", &labels),
            duration: metrics::histogram!("chronos_http_request_duration_seconds", &labels),
        };
        registry
            .entry(route.to_owned())
            .or_default()
            .push((method.clone(), status, made.clone()));
        made
    }
}
