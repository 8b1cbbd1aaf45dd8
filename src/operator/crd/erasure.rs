//! The `ChronosErasure` resource: a one-shot erasure of one item, or of every item a filter on
//! indexed metadata finds in any of its versions, across all versions (`engine::erase`). A
//! resource of its own rather than a kind of `ChronosRestore`: an erasure destroys instead of
//! appending, needs its own reason and audit trail, and must be grantable (RBAC) apart from
//! restores. The spec is immutable; the status is the job's record and carries the erasure
//! record's summary (never the erased data, nor the filter).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::{CollectionName, EraseTarget, ItemId};

pub use super::restore::Phase;

/// An erasure of one item or of every item a filter finds. Immutable once created.
// clippy mistakes the repeated keys of kube's `printcolumn(...)` for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chronos.dev",
    version = "v1alpha1",
    kind = "ChronosErasure",
    namespaced,
    status = "ChronosErasureStatus",
    shortname = "cera",
    category = "chronos",
    doc = "A one-shot, resumable erasure (right to be forgotten) of items of a ChronosDatabase across all their versions.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database"),
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Items", type_ = "integer", json_path = ".status.report.items"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ChronosErasure is immutable: create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ChronosErasureSpec {
    /// The `ChronosDatabase` in this namespace.
    pub database: String,
    pub collection: String,
    /// Erase this item. Exactly one of `itemId` and `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// Erase every item with a version whose indexed metadata matches this filter: a JSON object
    /// in the list filter's subset, e.g. `{"subjectId": "u-42"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Why (recorded in the erasure record).
    pub reason: String,
}

/// The erasure record's summary.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReport {
    /// The erasure record's id (`chronos-erasures/<collection>/<id>.json` in the payload bucket).
    pub erasure_id: String,
    pub items: u64,
    pub versions: u64,
    pub objects: u64,
    /// Hex SHA-256 over the erased index entries.
    pub sha256: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChronosErasureStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ErasureReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl ChronosErasureSpec {
    /// The collection and what to erase, or what is wrong with the spec.
    pub fn job(&self) -> Result<(CollectionName, EraseTarget), String> {
        let collection: CollectionName = self.collection.parse().map_err(|e| format!("spec.collection: {e}"))?;
        if self.reason.trim().is_empty() {
            return Err("spec.reason: an erasure needs a reason".to_owned());
        }
        let target = match (&self.item_id, &self.filter) {
            (Some(id), None) => EraseTarget::Item(id.parse::<ItemId>().map_err(|e| format!("spec.itemId: {e}"))?),
            (None, Some(f)) => {
                let filter: serde_json::Value =
                    serde_json::from_str(f).map_err(|e| format!("spec.filter: not JSON: {e}"))?;
                if filter.as_object().is_none_or(|o| o.is_empty()) {
                    return Err("spec.filter: must be a non-empty JSON object".to_owned());
                }
                EraseTarget::Matching(filter)
            }
            _ => return Err("spec: give exactly one of itemId and filter".to_owned()),
        };
        Ok((collection, target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> ChronosErasureSpec {
        let mut base = serde_json::json!({"database": "db", "collection": "people", "reason": "GDPR"});
        base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn an_erasure_names_one_item_or_a_filter() {
        assert!(matches!(
            spec(serde_json::json!({"itemId": "p1"})).job(),
            Ok((_, EraseTarget::Item(_)))
        ));
        assert!(matches!(
            spec(serde_json::json!({"filter": "{\"subject\": \"u-42\"}"})).job(),
            Ok((_, EraseTarget::Matching(_)))
        ));
        let err = |v| spec(v).job().unwrap_err();
        assert!(err(serde_json::json!({})).contains("exactly one"));
        assert!(err(serde_json::json!({"itemId": "p1", "filter": "{}"})).contains("exactly one"));
        assert!(err(serde_json::json!({"filter": "{}"})).starts_with("spec.filter"));
        assert!(err(serde_json::json!({"filter": "nope"})).starts_with("spec.filter"));
        assert!(err(serde_json::json!({"itemId": "p1", "reason": " "})).starts_with("spec.reason"));
    }
}
