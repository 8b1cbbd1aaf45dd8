//! The operator's own HTTP endpoints: `/healthz` (alive), `/readyz` (holds the lease, so it is
//! the replica acting) and `/metrics` (Prometheus: reconciles, failures and durations by
//! controller, failures also by kind).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::error::Result;

/// Whether this replica leads (and so runs the controllers).
static LEADING: AtomicBool = AtomicBool::new(false);

pub fn set_leading(leading: bool) {
    LEADING.store(leading, Ordering::SeqCst);
}

/// Run one reconcile of `controller`, counting it, its errors by kind
/// ([`Error::metric_label`](super::error::Error::metric_label)) and its duration.
pub async fn measured<T>(controller: &'static str, reconcile: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let result = reconcile.await;
    metrics::counter!("chronos_operator_reconciles_total", "controller" => controller).increment(1);
    if let Err(e) = &result {
        metrics::counter!("chronos_operator_reconcile_errors_total", "controller" => controller, "error" => e.metric_label())
            .increment(1);
    }
    metrics::histogram!("chronos_operator_reconcile_duration_seconds", "controller" => controller)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The process-wide Prometheus recorder (only one recorder can be installed per process).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder came first; the handle then stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn router() -> Router {
    let handle = prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async {
                if LEADING.load(Ordering::SeqCst) {
                    (StatusCode::OK, "leading")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "standby: another replica holds the lease",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
            }),
        )
}

/// Serve the endpoints until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router()).await
}
