//! The configuration file (`--config`, JSON or YAML), parsed into typed structs and validated.
//!
//! Keys follow the original system where they exist (`mongoUris`, `spacesConns`, …). Every error
//! names the field and what was expected. Secrets may be given inline, as `{file: PATH}` (how
//! Kubernetes mounts Secrets) or as `{env: NAME}`; they are never printed.
//!
//! The shape is in `file.rs`, the checks in `validate.rs`, where each database lives in
//! `storage.rs` and `routing.rs`; this file reads a file through them.

mod error;
mod file;
pub mod routing;
mod storage;
mod tokens;
mod validate;

use std::path::Path;

pub use error::{Error, Issue, Result};
pub use file::{
    AuthConfig, CollectionMapConfig, Config, DatabaseType, DatabaseTypes, EngineConfig, LocalStorage, RetryQueueConfig,
    RouteEntry, Secret, SpacesConn, Tier, Tiers, ValidationConfig,
};
pub use storage::{RemoteStorage, S3Access, Storage};
pub use tokens::{Scope as TokenScope, TokenSpec, TokensFile};
pub use validate::valid_bucket;

impl Config {
    /// Read, parse and validate a file; `.json` files are JSON, everything else YAML.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source: Box::new(source),
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
    pub fn parse(text: &str) -> Result<Config> {
        let mut value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(Error::Json)?
        } else {
            serde_saphyr::from_str(text).map_err(Error::yaml)?
        };
        if value.is_null() {
            // An empty file: every default (embedded mode).
            value = serde_json::Value::Object(Default::default());
        }
        serde_path_to_error::deserialize(value).map_err(Error::field)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::QueueSettings;

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
        let storage = Storage::Remote(RemoteStorage {
            mongo_uri: "mongodb://admin:hunter2@db:27017/?replicaSet=rs0".into(),
            db_name: "d".into(),
            s3: S3Access {
                endpoint: "http://s3".into(),
                region: "r".into(),
                access_key: "AKIA-SECRET-ID".into(),
                secret_key: "s3cr3t".into(),
                force_path_style: true,
            },
            json_bucket: "j".into(),
            content_bucket: "c".into(),
            backups_bucket: "b".into(),
            object_lock: false,
        });
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

    /// `packWrites` is `auto` unless set, and takes what people write in YAML — an unquoted
    /// `off` included, which YAML reads as `false`; anything else is refused with the choices.
    #[test]
    fn pack_writes_reads_as_written() {
        use crate::engine::settings::PackWrites;
        let mode = |yaml: &str| Config::parse(yaml).map(|c| c.engine_settings().pack_writes);
        assert_eq!(Config::default().engine_settings().pack_writes, PackWrites::Auto);
        for (written, meant) in [
            ("off", PackWrites::Off),
            ("\"off\"", PackWrites::Off),
            ("false", PackWrites::Off),
            ("auto", PackWrites::Auto),
            ("together", PackWrites::Together),
            ("always", PackWrites::Always),
        ] {
            assert_eq!(
                mode(&format!("engine:\n  packWrites: {written}\n")).unwrap(),
                meant,
                "{written}"
            );
        }
        let err = mode("engine:\n  packWrites: sometimes\n").unwrap_err().to_string();
        assert!(err.contains("expected off, auto, together or always"), "{err}");
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
        assert!(matches!(&err, Error::Field { field: Some(f), .. } if f == "spacesConns[0].endpoint"));
        let err = err.to_string();
        assert!(err.starts_with("spacesConns[0].endpoint:"), "{err}");
        let err = Config::parse("mongoUri: x\n").unwrap_err().to_string();
        assert!(
            err.contains("unknown field `mongoUri`") && err.contains("mongoUris"),
            "{err}"
        );
        let err = Config::parse(r#"{"engine": {"inlineMaxBytes": "big"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("engine.inlineMaxBytes:"), "{err}");
        let err = Config::parse("spacesConns:\n  - endpoint: http://x\n    accessKey: [1]\n")
            .unwrap_err()
            .to_string();
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
        let err = missing.reveal().unwrap_err();
        assert!(err.to_string().starts_with("cannot read secret file ") && err.to_string().contains("nope"));
        let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound),
            "the io error is kept"
        );
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
