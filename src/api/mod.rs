//! The HTTP/JSON data service (`chronos serve`): routes under `/v1/{db}/{collection}/…`, one error
//! shape, bearer-token auth, metrics, and an OpenAPI document generated from the same routes.

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod items;
pub mod operations;
pub mod ops;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::Engine;
use auth::Tokens;
use error::{ApiError, InternalCause};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronos", description = "Versioned, cost-first persistence for JSON records."),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Requests with larger bodies get 413 before they are read.
    pub max_body_bytes: usize,
    /// A body not received within this time is answered 408: a slow client can't hold one of
    /// the few large-body permits (extract.rs) for ever.
    pub body_read_timeout: std::time::Duration,
}

impl ServiceSettings {
    /// How long a client may take to send its body unless told otherwise.
    pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn new(max_body_bytes: usize) -> Self {
        ServiceSettings {
            max_body_bytes,
            body_read_timeout: Self::BODY_READ_TIMEOUT,
        }
    }
}

struct Inner {
    /// Swapped whole on a configuration reload; requests hold their engine, so a reload never
    /// fails a request in flight.
    databases: std::sync::RwLock<Arc<BTreeMap<String, Arc<Engine>>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// `None`: auth is off, for the life of the process. Some: swapped whole when the tokens
    /// file (or a secret it names) changes, so a revoked token stops working without a restart.
    tokens: Option<std::sync::RwLock<Arc<Tokens>>>,
    metrics: PrometheusHandle,
    openapi_json: OnceLock<String>,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(databases: BTreeMap<String, Arc<Engine>>, tokens: Option<Tokens>) -> Self {
        AppState(Arc::new(Inner {
            databases: std::sync::RwLock::new(Arc::new(databases)),
            shutdown: tokio::sync::watch::Sender::new(false),
            tokens: tokens.map(|t| std::sync::RwLock::new(Arc::new(t))),
            metrics: prometheus(),
            openapi_json: OnceLock::new(),
        }))
    }

    pub fn database(&self, key: &str) -> Option<Arc<Engine>> {
        self.snapshot().get(key).cloned()
    }

    /// The database a request names, or the API's 404 for an unknown key.
    pub fn engine(&self, key: &str) -> Result<Arc<Engine>, ApiError> {
        self.database(key).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "database_not_found",
                format!("no database `{key}`"),
            )
        })
    }

    /// The databases served now, by key.
    pub fn databases(&self) -> Vec<(String, Arc<Engine>)> {
        self.snapshot().iter().map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Engine>>> {
        self.0.databases.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serve this set of databases from now on (a configuration reload).
    pub fn replace_databases(&self, databases: BTreeMap<String, Arc<Engine>>) {
        *self.0.databases.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(databases);
    }

    /// Ask the server to stop (the admin shutdown route).
    pub fn request_shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }

    /// Resolves once a shutdown was requested through the API.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    fn tokens(&self) -> Option<Arc<Tokens>> {
        let lock = self.0.tokens.as_ref()?;
        Some(lock.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Check requests against these tokens from now on (a reload). Auth that is off stays off:
    /// whether a server needs tokens is decided when it starts.
    pub fn replace_tokens(&self, tokens: Tokens) {
        if let Some(lock) = &self.0.tokens {
            *lock.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        }
    }

    fn render_metrics(&self) -> String {
        self.0.metrics.render()
    }

    fn openapi_json(&self) -> String {
        self.0
            .openapi_json
            .get_or_init(|| {
                openapi()
                    .to_pretty_json()
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            })
            .clone()
    }
}

/// The process-wide Prometheus recorder (a recorder can be installed only once per process).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then our handle just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(items::create, items::list))
        .routes(routes!(items::get, items::update, items::delete, items::enrich))
        .routes(routes!(items::history))
        .routes(routes!(items::restore_item))
        .routes(routes!(items::restore_collection))
        .routes(routes!(items::counters))
        .routes(routes!(items::reset_counters))
        .routes(routes!(items::process_collection))
        .routes(routes!(items::process_item))
        .routes(routes!(items::prune))
        .routes(routes!(operations::get, operations::cancel))
        .routes(routes!(operations::retry))
        .routes(routes!(operations::stats))
        .routes(routes!(operations::list))
        .routes(routes!(admin::validate))
        .routes(routes!(admin::ensure_buckets))
        .routes(routes!(admin::s3_test))
        .routes(routes!(admin::health))
        .routes(routes!(admin::shutdown))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
}

/// The OpenAPI document of exactly the routes [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    refine(&mut doc);
    doc
}

/// `{collection}` in paths (see `CollectionName`): 1-64 of letters, digits, `_ -`, starting with a
/// letter or digit; names starting with `system` or `chronos` (any case) are reserved.
const COLLECTION_PATTERN: &str =
    "^(?![Ss][Yy][Ss][Tt][Ee][Mm]|[Cc][Hh][Rr][Oo][Nn][Oo][Ss])[A-Za-z0-9][A-Za-z0-9_-]{0,63}$";
/// `{id}` in paths (see `ItemId`): 1-128 of letters, digits, `_ - . :`, starting with a letter or
/// digit. The same pattern is on the `id` and `afterId` parameters in `items.rs`.
const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$";

/// What the derives cannot say, added to the generated document so that it describes what the
/// handlers accept: the syntax of `{collection}` and `{id}` (a parameter tuple takes a pattern
/// only as a literal, and there are two dozen of them), and the body fields that go together.
fn refine(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};

    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for param in operations
            .into_iter()
            .flatten()
            .flat_map(|op| op.parameters.iter_mut().flatten())
        {
            let pattern = match (&param.parameter_in, param.name.as_str()) {
                (ParameterIn::Path, "collection") => COLLECTION_PATTERN,
                (ParameterIn::Path, "id") => ID_PATTERN,
                _ => continue,
            };
            if let Some(RefOr::T(Schema::Object(schema))) = &mut param.schema {
                schema.pattern = Some(pattern.to_owned());
            }
        }
    }

    // `{"a": <non-null value of its type>}`: `null` means absent to the handlers.
    let present = |field: &str, ty: Type| {
        ObjectBuilder::new()
            .property(field, ObjectBuilder::new().schema_type(ty))
            .required(field)
    };
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let mut constrain = |name: &str, constraint: Schema| {
        if let Some(schema) = components.schemas.remove(name) {
            let both = AllOfBuilder::new().item(schema).item(constraint).build();
            components
                .schemas
                .insert(name.to_owned(), RefOr::T(Schema::AllOf(both)));
        }
    };
    // Exactly one of `ov` and `at` (else 400).
    constrain(
        "RestoreItemRequest",
        Schema::OneOf(
            OneOfBuilder::new()
                .item(present("ov", Type::Integer))
                .item(present("at", Type::String))
                .build(),
        ),
    );
    // Exactly one of `cv` and `at` (else 400).
    constrain(
        "RestoreCollectionRequest",
        Schema::OneOf(
            OneOfBuilder::new()
                .item(present("cv", Type::Integer))
                .item(present("at", Type::String))
                .build(),
        ),
    );
    // At least one of `keepLast` and `maxAgeDays` (else 422).
    constrain(
        "PruneRequest",
        Schema::AnyOf(
            AnyOfBuilder::new()
                .item(present("keepLast", Type::Integer))
                .item(present("maxAgeDays", Type::Number))
                .build(),
        ),
    );
}

/// The whole service as an axum router (tests drive it with `oneshot` or over a socket).
pub fn router(state: AppState, settings: &ServiceSettings) -> Router {
    let (routes, _) = api_router().split_for_parts();
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
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Request id, structured log line, metrics, and the logging of 5xx causes.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |m| m.as_str().to_owned());
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
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("chronos_http_requests_total", &labels).increment(1);
    metrics::histogram!("chronos_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
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
