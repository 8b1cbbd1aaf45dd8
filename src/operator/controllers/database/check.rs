//! Whether a `ChronosDatabase` can be served: its spec is valid, its engine image allowed, its
//! Secrets readable, no other database claims its data, its backends answer, its buckets and
//! its bearer tokens exist. What the check finds becomes the database's conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::claims;
use super::names::{TOKEN_SCOPES, image_allowed, tokens_name};
use super::objects::controlled_by;
use super::render::{random_token, tokens_secret};
use crate::config::TokenScope;
use crate::operator::backends;
use crate::operator::conditions::Observed;
use crate::operator::context::{Context, requeue};
use crate::operator::crd::database::{
    BACKENDS_REACHABLE, BUCKETS_READY, ChronosDatabase, ENGINE_READY, OBJECT_LOCK_READY, READY, database_key,
};
use crate::operator::error::{Error, Result};
use crate::operator::events::{self, Notice};

/// What checking a database found, before its engine is considered.
pub(super) enum Checked {
    /// The spec can't work: wait for the user to change it.
    Invalid(String),
    /// A Secret or a backend is not there, or another database claims its data: these
    /// conditions, then look again after the delay.
    Unavailable(Vec<Observed>, Duration),
    /// Backends reachable, buckets and tokens in place.
    Usable(Vec<Observed>),
}

/// [`Checked`], and the MongoDB deployment found (for the status) when the Secrets were read.
pub(super) struct Check {
    pub(super) checked: Checked,
    pub(super) mongo_backend: Option<String>,
}

impl From<Checked> for Check {
    fn from(checked: Checked) -> Check {
        Check {
            checked,
            mongo_backend: None,
        }
    }
}

pub(super) async fn check(db: &ChronosDatabase, ctx: &Context) -> Result<Check> {
    let problems = db.problems();
    if !problems.is_empty() {
        return Ok(Checked::Invalid(problems.join("; ")).into());
    }
    // Before any Secret is read: the engine pod would mount them.
    if let Some(image) = db.spec.engine.as_ref().and_then(|e| e.image.as_deref())
        && !image_allowed(image, &ctx.allowed_engine_images)
    {
        return Ok(Checked::Invalid(format!(
            "spec.engine.image: `{image}` is not from an allowed repository ({}; the operator's \
             --allowed-engine-images)",
            ctx.allowed_engine_images.join(", ")
        ))
        .into());
    }
    // Before any Secret is read or any connection made: the endpoint is the author's to choose,
    // the hosts the operator may reach are the cluster admin's (M7).
    if let Err(why) = ctx.backend_hosts.check_url(&db.spec.s3.endpoint) {
        return Ok(missing("BackendNotAllowed", &format!("spec.s3.endpoint: {why}")).into());
    }
    let storage = match backends::storage(&ctx.client, db).await {
        Ok(s) => s,
        Err(e @ (Error::Missing(_) | Error::Invalid(_) | Error::NotPermitted(_))) => {
            let reason = match e {
                Error::NotPermitted(_) => "SecretNotLabelled",
                _ => "SecretUnavailable",
            };
            return Ok(missing(reason, &e.to_string()).into());
        }
        Err(e) => return Err(e),
    };
    if let crate::config::Storage::Remote(remote) = &storage
        && let Err(why) = ctx.backend_hosts.check_mongo_uri(&remote.mongo_uri)
    {
        let secret = &db.spec.mongodb.uri_secret_ref;
        let message = format!("the MongoDB URI in Secret {}/{}: {why}", secret.name, secret.key);
        return Ok(missing("BackendNotAllowed", &message).into());
    }
    let mongo_backend = backends::mongo_backend(&storage)?;
    let checked = usable(db, ctx, &storage, &mongo_backend).await?;
    Ok(Check {
        checked,
        mongo_backend: Some(mongo_backend),
    })
}

/// The backends can't be used as the spec stands — a Secret missing or unlabelled, a host outside
/// the operator's allow-list, data another database claims — so nothing is connected to; looked at
/// again after [`requeue::MISSING`] (the cause may be fixed without the spec changing).
fn missing(reason: &str, message: &str) -> Checked {
    let observed = vec![
        Observed::failed(BACKENDS_REACHABLE, reason, message),
        Observed::failed(READY, reason, message),
    ];
    Checked::Unavailable(observed, requeue::MISSING)
}

/// The rest of [`check`], once the Secrets were read: no older database claims the data, the
/// backends answer, the buckets and the tokens exist.
async fn usable(
    db: &ChronosDatabase,
    ctx: &Context,
    storage: &crate::config::Storage,
    mongo_backend: &str,
) -> Result<Checked> {
    if let Some(why) = claim_conflict(db, ctx, mongo_backend).await? {
        return Ok(missing("Conflict", &why));
    }
    let reachable = async {
        backends::ping_mongo(ctx, storage).await?;
        backends::ensure_buckets(ctx, storage).await
    };
    let created = match reachable.await {
        Ok(created) => created,
        Err(Error::Engine(e)) => {
            let message = e.to_string();
            let observed = vec![
                Observed::failed(BACKENDS_REACHABLE, "Unreachable", &message),
                Observed::failed(READY, "BackendsUnreachable", &message),
            ];
            return Ok(Checked::Unavailable(observed, requeue::TRANSIENT));
        }
        Err(e) => return Err(e),
    };
    let buckets = if created.is_empty() {
        "all three buckets exist".to_owned()
    } else {
        format!("created {}", created.join(", "))
    };
    if let Err(why) = ensure_tokens(db, ctx).await? {
        let observed = vec![
            Observed::failed(ENGINE_READY, "TokensConflict", &why),
            Observed::failed(READY, "TokensConflict", &why),
        ];
        return Ok(Checked::Unavailable(observed, requeue::MISSING));
    }
    let mut observed = vec![
        Observed::ok(BACKENDS_REACHABLE, "Reachable", "MongoDB and S3 answer"),
        Observed::ok(BUCKETS_READY, "BucketsExist", buckets),
    ];
    observed.extend(object_lock(ctx, storage).await);
    Ok(Checked::Usable(observed))
}

/// `ObjectLockReady`, when the database asked for Object Lock: True only when the server refused
/// to delete a locked probe object's version.
async fn object_lock(ctx: &Context, storage: &crate::config::Storage) -> Option<Observed> {
    use crate::engine::store::ObjectLockStatus as S;
    Some(match backends::object_lock_status(ctx, storage).await {
        Ok(None) | Ok(Some(S::NotRequested)) => return None,
        Ok(Some(S::Enforced)) => Observed::ok(
            OBJECT_LOCK_READY,
            "Enforced",
            "the server refused to delete a locked probe object's version",
        ),
        Ok(Some(S::NotEnabled)) => Observed::failed(OBJECT_LOCK_READY, "NotEnabled", "bucket has no Object Lock"),
        Ok(Some(S::NotEnforced(why))) => Observed::failed(
            OBJECT_LOCK_READY,
            "NotEnforced",
            format!("not enforced by this S3 server: {why}"),
        ),
        Err(e) => Observed::failed(OBJECT_LOCK_READY, "ProbeFailed", e.to_string()),
    })
}

/// Why `db` (on MongoDB deployment `backend`) may not use its data, if another ChronosDatabase
/// claims it — looked for in every namespace: a MongoDB database or bucket is shared whoever
/// the tenant is.
pub(super) async fn claim_conflict(db: &ChronosDatabase, ctx: &Context, backend: &str) -> Result<Option<String>> {
    let all = Api::<ChronosDatabase>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(claims::conflict(db, backend, &all))
}

/// Make `db`'s tokens Secret unless it is there; tokens are never regenerated (clients hold
/// them), only a scope missing from the Secret is added. `Err` says why a Secret of that name
/// can't be used: the operator did not make it for this database.
async fn ensure_tokens(db: &ChronosDatabase, ctx: &Context) -> Result<Result<(), String>> {
    let ns = db.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = tokens_name(db);
    let fresh = |scopes: &[&str]| -> Result<std::collections::BTreeMap<String, String>> {
        scopes
            .iter()
            .map(|s| {
                let token = random_token().map_err(|_| Error::Io(std::io::Error::other("no secure randomness")))?;
                Ok((s.to_string(), token))
            })
            .collect()
    };
    let Some(existing) = secrets.get_opt(&name).await? else {
        let secret = tokens_secret(db, fresh(&TOKEN_SCOPES.map(TokenScope::as_str))?);
        secrets.create(&PostParams::default(), &secret).await?;
        let note = format!(
            "bearer tokens for database `{}` (keys read, write, admin) are in Secret {name}",
            database_key(db)
        );
        events::publish(&ctx.recorder, db, Notice::normal("TokensCreated", note, "Reconcile")).await;
        return Ok(Ok(()));
    };
    if !controlled_by(existing.meta(), db) {
        return Ok(Err(format!(
            "Secret {name} exists but was not made by the operator for this database; delete or rename it \
             (the operator keeps the database's bearer tokens there)"
        )));
    }
    let have = existing.data.unwrap_or_default();
    let missing: Vec<&str> = TOKEN_SCOPES
        .into_iter()
        .map(TokenScope::as_str)
        .filter(|s| !have.contains_key(*s))
        .collect();
    if !missing.is_empty() {
        let added = tokens_secret(db, fresh(&missing)?);
        let patch = serde_json::json!({"data": added.data});
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Ok(()))
}
