//! One integration-test binary (each test binary is a large link): modules by subject.

// Tests and their helpers may unwrap: a failed unwrap is a failed test (Cargo.toml's [lints] deny it in
// product code; clippy.toml allows it inside #[test] functions but not in shared helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod api_auth;
mod api_changes;
mod api_erase;
mod api_holds;
mod api_ops;
mod api_queue;
mod conformance;
mod embedded;
mod examples;
mod failover;
mod feed;
mod feed_restart;
mod locks;
mod memory;
mod mongo_group;
mod mongo_proxy;
mod mongo_reads;
mod mongo_rebuild;
mod mongo_s3;
mod object_lock;
mod operator;
mod operator_mock;
mod operator_render;
mod pack;
mod packed;
mod payload_contract;
mod readme;
mod routing;
mod scrub;
mod support;
mod tenants;
