//! The Kubernetes operator: four custom resources and their controllers.
//!
//! - [`crd`]: the resources themselves — `ChronosDatabase` (backends, buckets, the engine that
//!   serves it), `ChronosCollection` (indexes of one collection), `ChronosRestore` (a one-shot,
//!   resumable restore) and `ChronosRetention` (scheduled cost tiering). A leaf: types, their
//!   validation and the names others share, no client.
//! - [`controllers`]: one reconciler per resource, beside the pure rendering of what it applies.
//!
//! Every reconciler is the same pipeline: read → validate → build the desired objects (pure, no
//! client) → apply them by server-side apply under [`FIELD_MANAGER`] → write status with
//! [`conditions`], publishing [`events`] for what changed. [`leader`] makes sure only one
//! replica acts; [`schedule`] says when scheduled work (retention, verify) is due; [`run`] wires
//! it all together.

pub mod backend_hosts;
pub mod backends;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod crd;
pub mod data_gate;
pub mod error;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod leader;
mod runner;
pub mod schedule;

pub use context::{Context, FIELD_MANAGER, apply_status, requeue};
pub use crd::{GROUP, crds, crds_yaml};
pub use error::{Error, Result};
pub use runner::{OperatorArgs, Scope, error_policy, run, run_controllers};
