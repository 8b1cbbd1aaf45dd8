//! The configuration file's shape: the serde types it is read into, with their defaults, and
//! what they say without further checks — each database's engine settings, where the default
//! database lives, and the list of routed databases.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::storage::{RemoteStorage, S3Access, Storage};
use crate::engine::{CollectionMap, ContentKind, CounterRule, Encryption, EngineSettings, HoldRule, QueueSettings};

/// A secret value: inline, from a file, or from an environment variable.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
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
    pub fn reveal(&self) -> Result<String> {
        match self {
            Secret::Inline(v) => Ok(v.clone()),
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|source| Error::SecretFile {
                    file: file.clone(),
                    source,
                }),
            Secret::Env { env } => std::env::var(env).map_err(|source| Error::SecretEnv {
                env: env.clone(),
                source,
            }),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    #[serde(skip_serializing_if = "is_default")]
    pub db_name: String,
    /// Embedded mode: SQLite + local files under `basePath` (no MongoDB/S3 needed).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_storage: Option<LocalStorage>,
    #[serde(default)]
    #[serde(skip_serializing_if = "is_default")]
    pub engine: EngineConfig,
    /// Per collection: which properties are indexed metadata and which are required.
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub collection_maps: BTreeMap<String, CollectionMapConfig>,
    /// Per collection: named conditional counters `{name, when, on}`.
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, Vec<CounterRule>>,
    /// Multi-tenant routing: logical databases by type (metadata, knowledge, runtime) and tier
    /// (generic, domains, tenants), each on one of the `mongoUris` × `spacesConns` backends.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_types: Option<DatabaseTypes>,
    /// Logical databases addressed by key alone, outside the type × tier scheme (how the
    /// operator's shared engine serves a `ChronosDatabase` with `spec.key`). Routed like
    /// `databaseTypes` entries, and either one turns routing on.
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<RouteEntry>,
    /// Bearer tokens for the HTTP API; without it the API is open (fine on a laptop only).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

/// The three database types, each with its tiers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseTypes {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Tiers>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<Tiers>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Tiers>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tiers {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generic: Option<RouteEntry>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<RouteEntry>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<RouteEntry>,
}

/// One logical database. Without `mongo` / `spaces`, its backends are chosen by rendezvous
/// hashing of its key over all of them (stable, and adding a backend moves about 1/n of keys).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteEntry {
    /// How the API addresses it: `/v1/{key}/…`.
    pub key: String,
    /// The domain's or tenant's external identifier (not for the generic tier).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_identifier: Option<String>,
    /// Index into `mongoUris`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mongo: Option<usize>,
    /// Index into `spacesConns`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spaces: Option<usize>,
    /// MongoDB database; defaults to `chronos_<key>` (with `-` as `_`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
    /// Bucket overrides; default to the spacesConn's.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_bucket: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_bucket: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups_bucket: Option<String>,
    /// This database's own tunables, collection maps and counters; each one given replaces the
    /// top-level one for this database only (several databases in one process, each with its
    /// own collections, as the operator's shared engine serves them).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineConfig>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection_maps: Option<BTreeMap<String, CollectionMapConfig>>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<BTreeMap<String, Vec<CounterRule>>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub content_props: BTreeMap<String, ContentKind>,
    /// A retention hold `{mode: GOVERNANCE|COMPLIANCE, days}`: items are neither pruned nor
    /// erased until `days` after their latest write (and carry Object Lock retention on a bucket
    /// with `objectLock`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldRule>,
    /// `perItem`: payloads encrypted with a data key per item (needs `engine.encryptionKey`).
    #[serde(default)]
    #[serde(skip_serializing_if = "is_default")]
    pub encryption: Encryption,
}

impl CollectionMapConfig {
    /// The engine's view of this map.
    pub fn to_map(&self) -> CollectionMap {
        CollectionMap {
            indexed_props: Some(self.indexed_props.clone()).filter(|p| !p.is_empty()),
            required_indexed: self.validation.required_indexed.clone(),
            content_props: self.content_props.clone(),
            hold: self.hold,
            encryption: self.encryption,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidationConfig {
    /// Writes missing any of these properties are refused (422).
    #[serde(default)]
    pub required_indexed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// A YAML/JSON file `tokens: [{name, token, databases, scopes}]` (e.g. a mounted Secret).
    pub tokens_file: PathBuf,
}

fn default_db_name() -> String {
    "chronos".to_owned()
}

/// One S3-compatible endpoint (the original called them "spaces").
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Create the buckets with S3 Object Lock, and write the payloads of collections with a
    /// `hold` rule with its retention (see the `objectLock` check of `validate`).
    #[serde(default)]
    #[serde(skip_serializing_if = "is_default")]
    pub object_lock: bool,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn yes() -> bool {
    true
}

/// Whether a value is its type's default, so serializing leaves it out and the loader's
/// default applies (how the operator renders a configuration that states only what it sets).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalStorage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub base_path: PathBuf,
}

/// Tunables of the versioning core.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// The key-encryption key of collections with `encryption: perItem`: base64 of 32 random
    /// bytes (`head -c32 /dev/urandom | base64`), usually `{file: …}` from a Secret. Losing it
    /// loses every encrypted item.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<Secret>,
    /// Store payloads in pack objects: `together` (the payloads of writes made at the same time
    /// share one PUT; a write alone keeps its own key), `always`, `off`, or `auto` (the default:
    /// `together` on S3, `off` embedded). See docs/design.md, "Write packing".
    #[serde(default = "EngineConfig::default_pack_writes")]
    #[serde(skip_serializing_if = "EngineConfig::packs_by_default")]
    pub pack_writes: crate::engine::settings::PackWrites,
}

/// `engine.retryQueue`: writes that met a transient backend failure are retried with
/// exponential backoff and jitter, then become dead letters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    fn default_pack_writes() -> crate::engine::settings::PackWrites {
        crate::engine::settings::PackWrites::Auto
    }
    fn packs_by_default(mode: &crate::engine::settings::PackWrites) -> bool {
        *mode == Self::default_pack_writes()
    }
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
            pack_writes: self.pack_writes,
            // An unreadable or malformed key is reported by `validate`; here it is left out, and
            // encrypted collections then refuse to work (503) rather than write in clear.
            encryption_key: self
                .encryption_key
                .as_ref()
                .and_then(|s| s.reveal().ok())
                .and_then(|k| crate::engine::sealed::Kek::from_base64(&k).ok()),
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
            encryption_key: None,
            pack_writes: Self::default_pack_writes(),
        }
    }
}

// One definition for the configuration file's `databaseTypes` and the operator's
// `ChronosDatabase.spec.routing` (hence the schema; its doc comment is the CRD's description).
/// The kind of data the database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    Metadata,
    Knowledge,
    Runtime,
}

// Serialized singular (`domain`, `tenant`) as in the operator's spec; `Display` gives the
// configuration file's plural tier keys (`domains`, `tenants`).
/// Who the database serves: everyone (`generic`), one domain or one tenant (both need an
/// `extIdentifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Generic,
    Domain,
    Tenant,
}

impl fmt::Display for DatabaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatabaseType::Metadata => "metadata",
            DatabaseType::Knowledge => "knowledge",
            DatabaseType::Runtime => "runtime",
        })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Generic => "generic",
            Tier::Domain => "domains",
            Tier::Tenant => "tenants",
        })
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
        entries(self)
            .into_iter()
            .filter_map(|x| x.entry.engine.as_ref().map(|e| e.max_payload_bytes))
            .fold(self.engine.max_payload_bytes, usize::max)
    }

    /// Where the default database lives: MongoDB + S3 when configured, else embedded.
    /// `default_dir` is used in embedded mode when `localStorage` names no directory.
    pub fn storage(&self, default_dir: &Path) -> Result<Storage> {
        match (self.mongo_uris.first(), self.spaces_conns.first()) {
            (Some(uri), Some(s)) => Ok(Storage::Remote(RemoteStorage {
                mongo_uri: uri.reveal()?,
                db_name: self.db_name.clone(),
                s3: S3Access {
                    endpoint: s.endpoint.clone(),
                    region: s.region.clone(),
                    access_key: s.access_key.reveal()?,
                    secret_key: s.secret_key.reveal()?,
                    force_path_style: s.force_path_style,
                },
                json_bucket: s.json_bucket.clone(),
                content_bucket: s.content_bucket.clone(),
                backups_bucket: s.backups_bucket.clone(),
                object_lock: s.object_lock,
            })),
            _ => Ok(Storage::Embedded {
                dir: match &self.local_storage {
                    Some(l) if l.enabled => l.base_path.clone(),
                    _ => default_dir.to_owned(),
                },
            }),
        }
    }
}

/// One routed database of a configuration.
pub(super) struct Entry<'a> {
    /// `None` for the `databases` list.
    pub identity: Option<(DatabaseType, Tier)>,
    pub entry: &'a RouteEntry,
}

impl Entry<'_> {
    /// Where it is in the configuration, for messages.
    pub fn field(&self) -> String {
        match self.identity {
            Some((t, tier)) => format!("databaseTypes.{t}.{tier}[key={}]", self.entry.key),
            None => format!("databases[key={}]", self.entry.key),
        }
    }
}

/// Every routed database: `databaseTypes` entries, then the `databases` list.
pub(super) fn entries(config: &Config) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    if let Some(types) = &config.database_types {
        for (t, tiers) in [
            (DatabaseType::Metadata, &types.metadata),
            (DatabaseType::Knowledge, &types.knowledge),
            (DatabaseType::Runtime, &types.runtime),
        ] {
            let Some(tiers) = tiers else { continue };
            let of = |tier: Tier| {
                move |entry| Entry {
                    identity: Some((t, tier)),
                    entry,
                }
            };
            out.extend(tiers.generic.iter().map(of(Tier::Generic)));
            out.extend(tiers.domains.iter().map(of(Tier::Domain)));
            out.extend(tiers.tenants.iter().map(of(Tier::Tenant)));
        }
    }
    out.extend(config.databases.iter().map(|entry| Entry { identity: None, entry }));
    out
}
