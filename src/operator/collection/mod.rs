//! `ChronosCollection`: one collection of a `ChronosDatabase` — its indexed properties, required
//! properties, counters and retention override. The controller ensures its MongoDB indexes; the
//! database controller renders its map and counters into the engine's configuration.

pub mod controller;
pub mod crd;

pub use crd::{ChronosCollection, ChronosCollectionSpec, ChronosCollectionStatus};
