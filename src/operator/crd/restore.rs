//! The `ChronosRestore` resource: a one-shot restore of one item (to an ov or a time) or of a
//! whole collection (to a cv or a time). The spec is immutable; the status is the job's record:
//! phase, plan, progress and the page cursor that lets a restarted operator continue.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::{CollectionName, HistoryPoint, ItemId, RestoreCounts, Timestamp, VersionTarget};

/// A restore of one item or of a whole collection. Immutable once created.
// clippy mistakes the repeated keys of kube's `printcolumn(...)` for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chronos.dev",
    version = "v1alpha1",
    kind = "ChronosRestore",
    namespaced,
    status = "ChronosRestoreStatus",
    shortname = "crst",
    category = "chronos",
    doc = "A one-shot, resumable restore of an item or a collection of a ChronosDatabase.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database"),
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Done", type_ = "integer", json_path = ".status.progress.done"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.progress.total"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ChronosRestore is immutable: create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ChronosRestoreSpec {
    /// The `ChronosDatabase` in this namespace.
    pub database: String,
    pub collection: String,
    /// Restore only this item (target `ov` or `at`); without it, the whole collection (`cv` or `at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    pub target: RestoreTarget,
    /// Only plan: count what would change, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Exactly one of `ov`, `cv`, `at`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RestoreTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ov: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cv: Option<u64>,
    /// An RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// Item counts of a restore (the engine's `RestoreCounts`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Counts {
    pub examined: u64,
    pub restored: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

impl From<RestoreCounts> for Counts {
    fn from(c: RestoreCounts) -> Self {
        Counts {
            examined: c.examined,
            restored: c.restored,
            deleted: c.deleted,
            unchanged: c.unchanged,
        }
    }
}

impl Counts {
    pub fn add(&mut self, c: RestoreCounts) {
        self.examined += c.examined;
        self.restored += c.restored;
        self.deleted += c.deleted;
        self.unchanged += c.unchanged;
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Progress {
    /// Items examined so far.
    pub done: u64,
    /// Items in the collection when the restore started.
    pub total: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChronosRestoreStatus {
    #[serde(default)]
    pub phase: Phase,
    /// What the restore will do (from a dry pass before any write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Counts>,
    /// What it did so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Counts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Continue after this item id (a collection restore is paged; pages are idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What a valid spec asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Item {
        collection: CollectionName,
        id: ItemId,
        target: VersionTarget,
    },
    Collection {
        collection: CollectionName,
        point: HistoryPoint,
    },
}

impl ChronosRestoreSpec {
    /// The job, or what is wrong with the spec.
    pub fn job(&self) -> Result<Job, String> {
        let collection: CollectionName = self.collection.parse().map_err(|e| format!("spec.collection: {e}"))?;
        let t = &self.target;
        let at =
            t.at.as_deref()
                .map(|s| {
                    s.parse::<Timestamp>()
                        .map_err(|e| format!("spec.target.at: expected an RFC 3339 time: {e}"))
                })
                .transpose()?;
        let given = [t.ov.is_some(), t.cv.is_some(), at.is_some()];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err("spec.target: give exactly one of ov, cv and at".to_owned());
        }
        match &self.item_id {
            Some(id) => {
                let id: ItemId = id.parse().map_err(|e| format!("spec.itemId: {e}"))?;
                let target = match (t.ov, at) {
                    (Some(ov), _) => VersionTarget::Ov(ov),
                    (_, Some(at)) => VersionTarget::At(at),
                    _ => return Err("spec.target.cv: an item restores to an ov or a time, not a cv".to_owned()),
                };
                Ok(Job::Item { collection, id, target })
            }
            None => {
                let point = match (t.cv, at) {
                    (Some(cv), _) => HistoryPoint::Cv(cv),
                    (_, Some(at)) => HistoryPoint::At(at),
                    _ => {
                        return Err(
                            "spec.target.ov: a collection restores to a cv or a time; ov needs spec.itemId".to_owned(),
                        );
                    }
                };
                Ok(Job::Collection { collection, point })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(item: Option<&str>, target: serde_json::Value) -> ChronosRestoreSpec {
        serde_json::from_value(serde_json::json!({
            "database": "db", "collection": "orders", "itemId": item, "target": target
        }))
        .unwrap()
    }

    #[test]
    fn targets_must_fit_the_kind_of_restore() {
        assert!(matches!(
            spec(Some("a"), serde_json::json!({"ov": 1})).job(),
            Ok(Job::Item {
                target: VersionTarget::Ov(1),
                ..
            })
        ));
        assert!(matches!(
            spec(None, serde_json::json!({"cv": 7})).job(),
            Ok(Job::Collection {
                point: HistoryPoint::Cv(7),
                ..
            })
        ));
        assert!(matches!(
            spec(None, serde_json::json!({"at": "2030-01-01T00:00:00Z"})).job(),
            Ok(Job::Collection {
                point: HistoryPoint::At(_),
                ..
            })
        ));
        let err = |item, t| spec(item, t).job().unwrap_err();
        assert!(err(None, serde_json::json!({"ov": 1})).starts_with("spec.target.ov"));
        assert!(err(Some("a"), serde_json::json!({"cv": 1})).starts_with("spec.target.cv"));
        assert!(err(None, serde_json::json!({})).contains("exactly one"));
        assert!(err(None, serde_json::json!({"cv": 1, "ov": 2})).contains("exactly one"));
        assert!(err(None, serde_json::json!({"at": "yesterday"})).starts_with("spec.target.at"));
    }
}
