//! The engines that serve `ChronosDatabase`s, as pure functions of the resources: each engine's
//! configuration (a Secret), Deployment and Service. No client here — the controller applies what
//! these return, and unit tests check them directly.
//!
//! Two kinds of engine, one renderer:
//! - a **dedicated** engine (`spec.engine` set): `<database>-engine`, serving that database alone,
//!   with the replicas, image and resources it asks for;
//! - the namespace's **shared** engine ([`SHARED_ENGINE`]): one engine per namespace serving every
//!   database without `spec.engine` (cost-first: one pod for many small databases).
//!
//! Both render the same configuration format: each database is a routed entry under its key
//! (`databases`, or `databaseTypes` when it has a routing identity) with its own collection maps,
//! counters and tunables, so a database moves between the two kinds without its clients noticing
//! anything but the URL. The configuration holds no secret values: it names files
//! (`{file: /secrets/<Secret>/<key>}`) where the Deployment mounts the users' own Secrets, so
//! rotating a password never means re-rendering, and the operator never copies credentials into
//! objects it owns.
//!
//! Every engine runs with auth on: each database has its own tokens Secret ([`tokens_name`],
//! made once by the controller) whose read, write and admin tokens are scoped to its key, and a
//! NetworkPolicy admits only the peers the database allows (its namespace by default) to the
//! API port.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::controller::BACKENDS_REACHABLE;
use super::crd::{ChronosDatabase, EngineSpec};
use crate::config::Tier;
use crate::operator::collection::ChronosCollection;
use crate::operator::conditions;

/// The engine's HTTP port (in the container and on the Service).
pub const ENGINE_PORT: i32 = 8080;
/// The pod template annotation whose change rolls the Deployment when the configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "chronos.dev/config-hash";
/// The namespace's shared engine: its Deployment and Service (its configuration Secret is
/// `chronos-engine-config`). It is named as the dedicated engine of a database called
/// [`RESERVED_NAME`] would be, which is why such a database can't have a dedicated engine.
pub const SHARED_ENGINE: &str = "chronos-engine";
/// The database name whose dedicated engine would be the shared engine.
pub const RESERVED_NAME: &str = "chronos";
/// Where the configuration Secret is mounted, and its keys: the configuration and the tokens
/// file it names (which refers to the tokens Secrets' mounted files, never to their values).
const CONFIG_DIR: &str = "/etc/chronos";
const CONFIG_KEY: &str = "config.json";
const TOKENS_KEY: &str = "tokens.json";
/// The keys of a database's tokens Secret: one bearer token per scope.
pub const TOKEN_SCOPES: [&str; 3] = ["read", "write", "admin"];
/// The uid and gid engine pods run as (the image's `nonroot` user).
const ENGINE_UID: i64 = 65532;
/// Where the users' Secrets are mounted: `/secrets/<Secret>/<key>`.
const SECRETS_DIR: &str = "/secrets";

/// Everything an engine needs, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineObjects {
    pub config: Secret,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub config_hash: String,
}

/// The name of the Deployment and Service that serve `db`: its dedicated engine's, or the
/// shared engine's.
pub fn engine_name(db: &ChronosDatabase) -> String {
    match db.spec.engine {
        Some(_) => dedicated_name(db),
        None => SHARED_ENGINE.to_owned(),
    }
}

/// The name of `db`'s dedicated engine (whether or not it has one now).
pub fn dedicated_name(db: &ChronosDatabase) -> String {
    format!("{}-engine", db.name_any())
}

/// The configuration Secret of the engine called `engine`.
pub fn config_name(engine: &str) -> String {
    format!("{engine}-config")
}

/// The Secret with `db`'s bearer tokens (keys [`TOKEN_SCOPES`]); the controller creates it once.
pub fn tokens_name(db: &ChronosDatabase) -> String {
    format!("{}-tokens", db.name_any())
}

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

/// Whether `image` comes from one of the `allowed` repositories (`repo`, `repo:tag`,
/// `repo@digest`; a repository is compared whole, so `chronos-evil` is not `chronos`).
pub fn image_allowed(image: &str, allowed: &[String]) -> bool {
    let repo = image_repository(image);
    allowed.iter().any(|a| a == repo)
}

/// The repository of an image reference: without its digest and tag (a registry's `:port` is
/// kept).
pub fn image_repository(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// The in-cluster URL of the engine called `engine` in namespace `ns`.
pub fn engine_url(engine: &str, ns: &str) -> String {
    format!("http://{engine}.{ns}.svc:{ENGINE_PORT}")
}

/// The key the engine serves `db` under (`/v1/{key}/…`): `spec.key`, or for a database with a
/// routing identity, its resource name.
pub fn database_key(db: &ChronosDatabase) -> String {
    db.spec.key.clone().unwrap_or_else(|| db.name_any())
}

/// Where clients reach `db`: its engine's URL and its key.
pub fn database_url(db: &ChronosDatabase) -> String {
    format!(
        "{}/v1/{}",
        engine_url(&engine_name(db), &db.namespace().unwrap_or_default()),
        database_key(db)
    )
}

fn secret_file(name: &str, key: &str) -> String {
    format!("{SECRETS_DIR}/{name}/{key}")
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

/// The label every object the operator makes carries (and that it checks before deleting one).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "chronos-operator");

fn labels(instance: &str) -> BTreeMap<String, String> {
    labels_of("chronos-engine", instance)
}

fn labels_of(name: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ])
}

/// Who may reach `db`'s engine: `spec.ingressFrom`, or by default every pod of its namespace.
fn ingress_from(db: &ChronosDatabase) -> Vec<NetworkPolicyPeer> {
    db.spec.ingress_from.clone().unwrap_or_else(|| {
        vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]
    })
}

/// What differs between a dedicated and the shared engine.
struct Shape {
    name: String,
    namespace: Option<String>,
    /// The `app.kubernetes.io/instance` label (the selector): the database's name, or
    /// [`RESERVED_NAME`] for the shared engine.
    instance: String,
    owners: Vec<OwnerReference>,
    replicas: i32,
    image: String,
    resources: Option<ResourceRequirements>,
    /// The peers the NetworkPolicy admits to the API port.
    ingress_from: Vec<NetworkPolicyPeer>,
}

impl Shape {
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: self.namespace.clone(),
            labels: Some(labels(&self.instance)),
            owner_references: Some(self.owners.clone()),
            ..ObjectMeta::default()
        }
    }
}

/// The objects of `db`'s dedicated engine. It is owned (as controller) by the database,
/// so it goes when the database goes.
pub fn dedicated_objects(
    db: &ChronosDatabase,
    engine: &EngineSpec,
    collections: &[ChronosCollection],
    default_image: &str,
) -> Result<EngineObjects, serde_json::Error> {
    let shape = Shape {
        name: engine_name(db),
        namespace: db.namespace(),
        instance: db.name_any(),
        owners: db.controller_owner_ref(&()).into_iter().collect(),
        replicas: engine.replicas,
        image: engine.image.clone().unwrap_or_else(|| default_image.to_owned()),
        resources: engine.resources.clone(),
        ingress_from: ingress_from(db),
    };
    objects(&shape, &[db], collections)
}

/// The settings of a namespace's shared engine (operator flags: it has no resource of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEngine {
    pub image: String,
    pub replicas: i32,
}

/// The objects of namespace `ns`'s shared engine, serving `members` (see [`membership`]).
///
/// Owners: every member, none of them as controller. A shared object can't be owned by one
/// database alone — deleting that one would take the engine from the others — and Kubernetes'
/// garbage collector deletes a dependent only once *all* its owners are gone. So the engine
/// outlives any one database and is collected after the last one even if the operator is not
/// running; the operator also deletes it itself when the last member leaves ([`membership`]
/// empty), which is what happens first in practice. Owner references also route the
/// Deployment's status changes to every member's reconcile, so each one's `EngineReady` follows.
pub fn shared_objects(
    ns: &str,
    members: &[&ChronosDatabase],
    collections: &[ChronosCollection],
    settings: &SharedEngine,
) -> Result<EngineObjects, serde_json::Error> {
    let shape = Shape {
        name: SHARED_ENGINE.to_owned(),
        namespace: Some(ns.to_owned()),
        instance: RESERVED_NAME.to_owned(),
        owners: members.iter().filter_map(|db| db.owner_ref(&())).collect(),
        replicas: settings.replicas,
        image: settings.image.clone(),
        resources: None,
        ingress_from: shared_ingress_from(members),
    };
    objects(&shape, members, collections)
}

/// Who may reach the shared engine: every member's peers (each member's clients must reach it;
/// the tokens keep them to their own database).
fn shared_ingress_from(members: &[&ChronosDatabase]) -> Vec<NetworkPolicyPeer> {
    let mut out: Vec<NetworkPolicyPeer> = Vec::new();
    for peer in members.iter().flat_map(|db| ingress_from(db)) {
        if !out.contains(&peer) {
            out.push(peer);
        }
    }
    out
}

fn objects(
    shape: &Shape,
    dbs: &[&ChronosDatabase],
    collections: &[ChronosCollection],
) -> Result<EngineObjects, serde_json::Error> {
    let text = serde_json::to_string_pretty(&engine_config(dbs, collections))?;
    let tokens = serde_json::to_string_pretty(&tokens_file(dbs))?;
    // The tokens file is loaded at start only: it is part of the hash, so a change rolls the pods.
    let hash = config_hash(&format!("{text}\n{tokens}"));
    let config = Secret {
        metadata: shape.meta(config_name(&shape.name)),
        data: Some(BTreeMap::from([
            (CONFIG_KEY.to_owned(), ByteString(text.into_bytes())),
            (TOKENS_KEY.to_owned(), ByteString(tokens.into_bytes())),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    Ok(EngineObjects {
        config,
        deployment: deployment(shape, dbs, &hash),
        service: service(shape),
        network_policy: network_policy(shape),
        config_hash: hash,
    })
}

/// Every Secret the databases reference, with the keys they use: each is mounted (those keys
/// only) at `/secrets/<Secret>/`.
fn secret_mounts<'a>(dbs: &[&'a ChronosDatabase]) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for db in dbs {
        let uri = &db.spec.mongodb.uri_secret_ref;
        out.entry(&uri.name).or_default().insert(&uri.key);
        let creds = &db.spec.s3.credentials_secret_ref;
        let keys = out.entry(&creds.name).or_default();
        keys.insert(&creds.access_key_key);
        keys.insert(&creds.secret_key_key);
    }
    out
}

/// Every database's tokens Secret (name → keys), mounted like the users' Secrets.
fn tokens_mounts(dbs: &[&ChronosDatabase]) -> BTreeMap<String, BTreeSet<&'static str>> {
    dbs.iter()
        .map(|db| (tokens_name(db), TOKEN_SCOPES.into_iter().collect()))
        .collect()
}

fn deployment(shape: &Shape, dbs: &[&ChronosDatabase], hash: &str) -> Deployment {
    let labels = labels(&shape.instance);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let secret_volume = |name: String, secret: &str, keys: Vec<&str>| Volume {
        name,
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(
                keys.into_iter()
                    .map(|key| KeyToPath {
                        key: key.to_owned(),
                        path: key.to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |name: String, path: String| VolumeMount {
        name,
        mount_path: path,
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut volumes = vec![secret_volume(
        "config".to_owned(),
        &config_name(&shape.name),
        vec![CONFIG_KEY, TOKENS_KEY],
    )];
    let mut mounts = vec![mount("config".to_owned(), CONFIG_DIR.to_owned())];
    let tokens = tokens_mounts(dbs);
    let users = secret_mounts(dbs);
    let all = users
        .iter()
        .map(|(s, k)| (*s, k))
        .chain(tokens.iter().map(|(s, k)| (s.as_str(), k)));
    for (i, (secret, keys)) in all.enumerate() {
        // Volume names are DNS labels; Secret names may not be (dots), so number them.
        let name = format!("secret-{i}");
        volumes.push(secret_volume(name.clone(), secret, keys.iter().copied().collect()));
        mounts.push(mount(name, format!("{SECRETS_DIR}/{secret}")));
    }
    Deployment {
        metadata: shape.meta(shape.name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(shape.replicas),
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
                        image: Some(shape.image.clone()),
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
                        resources: shape.resources.clone(),
                        volume_mounts: Some(mounts),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            privileged: Some(false),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".to_owned()]),
                                ..Capabilities::default()
                            }),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    // The engine never calls the Kubernetes API: no token to steal.
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(ENGINE_UID),
                        run_as_group: Some(ENGINE_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn service(shape: &Shape) -> Service {
    Service {
        metadata: shape.meta(shape.name.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels(&shape.instance)),
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

/// Ingress to the engine's pods: only the API port, only from the allowed peers.
fn network_policy(shape: &Shape) -> NetworkPolicy {
    NetworkPolicy {
        metadata: shape.meta(shape.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&shape.instance)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(shape.ingress_from.clone()),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(ENGINE_PORT)),
                    protocol: Some("TCP".to_owned()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Which databases of a namespace the shared engine serves, and why others that want it can't be.
#[derive(Debug, Default)]
pub struct Membership<'a> {
    /// In name order (a stable rendering).
    pub members: Vec<&'a ChronosDatabase>,
    /// Database name → why it is left out although it asks for the shared engine.
    pub conflicts: BTreeMap<String, String>,
}

/// The members of a namespace's shared engine among all its databases: those without
/// `spec.engine`, not being deleted, with a valid spec, and whose backends were found reachable
/// (a member whose Secret is missing would keep the one pod that serves everyone from starting).
/// `fresh` is the reconciling database's own check, newer than its status. Two databases that
/// claim the same key or routing identity can't both be served: the older one keeps it and the
/// other is listed in `conflicts`.
pub fn membership<'a>(dbs: &'a [ChronosDatabase], fresh: Option<(&str, bool)>) -> Membership<'a> {
    let reachable = |db: &ChronosDatabase| match fresh {
        Some((name, ok)) if name == db.name_any() => ok,
        _ => db
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, BACKENDS_REACHABLE)),
    };
    let mut candidates: Vec<&ChronosDatabase> = dbs
        .iter()
        .filter(|db| db.spec.engine.is_none() && db.metadata.deletion_timestamp.is_none())
        .filter(|db| db.problems().is_empty() && reachable(db))
        .collect();
    candidates.sort_by(|a, b| {
        let created = |d: &ChronosDatabase| d.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created(a), a.name_any()).cmp(&(created(b), b.name_any()))
    });
    let mut out = Membership::default();
    let mut keys = BTreeMap::new();
    let mut identities = BTreeMap::new();
    for db in candidates {
        let key = database_key(db);
        let identity = db
            .spec
            .routing
            .as_ref()
            .map(|r| (r.database_type, r.tier, r.ext_identifier.clone()));
        let taken = keys
            .get(&key)
            .map(|other| format!("key `{key}` is already served by ChronosDatabase {other}"));
        let taken = taken.or_else(|| {
            let other = identities.get(identity.as_ref()?)?;
            Some(format!(
                "its routing identity is already served by ChronosDatabase {other}"
            ))
        });
        match taken {
            Some(why) => {
                out.conflicts.insert(db.name_any(), why);
            }
            None => {
                keys.insert(key, db.name_any());
                if let Some(identity) = identity {
                    identities.insert(identity, db.name_any());
                }
                out.members.push(db);
            }
        }
    }
    out.members.sort_by_key(|db| db.name_any());
    out
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
    // Ready pods of an older generation still run the old configuration: say so, or the
    // condition reads "2/2 replicas ready" while it is not ready.
    let message = match (current, d.metadata.generation) {
        (false, Some(generation)) => format!(
            "{ready}/{want} replicas ready, rollout of generation {generation} not yet observed (at {})",
            status.observed_generation.map_or("none".to_owned(), |g| g.to_string())
        ),
        _ => format!("{ready}/{want} replicas ready"),
    };
    (current && ready >= want, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::ContentKind;
    use crate::operator::collection::ChronosCollectionSpec;
    use crate::operator::database::ChronosDatabaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn db_in(name: &str, extra: Value) -> ChronosDatabase {
        let mut spec = json!({
            "key": name,
            "mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}, "dbName": name},
            "s3": {
                "endpoint": "http://s3:8333",
                "buckets": {"json": format!("{name}-json"), "content": format!("{name}-content"), "backups": format!("{name}-backups")},
                "credentialsSecretRef": {"name": "s3-creds"}
            }
        });
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        let spec: ChronosDatabaseSpec = serde_json::from_value(spec).unwrap();
        let mut db = ChronosDatabase::new(name, spec);
        db.metadata.namespace = Some("shop".into());
        db.metadata.uid = Some(format!("uid-{name}"));
        db
    }

    /// A dedicated database, as the controller tests use it.
    pub(crate) fn database() -> ChronosDatabase {
        db_in(
            "orders",
            json!({"defaults": {"inlineMaxBytes": 1024}, "engine": {"replicas": 2}}),
        )
    }

    fn collection(db: &str, name: &str, spec: Value) -> ChronosCollection {
        let mut full = json!({"database": db, "name": name});
        if let (Value::Object(full), Value::Object(spec)) = (&mut full, spec) {
            full.extend(spec);
        }
        let spec: ChronosCollectionSpec = serde_json::from_value(full).unwrap();
        ChronosCollection::new(&format!("{db}-{name}"), spec)
    }

    fn items(props: &[&str]) -> Value {
        json!({"indexedProps": props, "counters": [{"name": "big", "when": {"amount": {"$gte": 100}}, "on": ["CREATE"]}]})
    }

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
        let db = database();
        let collections = [
            collection("orders", "items", items(&["status"])),
            collection("orders", "bad name/", json!({})),
            collection(
                "orders",
                "docs",
                json!({"contentProps": {"body": "text", "photo": "binary"}}),
            ),
            collection("other", "elsewhere", json!({})),
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
        let a = db_in("a", json!({}));
        let mut b = db_in("b", json!({"defaults": {"maxPayloadBytes": 1000}}));
        b.spec.mongodb.uri_secret_ref.name = "mongo-b".into();
        let tenant = db_in(
            "acme",
            json!({"key": null, "routing": {"databaseType": "runtime", "tier": "tenant", "extIdentifier": "acme"}}),
        );
        let meta = db_in(
            "meta",
            json!({"key": null, "routing": {"databaseType": "metadata", "tier": "generic"}}),
        );
        let collections = [
            collection("a", "orders", items(&["status"])),
            collection("b", "orders", items(&["customer"])),
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
    fn a_dedicated_deployment_mounts_config_and_user_secrets_and_carries_the_hash() {
        let db = database();
        let objects = dedicated_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "chronos:test").unwrap();
        let d = &objects.deployment;
        assert_eq!(d.metadata.name.as_deref(), Some("orders-engine"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("shop"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ChronosDatabase", "uid-orders", Some(true))
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
        let keys: Vec<&str> = secret_of(2).items.iter().flatten().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["accessKey", "secretKey"], "only the keys the config reads");
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            [
                "/etc/chronos",
                "/secrets/mongo",
                "/secrets/s3-creds",
                "/secrets/orders-tokens"
            ]
        );
        // Selector and Service both select the pod labels.
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(objects.service.spec.as_ref().unwrap().selector.as_ref(), Some(selector));
        assert_eq!(
            engine_url(&engine_name(&db), "shop"),
            "http://orders-engine.shop.svc:8080"
        );
        assert_eq!(database_url(&db), "http://orders-engine.shop.svc:8080/v1/orders");
    }

    #[test]
    fn the_shared_engine_is_owned_by_every_member_and_controlled_by_none() {
        let (a, b) = (db_in("a", json!({})), db_in("b", json!({})));
        let settings = SharedEngine {
            image: "chronos:shared".into(),
            replicas: 1,
        };
        let objects = shared_objects("shop", &[&a, &b], &[], &settings).unwrap();
        for meta in [
            &objects.deployment.metadata,
            &objects.service.metadata,
            &objects.config.metadata,
        ] {
            let owners: Vec<(&str, Option<bool>)> = meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| (o.uid.as_str(), o.controller))
                .collect();
            assert_eq!(owners, [("uid-a", None), ("uid-b", None)]);
        }
        assert_eq!(objects.deployment.metadata.name.as_deref(), Some("chronos-engine"));
        assert_eq!(objects.config.metadata.name.as_deref(), Some("chronos-engine-config"));
        let spec = objects.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("chronos:shared"));
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(selector["app.kubernetes.io/instance"], RESERVED_NAME);
        assert_eq!(database_url(&a), "http://chronos-engine.shop.svc:8080/v1/a");
        // A database can't be called so and have its own engine: the names would collide.
        let reserved = db_in(RESERVED_NAME, json!({"engine": {}}));
        assert!(
            reserved.problems()[0].starts_with("metadata.name"),
            "{:?}",
            reserved.problems()
        );
        assert!(db_in(RESERVED_NAME, json!({})).problems().is_empty());
    }

    #[test]
    fn the_hash_rolls_the_engine_when_members_or_their_settings_change() {
        let (a, b) = (db_in("a", json!({})), db_in("b", json!({})));
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let hash = |dbs: &[&ChronosDatabase], cols: &[ChronosCollection]| {
            shared_objects("shop", dbs, cols, &settings).unwrap().config_hash
        };
        let one = hash(&[&a], &[]);
        assert_eq!(one, hash(&[&a], &[]), "stable");
        assert_ne!(one, hash(&[&a, &b], &[]), "a new member");
        assert_ne!(
            one,
            hash(&[&a], &[collection("a", "items", items(&["x"]))]),
            "a new collection map"
        );
        assert_eq!(
            one,
            hash(&[&a], &[collection("b", "items", items(&["x"]))]),
            "not a member's collection"
        );
        let mut moved = a.clone();
        moved.spec.mongodb.uri_secret_ref.name = "mongo-2".into();
        assert_ne!(one, hash(&[&moved], &[]), "another Secret");
        let mut tuned = a.clone();
        tuned.spec.defaults.inline_max_bytes = Some(10);
        assert_ne!(one, hash(&[&tuned], &[]), "a member's defaults");
        let text = String::from_utf8(
            shared_objects("shop", &[&a], &[], &settings)
                .unwrap()
                .config
                .data
                .unwrap()["config.json"]
                .0
                .clone(),
        )
        .unwrap();
        assert!(!text.contains("mongodb://"), "no secret values: {text}");
    }

    fn reachable(mut db: ChronosDatabase, created: i64) -> ChronosDatabase {
        db.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        let observed = [conditions::Observed::ok(BACKENDS_REACHABLE, "Reachable", "")];
        db.status = Some(crate::operator::database::ChronosDatabaseStatus {
            conditions: conditions::merge(&[], &observed, None, conditions::now()),
            ..Default::default()
        });
        db
    }

    #[test]
    fn membership_takes_usable_shared_databases_and_the_older_of_two_claims() {
        let mut deleting = reachable(db_in("deleting", json!({})), 1);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(9).unwrap()));
        let dbs = vec![
            reachable(db_in("old", json!({"key": "same"})), 1),
            reachable(db_in("young", json!({"key": "same"})), 2),
            reachable(db_in("dedicated", json!({"engine": {}})), 1),
            reachable(db_in("invalid", json!({"key": "admin"})), 1),
            db_in("unchecked", json!({})),
            deleting,
            reachable(
                db_in(
                    "t1",
                    json!({"key": null, "routing": {"databaseType": "runtime", "tier": "tenant", "extIdentifier": "x"}}),
                ),
                1,
            ),
            reachable(
                db_in(
                    "t2",
                    json!({"key": null, "routing": {"databaseType": "runtime", "tier": "tenant", "extIdentifier": "x"}}),
                ),
                2,
            ),
        ];
        let m = membership(&dbs, None);
        let names: Vec<String> = m.members.iter().map(|d| d.name_any()).collect();
        assert_eq!(names, ["old", "t1"]);
        assert_eq!(
            m.conflicts.keys().collect::<Vec<_>>(),
            ["t2", "young"],
            "the younger claim loses"
        );
        assert!(m.conflicts["young"].contains("key `same` is already served by ChronosDatabase old"));
        assert!(m.conflicts["t2"].contains("routing identity"));
        // The reconciling database's fresh check wins over its (older) status, both ways.
        let m = membership(&dbs, Some(("unchecked", true)));
        assert!(m.members.iter().any(|d| d.name_any() == "unchecked"));
        let m = membership(&dbs, Some(("old", false)));
        let names: Vec<String> = m.members.iter().map(|d| d.name_any()).collect();
        assert_eq!(names, ["t1", "young"], "with `old` unreachable, `young` takes the key");
    }

    #[test]
    fn readiness_needs_the_current_generation_and_enough_ready_replicas() {
        let db = database();
        let objects = dedicated_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "img").unwrap();
        let mut d = objects.deployment;
        d.metadata.generation = Some(3);
        assert_eq!(deployment_ready(&d), (false, "0/2 replicas ready".into()));
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            ready_replicas: Some(2),
            observed_generation: Some(2),
            ..Default::default()
        });
        assert_eq!(
            deployment_ready(&d),
            (
                false,
                "2/2 replicas ready, rollout of generation 3 not yet observed (at 2)".into()
            ),
            "an older generation's readiness does not count, and the message says why"
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
        db.spec.routing = Some(
            serde_json::from_value(json!({"databaseType": "runtime", "tier": "generic", "extIdentifier": "x"}))
                .unwrap(),
        );
        assert!(db.spec.problems()[0].contains("the generic tier has no identifier"));
        db.spec.routing = None;
        db.spec.key = Some("no spaces".into());
        assert!(db.spec.problems()[0].starts_with("spec.key"));
    }

    #[test]
    fn engine_pods_run_restricted_without_a_service_account_token() {
        let db = database();
        let dedicated = dedicated_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "img").unwrap();
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let shared = shared_objects("shop", &[&db_in("a", json!({}))], &[], &settings).unwrap();
        for objects in [dedicated, shared] {
            let pod = objects.deployment.spec.unwrap().template.spec.unwrap();
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "engines never call the API"
            );
            let psc = pod.security_context.expect("a pod securityContext");
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(psc.seccomp_profile.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));
            let sc = pod.containers[0]
                .security_context
                .clone()
                .expect("a container securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.privileged, Some(false));
            assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_owned()]));
        }
    }

    #[test]
    fn engines_run_with_auth_on_each_database_with_its_own_tokens_from_a_mounted_secret() {
        let (a, b) = (db_in("a", json!({})), db_in("b", json!({"key": "bee"})));
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let objects = shared_objects("shop", &[&a, &b], &[], &settings).unwrap();
        let data = objects.config.data.clone().unwrap();
        let config: Value = serde_json::from_slice(&data["config.json"].0).unwrap();
        assert_eq!(config["auth"]["tokensFile"], "/etc/chronos/tokens.json", "{config}");
        let tokens: Value = serde_json::from_slice(&data["tokens.json"].0).expect("a tokens file");
        let entries: Vec<(String, Value, Value, Value)> = tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_owned(),
                    t["token"].clone(),
                    t["databases"].clone(),
                    t["scopes"].clone(),
                )
            })
            .collect();
        assert_eq!(entries.len(), 6, "read, write and admin for each database");
        assert_eq!(
            entries[0],
            (
                "a-read".into(),
                json!({"file": "/secrets/a-tokens/read"}),
                json!(["a"]),
                json!(["read"])
            )
        );
        assert_eq!(
            entries[5],
            (
                "b-admin".into(),
                json!({"file": "/secrets/b-tokens/admin"}),
                json!(["bee"]),
                json!(["admin"])
            ),
            "scoped to the database's key"
        );
        // With the Secret's files in place the engine loads it.
        let dir = tempfile::tempdir().unwrap();
        for db in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(format!("{db}-tokens"))).unwrap();
            for scope in ["read", "write", "admin"] {
                std::fs::write(
                    dir.path().join(format!("{db}-tokens/{scope}")),
                    format!("{db}-{scope}-0123456789abcdef"),
                )
                .unwrap();
            }
        }
        let text = String::from_utf8(data["tokens.json"].0.clone())
            .unwrap()
            .replace("/secrets/", &format!("{}/", dir.path().display()));
        crate::api::auth::Tokens::parse(&text).unwrap();
        // The pod mounts both: the tokens file with the config, each database's tokens Secret.
        let pod = objects.deployment.spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        let items = |v: &Volume| -> Vec<String> {
            v.secret
                .as_ref()
                .unwrap()
                .items
                .iter()
                .flatten()
                .map(|i| i.key.clone())
                .collect()
        };
        assert_eq!(items(&volumes[0]), ["config.json", "tokens.json"]);
        let tokens_volume = volumes
            .iter()
            .find(|v| v.secret.as_ref().unwrap().secret_name.as_deref() == Some("b-tokens"))
            .expect("b's tokens mounted");
        assert_eq!(items(tokens_volume), ["admin", "read", "write"]);
        let mounts: Vec<&str> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            mounts.contains(&"/secrets/a-tokens") && mounts.contains(&"/secrets/b-tokens"),
            "{mounts:?}"
        );
    }

    #[test]
    fn each_engine_admits_only_its_namespace_or_the_peers_asked_for_and_only_to_the_api_port() {
        let db = database();
        let objects = dedicated_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "img").unwrap();
        let policy = serde_json::to_value(&objects.network_policy).unwrap();
        assert_eq!(policy["metadata"]["name"], "orders-engine");
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "uid-orders");
        let selector = objects.deployment.spec.as_ref().unwrap().selector.match_labels.clone();
        assert_eq!(policy["spec"]["podSelector"]["matchLabels"], json!(selector));
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            policy["spec"]["ingress"],
            json!([{"from": [{"podSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]),
            "by default: this namespace's pods, the API port"
        );
        let web = json!({"namespaceSelector": {"matchLabels": {"team": "web"}}});
        let custom = db_in("b", json!({"ingressFrom": [web]}));
        let a = db_in("a", json!({}));
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let shared = shared_objects("shop", &[&a, &custom, &a.clone()], &[], &settings).unwrap();
        let policy = serde_json::to_value(&shared.network_policy).unwrap();
        assert_eq!(policy["metadata"]["name"], "chronos-engine");
        assert_eq!(
            policy["spec"]["ingress"][0]["from"],
            json!([{"podSelector": {}}, web]),
            "the members' peers, each once"
        );
        assert!(db_in("c", json!({"ingressFrom": []})).problems()[0].starts_with("spec.ingressFrom"));
    }

    #[test]
    fn engine_images_must_come_from_an_allowed_repository() {
        let allowed = [
            "ghcr.io/chronos-dev/chronos".to_owned(),
            "localhost:5000/chronos".to_owned(),
        ];
        for ok in [
            "ghcr.io/chronos-dev/chronos",
            "ghcr.io/chronos-dev/chronos:0.1.0",
            "ghcr.io/chronos-dev/chronos@sha256:0123",
            "ghcr.io/chronos-dev/chronos:0.1.0@sha256:0123",
            "localhost:5000/chronos:1",
        ] {
            assert!(image_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "attacker/img",
            "ghcr.io/chronos-dev/chronos-evil:1",
            "ghcr.io/chronos-dev/chronos/sub:1",
            "evil.io/ghcr.io/chronos-dev/chronos",
            "localhost:5000/other",
        ] {
            assert!(!image_allowed(refused, &allowed), "{refused}");
        }
    }

    #[test]
    fn a_tokens_secret_is_owned_by_its_database_and_tokens_are_random() {
        let db = database();
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
