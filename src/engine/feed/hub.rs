//! Per collection, what every feed reader in this engine process shares: when versions were first
//! seen (the frontier rule's sightings, so one reader's sighting settles a gap for all).
//!
//! Kept apart from the engine's code so the engine can hold it without the two files importing
//! each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::frontier::Sightings;
use crate::engine::model::CollectionName;

/// The hubs of an engine's collections, made on first use.
#[derive(Default)]
pub struct Feeds {
    hubs: Mutex<HashMap<CollectionName, Arc<Hub>>>,
}

impl Feeds {
    /// The hub of `collection`.
    pub(crate) fn hub(&self, collection: &CollectionName) -> Arc<Hub> {
        lock(&self.hubs).entry(collection.clone()).or_default().clone()
    }
}

/// One collection's shared feed state.
#[derive(Default)]
pub(crate) struct Hub {
    sightings: Mutex<Sightings>,
}

impl Hub {
    pub(crate) fn sightings(&self) -> MutexGuard<'_, Sightings> {
        lock(&self.sightings)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
