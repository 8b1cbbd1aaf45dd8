//! The engine's configuration (the `chronos serve --config` format) and its tokens file, rendered
//! from the resources — and the tokens Secret those files refer to. Pure: no client here; the
//! controller applies the objects (`objects.rs`) that wrap these.
//!
//! Both kinds of engine render the same configuration: each database is a routed entry under
//! its key (`databases`, or `databaseTypes` when it has a routing identity) with its own
//! collection maps, counters and tunables, so a database moves between a dedicated and the
//! shared engine without its clients noticing anything but the URL. The configuration holds no
//! secret values: it names files (`{file: /secrets/<Secret>/<key>}`) where the Deployment mounts
//! the users' own Secrets, so rotating a password never means re-rendering, and the operator
//! never copies credentials into objects it owns.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::names::{CONFIG_DIR, TOKEN_SCOPES, TOKENS_KEY, labels_of, secret_path, tokens_name};
use crate::config::{
    self, AuthConfig, CollectionMapConfig, Config, DatabaseType, DatabaseTypes, RouteEntry, SpacesConn, Tier,
    TokenSpec, TokensFile, ValidationConfig,
};
use crate::engine::CounterRule;
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::{ChronosDatabase, database_key};

/// A new bearer token: 32 random bytes, base64url without padding.
pub fn random_token() -> Result<String, rustls::crypto::GetRandomFailed> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `db`'s tokens Secret holding `tokens` (scope → value), controlled by the database so it goes
/// with it.
pub fn tokens_secret(db: &ChronosDatabase, tokens: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(tokens_name(db)),
            namespace: db.namespace(),
            labels: Some(labels_of("chronos-tokens", &db.name_any())),
            owner_references: Some(db.controller_owner_ref(&()).into_iter().collect()),
            ..ObjectMeta::default()
        },
        data: Some(
            tokens
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// The tokens file of an engine serving `dbs`: each database's read, write and admin token,
/// scoped to its key, read from its mounted tokens Secret.
pub fn tokens_file(dbs: &[&ChronosDatabase]) -> TokensFile {
    let tokens = dbs
        .iter()
        .flat_map(|db| {
            TOKEN_SCOPES.map(|scope| TokenSpec {
                name: format!("{}-{}", db.name_any(), scope.as_str()),
                token: config::Secret::File {
                    file: secret_path(&tokens_name(db), scope.as_str()).into(),
                },
                databases: vec![database_key(db)],
                scopes: vec![scope],
            })
        })
        .collect();
    TokensFile { tokens }
}

/// The engine configuration (the `chronos serve --config` format) serving `dbs`, each with its
/// `ChronosCollection`s from `collections`. Collections that do not validate are left out (their
/// own status says why). Built from the loader's own types, so the rendering and the loader
/// can't disagree on a key; what the resources leave unset is left out and takes the engine's
/// default.
pub fn engine_config(dbs: &[&ChronosDatabase], collections: &[ChronosCollection]) -> Config {
    // One mongoUris entry per distinct Secret key (databases usually share a MongoDB); one
    // spacesConn per database (each has its own buckets).
    let mongo: BTreeSet<(&str, &str)> = dbs
        .iter()
        .map(|db| {
            (
                db.spec.mongodb.uri_secret_ref.name.as_str(),
                db.spec.mongodb.uri_secret_ref.key.as_str(),
            )
        })
        .collect();
    let mongo: Vec<(&str, &str)> = mongo.into_iter().collect();
    let mut spaces_conns = Vec::new();
    let mut keyed = Vec::new();
    let mut types: Option<DatabaseTypes> = None;
    for (i, db) in dbs.iter().enumerate() {
        let spec = &db.spec;
        let creds = &spec.s3.credentials_secret_ref;
        spaces_conns.push(SpacesConn {
            endpoint: spec.s3.endpoint.clone(),
            region: spec.s3.region.clone(),
            access_key: secret_file(&creds.name, &creds.access_key_key),
            secret_key: secret_file(&creds.name, &creds.secret_key_key),
            json_bucket: spec.s3.buckets.json.clone(),
            content_bucket: spec.s3.buckets.content.clone(),
            backups_bucket: spec.s3.buckets.backups.clone(),
            force_path_style: spec.s3.force_path_style,
            object_lock: spec.s3.object_lock,
        });
        let uri = &spec.mongodb.uri_secret_ref;
        let mongo_index = mongo
            .iter()
            .position(|&(n, k)| n == uri.name && k == uri.key)
            .unwrap_or_default();
        let (maps, counters) = collection_settings(db, collections);
        let mut entry = RouteEntry {
            key: database_key(db),
            mongo: Some(mongo_index),
            spaces: Some(i),
            db_name: Some(spec.mongodb.db_name.clone()),
            engine: engine_config_of(db),
            collection_maps: Some(maps).filter(|m| !m.is_empty()),
            counters: Some(counters).filter(|c| !c.is_empty()),
            ..RouteEntry::default()
        };
        let Some(r) = &spec.routing else {
            keyed.push(entry);
            continue;
        };
        let types = types.get_or_insert_default();
        let tiers = match r.database_type {
            DatabaseType::Metadata => &mut types.metadata,
            DatabaseType::Knowledge => &mut types.knowledge,
            DatabaseType::Runtime => &mut types.runtime,
        }
        .get_or_insert_default();
        if r.tier != Tier::Generic {
            entry.ext_identifier = r.ext_identifier.clone();
        }
        match r.tier {
            Tier::Generic => tiers.generic = Some(entry),
            Tier::Domain => tiers.domains.push(entry),
            Tier::Tenant => tiers.tenants.push(entry),
        }
    }
    Config {
        mongo_uris: mongo.iter().map(|(n, k)| secret_file(n, k)).collect(),
        spaces_conns,
        auth: Some(AuthConfig {
            tokens_file: format!("{CONFIG_DIR}/{TOKENS_KEY}").into(),
        }),
        databases: keyed,
        database_types: types,
        ..Config::default()
    }
}

/// The database's engine tunables, with its key-encryption key as a mounted file.
fn engine_config_of(db: &ChronosDatabase) -> Option<config::EngineConfig> {
    let defaults = &db.spec.defaults;
    let mut engine = defaults.engine_config();
    if let Some(r) = &defaults.encryption_key_secret_ref {
        engine.get_or_insert_default().encryption_key = Some(secret_file(&r.name, &r.key));
    }
    engine
}

/// A secret the engine reads from the file where the pod mounts `key` of Secret `name`.
fn secret_file(name: &str, key: &str) -> config::Secret {
    config::Secret::File {
        file: secret_path(name, key).into(),
    }
}

type CollectionSettings = (
    BTreeMap<String, CollectionMapConfig>,
    BTreeMap<String, Vec<CounterRule>>,
);

/// The collection maps and counters of `db`'s valid collections, as the configuration holds them.
fn collection_settings(db: &ChronosDatabase, collections: &[ChronosCollection]) -> CollectionSettings {
    let mut maps = BTreeMap::new();
    let mut counters = BTreeMap::new();
    let mut mine: Vec<&ChronosCollection> = collections
        .iter()
        .filter(|c| c.spec.database == db.name_any() && c.spec.map().is_ok())
        .collect();
    mine.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    for c in mine {
        let s = &c.spec;
        let map = CollectionMapConfig {
            indexed_props: s.indexed_props.clone(),
            validation: ValidationConfig {
                required_indexed: s.required_indexed.clone(),
            },
            content_props: s.content_props.clone(),
            hold: s.hold,
            encryption: s.encryption,
        };
        maps.insert(s.name.clone(), map);
        if !s.counters.is_empty() {
            counters.insert(s.name.clone(), s.counter_rules());
        }
    }
    (maps, counters)
}

/// A short, stable digest of the configuration. Secrets are referenced by name and key inside
/// it, so pointing a database at another Secret changes the digest too.
pub fn config_hash(config_text: &str) -> String {
    hex::encode(&Sha256::digest(config_text.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::Config;
    use crate::engine::ContentKind;
    use crate::operator::controllers::database::names::MANAGED_BY;
    use crate::operator::crd::database::DatabaseType;

    /// Parse a rendered configuration and check that it validates but for the secret files,
    /// which only exist in the engine's pod.
    fn parse(config: &Value) -> Config {
        let parsed = Config::parse(&serde_json::to_string(config).unwrap()).unwrap();
        let others: Vec<String> = parsed
            .validate()
            .into_iter()
            .filter(|i| !i.problem.starts_with("cannot read secret file /secrets/"))
            .map(|i| i.to_string())
            .collect();
        assert!(others.is_empty(), "{others:?}");
        parsed
    }

    #[test]
    fn a_dedicated_config_routes_its_one_database_by_key_and_only_references_secret_files() {
        let db = ChronosDatabase::orders();
        let collections = [
            ChronosCollection::test("orders", "items")
                .indexed(&["status"])
                .counting_big_amounts(),
            ChronosCollection::test("orders", "bad name/"),
            ChronosCollection::test("orders", "docs")
                .content("body", ContentKind::Text)
                .content("photo", ContentKind::Binary),
            ChronosCollection::test("other", "elsewhere"),
        ];
        let config = serde_json::to_value(engine_config(&[&db], &collections)).unwrap();
        let parsed = parse(&config);
        let fields: Vec<String> = parsed.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            ["mongoUris[0]", "spacesConns[0].accessKey", "spacesConns[0].secretKey"]
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&config),
            ["mongoUris", "spacesConns", "databases", "auth"],
            "only what the resources set: the engine's defaults apply to the rest"
        );
        assert_eq!(
            keys(&config["databases"][0]),
            [
                "key",
                "mongo",
                "spaces",
                "dbName",
                "engine",
                "collectionMaps",
                "counters"
            ]
        );
        assert_eq!(config["mongoUris"][0]["file"], "/secrets/mongo/uri");
        assert_eq!(
            config["spacesConns"][0]["secretKey"]["file"],
            "/secrets/s3-creds/secretKey"
        );
        let entry = &parsed.databases[0];
        assert_eq!(
            (entry.key.as_str(), entry.db_name.as_deref()),
            ("orders", Some("orders"))
        );
        let settings = parsed.settings_for(entry);
        assert_eq!(settings.inline_max_bytes, 1024);
        assert_eq!(
            settings.collection_maps["items"].indexed_props.as_deref(),
            Some(&["status".to_owned()][..])
        );
        assert_eq!(
            settings.collection_maps["docs"].content_props["photo"],
            ContentKind::Binary
        );
        assert_eq!(
            settings.collection_maps["docs"].content_props["body"],
            ContentKind::Text
        );
        assert!(
            !settings.collection_maps.contains_key("bad name/"),
            "invalid collections are left out"
        );
        assert!(
            !settings.collection_maps.contains_key("elsewhere"),
            "another database's"
        );
        assert_eq!(settings.counter_rules["items"][0].name, "big");
    }

    #[test]
    fn a_shared_config_serves_each_database_under_its_key_or_identity_with_its_own_maps() {
        let a = ChronosDatabase::test("a");
        let b = ChronosDatabase::test("b")
            .max_payload_bytes(1000)
            .mongo_database("mongo-b", "b");
        let tenant = ChronosDatabase::test("acme").routed(DatabaseType::Runtime, Tier::Tenant, Some("acme"));
        let meta = ChronosDatabase::test("meta").routed(DatabaseType::Metadata, Tier::Generic, None);
        let collections = [
            ChronosCollection::test("a", "orders")
                .indexed(&["status"])
                .counting_big_amounts(),
            ChronosCollection::test("b", "orders")
                .indexed(&["customer"])
                .counting_big_amounts(),
        ];
        let config = serde_json::to_value(engine_config(&[&a, &tenant, &b, &meta], &collections)).unwrap();
        let parsed = parse(&config);
        assert_eq!(
            config["mongoUris"],
            json!([{"file": "/secrets/mongo/uri"}, {"file": "/secrets/mongo-b/uri"}]),
            "one entry per distinct Secret"
        );
        assert_eq!(parsed.spaces_conns.len(), 4, "one per database: each has its buckets");
        let keys: Vec<&str> = parsed.databases.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(
            (parsed.databases[1].mongo, parsed.databases[1].spaces),
            (Some(1), Some(2))
        );
        let types = parsed.database_types.as_ref().unwrap();
        let acme = &types.runtime.as_ref().unwrap().tenants[0];
        assert_eq!(
            (acme.key.as_str(), acme.ext_identifier.as_deref()),
            ("acme", Some("acme"))
        );
        let generic = types.metadata.as_ref().unwrap().generic.as_ref().unwrap();
        assert_eq!(
            (generic.key.as_str(), generic.ext_identifier.as_deref()),
            ("meta", None)
        );
        // Same collection name, different maps: each database keeps its own.
        let map_of = |i: usize| parsed.settings_for(&parsed.databases[i]).collection_maps["orders"].clone();
        assert_eq!(map_of(0).indexed_props, Some(vec!["status".to_owned()]));
        assert_eq!(map_of(1).indexed_props, Some(vec!["customer".to_owned()]));
        assert_eq!(parsed.settings_for(&parsed.databases[1]).max_payload_bytes, 1000);
        assert!(parsed.settings_for(acme).collection_maps.is_empty());
    }

    #[test]
    fn a_tokens_secret_is_owned_by_its_database_and_tokens_are_random() {
        let db = ChronosDatabase::orders();
        let (one, two) = (random_token().unwrap(), random_token().unwrap());
        assert_ne!(one, two);
        assert_eq!(one.len(), 43, "32 bytes, base64url");
        assert!(one.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let tokens = TOKEN_SCOPES
            .iter()
            .map(|s| (s.as_str().to_owned(), format!("{}-value", s.as_str())))
            .collect();
        let secret = tokens_secret(&db, tokens);
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-tokens"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("uid-orders", Some(true)));
        assert_eq!(secret.metadata.labels.as_ref().unwrap()[MANAGED_BY.0], MANAGED_BY.1);
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["admin", "read", "write"]);
    }

    #[test]
    fn a_key_encryption_key_is_referenced_as_a_mounted_file_never_copied() {
        let mut db = ChronosDatabase::orders();
        db.spec.defaults.encryption_key_secret_ref = Some(crate::operator::crd::database::SecretKeyRef {
            name: "kek".into(),
            key: "key".into(),
        });
        let config = serde_json::to_value(engine_config(&[&db], &[])).unwrap();
        assert_eq!(
            config["databases"][0]["engine"]["encryptionKey"],
            json!({"file": "/secrets/kek/key"})
        );
        let mounts = super::super::pod::secret_mounts(&[&db]);
        assert!(mounts["kek"].contains("key"), "{mounts:?}");
    }
}
