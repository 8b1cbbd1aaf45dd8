//! The semantic checks of a parsed configuration: every problem found at once, each naming its
//! field, so an operator fixes a file in one pass. Parsing (mod.rs) has already checked shapes.

use std::collections::{BTreeMap, HashMap};

use super::error::Issue;
use super::file::{CollectionMapConfig, Config, EngineConfig, Tier, entries};
use super::routing::valid_db_name;
use crate::engine::{CollectionName, CounterRule, ItemId};

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
    match &engine.encryption_key {
        Some(secret) => match secret.reveal() {
            Ok(key) => {
                if let Err(e) = crate::engine::sealed::Kek::from_base64(&key) {
                    issue("engine.encryptionKey".to_owned(), &e.to_string());
                }
            }
            Err(e) => issue("engine.encryptionKey".to_owned(), &e.to_string()),
        },
        None => {
            for (name, map) in maps {
                if map.encryption == crate::engine::Encryption::PerItem {
                    issue(
                        format!("collectionMaps.{name}.encryption"),
                        "perItem needs engine.encryptionKey",
                    );
                }
            }
        }
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
                Err(e) => issue(format!("mongoUris[{i}]"), &e.to_string()),
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
                    Err(e) => issue(field(name), &e.to_string()),
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
        for x in entries(self) {
            let e = x.entry;
            issues.extend(settings_issues(
                &format!("{}.", x.field()),
                // What the entry does not give was checked at the top level.
                e.engine.as_ref().unwrap_or(&EngineConfig::default()),
                e.collection_maps.as_ref().unwrap_or(&BTreeMap::new()),
                e.counters.as_ref().unwrap_or(&BTreeMap::new()),
            ));
        }
        issues.extend(routing_issues(self));
        issues
    }
}

/// Problems with the routing part of a configuration, each naming its field.
fn routing_issues(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut keys = HashMap::new();
    let mut identities = HashMap::new();
    for x in entries(config) {
        let e = x.entry;
        let field = |f: &str| format!("{}.{f}", x.field());
        let mut issue = |f: &str, p: &str| {
            issues.push(Issue {
                field: field(f),
                problem: p.to_owned(),
            })
        };
        if e.key.parse::<ItemId>().is_err() || e.key == "admin" {
            issue("key", "expected 1-128 letters, digits, `_ - . :` (and not `admin`)");
        }
        if keys.insert(e.key.clone(), ()).is_some() {
            issue("key", "is used twice");
        }
        match (x.identity, &e.ext_identifier) {
            (Some((_, Tier::Generic)), Some(_)) => issue("extIdentifier", "the generic tier has no identifier"),
            (Some((_, Tier::Domain | Tier::Tenant)), None) => {
                issue("extIdentifier", "is required for domains and tenants")
            }
            (None, Some(_)) => issue("extIdentifier", "only databaseTypes entries have an identifier"),
            _ => {}
        }
        if let Some((t, tier)) = x.identity
            && identities.insert((t, tier, e.ext_identifier.clone()), ()).is_some()
        {
            issue("extIdentifier", "is used twice in this type and tier");
        }
        if e.mongo.is_some_and(|i| i >= config.mongo_uris.len()) {
            issue("mongo", "is not an index into mongoUris");
        }
        if e.spaces.is_some_and(|i| i >= config.spaces_conns.len()) {
            issue("spaces", "is not an index into spacesConns");
        }
        if e.db_name.as_deref().is_some_and(|n| !valid_db_name(n)) {
            issue(
                "dbName",
                "expected 1-63 characters of ASCII letters, digits, '_' and '-'",
            );
        }
    }
    issues
}

/// Whether `name` is an S3 bucket name (3-63 of a-z, 0-9, `.`, `-`, starting and ending with a
/// letter or digit); shared by the configuration file and the operator's resources.
pub fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}
