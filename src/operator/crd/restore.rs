//! The `ChronosRestore` resource: a one-shot restore of one item (to an ov or a time) or of a
//! whole collection (to a cv or a time) from the version index, or (`source: buckets`) a rebuild
//! of the database's whole metadata from its buckets. The spec is immutable; the status is the
//! job's record: phase, plan, progress, the page cursor that lets a restarted operator continue,
//! and a rebuild's report.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::rebuild::RebuildReport;
use crate::engine::{CollectionName, HistoryPoint, ItemId, RestoreCounts, Timestamp, VersionTarget};

/// A restore of one item or of a whole collection, or a rebuild of a database's metadata from
/// its buckets. Immutable once created.
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
    doc = "A one-shot, resumable restore of an item or a collection of a ChronosDatabase, or a rebuild of its metadata from its buckets.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Done", type_ = "integer", json_path = ".status.progress.done"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.progress.total"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ChronosRestore is immutable: create a new one"))]
#[x_kube(
    validation = Rule::new("self.source != 'buckets' || !(has(self.collection) || has(self.itemId) || has(self.target))")
        .message("source: buckets rebuilds the whole database: give no collection, itemId or target")
)]
#[x_kube(
    validation = Rule::new("self.source == 'buckets' || (has(self.collection) && has(self.target))")
        .message("a restore from the index needs a collection and a target")
)]
#[serde(rename_all = "camelCase")]
pub struct ChronosRestoreSpec {
    /// The `ChronosDatabase` in this namespace.
    pub database: String,
    /// Where the restore reads from: `index` (default) restores an item or a collection from the
    /// version index; `buckets` rebuilds the database's whole metadata from its buckets.
    #[serde(default)]
    pub source: Source,
    /// The collection (with `source: index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Restore only this item (target `ov` or `at`); without it, the whole collection (`cv` or `at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The version to go back to (with `source: index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
    /// How a rebuild runs (with `source: buckets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildSpec>,
    /// Only plan: count what would change, write nothing (not for a rebuild).
    #[serde(default)]
    pub dry_run: bool,
}

/// What a restore reads.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The version index in the metadata store.
    #[default]
    Index,
    /// The buckets alone: rebuild the metadata store from them.
    Buckets,
}

/// Options of a rebuild (`source: buckets`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// Rebuild into a metadata store that already holds data (loads replace heads, add versions).
    #[serde(default)]
    pub force: bool,
    /// Also take unconfirmed objects that extend their item's history (they may be writes that
    /// never committed).
    #[serde(default)]
    pub accept_unconfirmed: bool,
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
    /// Items examined so far (a rebuild: collections finished).
    pub done: u64,
    /// Items in the collection when the restore started (a rebuild: collections in the buckets).
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
    /// What a rebuild (`source: buckets`) did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The figures of a finished rebuild (the engine's `RebuildReport`, its key lists as counts).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSummary {
    pub collections: u64,
    /// Collections an interrupted run had finished (skipped this time).
    pub resumed_past: u64,
    /// Version entries loaded into the index.
    pub versions: u64,
    pub heads: u64,
    /// Versions kept only in retention manifests.
    pub pruned: u64,
    /// Versions taken from their objects because a later version names them.
    pub recovered: u64,
    /// Objects above their item's last committed version, left out (or taken, with
    /// `acceptUnconfirmed`: see `acceptedUnconfirmed`).
    pub unconfirmed: u64,
    pub accepted_unconfirmed: u64,
    /// Versions a committed successor names that are nowhere.
    pub lost: u64,
    pub seconds: f64,
    pub versions_per_second: f64,
}

impl From<&RebuildReport> for RebuildSummary {
    fn from(r: &RebuildReport) -> Self {
        RebuildSummary {
            collections: r.collections,
            resumed_past: r.resumed_past,
            versions: r.versions,
            heads: r.heads,
            pruned: r.pruned,
            recovered: r.recovered_from_objects,
            unconfirmed: r.unconfirmed,
            accepted_unconfirmed: r.accepted_unconfirmed,
            lost: r.lost.len() as u64,
            seconds: r.seconds,
            versions_per_second: r.versions_per_second,
        }
    }
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
    /// Rebuild the database's metadata from its buckets.
    Rebuild(RebuildSpec),
}

impl ChronosRestoreSpec {
    /// The job, or what is wrong with the spec.
    pub fn job(&self) -> Result<Job, String> {
        if self.source == Source::Buckets {
            return self.rebuild_job();
        }
        if self.rebuild.is_some() {
            return Err("spec.rebuild: only for source: buckets".to_owned());
        }
        let collection: CollectionName = self
            .collection
            .as_deref()
            .ok_or("spec.collection: required (unless source: buckets)")?
            .parse()
            .map_err(|e| format!("spec.collection: {e}"))?;
        let t = self
            .target
            .as_ref()
            .ok_or("spec.target: required (unless source: buckets)")?;
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

    /// A rebuild takes the whole database: anything naming a part of it is a mistake.
    fn rebuild_job(&self) -> Result<Job, String> {
        let stray = [
            ("collection", self.collection.is_some()),
            ("itemId", self.item_id.is_some()),
            ("target", self.target.is_some()),
            ("dryRun", self.dry_run),
        ];
        let stray: Vec<&str> = stray.iter().filter(|(_, given)| *given).map(|(f, _)| *f).collect();
        if !stray.is_empty() {
            return Err(format!(
                "source: buckets rebuilds the whole database's metadata; remove spec.{}",
                stray.join(", spec.")
            ));
        }
        Ok(Job::Rebuild(self.rebuild.unwrap_or_default()))
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

    fn parsed(spec: serde_json::Value) -> Result<Job, String> {
        serde_json::from_value::<ChronosRestoreSpec>(spec).unwrap().job()
    }

    #[test]
    fn a_rebuild_names_no_part_of_the_database() {
        let job = parsed(serde_json::json!({"database": "db", "source": "buckets", "rebuild": {"force": true}}));
        assert_eq!(
            job,
            Ok(Job::Rebuild(RebuildSpec {
                force: true,
                accept_unconfirmed: false
            }))
        );
        assert_eq!(
            parsed(serde_json::json!({"database": "db", "source": "buckets"})),
            Ok(Job::Rebuild(RebuildSpec::default()))
        );
        let err = parsed(serde_json::json!({
            "database": "db", "source": "buckets", "collection": "orders", "target": {"cv": 1}
        }))
        .unwrap_err();
        assert_eq!(
            err,
            "source: buckets rebuilds the whole database's metadata; remove spec.collection, spec.target"
        );
        let err = parsed(serde_json::json!({"database": "db", "source": "buckets", "dryRun": true})).unwrap_err();
        assert!(err.ends_with("remove spec.dryRun"), "{err}");
        let err = parsed(serde_json::json!({"database": "db", "target": {"cv": 1}})).unwrap_err();
        assert!(err.starts_with("spec.collection: required"), "{err}");
        let err = parsed(serde_json::json!({"database": "db", "collection": "orders"})).unwrap_err();
        assert!(err.starts_with("spec.target: required"), "{err}");
        let err = parsed(serde_json::json!({
            "database": "db", "collection": "orders", "target": {"cv": 1}, "rebuild": {}
        }))
        .unwrap_err();
        assert!(err.starts_with("spec.rebuild: only for source: buckets"), "{err}");
    }
}
