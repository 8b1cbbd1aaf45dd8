//! The Kubernetes objects of an engine — its configuration Secret, Deployment, Service and
//! NetworkPolicy — as pure functions of the resources, and how the operator recognises objects
//! it made. No client here: the controller applies what these return, and unit tests check
//! them directly.
//!
//! Two kinds of engine, one renderer:
//! - a **dedicated** engine (`spec.engine` set): `<database>-engine`, serving that database alone,
//!   with the replicas, image and resources it asks for;
//! - the namespace's **shared** engine ([`SHARED_ENGINE`]): one engine per namespace serving every
//!   database without `spec.engine` (cost-first: one pod for many small databases).
//!
//! Every engine runs with auth on: each database has its own tokens Secret
//! ([`tokens_name`](super::names::tokens_name), made once by the controller) whose read, write
//! and admin tokens are scoped to its key, and a NetworkPolicy admits only the peers the database
//! allows (its namespace by default) to the API port.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::names::{CONFIG_KEY, ENGINE_PORT, MANAGED_BY, TOKENS_KEY, config_name, engine_name, labels};
use super::pod::deployment;
use super::render::{config_hash, engine_config, tokens_file};
use super::shape::Shape;
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::{ChronosDatabase, EngineSpec, RESERVED_NAME, SHARED_ENGINE};

/// Everything an engine needs, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineObjects {
    pub config: Secret,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub config_hash: String,
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

/// The objects of namespace `ns`'s shared engine, serving `members` (see [`membership`](super::membership)).
///
/// Owners: every member, none of them as controller. A shared object can't be owned by one
/// database alone — deleting that one would take the engine from the others — and Kubernetes'
/// garbage collector deletes a dependent only once *all* its owners are gone. So the engine
/// outlives any one database and is collected after the last one even if the operator is not
/// running; the operator also deletes it itself when the last member leaves ([`membership`](super::membership)
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

/// Whether an object carries the operator's label and `db` as its controlling owner.
pub(super) fn controlled_by(meta: &ObjectMeta, db: &ChronosDatabase) -> bool {
    managed(meta)
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == db.metadata.uid.as_ref())
}

/// Whether an object carries the operator's label.
pub(super) fn managed(meta: &ObjectMeta) -> bool {
    let (key, value) = MANAGED_BY;
    meta.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str) == Some(value)
}

/// Whether an object is part of a namespace's shared engine as the operator makes it: its
/// label, and owned by ChronosDatabases.
pub(super) fn shared_engine_part(meta: &ObjectMeta) -> bool {
    managed(meta)
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "ChronosDatabase" && o.api_version.starts_with("chronos.dev/"))
}

#[cfg(test)]
mod tests {
    use super::super::names::{database_url, engine_url};
    use super::super::pod::CONFIG_HASH_ANNOTATION;
    use super::*;
    use k8s_openapi::api::core::v1::Volume;
    use serde_json::{Value, json};

    #[test]
    fn the_shared_engine_is_owned_by_every_member_and_controlled_by_none() {
        let (a, b) = (ChronosDatabase::test("a"), ChronosDatabase::test("b"));
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
        let reserved = ChronosDatabase::test(RESERVED_NAME).dedicated(1);
        assert!(
            reserved.problems()[0].starts_with("metadata.name"),
            "{:?}",
            reserved.problems()
        );
        assert!(ChronosDatabase::test(RESERVED_NAME).problems().is_empty());
    }

    #[test]
    fn the_hash_rolls_the_engine_when_members_or_their_settings_change() {
        let (a, b) = (ChronosDatabase::test("a"), ChronosDatabase::test("b"));
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
            hash(
                &[&a],
                &[ChronosCollection::test("a", "items")
                    .indexed(&["x"])
                    .counting_big_amounts()]
            ),
            "a new collection map"
        );
        assert_eq!(
            one,
            hash(
                &[&a],
                &[ChronosCollection::test("b", "items")
                    .indexed(&["x"])
                    .counting_big_amounts()]
            ),
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

    #[test]
    fn readiness_needs_the_current_generation_and_enough_ready_replicas() {
        let db = ChronosDatabase::orders();
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
    fn engines_run_with_auth_on_each_database_with_its_own_tokens_from_a_mounted_secret() {
        let (a, b) = (ChronosDatabase::test("a"), ChronosDatabase::test("b").keyed("bee"));
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
        // That the engine loads it: tests/it/operator_render.rs (the operator may not use the API's types).
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
        let db = ChronosDatabase::orders();
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
        let web = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("team".to_owned(), "web".to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        let custom = ChronosDatabase::test("b").ingress_from(vec![web.clone()]);
        let a = ChronosDatabase::test("a");
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let shared = shared_objects("shop", &[&a, &custom, &a.clone()], &[], &settings).unwrap();
        let policy = serde_json::to_value(&shared.network_policy).unwrap();
        assert_eq!(policy["metadata"]["name"], "chronos-engine");
        assert_eq!(
            policy["spec"]["ingress"][0]["from"],
            json!([{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"team": "web"}}}]),
            "the members' peers, each once"
        );
        assert!(ChronosDatabase::test("c").ingress_from(vec![]).problems()[0].starts_with("spec.ingressFrom"));
    }

    #[test]
    fn a_dedicated_deployment_mounts_config_and_user_secrets_and_carries_the_hash() {
        let db = ChronosDatabase::orders();
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
    fn engine_pods_run_restricted_without_a_service_account_token() {
        let db = ChronosDatabase::orders();
        let dedicated = dedicated_objects(&db, db.spec.engine.as_ref().unwrap(), &[], "img").unwrap();
        let settings = SharedEngine {
            image: "img".into(),
            replicas: 1,
        };
        let shared = shared_objects("shop", &[&ChronosDatabase::test("a")], &[], &settings).unwrap();
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
}
