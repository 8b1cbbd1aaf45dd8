//! Restores, always append-only: an item goes back to an earlier version, a collection to an
//! earlier point (cv or time), by appending versions that equal the earlier state.
//!
//! - `plan`: what a restore does to one item, and the counts it reports.
//! - `item`: one item, by reference or by copy, retried under concurrent writes.
//! - `collection`: a whole collection in independent pages, appended by reference in batches.

mod collection;
mod item;
mod plan;

pub use plan::{RestoreCounts, RestorePage};
