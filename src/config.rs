//! The configuration file (`--config`, JSON or YAML), parsed into typed structs and validated.
//!
//! Keys follow the original system where they exist (`mongoUris`, `spacesConns`, …). Every error
//! names the field and what was expected. Secrets may be given inline, as `{file: PATH}` (how
//! Kubernetes mounts Secrets) or as `{env: NAME}`; they are never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::backends::S3Connection;
use crate::engine::{CollectionMap, CollectionName, ContentKind, CounterRule, EngineSettings, QueueSettings};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n{}", .issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found in a configuration: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// A secret value: inline, from a file, or from an environment variable.
#[derive(Clone, Deserialize)]
#[serde(untagged, expecting = "a string, {file: PATH} or {env: NAME}")]
pub enum Secret {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<inline>)"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
        }
    }
}

impl Secret {
    /// The secret's value. Files are read when called, so a rotated Secret is picked up.
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Inline(v) => Ok(v.clone()),
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read secret file {}: {e}", file.display())),
            Secret::Env { env } => std::env::var(env).map_err(|_| format!("environment variable {env} is not set")),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// MongoDB connection strings (they may hold passwords, so they are secrets).
    #[serde(default)]
    pub mongo_uris: Vec<Secret>,
    /// S3-compatible endpoints with their buckets.
    #[serde(default)]
    pub spaces_conns: Vec<SpacesConn>,
    /// The MongoDB database of the default logical database.
    #[serde(default = "default_db_name")]
    pub db_name: String,
    /// Embedded mode: SQLite + local files under `basePath` (no MongoDB/S3 needed).
    #[serde(default)]
    pub local_storage: Option<LocalStorage>,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Per collection: which properties are indexed metadata and which are required.
    #[serde(default)]
    pub collection_maps: BTreeMap<String, CollectionMapConfig>,
    /// Per collection: named conditional counters `{name, when, on}`.
    #[serde(default)]
    pub counters: BTreeMap<String, Vec<CounterRule>>,
    /// Multi-tenant routing: logical databases by type (metadata, knowledge, runtime) and tier
    /// (generic, domains, tenants), each on one of the `mongoUris` × `spacesConns` backends.
    #[serde(default)]
    pub database_types: Option<DatabaseTypes>,
    /// Logical databases addressed by key alone, outside the type × tier scheme (how the
    /// operator's shared engine serves a `ChronosDatabase` with `spec.key`). Routed like
    /// `databaseTypes` entries, and either one turns routing on.
    #[serde(default)]
    pub databases: Vec<RouteEntry>,
    /// Bearer tokens for the HTTP API; without it the API is open (fine on a laptop only).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// The three database types, each with its tiers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseTypes {
    #[serde(default)]
    pub metadata: Option<Tiers>,
    #[serde(default)]
    pub knowledge: Option<Tiers>,
    #[serde(default)]
    pub runtime: Option<Tiers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tiers {
    #[serde(default)]
    pub generic: Option<RouteEntry>,
    #[serde(default)]
    pub domains: Vec<RouteEntry>,
    #[serde(default)]
    pub tenants: Vec<RouteEntry>,
}

/// One logical database. Without `mongo` / `spaces`, its backends are chosen by rendezvous
/// hashing of its key over all of them (stable, and adding a backend moves about 1/n of keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteEntry {
    /// How the API addresses it: `/v1/{key}/…`.
    pub key: String,
    /// The domain's or tenant's external identifier (not for the generic tier).
    #[serde(default)]
    pub ext_identifier: Option<String>,
    /// Index into `mongoUris`.
    #[serde(default)]
    pub mongo: Option<usize>,
    /// Index into `spacesConns`.
    #[serde(default)]
    pub spaces: Option<usize>,
    /// MongoDB database; defaults to `chronos_<key>` (with `-` as `_`).
    #[serde(default)]
    pub db_name: Option<String>,
    /// Bucket overrides; default to the spacesConn's.
    #[serde(default)]
    pub json_bucket: Option<String>,
    #[serde(default)]
    pub content_bucket: Option<String>,
    #[serde(default)]
    pub backups_bucket: Option<String>,
    /// This database's own tunables, collection maps and counters; each one given replaces the
    /// top-level one for this database only (several databases in one process, each with its
    /// own collections, as the operator's shared engine serves them).
    #[serde(default)]
    pub engine: Option<EngineConfig>,
    #[serde(default)]
    pub collection_maps: Option<BTreeMap<String, CollectionMapConfig>>,
    #[serde(default)]
    pub counters: Option<BTreeMap<String, Vec<CounterRule>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectionMapConfig {
    /// Only these top-level properties are indexed (and get MongoDB indexes). Empty: every
    /// top-level scalar property is indexed metadata.
    #[serde(default)]
    pub indexed_props: Vec<String>,
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Properties kept in the content bucket: `{photo: binary, body: text}`.
    #[serde(default)]
    pub content_props: BTreeMap<String, ContentKind>,
}

impl CollectionMapConfig {
    /// The engine's view of this map.
    pub fn to_map(&self) -> CollectionMap {
        CollectionMap {
            indexed_props: Some(self.indexed_props.clone()).filter(|p| !p.is_empty()),
            required_indexed: self.validation.required_indexed.clone(),
            content_props: self.content_props.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidationConfig {
    /// Writes missing any of these properties are refused (422).
    #[serde(default)]
    pub required_indexed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// A YAML/JSON file `tokens: [{name, token, databases, scopes}]` (e.g. a mounted Secret).
    pub tokens_file: PathBuf,
}

fn default_db_name() -> String {
    "chronos".to_owned()
}

/// One S3-compatible endpoint (the original called them "spaces").
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpacesConn {
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key: Secret,
    pub secret_key: Secret,
    /// Full JSON of every version.
    pub json_bucket: String,
    /// Large properties (content).
    pub content_bucket: String,
    /// Manifests and backups.
    pub backups_bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`); most self-hosted servers need it.
    #[serde(default = "yes")]
    pub force_path_style: bool,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalStorage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub base_path: PathBuf,
}

/// Tunables of the versioning core.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default = "EngineConfig::default_inline_max_bytes")]
    pub inline_max_bytes: usize,
    #[serde(default = "EngineConfig::default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How queued writes are retried.
    #[serde(default)]
    pub retry_queue: RetryQueueConfig,
    /// How old an uncommitted payload must be before scrub may call it an orphan; a write that
    /// has not committed within ¾ of it is redone instead (docs/design.md, "Orphaned payloads").
    /// Every engine and every scrub of a database must use the same value.
    #[serde(default = "EngineConfig::default_orphan_grace_secs")]
    pub orphan_grace_secs: u64,
}

/// `engine.retryQueue`: writes that met a transient backend failure are retried with
/// exponential backoff and jitter, then become dead letters.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryQueueConfig {
    #[serde(default = "RetryQueueConfig::default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "RetryQueueConfig::default_base_delay_ms")]
    pub base_delay_ms: u64,
    #[serde(default = "RetryQueueConfig::default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// How long a worker owns a claimed operation.
    #[serde(default = "RetryQueueConfig::default_lease_ms")]
    pub lease_ms: u64,
}

impl RetryQueueConfig {
    fn default_max_attempts() -> u32 {
        QueueSettings::default().max_attempts
    }
    fn default_base_delay_ms() -> u64 {
        QueueSettings::default().base_delay.as_millis() as u64
    }
    fn default_max_delay_ms() -> u64 {
        QueueSettings::default().max_delay.as_millis() as u64
    }
    fn default_lease_ms() -> u64 {
        QueueSettings::default().lease.as_millis() as u64
    }

    fn settings(&self) -> QueueSettings {
        QueueSettings {
            max_attempts: self.max_attempts,
            base_delay: Duration::from_millis(self.base_delay_ms),
            max_delay: Duration::from_millis(self.max_delay_ms),
            lease: Duration::from_millis(self.lease_ms),
        }
    }
}

impl Default for RetryQueueConfig {
    fn default() -> Self {
        RetryQueueConfig {
            max_attempts: Self::default_max_attempts(),
            base_delay_ms: Self::default_base_delay_ms(),
            max_delay_ms: Self::default_max_delay_ms(),
            lease_ms: Self::default_lease_ms(),
        }
    }
}

impl EngineConfig {
    fn default_orphan_grace_secs() -> u64 {
        EngineSettings::default().orphan_grace.as_secs()
    }
    fn default_inline_max_bytes() -> usize {
        EngineSettings::default().inline_max_bytes
    }
    fn default_max_payload_bytes() -> usize {
        EngineSettings::default().max_payload_bytes
    }

    pub fn settings(&self) -> EngineSettings {
        EngineSettings {
            inline_max_bytes: self.inline_max_bytes,
            max_payload_bytes: self.max_payload_bytes,
            queue: self.retry_queue.settings(),
            orphan_grace: Duration::from_secs(self.orphan_grace_secs),
            ..EngineSettings::default()
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inline_max_bytes: Self::default_inline_max_bytes(),
            max_payload_bytes: Self::default_max_payload_bytes(),
            retry_queue: RetryQueueConfig::default(),
            orphan_grace_secs: Self::default_orphan_grace_secs(),
        }
    }
}

/// Where the default logical database keeps its data. `Debug` hides the MongoDB URI (it may
/// carry a password) as `S3Connection`'s hides the keys.
#[derive(Clone, PartialEq)]
pub enum Storage {
    /// SQLite + local files in a directory.
    Embedded { dir: PathBuf },
    /// MongoDB + S3.
    Remote {
        mongo_uri: String,
        db_name: String,
        s3: S3Connection,
        json_bucket: String,
        content_bucket: String,
        backups_bucket: String,
    },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Embedded { dir } => f.debug_struct("Embedded").field("dir", dir).finish(),
            Storage::Remote {
                mongo_uri: _,
                db_name,
                s3,
                json_bucket,
                content_bucket,
                backups_bucket,
            } => f
                .debug_struct("Remote")
                .field("mongo_uri", &"<redacted>")
                .field("db_name", db_name)
                .field("s3", s3)
                .field("json_bucket", json_bucket)
                .field("content_bucket", content_bucket)
                .field("backups_bucket", backups_bucket)
                .finish(),
        }
    }
}

fn settings_of(
    engine: &EngineConfig,
    maps: &BTreeMap<String, CollectionMapConfig>,
    counters: &BTreeMap<String, Vec<CounterRule>>,
) -> EngineSettings {
    let mut settings = engine.settings();
    settings.collection_maps = maps.iter().map(|(name, m)| (name.clone(), m.to_map())).collect();
    settings.counter_rules = counters.iter().map(|(c, r)| (c.clone(), r.clone())).collect();
    settings
}

/// Problems with tunables, collection maps and counters, with fields under `prefix`.
fn settings_issues(
    prefix: &str,
    engine: &EngineConfig,
    maps: &BTreeMap<String, CollectionMapConfig>,
    counters: &BTreeMap<String, Vec<CounterRule>>,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut issue = |field: String, problem: &str| {
        issues.push(Issue {
            field: format!("{prefix}{field}"),
            problem: problem.to_owned(),
        })
    };
    for (name, map) in maps {
        if let Err(e) = name.parse::<CollectionName>() {
            issue(format!("collectionMaps.{name}"), &e.to_string());
        }
        for (field, problem) in map.to_map().problems() {
            let field = match field {
                "requiredIndexed" => "validation.requiredIndexed",
                other => other,
            };
            issue(format!("collectionMaps.{name}.{field}"), &problem);
        }
    }
    for (name, rules) in counters {
        if let Err(e) = name.parse::<CollectionName>() {
            issue(format!("counters.{name}"), &e.to_string());
        }
        for (i, field, problem) in crate::engine::settings::rule_problems(rules) {
            issue(format!("counters.{name}[{i}].{field}"), &problem);
        }
    }
    let q = &engine.retry_queue;
    if q.max_attempts == 0 || q.max_attempts > 100 {
        issue("engine.retryQueue.maxAttempts".to_owned(), "must be between 1 and 100");
    }
    if q.base_delay_ms == 0 || q.base_delay_ms > q.max_delay_ms {
        issue(
            "engine.retryQueue.baseDelayMs".to_owned(),
            "must be greater than 0 and at most maxDelayMs",
        );
    }
    if q.lease_ms < 1000 {
        issue("engine.retryQueue.leaseMs".to_owned(), "must be at least 1000");
    }
    if engine.orphan_grace_secs < 10 {
        // Below that, ¾ of it leaves a write too little time for its PUT and its commit.
        issue("engine.orphanGraceSecs".to_owned(), "must be at least 10");
    }
    if engine.max_payload_bytes == 0 {
        issue("engine.maxPayloadBytes".to_owned(), "must be greater than 0");
    }
    if engine.inline_max_bytes > 8 * 1024 * 1024 {
        issue(
            "engine.inlineMaxBytes".to_owned(),
            "must be at most 8388608 (MongoDB documents are limited to 16 MiB)",
        );
    }
    issues
}

impl Config {
    /// The engine's settings: tunables plus collection maps.
    pub fn engine_settings(&self) -> EngineSettings {
        settings_of(&self.engine, &self.collection_maps, &self.counters)
    }

    /// The settings of one routed database: the top-level ones, with each part the entry gives
    /// replaced by its own.
    pub fn settings_for(&self, entry: &RouteEntry) -> EngineSettings {
        settings_of(
            entry.engine.as_ref().unwrap_or(&self.engine),
            entry.collection_maps.as_ref().unwrap_or(&self.collection_maps),
            entry.counters.as_ref().unwrap_or(&self.counters),
        )
    }

    /// Whether requests are routed by key (`databaseTypes` or `databases`) rather than all
    /// going to the one `default` database.
    pub fn routed(&self) -> bool {
        self.database_types.is_some() || !self.databases.is_empty()
    }

    /// The largest payload any database accepts (the HTTP body limit must let it through).
    pub fn max_payload_bytes(&self) -> usize {
        crate::routing::entries(self)
            .into_iter()
            .filter_map(|x| x.entry.engine.as_ref().map(|e| e.max_payload_bytes))
            .fold(self.engine.max_payload_bytes, usize::max)
    }

    /// Read, parse and validate a file; `.json` files are JSON, everything else YAML.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| Error::Parse {
            path: path.to_owned(),
            message,
        })?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid {
                path: path.to_owned(),
                issues,
            })
        }
    }

    /// Parse JSON or YAML (JSON is YAML); the message names the offending field.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?
        };
        if value.is_null() {
            // An empty file: every default (embedded mode).
            value = serde_json::Value::Object(Default::default());
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })
    }

    /// Every semantic problem, each naming its field.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let mut issue = |field: String, problem: &str| {
            issues.push(Issue {
                field,
                problem: problem.to_owned(),
            })
        };
        for (i, uri) in self.mongo_uris.iter().enumerate() {
            match uri.reveal() {
                Ok(u) if u.starts_with("mongodb://") || u.starts_with("mongodb+srv://") => {}
                Ok(_) => issue(format!("mongoUris[{i}]"), "expected a mongodb:// or mongodb+srv:// URI"),
                Err(e) => issue(format!("mongoUris[{i}]"), &e),
            }
        }
        for (i, s) in self.spaces_conns.iter().enumerate() {
            let field = |name: &str| format!("spacesConns[{i}].{name}");
            if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://")) {
                issue(field("endpoint"), "expected an http:// or https:// URL");
            }
            if s.region.is_empty() {
                issue(field("region"), "expected a region name such as us-east-1");
            }
            for (name, secret) in [("accessKey", &s.access_key), ("secretKey", &s.secret_key)] {
                match secret.reveal() {
                    Ok(v) if v.is_empty() => issue(field(name), "must not be empty"),
                    Ok(_) => {}
                    Err(e) => issue(field(name), &e),
                }
            }
            for (name, bucket) in [
                ("jsonBucket", &s.json_bucket),
                ("contentBucket", &s.content_bucket),
                ("backupsBucket", &s.backups_bucket),
            ] {
                if !valid_bucket(bucket) {
                    issue(
                        field(name),
                        "expected an S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-'",
                    );
                }
            }
        }
        if self.mongo_uris.is_empty() != self.spaces_conns.is_empty() {
            issue(
                if self.mongo_uris.is_empty() {
                    "mongoUris"
                } else {
                    "spacesConns"
                }
                .to_owned(),
                "MongoDB and S3 go together: give both mongoUris and spacesConns, or neither (embedded mode)",
            );
        }
        if !self.mongo_uris.is_empty() && self.local_storage.as_ref().is_some_and(|l| l.enabled) {
            issue(
                "localStorage".to_owned(),
                "choose one: localStorage (embedded) or mongoUris + spacesConns",
            );
        }
        let db_ok = !self.db_name.is_empty()
            && self.db_name.len() <= 38
            && self
                .db_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !db_ok {
            issue(
                "dbName".to_owned(),
                "expected 1-38 characters of ASCII letters, digits, '_' and '-'",
            );
        }
        if self.routed() && self.mongo_uris.is_empty() {
            issue(
                if self.database_types.is_some() {
                    "databaseTypes"
                } else {
                    "databases"
                }
                .to_owned(),
                "routing needs mongoUris and spacesConns (the backends)",
            );
        }
        issues.extend(settings_issues("", &self.engine, &self.collection_maps, &self.counters));
        for x in crate::routing::entries(self) {
            let e = x.entry;
            issues.extend(settings_issues(
                &format!("{}.", x.field()),
                // What the entry does not give was checked at the top level.
                e.engine.as_ref().unwrap_or(&EngineConfig::default()),
                e.collection_maps.as_ref().unwrap_or(&BTreeMap::new()),
                e.counters.as_ref().unwrap_or(&BTreeMap::new()),
            ));
        }
        issues.extend(crate::routing::Routes::issues(self));
        issues
    }

    /// Where the default database lives: MongoDB + S3 when configured, else embedded.
    /// `default_dir` is used in embedded mode when `localStorage` names no directory.
    pub fn storage(&self, default_dir: &Path) -> Result<Storage, String> {
        match (self.mongo_uris.first(), self.spaces_conns.first()) {
            (Some(uri), Some(s)) => Ok(Storage::Remote {
                mongo_uri: uri.reveal()?,
                db_name: self.db_name.clone(),
                s3: S3Connection {
                    endpoint: s.endpoint.clone(),
                    region: s.region.clone(),
                    access_key: s.access_key.reveal()?,
                    secret_key: s.secret_key.reveal()?,
                    force_path_style: s.force_path_style,
                },
                json_bucket: s.json_bucket.clone(),
                content_bucket: s.content_bucket.clone(),
                backups_bucket: s.backups_bucket.clone(),
            }),
            _ => Ok(Storage::Embedded {
                dir: match &self.local_storage {
                    Some(l) if l.enabled => l.base_path.clone(),
                    _ => default_dir.to_owned(),
                },
            }),
        }
    }
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
mongoUris: ["mongodb://127.0.0.1:27017/?replicaSet=rs0"]
spacesConns:
  - endpoint: http://127.0.0.1:8333
    accessKey: AK
    secretKey: {env: CHRONOS_CONFIG_TEST_SECRET}
    jsonBucket: chronos-json
    contentBucket: chronos-content
    backupsBucket: chronos-backups
dbName: tenant_a
engine:
  inlineMaxBytes: 1024
"#;

    #[test]
    fn storage_debug_hides_the_mongo_uri() {
        let storage = Storage::Remote {
            mongo_uri: "mongodb://admin:hunter2@db:27017/?replicaSet=rs0".into(),
            db_name: "d".into(),
            s3: S3Connection {
                endpoint: "http://s3".into(),
                region: "r".into(),
                access_key: "AKIA-SECRET-ID".into(),
                secret_key: "s3cr3t".into(),
                force_path_style: true,
            },
            json_bucket: "j".into(),
            content_bucket: "c".into(),
            backups_bucket: "b".into(),
        };
        let shown = format!("{storage:?}");
        for secret in ["hunter2", "admin:", "AKIA-SECRET-ID", "s3cr3t"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("\"d\"") && shown.contains("\"j\""), "{shown}");
    }

    #[test]
    fn parses_yaml_and_json_alike() {
        let yaml = Config::parse(FULL).unwrap();
        assert_eq!(yaml.spaces_conns[0].region, "us-east-1");
        assert!(yaml.spaces_conns[0].force_path_style);
        assert_eq!(yaml.engine.inline_max_bytes, 1024);
        let json = Config::parse(r#"{"mongoUris": [], "dbName": "x"}"#).unwrap();
        assert_eq!(json.db_name, "x");
        assert!(
            Config::parse("").is_ok_and(|c| c.validate().is_empty()),
            "empty means embedded"
        );
    }

    /// The engines' commit deadline and scrub's orphan age come from one setting (review M4).
    #[test]
    fn the_orphan_grace_is_read_and_checked() {
        let c = Config::parse("engine:\n  orphanGraceSecs: 20\n").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.engine_settings().orphan_grace, Duration::from_secs(20));
        assert_eq!(
            Config::default().engine_settings().orphan_grace,
            crate::engine::settings::ORPHAN_GRACE
        );
        let too_short = Config::parse("engine:\n  orphanGraceSecs: 2\n").unwrap();
        assert!(
            too_short.validate().iter().any(|i| i.field == "engine.orphanGraceSecs"),
            "{:?}",
            too_short.validate()
        );
    }

    #[test]
    fn retry_queue_settings_are_read_and_checked() {
        let c = Config::parse("engine:\n  retryQueue: {maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 100}\n").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let q = c.engine_settings().queue;
        assert_eq!(
            (q.max_attempts, q.base_delay.as_millis(), q.max_delay.as_millis()),
            (3, 10, 100)
        );
        assert_eq!(
            q.lease,
            QueueSettings::default().lease,
            "unset fields keep their defaults"
        );
        let bad =
            Config::parse("engine:\n  retryQueue: {maxAttempts: 0, baseDelayMs: 500, maxDelayMs: 10, leaseMs: 5}\n")
                .unwrap();
        let fields: Vec<String> = bad.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "engine.retryQueue.maxAttempts",
                "engine.retryQueue.baseDelayMs",
                "engine.retryQueue.leaseMs"
            ]
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = Config::parse("spacesConns:\n  - endpoint: 5\n").unwrap_err();
        assert!(err.starts_with("spacesConns[0].endpoint:"), "{err}");
        let err = Config::parse("mongoUri: x\n").unwrap_err();
        assert!(
            err.contains("unknown field `mongoUri`") && err.contains("mongoUris"),
            "{err}"
        );
        let err = Config::parse(r#"{"engine": {"inlineMaxBytes": "big"}}"#).unwrap_err();
        assert!(err.starts_with("engine.inlineMaxBytes:"), "{err}");
        let err = Config::parse("spacesConns:\n  - endpoint: http://x\n    accessKey: [1]\n").unwrap_err();
        assert!(err.contains("accessKey") && err.contains("{file: PATH}"), "{err}");
    }

    #[test]
    fn validation_lists_every_problem_by_field() {
        let mut c = Config::parse(FULL).unwrap();
        c.spaces_conns[0].endpoint = "ftp://x".into();
        c.spaces_conns[0].json_bucket = "Bad_Bucket".into();
        c.db_name = "a/b".into();
        let fields: Vec<String> = c.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "spacesConns[0].endpoint",
                "spacesConns[0].secretKey",
                "spacesConns[0].jsonBucket",
                "dbName"
            ]
        );
        let only_mongo = Config::parse("mongoUris: [\"mongodb://x\"]").unwrap();
        assert_eq!(only_mongo.validate()[0].field, "spacesConns", "names what is missing");
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let yaml = FULL.replace(
            "{env: CHRONOS_CONFIG_TEST_SECRET}",
            &format!("{{file: {}}}", file.display()),
        );
        let c = Config::parse(&yaml).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.spaces_conns[0].secret_key.reveal().unwrap(), "s3cr3t");
        let printed = format!("{c:?} {:?}", c.storage(Path::new("d")).unwrap());
        assert!(!printed.contains("s3cr3t") && !printed.contains("AK\""), "{printed}");
        let missing = Secret::File {
            file: dir.path().join("nope"),
        };
        assert!(missing.reveal().unwrap_err().contains("nope"));
    }

    #[test]
    fn collection_maps_become_engine_settings() {
        let c = Config::parse(
            "collectionMaps:\n  orders:\n    indexedProps: [status, customer]\n    validation: {requiredIndexed: [status]}\n",
        )
        .unwrap();
        assert!(c.validate().is_empty());
        let map = &c.engine_settings().collection_maps["orders"];
        assert_eq!(
            map.indexed_props.as_deref(),
            Some(&["status".to_owned(), "customer".to_owned()][..])
        );
        assert_eq!(map.required_indexed, ["status"]);
        let bad = Config::parse(
            "collectionMaps:\n  orders:\n    indexedProps: [a]\n    validation: {requiredIndexed: [b]}\n",
        )
        .unwrap();
        assert_eq!(
            bad.validate()[0].field,
            "collectionMaps.orders.validation.requiredIndexed"
        );
        let bad = Config::parse("collectionMaps:\n  ../x: {}\n").unwrap();
        assert_eq!(bad.validate()[0].field, "collectionMaps.../x");
    }

    #[test]
    fn counter_rules_are_checked() {
        let c = Config::parse(
            "counters:\n  orders:\n    - {name: big, when: {amount: {$gte: 100}}, on: [CREATE, UPDATE]}\n",
        )
        .unwrap();
        assert!(c.validate().is_empty());
        assert_eq!(c.engine_settings().counter_rules["orders"][0].on.len(), 2);
        let bad = Config::parse("counters:\n  orders:\n    - {name: x, when: {a: {$where: 1}}, on: []}\n").unwrap();
        let fields: Vec<String> = bad.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(fields, ["counters.orders[0].on", "counters.orders[0].when"]);
        assert!(Config::parse("counters:\n  orders:\n    - {name: x, on: [MERGE]}\n").is_err());
    }

    #[test]
    fn storage_defaults_to_embedded() {
        let c = Config::default();
        assert!(matches!(c.storage(Path::new("./data")), Ok(Storage::Embedded { dir }) if dir == Path::new("./data")));
    }
}
