//! The engine's Deployment: one container serving the rendered configuration, the users' and
//! the tokens Secrets mounted read-only, and a pod that runs restricted (non-root, no
//! privilege, no service-account token). Pure, like the rest of the rendering.

use crate::config::TokenScope;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{
    CONFIG_DIR, CONFIG_KEY, ENGINE_PORT, SECRETS_DIR, TOKEN_SCOPES, TOKENS_KEY, config_name, labels, tokens_name,
};
use super::shape::Shape;
use crate::operator::crd::database::ChronosDatabase;

/// The pod template annotation whose change rolls the Deployment when the configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "chronos.dev/config-hash";
/// The uid and gid engine pods run as (the image's `nonroot` user).
const ENGINE_UID: i64 = 65532;

/// Every Secret the databases reference, with the keys they use: each is mounted (those keys
/// only) at `/secrets/<Secret>/`.
pub(super) fn secret_mounts<'a>(dbs: &[&'a ChronosDatabase]) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for db in dbs {
        let uri = &db.spec.mongodb.uri_secret_ref;
        out.entry(&uri.name).or_default().insert(&uri.key);
        let creds = &db.spec.s3.credentials_secret_ref;
        let keys = out.entry(&creds.name).or_default();
        keys.insert(&creds.access_key_key);
        keys.insert(&creds.secret_key_key);
        if let Some(kek) = &db.spec.defaults.encryption_key_secret_ref {
            out.entry(&kek.name).or_default().insert(&kek.key);
        }
    }
    out
}

/// Every database's tokens Secret (name → keys), mounted like the users' Secrets.
pub(super) fn tokens_mounts(dbs: &[&ChronosDatabase]) -> BTreeMap<String, BTreeSet<&'static str>> {
    dbs.iter()
        .map(|db| {
            (
                tokens_name(db),
                TOKEN_SCOPES.into_iter().map(TokenScope::as_str).collect(),
            )
        })
        .collect()
}

pub(super) fn deployment(shape: &Shape, dbs: &[&ChronosDatabase], hash: &str) -> Deployment {
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
