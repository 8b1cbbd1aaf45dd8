//! What every handler reaches: the databases served now (swapped whole on a reload), the tokens,
//! the shutdown signal, the metrics registry and the OpenAPI document. A leaf under the handlers,
//! so they depend on it and it on none of them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::auth::tokens::Tokens;
use super::error::ApiError;
use crate::engine::Engine;

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
    /// The document of the routes this state is served by, set when the router is built (the
    /// router knows its routes; the state must not depend on the handlers), rendered once.
    openapi: OnceLock<utoipa::openapi::OpenApi>,
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
            openapi: OnceLock::new(),
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

    /// Ask the server to stop (the admin shutdown route, and `chronos serve` on SIGTERM).
    pub fn request_shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }

    /// Resolves once a shutdown was requested (through the API or by a signal).
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    pub(super) fn tokens(&self) -> Option<Arc<Tokens>> {
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

    pub(super) fn render_metrics(&self) -> String {
        self.0.metrics.render()
    }

    /// Serve this document at `/openapi.json` (the router describing itself); the first one given
    /// stays.
    pub(super) fn publish_openapi(&self, doc: utoipa::openapi::OpenApi) {
        let _ = self.0.openapi.set(doc);
    }

    pub(super) fn openapi_json(&self) -> String {
        let Some(doc) = self.0.openapi.get() else {
            return "{\"error\": \"this state is served by no router\"}".to_owned();
        };
        self.0
            .openapi_json
            .get_or_init(|| {
                doc.to_pretty_json()
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
