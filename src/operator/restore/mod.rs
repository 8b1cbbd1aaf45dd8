//! `ChronosRestore`: a one-shot restore of one item (to an ov or a time) or of a whole collection
//! (to a cv or a time). The spec is immutable; the status is the job's record: phase, plan,
//! progress and the page cursor that lets a restarted operator continue where it stopped.

pub mod controller;
pub mod crd;

pub use crd::{ChronosRestore, ChronosRestoreSpec, ChronosRestoreStatus, Phase};
