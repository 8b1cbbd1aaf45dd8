//! One integration-test binary (each test binary is a large link): modules by subject.

mod api;
mod api_ops;
mod api_queue;
mod conformance;
mod embedded;
mod examples;
mod failover;
mod locks;
mod memory;
mod mongo_proxy;
mod mongo_s3;
mod operator;
mod operator_mock;
mod payload_contract;
mod readme;
mod routing;
mod scrub;
mod support;
mod tenants;
