//! How an engine and its parts are named and reached: the Deployment, Service and Secrets of a
//! dedicated or the shared engine, the paths inside its pod, its in-cluster URL and a
//! database's, the labels every object the operator makes carries, and which engine images a
//! database may ask for. Pure functions of the resources.

use crate::config::TokenScope;
use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::operator::crd::database::{ChronosDatabase, SHARED_ENGINE, database_key};

/// The engine's HTTP port (in the container and on the Service).
pub const ENGINE_PORT: i32 = 8080;
/// Where the configuration Secret is mounted, and its keys: the configuration and the tokens
/// file it names (which refers to the tokens Secrets' mounted files, never to their values).
pub(super) const CONFIG_DIR: &str = "/etc/chronos";
pub(super) const CONFIG_KEY: &str = "config.json";
pub(super) const TOKENS_KEY: &str = "tokens.json";
/// The keys of a database's tokens Secret: one bearer token per scope.
pub const TOKEN_SCOPES: [TokenScope; 3] = [TokenScope::Read, TokenScope::Write, TokenScope::Admin];
/// Where the users' Secrets are mounted: `/secrets/<Secret>/<key>`.
pub(super) const SECRETS_DIR: &str = "/secrets";

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

/// Where clients reach `db`: its engine's URL and its key.
pub fn database_url(db: &ChronosDatabase) -> String {
    format!(
        "{}/v1/{}",
        engine_url(&engine_name(db), &db.namespace().unwrap_or_default()),
        database_key(db)
    )
}

/// Where an engine pod finds key `key` of Secret `name` (see the Deployment's mounts).
pub(super) fn secret_path(name: &str, key: &str) -> String {
    format!("{SECRETS_DIR}/{name}/{key}")
}

/// The label every object the operator makes carries (and that it checks before deleting one).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "chronos-operator");

pub(super) fn labels(instance: &str) -> BTreeMap<String, String> {
    labels_of("chronos-engine", instance)
}

pub(super) fn labels_of(name: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
