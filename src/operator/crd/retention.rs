//! The `ChronosRetention` resource (cluster-scoped): on a cron schedule, apply retention rules
//! to the selected collections of the selected databases — `ttlHours` makes cold items
//! `processed` (their inline copy dropped), `keepVersions` / `maxVersionAgeDays` prune the
//! version index into manifests.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::collection::RetentionOverride;

/// The condition type of a `ChronosRetention`'s status: a next run is scheduled.
pub const SCHEDULED: &str = "Scheduled";

/// Scheduled retention across databases and collections.
// clippy mistakes the repeated keys of kube's `printcolumn(...)` for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "chronos.dev",
    version = "v1alpha1",
    kind = "ChronosRetention",
    status = "ChronosRetentionStatus",
    shortname = "cret",
    category = "chronos",
    doc = "Scheduled retention (cost tiering, version pruning) over selected Chronos collections.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRun.time"),
    printcolumn(name = "Outcome", type_ = "string", json_path = ".status.lastRun.outcome"),
    printcolumn(name = "Next Run", type_ = "date", json_path = ".status.nextRun")
)]
#[serde(rename_all = "camelCase")]
pub struct ChronosRetentionSpec {
    pub selector: RetentionSelector,
    pub rules: RetentionRules,
    /// Cron: `min hour dom month dow`, or with a leading seconds field; `@daily` etc. (UTC).
    pub schedule: String,
    /// Skip scheduled runs while true.
    #[serde(default)]
    pub suspend: bool,
    /// Count what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Which collections: in the databases of the listed namespaces (required: a retention never
/// reaches every tenant by default), optionally narrowed by labels and collection names.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSelector {
    /// Namespaces of the databases (at least one).
    #[schemars(length(min = 1))]
    pub namespaces: Vec<String>,
    /// Labels a `ChronosDatabase` must carry.
    #[serde(default)]
    pub database_labels: BTreeMap<String, String>,
    /// Collection names (empty: all of the selected databases').
    #[serde(default)]
    pub collections: Vec<String>,
}

impl ChronosRetentionSpec {
    /// Every problem with the spec, each naming its field. Also checked here, not only by the
    /// schema: a resource stored before the schema required namespaces must not prune everyone.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.selector.namespaces.is_empty() || self.selector.namespaces.iter().any(String::is_empty) {
            out.push("spec.selector.namespaces: list the namespaces whose databases this retention prunes".to_owned());
        }
        out.extend(self.rules.problems());
        out
    }
}

/// The rules; a collection's own `spec.retention` overrides them field by field.
pub type RetentionRules = RetentionOverride;

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// When the run started.
    pub time: Time,
    /// `Succeeded` or `Failed` (some collections failed; see `failures`).
    pub outcome: String,
    pub dry_run: bool,
    pub collections: u64,
    /// Items made (or, dry, that would be made) `processed`.
    pub processed: u64,
    /// Version index entries pruned (or, dry, that would be).
    pub versions_pruned: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    pub duration_seconds: f64,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChronosRetentionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// `Scheduled`.
    #[serde(default)]
    #[schemars(schema_with = "crate::operator::conditions::schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl RetentionOverride {
    /// These rules with `over`'s fields taking precedence.
    pub fn overridden_by(&self, over: Option<&RetentionOverride>) -> RetentionOverride {
        let Some(o) = over else { return self.clone() };
        RetentionOverride {
            ttl_hours: o.ttl_hours.or(self.ttl_hours),
            keep_versions: o.keep_versions.or(self.keep_versions),
            max_version_age_days: o.max_version_age_days.or(self.max_version_age_days),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ttl_hours.is_none() && self.keep_versions.is_none() && self.max_version_age_days.is_none() {
            out.push("spec.rules: give at least one of ttlHours, keepVersions, maxVersionAgeDays".to_owned());
        }
        if self.ttl_hours.is_some_and(|h| !(h.is_finite() && h >= 0.0)) {
            out.push("spec.rules.ttlHours: must be a number of hours, 0 or more".to_owned());
        }
        if self.keep_versions == Some(0) {
            out.push("spec.rules.keepVersions: must be at least 1 (the latest version is always kept)".to_owned());
        }
        if self.max_version_age_days.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
            out.push("spec.rules.maxVersionAgeDays: must be a number of days, 0 or more".to_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn a_retention_must_name_the_namespaces_it_prunes() {
        // The server refuses one without them (nothing to default to "every tenant")…
        let crd = serde_json::to_value(ChronosRetention::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(
            spec["required"].as_array().unwrap().contains(&json!("selector")),
            "{spec:#}"
        );
        let selector = &spec["properties"]["selector"];
        assert!(
            selector["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("namespaces"))),
            "{selector:#}"
        );
        assert_eq!(selector["properties"]["namespaces"]["minItems"], 1);
        // …and so does the controller, for one stored before the schema said so.
        let stored: ChronosRetentionSpec = serde_json::from_value(
            json!({"selector": {"namespaces": []}, "rules": {"ttlHours": 0}, "schedule": "@daily"}),
        )
        .unwrap();
        assert!(
            stored.problems()[0].starts_with("spec.selector.namespaces"),
            "{:?}",
            stored.problems()
        );
    }
}
