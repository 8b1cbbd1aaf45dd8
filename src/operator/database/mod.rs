//! `ChronosDatabase`: one logical database — its MongoDB, its S3 buckets, and the engine that
//! serves it.
//!
//! - [`crd`]: the resource.
//! - [`build`]: the engines' Secrets, Deployments and Services — a dedicated engine, or the
//!   namespace's shared engine and its members (pure functions of the resources).
//! - [`claims`]: which databases would share a MongoDB database or a bucket they must not.
//! - [`controller`]: checks backends, ensures buckets, applies the engine (and re-renders the
//!   shared engine), writes status, and honours `deletionPolicy` through a finalizer.

pub mod build;
pub mod claims;
pub mod controller;
pub mod crd;

pub use crd::{ChronosDatabase, ChronosDatabaseSpec, ChronosDatabaseStatus, DeletionPolicy};
