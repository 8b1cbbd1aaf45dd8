//! `ChronosRetention` (cluster-scoped): on a cron schedule, apply retention rules to the selected
//! collections of the selected databases — `ttlHours` makes cold items `processed` (their
//! inline copy dropped), `keepVersions` / `maxVersionAgeDays` prune the version index into
//! manifests.

pub mod controller;
pub mod crd;
pub mod schedule;

pub use crd::{ChronosRetention, ChronosRetentionSpec, ChronosRetentionStatus};
