//! One integration-test binary (each test binary is a large link): modules by subject.

mod conformance;
mod memory;
mod mongo_s3;
mod support;
