//! The dedicated engine of a `ChronosDatabase`, as pure functions of the resource: its
//! configuration (a Secret), its Deployment and its Service. No client here — the controller
//! applies what these return, and unit tests check them directly.
//!
//! The configuration holds no secret values: it names files (`{file: PATH}`) where the
//! Deployment mounts the user's own Secrets, so rotating a password never means re-rendering,
//! and the operator never copies credentials into objects it owns.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, KeyToPath, PodSpec, PodTemplateSpec, Probe, Secret, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::crd::{ChronosDatabase, EngineSpec};
use crate::operator::collection::ChronosCollection;

/// The engine's HTTP port (in the container and on the Service).
pub const ENGINE_PORT: i32 = 8080;
/// The pod template annotation whose change rolls the Deployment when the configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "chronos.dev/config-hash";
/// Where the configuration Secret is mounted, and its one key.
const CONFIG_DIR: &str = "/etc/chronos";
const CONFIG_KEY: &str = "config.json";
/// Where the user's Secrets are mounted, each key at a fixed file name.
const MONGO_DIR: &str = "/secrets/mongo";
const S3_DIR: &str = "/secrets/s3";

/// Everything the engine needs, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineObjects {
    pub config: Secret,
    pub deployment: Deployment,
    pub service: Service,
    pub config_hash: String,
}

/// Names of the objects a database owns.
pub fn engine_name(db: &ChronosDatabase) -> String {
    format!("{}-engine", db.name_any())
}

pub fn config_name(db: &ChronosDatabase) -> String {
    format!("{}-engine-config", db.name_any())
}

/// The engine's in-cluster URL.
pub fn engine_url(db: &ChronosDatabase) -> String {
    format!(
        "http://{}.{}.svc:{ENGINE_PORT}",
        engine_name(db),
        db.namespace().unwrap_or_default()
    )
}

/// The engine's configuration (the `chronos serve --config` format), with secrets as file
/// references. Collections that do not validate are left out (their own status says why).
pub fn engine_config(db: &ChronosDatabase, collections: &[ChronosCollection]) -> Value {
    let spec = &db.spec;
    let mut config = json!({
        "mongoUris": [{"file": format!("{MONGO_DIR}/uri")}],
        "spacesConns": [{
            "endpoint": spec.s3.endpoint,
            "region": spec.s3.region,
            "accessKey": {"file": format!("{S3_DIR}/access-key")},
            "secretKey": {"file": format!("{S3_DIR}/secret-key")},
            "jsonBucket": spec.s3.buckets.json,
            "contentBucket": spec.s3.buckets.content,
            "backupsBucket": spec.s3.buckets.backups,
            "forcePathStyle": spec.s3.force_path_style,
        }],
        "dbName": spec.mongodb.db_name,
    });
    let mut engine = serde_json::Map::new();
    if let Some(v) = spec.defaults.inline_max_bytes {
        engine.insert("inlineMaxBytes".into(), v.into());
    }
    if let Some(v) = spec.defaults.max_payload_bytes {
        engine.insert("maxPayloadBytes".into(), v.into());
    }
    if !engine.is_empty() {
        config["engine"] = Value::Object(engine);
    }
    let mut maps = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for c in collections.iter().filter(|c| c.spec.database == db.name_any()) {
        if c.spec.map().is_err() {
            continue;
        }
        let s = &c.spec;
        maps.insert(
            s.name.clone(),
            json!({"indexedProps": s.indexed_props, "validation": {"requiredIndexed": s.required_indexed}}),
        );
        if !s.counters.is_empty() {
            let rules: Vec<Value> = s
                .counters
                .iter()
                .map(|r| json!({"name": r.name, "when": r.when, "on": r.on}))
                .collect();
            counters.insert(s.name.clone(), rules);
        }
    }
    if !maps.is_empty() {
        config["collectionMaps"] = json!(maps);
    }
    if !counters.is_empty() {
        config["counters"] = json!(counters);
    }
    config
}

/// A short, stable digest of the configuration (and of the Secrets it references by name, so
/// pointing at another Secret rolls the engine too).
pub fn config_hash(config_text: &str, db: &ChronosDatabase) -> String {
    let mut h = Sha256::new();
    h.update(config_text.as_bytes());
    h.update([0]);
    h.update(db.spec.mongodb.uri_secret_ref.name.as_bytes());
    h.update([0]);
    h.update(db.spec.s3.credentials_secret_ref.name.as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn labels(db: &ChronosDatabase) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "chronos-engine".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), db.name_any()),
        ("app.kubernetes.io/managed-by".to_owned(), "chronos-operator".to_owned()),
    ])
}

fn meta(db: &ChronosDatabase, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: db.namespace(),
        labels: Some(labels(db)),
        owner_references: db.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// All three objects of a dedicated engine.
pub fn engine_objects(
    db: &ChronosDatabase,
    engine: &EngineSpec,
    collections: &[ChronosCollection],
    default_image: &str,
) -> Result<EngineObjects, serde_json::Error> {
    let text = serde_json::to_string_pretty(&engine_config(db, collections))?;
    let hash = config_hash(&text, db);
    let config = Secret {
        metadata: meta(db, config_name(db)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), ByteString(text.into_bytes()))])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    Ok(EngineObjects {
        config,
        deployment: deployment(db, engine, default_image, &hash),
        service: service(db),
        config_hash: hash,
    })
}

pub fn deployment(db: &ChronosDatabase, engine: &EngineSpec, default_image: &str, hash: &str) -> Deployment {
    let labels = labels(db);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let secret_volume = |name: &str, secret: &str, items: Vec<(&str, &str)>| Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(
                items
                    .into_iter()
                    .map(|(key, path)| KeyToPath {
                        key: key.to_owned(),
                        path: path.to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let creds = &db.spec.s3.credentials_secret_ref;
    let mongo = &db.spec.mongodb.uri_secret_ref;
    let config_name = config_name(db);
    Deployment {
        metadata: meta(db, engine_name(db)),
        spec: Some(DeploymentSpec {
            replicas: Some(engine.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), hash.to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "engine".to_owned(),
                        image: Some(engine.image.clone().unwrap_or_else(|| default_image.to_owned())),
                        args: Some(
                            [
                                "serve",
                                "--config",
                                &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                                "--listen",
                                &format!("0.0.0.0:{ENGINE_PORT}"),
                            ]
                            .map(str::to_owned)
                            .to_vec(),
                        ),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".to_owned()),
                            container_port: ENGINE_PORT,
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(probe("/readyz")),
                        liveness_probe: Some(probe("/healthz")),
                        resources: engine.resources.clone(),
                        volume_mounts: Some(vec![
                            mount("config", CONFIG_DIR),
                            mount("mongo", MONGO_DIR),
                            mount("s3", S3_DIR),
                        ]),
                        ..Container::default()
                    }],
                    volumes: Some(vec![
                        secret_volume("config", &config_name, vec![(CONFIG_KEY, CONFIG_KEY)]),
                        secret_volume("mongo", &mongo.name, vec![(&mongo.key, "uri")]),
                        secret_volume(
                            "s3",
                            &creds.name,
                            vec![
                                (&creds.access_key_key, "access-key"),
                                (&creds.secret_key_key, "secret-key"),
                            ],
                        ),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

pub fn service(db: &ChronosDatabase) -> Service {
    Service {
        metadata: meta(db, engine_name(db)),
        spec: Some(ServiceSpec {
            selector: Some(labels(db)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: ENGINE_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Whether the engine's Deployment has as many ready replicas as it wants, for the generation
/// we last applied.
pub fn deployment_ready(d: &Deployment) -> (bool, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &d.status else {
        return (false, format!("0/{want} replicas ready"));
    };
    let ready = status.ready_replicas.unwrap_or(0);
    let current = status
        .observed_generation
        .is_some_and(|g| Some(g) >= d.metadata.generation);
    let message = format!("{ready}/{want} replicas ready");
    (current && ready >= want, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::operator::collection::ChronosCollectionSpec;
    use crate::operator::database::ChronosDatabaseSpec;

    pub(crate) fn database() -> ChronosDatabase {
        let spec: ChronosDatabaseSpec = serde_json::from_value(json!({
            "key": "orders",
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}, "dbName": "orders"},
            "s3": {
                "endpoint": "http://s3:8333",
                "buckets": {"json": "orders-json", "content": "orders-content", "backups": "orders-backups"},
                "credentialsSecretRef": {"name": "s3-creds"}
            },
            "defaults": {"inlineMaxBytes": 1024},
            "engine": {"replicas": 2}
        }))
        .unwrap();
        let mut db = ChronosDatabase::new("orders", spec);
        db.metadata.namespace = Some("shop".into());
        db.metadata.uid = Some("uid-1".into());
        db
    }

    fn collection(name: &str, props: &[&str]) -> ChronosCollection {
        let spec: ChronosCollectionSpec = serde_json::from_value(json!({
            "database": "orders", "name": name, "indexedProps": props,
            "counters": [{"name": "big", "when": {"amount": {"$gte": 100}}, "on": ["CREATE"]}]
        }))
        .unwrap();
        ChronosCollection::new(name, spec)
    }

    #[test]
    fn config_is_a_valid_engine_config_that_only_references_secret_files() {
        let db = database();
        let config = engine_config(&db, &[collection("items", &["status"]), collection("bad name/", &[])]);
        let text = serde_json::to_string(&config).unwrap();
        let parsed = Config::parse(&text).unwrap();
        // Only the secret files are missing on this machine; everything else validates.
        let fields: Vec<String> = parsed.validate().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            ["mongoUris[0]", "spacesConns[0].accessKey", "spacesConns[0].secretKey"]
        );
        assert_eq!(config["mongoUris"][0]["file"], "/secrets/mongo/uri");
        assert_eq!(parsed.engine.inline_max_bytes, 1024);
        assert_eq!(parsed.db_name, "orders");
        let settings = parsed.engine_settings();
        assert_eq!(
            settings.collection_maps["items"].indexed_props.as_deref(),
            Some(&["status".to_owned()][..])
        );
        assert!(
            !settings.collection_maps.contains_key("bad name/"),
            "invalid collections are left out"
        );
        assert_eq!(settings.counter_rules["items"][0].name, "big");
    }

    #[test]
    fn deployment_mounts_config_and_user_secrets_and_carries_the_hash() {
        let db = database();
        let objects = engine_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "chronos:test").unwrap();
        let d = &objects.deployment;
        assert_eq!(d.metadata.name.as_deref(), Some("orders-engine"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("shop"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ChronosDatabase", "uid-1", Some(true))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let template = &spec.template;
        let annotations = template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], objects.config_hash);
        let pod = template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("chronos:test"));
        assert_eq!(
            container.args.as_ref().unwrap()[..3],
            [
                "serve".to_owned(),
                "--config".to_owned(),
                "/etc/chronos/config.json".to_owned()
            ]
        );
        let volumes = pod.volumes.as_ref().unwrap();
        let secret_of = |i: usize| volumes[i].secret.as_ref().unwrap();
        assert_eq!(secret_of(0).secret_name.as_deref(), Some("orders-engine-config"));
        assert_eq!(secret_of(1).secret_name.as_deref(), Some("mongo"));
        assert_eq!(secret_of(2).secret_name.as_deref(), Some("s3-creds"));
        let s3_items = secret_of(2).items.as_ref().unwrap();
        assert_eq!(
            (s3_items[0].key.as_str(), s3_items[0].path.as_str()),
            ("accessKey", "access-key")
        );
        // Selector and Service both select the pod labels.
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(objects.service.spec.as_ref().unwrap().selector.as_ref(), Some(selector));
        assert_eq!(engine_url(&db), "http://orders-engine.shop.svc:8080");
    }

    #[test]
    fn the_secret_holds_no_secret_values_and_the_hash_follows_the_config() {
        let db = database();
        let engine = db.spec.engine.clone().unwrap();
        let a = engine_objects(&db, &engine, &[], "img").unwrap();
        let text = String::from_utf8(a.config.data.as_ref().unwrap()["config.json"].0.clone()).unwrap();
        assert!(
            text.contains("/secrets/s3/secret-key") && !text.contains("mongodb://"),
            "{text}"
        );
        let same = engine_objects(&db, &engine, &[], "img").unwrap();
        assert_eq!(a.config_hash, same.config_hash, "stable");
        let with_collection = engine_objects(&db, &engine, &[collection("items", &["a"])], "img").unwrap();
        assert_ne!(
            a.config_hash, with_collection.config_hash,
            "a new collection map rolls the engine"
        );
        let mut other_secret = db.clone();
        other_secret.spec.mongodb.uri_secret_ref.name = "mongo-2".into();
        assert_ne!(
            a.config_hash,
            engine_objects(&other_secret, &engine, &[], "img").unwrap().config_hash
        );
    }

    #[test]
    fn readiness_needs_the_current_generation_and_enough_ready_replicas() {
        let db = database();
        let mut d = deployment(&db, db.spec.engine.as_ref().unwrap(), "img", "h");
        d.metadata.generation = Some(3);
        assert_eq!(deployment_ready(&d), (false, "0/2 replicas ready".into()));
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            ready_replicas: Some(2),
            observed_generation: Some(2),
            ..Default::default()
        });
        assert!(
            !deployment_ready(&d).0,
            "an older generation's readiness does not count"
        );
        d.status.as_mut().unwrap().observed_generation = Some(3);
        assert_eq!(deployment_ready(&d), (true, "2/2 replicas ready".into()));
    }

    #[test]
    fn spec_problems_name_their_fields() {
        let mut db = database();
        assert!(db.spec.problems().is_empty());
        db.spec.routing = Some(serde_json::from_value(json!({"databaseType": "runtime", "tier": "tenant"})).unwrap());
        db.spec.s3.buckets.json = "Bad_Bucket".into();
        let problems = db.spec.problems();
        assert!(
            problems[0].contains("exactly one of spec.routing and spec.key"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("spec.s3.buckets.json"), "{problems:?}");
        db.spec.key = None;
        assert!(db.spec.problems()[0].starts_with("spec.routing.extIdentifier"));
    }
}
