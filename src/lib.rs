//! Chronos: versioned, cost-first persistence for JSON records on MongoDB + S3.
//!
//! - [`engine`]: the versioning core, its store traits and backends.
//! - [`config`]: the configuration file, parsed and validated.
//! - [`connect`]: configuration turned into engines; [`error`]: the one error of that wiring
//!   and of the binary's commands.

// The docs are for the people who work on Chronos (`cargo doc --document-private-items`): they
// link private items on purpose.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod client;
pub mod config;
pub mod connect;
pub mod engine;
pub mod error;
pub mod operator;
pub mod reload;

/// Make ring the crypto provider of every rustls client in the process, so no C crypto library
/// is needed. Idempotent; call before building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
