//! Multi-tenant routing: which MongoDB database and S3 buckets serve a logical database.
//!
//! Each logical database (a `databaseTypes` entry or a `databases` entry, addressed by its `key`)
//! is on the backends its entry names, or else on those rendezvous (highest-random-weight)
//! hashing of its key picks among the configured ones. Rendezvous hashing is stable (the same key
//! always lands on the same backend) and adding a backend moves only the keys the new backend now
//! wins, about 1/n. Backends are identified by a digest of their address, never by list
//! position, so reordering the configuration moves nothing.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::file::{Config, DatabaseType, RouteEntry, SpacesConn, Tier, entries};
use super::storage::{RemoteStorage, S3Access, Storage};
use crate::engine::EngineSettings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("routing has no backends (mongoUris and spacesConns)")]
    NoBackends,
    #[error("cannot read a secret of the routing configuration: {0}")]
    Secret(#[source] super::error::Error),
    #[error("databases `{0}` and `{1}` would share MongoDB database `{2}` on one backend; give one a different dbName")]
    SharedDatabase(String, String, String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A resolved logical database.
#[derive(Debug, Clone)]
pub struct Route {
    pub key: String,
    /// Its type and tier; `None` for the `databases` list (addressed by key alone).
    pub identity: Option<(DatabaseType, Tier)>,
    pub ext_identifier: Option<String>,
    pub storage: Storage,
    /// Its engine settings (its own, or the configuration's top-level ones).
    pub settings: EngineSettings,
}

/// The backends routing chooses among, with their stable identities.
#[derive(Debug, Clone, Default)]
struct Backends {
    mongo: Vec<(String, String)>,
    spaces: Vec<(String, SpacesConn)>,
}

/// The routing table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: BTreeMap<String, Route>,
}

/// MongoDB refuses database names of 64 bytes or more.
pub const MONGO_DB_NAME_MAX: usize = 63;

/// Hex digits of the key's SHA-256 that tell apart keys whose readable part is the same: 64 bits,
/// and a collision would still be refused, never shared (see `SharedDatabase`).
const NAME_DIGEST_HEX: usize = 16;

/// The MongoDB database a key lives in when its entry names none: `<prefix>_<key>` when the key
/// is lowercase letters and digits only, otherwise `<prefix>_<readable>_<digest>`, where
/// `readable` is the key lowercased with every other character as `_` (cut to fit 63 bytes) and
/// `digest` comes from the exact key. Injective: the plain form has no `_` after the prefix and
/// the digested form always does, and the digest tells apart keys that read alike — MongoDB
/// compares database names without case, so `Acme` and `acme` must not meet either.
pub fn db_name_for(prefix: &str, key: &str) -> String {
    let plain = format!("{prefix}_{key}");
    if key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) && plain.len() <= MONGO_DB_NAME_MAX {
        return plain;
    }
    let room = MONGO_DB_NAME_MAX.saturating_sub(prefix.len() + 2 + NAME_DIGEST_HEX);
    let readable: String = key
        .chars()
        .take(room)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{readable}_{}", &digest(key)[..NAME_DIGEST_HEX])
}

/// Whether a configured `dbName` is one MongoDB takes, with room for nothing else.
pub fn valid_db_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MONGO_DB_NAME_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn digest(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The index of the backend with the highest weight for `key` (rendezvous hashing).
pub fn rendezvous<S: AsRef<str>>(key: &str, backend_ids: &[S]) -> Option<usize> {
    backend_ids
        .iter()
        .enumerate()
        .max_by_key(|(_, id)| {
            let h = Sha256::digest(format!("{}\u{0}{key}", id.as_ref()).as_bytes());
            u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
        })
        .map(|(i, _)| i)
}

impl Routes {
    /// Build the routing table; `None` when the configuration routes nothing (no
    /// `databaseTypes`, no `databases`).
    pub fn from_config(config: &Config) -> Result<Option<Routes>> {
        if !config.routed() {
            return Ok(None);
        }
        let backends = Backends {
            mongo: config
                .mongo_uris
                .iter()
                .map(|u| u.reveal().map(|uri| (digest(&uri), uri)))
                .collect::<Result<_, _>>()
                .map_err(Error::Secret)?,
            spaces: config
                .spaces_conns
                .iter()
                .map(|s| (digest(&format!("{}/{}", s.endpoint, s.json_bucket)), s.clone()))
                .collect(),
        };
        if backends.mongo.is_empty() || backends.spaces.is_empty() {
            return Err(Error::NoBackends);
        }
        let mut routes = Routes::default();
        // (MongoDB URI, database) → the key that took it: two keys there would read and write
        // each other's items and queue.
        let mut taken: HashMap<(String, String), String> = HashMap::new();
        for x in entries(config) {
            let e = x.entry;
            let db_name = e.db_name.clone().unwrap_or_else(|| db_name_for("chronos", &e.key));
            let storage = backends.storage_for(&e.key, e.mongo, e.spaces, db_name, e)?;
            if let Storage::Remote(RemoteStorage { mongo_uri, db_name, .. }) = &storage {
                // MongoDB compares database names without case.
                let place = (mongo_uri.clone(), db_name.to_ascii_lowercase());
                if let Some(first) = taken.insert(place, e.key.clone()) {
                    return Err(Error::SharedDatabase(first, e.key.clone(), db_name.clone()));
                }
            }
            routes.routes.insert(
                e.key.clone(),
                Route {
                    key: e.key.clone(),
                    identity: x.identity,
                    ext_identifier: e.ext_identifier.clone(),
                    storage,
                    settings: config.settings_for(e),
                },
            );
        }
        Ok(Some(routes))
    }

    /// Every configured logical database.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }
}

impl Backends {
    /// Where a database lives: on the backends its entry names, or else those rendezvous hashing
    /// of `hash_key` picks.
    fn storage_for(
        &self,
        hash_key: &str,
        mongo: Option<usize>,
        spaces: Option<usize>,
        db_name: String,
        overrides: &RouteEntry,
    ) -> Result<Storage> {
        let mongo_ids: Vec<&str> = self.mongo.iter().map(|(id, _)| id.as_str()).collect();
        let spaces_ids: Vec<&str> = self.spaces.iter().map(|(id, _)| id.as_str()).collect();
        let m = mongo
            .or_else(|| rendezvous(hash_key, &mongo_ids))
            .ok_or(Error::NoBackends)?;
        let s = spaces
            .or_else(|| rendezvous(hash_key, &spaces_ids))
            .ok_or(Error::NoBackends)?;
        let conn = &self.spaces[s].1;
        Ok(Storage::Remote(RemoteStorage {
            mongo_uri: self.mongo[m].1.clone(),
            db_name,
            s3: S3Access {
                endpoint: conn.endpoint.clone(),
                region: conn.region.clone(),
                access_key: conn.access_key.reveal().map_err(Error::Secret)?,
                secret_key: conn.secret_key.reveal().map_err(Error::Secret)?,
                force_path_style: conn.force_path_style,
            },
            json_bucket: overrides
                .json_bucket
                .clone()
                .unwrap_or_else(|| conn.json_bucket.clone()),
            content_bucket: overrides
                .content_bucket
                .clone()
                .unwrap_or_else(|| conn.content_bucket.clone()),
            backups_bucket: overrides
                .backups_bucket
                .clone()
                .unwrap_or_else(|| conn.backups_bucket.clone()),
            object_lock: conn.object_lock,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_about_one_nth_when_a_backend_is_added() {
        let three: Vec<String> = (0..3).map(|i| digest(&format!("backend-{i}"))).collect();
        let mut four = three.clone();
        four.push(digest("backend-3"));
        let keys: Vec<String> = (0..10_000).map(|i| format!("tenant-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| rendezvous(k, &three).unwrap()).collect();
        let again: Vec<usize> = keys.iter().map(|k| rendezvous(k, &three).unwrap()).collect();
        assert_eq!(before, again, "stable");
        let after: Vec<usize> = keys.iter().map(|k| rendezvous(k, &four).unwrap()).collect();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            after.iter().zip(&before).all(|(a, b)| a == b || *a == 3),
            "keys only move to the new backend"
        );
        let share = moved as f64 / keys.len() as f64;
        assert!((0.20..0.30).contains(&share), "about 1/4 of the keys moved: {share}");
        for b in 0..3 {
            let n = before.iter().filter(|&&x| x == b).count();
            assert!((2_900..3_800).contains(&n), "balanced: backend {b} got {n}");
        }
        // Reordering the backends moves nothing: identity is the digest, not the position.
        let reversed: Vec<String> = three.iter().rev().cloned().collect();
        let reordered: Vec<&String> = keys
            .iter()
            .map(|k| &reversed[rendezvous(k, &reversed).unwrap()])
            .collect();
        let original: Vec<&String> = keys.iter().map(|k| &three[rendezvous(k, &three).unwrap()]).collect();
        assert_eq!(reordered, original);
    }

    const CONFIG: &str = r#"
mongoUris: ["mongodb://m0/?replicaSet=rs0", "mongodb://m1/?replicaSet=rs0"]
spacesConns:
  - {endpoint: "http://s0", accessKey: a, secretKey: s, jsonBucket: json0, contentBucket: content0, backupsBucket: backups0}
  - {endpoint: "http://s1", accessKey: a, secretKey: s, jsonBucket: json1, contentBucket: content1, backupsBucket: backups1}
databaseTypes:
  metadata:
    generic: {key: meta, mongo: 0, spaces: 0}
    tenants:
      - {key: acme-meta, extIdentifier: acme, mongo: 1, spaces: 1, dbName: acme}
  runtime:
    domains:
      - {key: sales-rt, extIdentifier: sales}
"#;

    /// Keys that differ only in `- . : _` (or case) once collapsed into one MongoDB database, so
    /// two tenants shared heads, versions and queue (review H5).
    #[test]
    fn default_database_names_are_distinct_and_fit_mongodb() {
        let keys = ["a-b", "a.b", "a:b", "a_b", "A_b", "ab", "Ab", "a__b", "a_2db"];
        let names: Vec<String> = keys.iter().map(|k| db_name_for("chronos", k)).collect();
        let distinct: std::collections::HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        assert_eq!(distinct.len(), keys.len(), "{names:?}");
        assert_eq!(
            db_name_for("chronos", "orders7"),
            "chronos_orders7",
            "plain keys stay readable"
        );
        let long = "k".repeat(128);
        for key in [long.as_str(), "x-y-z", &"a.".repeat(60)] {
            let name = db_name_for("chronos", key);
            assert!(name.len() <= MONGO_DB_NAME_MAX, "{name} is {} bytes", name.len());
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        }
        assert_ne!(db_name_for("chronos", &long), db_name_for("chronos", &"k".repeat(127)));
    }

    #[test]
    fn two_databases_on_one_backend_may_not_share_a_mongodb_database() {
        let config = Config::parse(&CONFIG.replace("dbName: acme", "dbName: shared").replace(
            "{key: sales-rt, extIdentifier: sales}",
            "{key: sales-rt, extIdentifier: sales, mongo: 1, dbName: shared}",
        ))
        .unwrap();
        let err = Routes::from_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("acme-meta") && err.contains("sales-rt") && err.contains("shared"),
            "{err}"
        );
        let long = Config::parse(&CONFIG.replace("dbName: acme", &format!("dbName: {}", "d".repeat(64)))).unwrap();
        assert!(
            long.validate().iter().any(|i| i.field.ends_with("dbName")),
            "{:?}",
            long.validate()
        );
    }

    /// The route of `key` (the service looks databases up by key in its own table).
    fn route<'a>(routes: &'a Routes, key: &str) -> &'a Route {
        routes.all().find(|r| r.key == key).unwrap()
    }

    fn remote(route: &Route) -> &RemoteStorage {
        match &route.storage {
            Storage::Remote(remote) => remote,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolves_by_key_and_hash() {
        let config = Config::parse(CONFIG).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let routes = Routes::from_config(&config).unwrap().unwrap();
        let acme = route(&routes, "acme-meta");
        let RemoteStorage {
            mongo_uri,
            db_name,
            json_bucket,
            ..
        } = remote(acme);
        assert_eq!(
            (mongo_uri.as_str(), db_name.as_str(), json_bucket.as_str()),
            ("mongodb://m1/?replicaSet=rs0", "acme", "json1")
        );
        assert_eq!(acme.identity, Some((DatabaseType::Metadata, Tier::Tenant)));
        assert_eq!(
            route(&routes, "meta").identity,
            Some((DatabaseType::Metadata, Tier::Generic))
        );
        assert_eq!(routes.all().count(), 3);
        let db_name = &remote(route(&routes, "sales-rt")).db_name;
        assert_eq!(db_name, &db_name_for("chronos", "sales-rt"));
        assert!(db_name.starts_with("chronos_sales_rt_"), "{db_name}");
    }

    #[test]
    fn bad_routing_is_named_by_field() {
        let bad = CONFIG
            .replace(
                "generic: {key: meta, mongo: 0, spaces: 0}",
                "generic: {key: meta, extIdentifier: x, mongo: 7}",
            )
            .replace("key: sales-rt, extIdentifier: sales", "key: meta");
        let fields: Vec<String> = Config::parse(&bad)
            .unwrap()
            .validate()
            .into_iter()
            .map(|i| i.field)
            .collect();
        assert_eq!(
            fields,
            [
                "databaseTypes.metadata.generic[key=meta].extIdentifier",
                "databaseTypes.metadata.generic[key=meta].mongo",
                "databaseTypes.runtime.domains[key=meta].key",
                "databaseTypes.runtime.domains[key=meta].extIdentifier",
            ]
        );
    }

    #[test]
    fn key_only_databases_route_with_their_own_settings() {
        let config = Config::parse(
            r#"
mongoUris: ["mongodb://m0/?replicaSet=rs0"]
spacesConns:
  - {endpoint: "http://s0", accessKey: a, secretKey: s, jsonBucket: json0, contentBucket: content0, backupsBucket: backups0}
  - {endpoint: "http://s0", accessKey: a, secretKey: s, jsonBucket: json1, contentBucket: content1, backupsBucket: backups1}
collectionMaps:
  orders: {indexedProps: [status]}
databases:
  - key: shop
    mongo: 0
    spaces: 1
    dbName: shop
    engine: {inlineMaxBytes: 10, maxPayloadBytes: 99999999}
    collectionMaps:
      orders: {indexedProps: [customer], contentProps: {photo: binary}}
    counters:
      orders: [{name: all, on: [CREATE]}]
  - {key: plain, mongo: 0, spaces: 0}
"#,
        )
        .unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(
            config.max_payload_bytes(),
            99_999_999,
            "the body limit lets every database's payload in"
        );
        let routes = Routes::from_config(&config).unwrap().unwrap();
        let shop = route(&routes, "shop");
        assert_eq!(shop.identity, None);
        let RemoteStorage {
            db_name, json_bucket, ..
        } = remote(shop);
        assert_eq!((db_name.as_str(), json_bucket.as_str()), ("shop", "json1"));
        let map = &shop.settings.collection_maps["orders"];
        assert_eq!(map.indexed_props.as_deref(), Some(&["customer".to_owned()][..]));
        assert_eq!(map.content_props["photo"], crate::engine::ContentKind::Binary);
        assert_eq!(
            (
                shop.settings.inline_max_bytes,
                shop.settings.counter_rules["orders"].len()
            ),
            (10, 1)
        );
        // Without its own settings, a database takes the top-level ones.
        let plain = &route(&routes, "plain").settings;
        assert_eq!(
            plain.collection_maps["orders"].indexed_props.as_deref(),
            Some(&["status".to_owned()][..])
        );
        assert_eq!(plain.inline_max_bytes, EngineSettings::default().inline_max_bytes);

        let bad = Config::parse(
            r#"
mongoUris: ["mongodb://m0/?replicaSet=rs0"]
spacesConns: [{endpoint: "http://s0", accessKey: a, secretKey: s, jsonBucket: json0, contentBucket: content0, backupsBucket: backups0}]
databases:
  - key: shop
    extIdentifier: x
    collectionMaps: {orders: {indexedProps: [a], contentProps: {a: text}}}
"#,
        )
        .unwrap();
        let fields: Vec<String> = bad.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "databases[key=shop].collectionMaps.orders.contentProps",
                "databases[key=shop].extIdentifier"
            ]
        );
        let unrouted = Config::parse("databases: [{key: a}]").unwrap();
        assert_eq!(unrouted.validate()[0].field, "databases", "routing needs backends");
    }
}
