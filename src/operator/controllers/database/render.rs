//! The engine's configuration (the `chronos serve --config` format) and its tokens file, rendered
//! from the resources — and the tokens Secret those files refer to. Pure: no client here; the
//! controller applies what [`objects`](super::objects) wraps around these.
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
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::names::{CONFIG_DIR, TOKEN_SCOPES, TOKENS_KEY, labels_of, secret_file, tokens_name};
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::{ChronosDatabase, database_key};
use crate::routing::Tier;

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
pub fn tokens_file(dbs: &[&ChronosDatabase]) -> Value {
    let tokens: Vec<Value> = dbs
        .iter()
        .flat_map(|db| {
            TOKEN_SCOPES.map(|scope| {
                json!({
                    "name": format!("{}-{scope}", db.name_any()),
                    "token": {"file": secret_file(&tokens_name(db), scope)},
                    "databases": [database_key(db)],
                    "scopes": [scope],
                })
            })
        })
        .collect();
    json!({ "tokens": tokens })
}

/// The engine configuration (the `chronos serve --config` format) serving `dbs`, each with its
/// `ChronosCollection`s from `collections`. Collections that do not validate are left out (their
/// own status says why).
pub fn engine_config(dbs: &[&ChronosDatabase], collections: &[ChronosCollection]) -> Value {
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
    let mut spaces = Vec::new();
    let mut keyed = Vec::new();
    let mut types: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (i, db) in dbs.iter().enumerate() {
        let spec = &db.spec;
        let creds = &spec.s3.credentials_secret_ref;
        spaces.push(json!({
            "endpoint": spec.s3.endpoint,
            "region": spec.s3.region,
            "accessKey": {"file": secret_file(&creds.name, &creds.access_key_key)},
            "secretKey": {"file": secret_file(&creds.name, &creds.secret_key_key)},
            "jsonBucket": spec.s3.buckets.json,
            "contentBucket": spec.s3.buckets.content,
            "backupsBucket": spec.s3.buckets.backups,
            "forcePathStyle": spec.s3.force_path_style,
        }));
        let uri = &spec.mongodb.uri_secret_ref;
        let mongo_index = mongo
            .iter()
            .position(|&(n, k)| n == uri.name && k == uri.key)
            .unwrap_or_default();
        let mut entry = json!({
            "key": database_key(db),
            "mongo": mongo_index,
            "spaces": i,
            "dbName": spec.mongodb.db_name,
        });
        let mut engine = Map::new();
        if let Some(v) = spec.defaults.inline_max_bytes {
            engine.insert("inlineMaxBytes".into(), v.into());
        }
        if let Some(v) = spec.defaults.max_payload_bytes {
            engine.insert("maxPayloadBytes".into(), v.into());
        }
        if !engine.is_empty() {
            entry["engine"] = Value::Object(engine);
        }
        let (maps, counters) = collection_settings(db, collections);
        if !maps.is_empty() {
            entry["collectionMaps"] = Value::Object(maps);
        }
        if !counters.is_empty() {
            entry["counters"] = Value::Object(counters);
        }
        match &spec.routing {
            None => keyed.push(entry),
            Some(r) => {
                let tiers = types.entry(r.database_type.to_string()).or_default();
                if let Some(ext) = &r.ext_identifier
                    && r.tier != Tier::Generic
                {
                    entry["extIdentifier"] = ext.clone().into();
                }
                match r.tier {
                    Tier::Generic => {
                        tiers.insert("generic".into(), entry);
                    }
                    tier => {
                        let list = tiers.entry(tier.to_string()).or_insert_with(|| json!([]));
                        if let Value::Array(list) = list {
                            list.push(entry);
                        }
                    }
                }
            }
        }
    }
    let mut config = json!({
        "mongoUris": mongo.iter().map(|(n, k)| json!({"file": secret_file(n, k)})).collect::<Vec<_>>(),
        "spacesConns": spaces,
        "auth": {"tokensFile": format!("{CONFIG_DIR}/{TOKENS_KEY}")},
    });
    if !keyed.is_empty() {
        config["databases"] = keyed.into();
    }
    if !types.is_empty() {
        config["databaseTypes"] = json!(types);
    }
    config
}

/// The collection maps and counters of `db`'s valid collections, as configuration values.
fn collection_settings(
    db: &ChronosDatabase,
    collections: &[ChronosCollection],
) -> (Map<String, Value>, Map<String, Value>) {
    let mut maps = Map::new();
    let mut counters = Map::new();
    let mut mine: Vec<&ChronosCollection> = collections
        .iter()
        .filter(|c| c.spec.database == db.name_any() && c.spec.map().is_ok())
        .collect();
    mine.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    for c in mine {
        let s = &c.spec;
        let mut map = json!({"indexedProps": s.indexed_props, "validation": {"requiredIndexed": s.required_indexed}});
        if !s.content_props.is_empty() {
            map["contentProps"] = json!(s.content_props);
        }
        maps.insert(s.name.clone(), map);
        if !s.counters.is_empty() {
            let rules: Vec<Value> = s
                .counters
                .iter()
                .map(|r| json!({"name": r.name, "when": r.when, "on": r.on}))
                .collect();
            counters.insert(s.name.clone(), rules.into());
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
        let config = engine_config(&[&db], &collections);
        let parsed = parse(&config);
        let fields: Vec<String> = parsed.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            ["mongoUris[0]", "spacesConns[0].accessKey", "spacesConns[0].secretKey"]
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
        let config = engine_config(&[&a, &tenant, &b, &meta], &collections);
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
            .map(|s| (s.to_string(), format!("{s}-value")))
            .collect();
        let secret = tokens_secret(&db, tokens);
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-tokens"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("uid-orders", Some(true)));
        assert_eq!(secret.metadata.labels.as_ref().unwrap()[MANAGED_BY.0], MANAGED_BY.1);
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["admin", "read", "write"]);
    }
}
