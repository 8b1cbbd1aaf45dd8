//! The HTTP/JSON data service (`chronos serve`): routes under `/v1/{db}/{collection}/…`, one error
//! shape, bearer-token auth, metrics, and an OpenAPI document generated from the same routes.
//!
//! Each handler module lists its own routes beside its handlers; this file only merges them and
//! wraps the result in the layers every request passes (auth, body limits, logging, metrics).

pub mod admin;
pub mod auth;
pub mod changes;
pub mod collections;
pub mod erasures;
pub mod error;
pub mod extract;
pub mod holds;
pub mod items;
mod observe;
mod openapi;
pub mod present;
pub mod probes;
pub mod proofs;
pub mod queue;
mod state;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use error::ApiError;
pub use state::{AppState, ServiceSettings};

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(items::routes())
        .merge(proofs::routes())
        .merge(holds::routes())
        .merge(erasures::routes())
        .merge(collections::routes())
        .merge(changes::routes())
        .merge(queue::routes())
        .merge(admin::routes())
        .merge(probes::routes())
}

/// The OpenAPI document of exactly the routes [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    openapi::refine(&mut doc);
    doc
}

/// The whole service as an axum router (tests drive it with `oneshot` or over a socket).
pub fn router(state: AppState, settings: &ServiceSettings) -> Router {
    let (routes, mut doc) = api_router().split_for_parts();
    openapi::refine(&mut doc);
    state.publish_openapi(doc);
    routes
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no such route; see /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::middleware))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            settings.body_read_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error")
                .with_details(serde_json::json!({"cause": "handler panicked"}))
                .into_response()
        }))
        .layer(middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then drain in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Bind the (unit) state once and clone the finished router per connection: served as a bare
    // `Router`, axum rebuilds its route table for every connection (`with_state` per accepted
    // stream), ~9 KiB each, a tenth of the memory of 1000 idle keep-alive connections.
    let app = app.with_state(()).into_make_service();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
