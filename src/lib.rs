//! Chronos: versioned, cost-first persistence for JSON records on MongoDB + S3.
//!
//! - [`engine`]: the versioning core, its store traits and backends.
//! - [`config`]: the configuration file, parsed and validated.

pub mod api;
pub mod client;
pub mod config;
pub mod connect;
pub mod engine;
pub mod operator;
pub mod reload;
pub mod routing;

/// Make ring the crypto provider of every rustls client in the process, so no C crypto library
/// is needed. Idempotent; call before building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
