//! The `ChronosCollection` resource: one collection of a `ChronosDatabase` — its indexed
//! properties, required properties, counters and retention override. Its controller ensures the
//! MongoDB indexes; the database controller renders its map and counters into the engine's
//! configuration.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::engine::{CollectionMap, CollectionName, ContentKind, CounterRule, Encryption, HoldRule, Op};

/// The condition type of a `ChronosCollection`'s status: its MongoDB indexes are in place.
pub const INDEXES_READY: &str = "IndexesReady";
/// The condition type the operator's change-feed follower owns: it follows the collection's feed
/// (and whether it had to skip history retention pruned before it saw it).
pub const CHANGES_FOLLOWED: &str = "ChangesFollowed";

/// A collection of a Chronos database.
// clippy mistakes the repeated keys of kube's `printcolumn(...)` for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "chronos.dev",
    version = "v1alpha1",
    kind = "ChronosCollection",
    namespaced,
    status = "ChronosCollectionStatus",
    shortname = "ccol",
    category = "chronos",
    doc = "A collection of a ChronosDatabase: indexes, validation, counters, retention.",
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database"),
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.name"),
    printcolumn(
        name = "Indexes",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"IndexesReady\")].status"
    ),
    printcolumn(name = "Last CV", type_ = "integer", json_path = ".status.changes.lastCv"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ChronosCollectionSpec {
    /// The `ChronosDatabase` in this namespace.
    pub database: String,
    /// The collection's name in the database.
    pub name: String,
    /// Only these top-level properties are indexed metadata, each with a MongoDB index. Empty:
    /// every top-level scalar is indexed metadata, without indexes.
    #[serde(default)]
    pub indexed_props: Vec<String>,
    /// Writes missing any of these (indexed) properties are refused.
    #[serde(default)]
    pub required_indexed: Vec<String>,
    /// Properties kept in the content bucket instead of the JSON, by kind: `text` (UTF-8) or
    /// `binary` (base64 in the JSON). A property can't be both indexed and content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "content_props_schema")]
    pub content_props: BTreeMap<String, ContentKind>,
    /// Named conditional counters.
    #[serde(default)]
    pub counters: Vec<CounterRuleSpec>,
    /// A retention hold: items are neither pruned nor erased until `days` after their latest
    /// write; on a database with `s3.objectLock` their payloads carry S3 Object Lock retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "hold_schema")]
    pub hold: Option<HoldRule>,
    /// `perItem`: payloads encrypted with a data key per item, so destroying the key erases the
    /// item even where objects can't be deleted (needs the database's
    /// `defaults.encryptionKeySecretRef`).
    #[serde(default, skip_serializing_if = "is_plain")]
    #[schemars(schema_with = "encryption_schema")]
    pub encryption: Encryption,
    /// Overrides the rules of any `ChronosRetention` selecting this collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionOverride>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CounterRuleSpec {
    pub name: String,
    /// A filter on indexed properties (the query subset); absent for every version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub when: Option<serde_json::Value>,
    /// Which operations count: CREATE, UPDATE, DELETE, RESTORE.
    pub on: Vec<CountedOp>,
}

/// An operation a counter counts (the engine's `Op`, with a schema).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CountedOp {
    Create,
    Update,
    Delete,
    Restore,
}

impl From<CountedOp> for Op {
    fn from(op: CountedOp) -> Op {
        match op {
            CountedOp::Create => Op::Create,
            CountedOp::Update => Op::Update,
            CountedOp::Delete => Op::Delete,
            CountedOp::Restore => Op::Restore,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_hours: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_versions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version_age_days: Option<f64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChronosCollectionStatus {
    /// `IndexesReady` (the reconcile's) and `ChangesFollowed` (the change-feed follower's).
    #[serde(default)]
    #[schemars(schema_with = "crate::operator::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The MongoDB indexes of indexed properties now in place.
    #[serde(default)]
    pub indexes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the operator saw last on the collection's change feed. Written by the follower under
    /// its own field manager, so the reconcile's status writes never send (or clear) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<CollectionChanges>,
}

/// `status.changes`: the latest version the operator's follower of the collection's change feed
/// has seen, written at most every few seconds. A restarted operator resumes after `lastCv`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionChanges {
    /// The `ChronosDatabase` and the collection (`spec.database`, `spec.name`) these figures are
    /// about: after either changes in the spec, the follower starts over instead of resuming
    /// after another collection's cv.
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub collection: String,
    /// Every version up to this cv was seen (0: none yet); the follower resumes after it.
    pub last_cv: u64,
    /// When the latest version seen was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_at: Option<Time>,
    /// The item of the latest version seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_item: Option<String>,
    /// The operation of the latest version seen: CREATE, UPDATE, DELETE or RESTORE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_op: Option<String>,
    /// Versions seen since the operator began following this collection, kept across operator
    /// restarts (it resumes after `lastCv`, so none is counted twice); versions retention pruned
    /// before the operator saw them are not counted.
    #[serde(default)]
    pub versions_seen: u64,
}

// The engine's `ContentKind` as a plain string enum, written by hand: a derived schema of its
// documented variants is a `oneOf` with descriptions, which Kubernetes rejects as not structural.
fn content_props_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "enum": ["binary", "text"]},
    })
}

// The engine's `HoldRule` and `Encryption`, with schemas written by hand for the same reason.
fn hold_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "required": ["mode", "days"],
        "properties": {
            "mode": {"type": "string", "enum": ["GOVERNANCE", "COMPLIANCE"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 36500},
        },
    })
}

fn encryption_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["none", "perItem"], "default": "none"})
}

fn is_plain(e: &Encryption) -> bool {
    *e == Encryption::None
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

impl ChronosCollectionSpec {
    /// The engine's view of this collection, or every problem with the spec.
    pub fn map(&self) -> Result<(CollectionName, CollectionMap), Vec<String>> {
        let mut out = Vec::new();
        let name = self
            .name
            .parse::<CollectionName>()
            .map_err(|e| format!("spec.name: {e}"));
        let map = CollectionMap {
            indexed_props: Some(self.indexed_props.clone()).filter(|p| !p.is_empty()),
            required_indexed: self.required_indexed.clone(),
            content_props: self.content_props.clone(),
            hold: self.hold,
            encryption: self.encryption,
        };
        for (field, problem) in map.problems() {
            out.push(format!("spec.{field}: {problem}"));
        }
        for (i, field, problem) in crate::engine::settings::rule_problems(&self.counter_rules()) {
            out.push(format!("spec.counters[{i}].{field}: {problem}"));
        }
        match name {
            Ok(name) if out.is_empty() => Ok((name, map)),
            Ok(_) => Err(out),
            Err(e) => {
                out.insert(0, e);
                Err(out)
            }
        }
    }

    /// The counters as the engine reads them.
    pub fn counter_rules(&self) -> Vec<CounterRule> {
        self.counters
            .iter()
            .map(|c| CounterRule {
                name: c.name.clone(),
                when: c.when.clone().unwrap_or(serde_json::Value::Null),
                on: c.on.iter().map(|&o| o.into()).collect(),
            })
            .collect()
    }
}
