//! Chronos: versioned, cost-first persistence for JSON records on MongoDB + S3.
//!
//! - [`engine`]: the versioning core, its store traits and backends.
//! - [`config`]: the configuration file, parsed and validated.

pub mod config;
pub mod engine;
