//! `ChronosDatabase`: one logical database — its MongoDB, its S3 buckets, and the engine that
//! serves it.
//!
//! - [`crd`]: the resource.
//! - [`build`]: the engine's Secret, Deployment and Service (pure functions of the spec).
//! - [`controller`]: checks backends, ensures buckets, applies the engine, writes status, and
//!   honours `deletionPolicy` through a finalizer.

pub mod build;
pub mod controller;
pub mod crd;

pub use crd::{ChronosDatabase, ChronosDatabaseSpec, ChronosDatabaseStatus, DeletionPolicy};
