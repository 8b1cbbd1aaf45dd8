//! The `ChronosDatabase` resource, and the names the database controller, the shared engine's
//! membership and the claims between databases all read: its condition types and the shared
//! engine's reserved name.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::valid_bucket;
pub use crate::config::{DatabaseType, Tier};

/// Condition types of a `ChronosDatabase`'s status.
pub const BACKENDS_REACHABLE: &str = "BackendsReachable";
pub const BUCKETS_READY: &str = "BucketsReady";
pub const ENGINE_READY: &str = "EngineReady";
/// Only with `spec.s3.objectLock`: whether the JSON bucket really locks objects (a probe).
pub const OBJECT_LOCK_READY: &str = "ObjectLockReady";
pub const READY: &str = "Ready";
/// Whether the last scheduled verify found the history intact (`spec.verify`).
pub const HISTORY_VERIFIED: &str = "HistoryVerified";

/// The namespace's shared engine: its Deployment and Service (its configuration Secret is
/// `chronos-engine-config`). It is named as the dedicated engine of a database called
/// [`RESERVED_NAME`] would be, which is why such a database can't have a dedicated engine.
pub const SHARED_ENGINE: &str = "chronos-engine";
/// The database name whose dedicated engine would be the shared engine.
pub const RESERVED_NAME: &str = "chronos";

/// A logical Chronos database: where its data lives and how it is served.
// clippy mistakes the repeated keys of kube's `printcolumn(...)` for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "chronos.dev",
    version = "v1alpha1",
    kind = "ChronosDatabase",
    namespaced,
    status = "ChronosDatabaseStatus",
    shortname = "cdb",
    category = "chronos",
    doc = "A Chronos logical database: MongoDB + S3 backends and the engine that serves them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Mongo DB", type_ = "string", json_path = ".spec.mongodb.dbName"),
    printcolumn(name = "Engine", type_ = "string", json_path = ".status.engineUrl"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.deletionPolicy", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ChronosDatabaseSpec {
    /// How requests find this database: a routing identity (type, tier, external id)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// …or a plain key. Give exactly one of `routing` and `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub mongodb: MongoSpec,
    pub s3: S3Spec,
    /// Engine settings every collection of this database starts from.
    #[serde(default)]
    pub defaults: CollectionDefaults,
    /// A dedicated engine for this database. Without it the namespace's shared engine
    /// (`chronos-engine`) serves it together with the namespace's other such databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineSpec>,
    /// Who may reach the engine's API port (NetworkPolicy peers of its ingress rule). Default:
    /// every pod of this namespace. On the shared engine, the members' lists are joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_from: Option<Vec<NetworkPolicyPeer>>,
    /// What happens to the data when this resource is deleted. `Retain` (default) keeps the
    /// MongoDB database and the buckets; `Delete` drops them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Verify the database's history against its buckets on a schedule (never when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// When the operator verifies a database's history (`chronos verify`, run by the operator).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// A cron schedule (5 fields, or 6 with seconds first), in UTC.
    pub schedule: String,
    /// Objects written less than this many seconds ago are not called orphans (their writes may
    /// be in flight); default: the engines' orphan grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
    /// Skip the runs until set back to false.
    #[serde(default)]
    pub suspend: bool,
}

/// The outcome of the last scheduled verify.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastVerify {
    /// When it started.
    pub time: Time,
    pub versions: u64,
    pub objects: u64,
    pub segments: u64,
    pub missing: u64,
    pub altered: u64,
    pub orphaned: u64,
    pub dangling: u64,
    /// Index entries no ledger segment names yet (not wrong by themselves).
    pub unconfirmed: u64,
    pub duration_seconds: f64,
    /// The first findings, each `kind: key (detail)`.
    #[serde(default)]
    pub findings: Vec<String>,
    /// Why the run failed, when it did (the counts are then zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    pub database_type: DatabaseType,
    pub tier: Tier,
    /// The tenant or domain identifier (required for the `domain` and `tenant` tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_identifier: Option<String>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoSpec {
    /// The Secret key holding the connection string (it may carry a password).
    pub uri_secret_ref: SecretKeyRef,
    /// The MongoDB database (1-38 characters of letters, digits, `_` and `-`).
    pub db_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// `http://` or `https://` URL of the S3-compatible endpoint.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "yes")]
    pub force_path_style: bool,
    pub buckets: Buckets,
    pub credentials_secret_ref: S3Credentials,
    /// Create the buckets with S3 Object Lock (possible only when a bucket is created) and write
    /// the payloads of collections with a `hold` rule under its retention. Whether the server
    /// enforces it is probed and reported in the `ObjectLockReady` condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub object_lock: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Buckets {
    /// Full JSON of every version.
    pub json: String,
    /// Large properties.
    pub content: String,
    /// Manifests and backups.
    pub backups: String,
}

/// A Secret with the S3 access key and secret key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub name: String,
    #[serde(default = "default_access_key_key")]
    pub access_key_key: String,
    #[serde(default = "default_secret_key_key")]
    pub secret_key_key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionDefaults {
    /// Data up to this size is kept inline in the head while hot (engine default 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_max_bytes: Option<u64>,
    /// Larger records are refused (engine default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
    /// The Secret key holding the key-encryption key of collections with `encryption: perItem`
    /// (base64 of 32 random bytes; the Secret needs the `chronos.dev/credentials` label). Losing
    /// it loses every encrypted item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct EngineSpec {
    #[serde(default = "one")]
    pub replicas: i32,
    /// The engine image; the operator's `--engine-image` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChronosDatabaseStatus {
    /// `BackendsReachable`, `BucketsReady`, `EngineReady`, `Ready`, and with `spec.verify`,
    /// `HistoryVerified`.
    #[serde(default)]
    #[schemars(schema_with = "crate::operator::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The in-cluster URL of the engine serving this database (its own, or the namespace's
    /// shared engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_url: Option<String>,
    /// Where clients reach this database: the engine's URL and the database's key (`/v1/{key}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Hash of the engine configuration now deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The Secret (in this namespace) with this database's bearer tokens: keys `read`, `write`
    /// and `admin`, each scoped to this database's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_secret: Option<String>,
    /// A digest of the MongoDB deployment (its hosts) this database's data lives on, so two
    /// databases on one MongoDB database can be told apart from two on different ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongo_backend: Option<String>,
    /// The last scheduled verify (`spec.verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<LastVerify>,
    /// When the next one is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verify: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn yes() -> bool {
    true
}
fn one() -> i32 {
    1
}
fn default_access_key_key() -> String {
    "accessKey".to_owned()
}
fn default_secret_key_key() -> String {
    "secretKey".to_owned()
}

impl CollectionDefaults {
    /// These tunables as an entry of the engine's configuration, or `None` when none is set
    /// (the engine's own defaults apply).
    pub fn engine_config(&self) -> Option<crate::config::EngineConfig> {
        if self.inline_max_bytes.is_none() && self.max_payload_bytes.is_none() {
            return None;
        }
        let mut engine = crate::config::EngineConfig::default();
        if let Some(v) = self.inline_max_bytes {
            engine.inline_max_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.max_payload_bytes {
            engine.max_payload_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        Some(engine)
    }
}

impl ChronosDatabaseSpec {
    /// Every problem with the spec, each naming its field. Empty when the spec can work.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.routing, &self.key) {
            (Some(_), Some(_)) | (None, None) => out.push("give exactly one of spec.routing and spec.key".to_owned()),
            (Some(r), None) => {
                let needs_id = matches!(r.tier, Tier::Domain | Tier::Tenant);
                if needs_id && r.ext_identifier.as_deref().is_none_or(str::is_empty) {
                    out.push("spec.routing.extIdentifier: required for the domain and tenant tiers".to_owned());
                }
            }
            (None, Some(k)) if k.parse::<crate::engine::ItemId>().is_err() || k == "admin" => {
                out.push("spec.key: expected 1-128 letters, digits, `_ - . :` (and not `admin`)".to_owned())
            }
            (None, Some(_)) => {}
        }
        if let Some(r) = &self.routing
            && r.tier == Tier::Generic
            && r.ext_identifier.is_some()
        {
            out.push("spec.routing.extIdentifier: the generic tier has no identifier".to_owned());
        }
        let db = &self.mongodb.db_name;
        let db_ok =
            !db.is_empty() && db.len() <= 38 && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !db_ok {
            out.push("spec.mongodb.dbName: expected 1-38 characters of letters, digits, '_' and '-'".to_owned());
        }
        if !(self.s3.endpoint.starts_with("http://") || self.s3.endpoint.starts_with("https://")) {
            out.push("spec.s3.endpoint: expected an http:// or https:// URL".to_owned());
        }
        if self.s3.region.is_empty() {
            out.push("spec.s3.region: expected a region name such as us-east-1".to_owned());
        }
        let b = &self.s3.buckets;
        for (field, name) in [("json", &b.json), ("content", &b.content), ("backups", &b.backups)] {
            if !valid_bucket(name) {
                out.push(format!(
                    "spec.s3.buckets.{field}: {name:?} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"
                ));
            }
        }
        if let Some(e) = &self.engine
            && e.replicas < 0
        {
            out.push("spec.engine.replicas: must be 0 or more".to_owned());
        }
        if self.ingress_from.as_ref().is_some_and(Vec::is_empty) {
            out.push(
                "spec.ingressFrom: give at least one peer (omit it for this namespace; \
                 `- namespaceSelector: {}` admits every namespace)"
                    .to_owned(),
            );
        }
        out
    }
}

impl ChronosDatabase {
    /// Every problem with the resource: its spec's, and a dedicated engine whose objects would
    /// be the namespace's shared engine's.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.spec.problems();
        if self.spec.engine.is_some() && self.metadata.name.as_deref() == Some(RESERVED_NAME) {
            out.push(format!(
                "metadata.name: a database called `{}` can't have spec.engine (its engine would be the \
                 namespace's shared engine, {}); rename it or drop spec.engine",
                RESERVED_NAME, SHARED_ENGINE
            ));
        }
        out
    }
}

/// The key the engine serves `db` under (`/v1/{key}/…`): `spec.key`, or for a database with a
/// routing identity, its resource name.
pub fn database_key(db: &ChronosDatabase) -> String {
    use kube::ResourceExt;
    db.spec.key.clone().unwrap_or_else(|| db.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_problems_name_their_fields() {
        let mut db = ChronosDatabase::orders();
        assert!(db.spec.problems().is_empty());
        db.spec.routing = Some(Routing {
            database_type: DatabaseType::Runtime,
            tier: Tier::Tenant,
            ext_identifier: None,
        });
        db.spec.s3.buckets.json = "Bad_Bucket".into();
        let problems = db.spec.problems();
        assert!(
            problems[0].contains("exactly one of spec.routing and spec.key"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("spec.s3.buckets.json"), "{problems:?}");
        db.spec.key = None;
        assert!(db.spec.problems()[0].starts_with("spec.routing.extIdentifier"));
        db.spec.routing = Some(Routing {
            database_type: DatabaseType::Runtime,
            tier: Tier::Generic,
            ext_identifier: Some("x".into()),
        });
        assert!(db.spec.problems()[0].contains("the generic tier has no identifier"));
        db.spec.routing = None;
        db.spec.key = Some("no spaces".into());
        assert!(db.spec.problems()[0].starts_with("spec.key"));
    }
}
