//! The `ChronosDatabase` reconciler: validate → reach the backends → ensure the buckets → apply
//! the engine → status. Deletion goes through a finalizer so `deletionPolicy` is always honoured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Api, Resource, ResourceExt};

use super::crd::{ChronosDatabase, ChronosDatabaseStatus, DeletionPolicy};
use super::{build, claims};
use crate::operator::collection::ChronosCollection;
use crate::operator::conditions::{self, Observed};
use crate::operator::events::Notice;
use crate::operator::{Context, Error, FIELD_MANAGER, Result, backends, events, requeue};

/// The finalizer that stands between `kubectl delete` and the data.
pub const FINALIZER: &str = "chronos.dev/data";
const NAME: &str = "database";

pub const BACKENDS_REACHABLE: &str = "BackendsReachable";
pub const BUCKETS_READY: &str = "BucketsReady";
pub const ENGINE_READY: &str = "EngineReady";
pub const READY: &str = "Ready";

pub async fn reconcile(db: Arc<ChronosDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let ns = db.namespace().unwrap_or_default();
    let api: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    let reconciled = async {
        finalizer::finalizer(&api, FINALIZER, db, |event| async {
            match event {
                Finalizer::Apply(db) => apply(&db, &ctx).await,
                Finalizer::Cleanup(db) => cleanup(&db, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    };
    crate::operator::health::measured(NAME, reconciled).await
}

/// What checking a database found, before its engine is considered.
enum Checked {
    /// The spec can't work: wait for the user to change it.
    Invalid(String),
    /// A Secret or a backend is not there, or another database claims its data: these
    /// conditions, then look again after the delay.
    Unavailable(Vec<Observed>, Duration),
    /// Backends reachable, buckets and tokens in place.
    Usable(Vec<Observed>),
}

/// [`Checked`], and the MongoDB deployment found (for the status) when the Secrets were read.
struct Check {
    checked: Checked,
    mongo_backend: Option<String>,
}

impl From<Checked> for Check {
    fn from(checked: Checked) -> Check {
        Check {
            checked,
            mongo_backend: None,
        }
    }
}

async fn check(db: &ChronosDatabase, ctx: &Context) -> Result<Check> {
    let problems = db.problems();
    if !problems.is_empty() {
        return Ok(Checked::Invalid(problems.join("; ")).into());
    }
    // Before any Secret is read: the engine pod would mount them.
    if let Some(image) = db.spec.engine.as_ref().and_then(|e| e.image.as_deref())
        && !build::image_allowed(image, &ctx.allowed_engine_images)
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
        return Ok(not_allowed(format!("spec.s3.endpoint: {why}")).into());
    }
    let storage = match backends::storage(&ctx.client, db).await {
        Ok(s) => s,
        Err(e @ (Error::Missing(_) | Error::Invalid(_) | Error::NotPermitted(_))) => {
            let reason = match e {
                Error::NotPermitted(_) => "SecretNotLabelled",
                _ => "SecretUnavailable",
            };
            let message = e.to_string();
            let observed = vec![
                Observed::failed(BACKENDS_REACHABLE, reason, &message),
                Observed::failed(READY, reason, &message),
            ];
            return Ok(Checked::Unavailable(observed, requeue::MISSING).into());
        }
        Err(e) => return Err(e),
    };
    if let crate::config::Storage::Remote(remote) = &storage
        && let Err(why) = ctx.backend_hosts.check_mongo_uri(&remote.mongo_uri)
    {
        let secret = &db.spec.mongodb.uri_secret_ref;
        return Ok(not_allowed(format!(
            "the MongoDB URI in Secret {}/{}: {why}",
            secret.name, secret.key
        ))
        .into());
    }
    let mongo_backend = backends::mongo_backend(&storage)?;
    let checked = usable(db, ctx, &storage, &mongo_backend).await?;
    Ok(Check {
        checked,
        mongo_backend: Some(mongo_backend),
    })
}

/// A backend host outside the operator's allow-list: nothing is connected to; looked at again
/// later (the list changes with the operator's arguments, which restart it anyway).
fn not_allowed(message: String) -> Checked {
    let observed = vec![
        Observed::failed(BACKENDS_REACHABLE, "BackendNotAllowed", &message),
        Observed::failed(READY, "BackendNotAllowed", &message),
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
        let observed = vec![
            Observed::failed(BACKENDS_REACHABLE, "Conflict", &why),
            Observed::failed(READY, "Conflict", &why),
        ];
        return Ok(Checked::Unavailable(observed, requeue::MISSING));
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
    Ok(Checked::Usable(vec![
        Observed::ok(BACKENDS_REACHABLE, "Reachable", "MongoDB and S3 answer"),
        Observed::ok(BUCKETS_READY, "BucketsExist", buckets),
    ]))
}

/// Why `db` (on MongoDB deployment `backend`) may not use its data, if another ChronosDatabase
/// claims it — looked for in every namespace: a MongoDB database or bucket is shared whoever
/// the tenant is.
async fn claim_conflict(db: &ChronosDatabase, ctx: &Context, backend: &str) -> Result<Option<String>> {
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
    let name = build::tokens_name(db);
    let fresh = |scopes: &[&str]| -> Result<std::collections::BTreeMap<String, String>> {
        scopes
            .iter()
            .map(|s| {
                let token =
                    build::random_token().map_err(|_| Error::Io(std::io::Error::other("no secure randomness")))?;
                Ok((s.to_string(), token))
            })
            .collect()
    };
    let Some(existing) = secrets.get_opt(&name).await? else {
        let secret = build::tokens_secret(db, fresh(&build::TOKEN_SCOPES)?);
        secrets.create(&PostParams::default(), &secret).await?;
        let note = format!(
            "bearer tokens for database `{}` (keys read, write, admin) are in Secret {name}",
            build::database_key(db)
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
    let missing: Vec<&str> = build::TOKEN_SCOPES
        .into_iter()
        .filter(|s| !have.contains_key(*s))
        .collect();
    if !missing.is_empty() {
        let added = build::tokens_secret(db, fresh(&missing)?);
        let patch = serde_json::json!({"data": added.data});
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(Ok(()))
}

/// Whether an object carries the operator's label and `db` as its controlling owner.
fn controlled_by(meta: &ObjectMeta, db: &ChronosDatabase) -> bool {
    managed(meta)
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == db.metadata.uid.as_ref())
}

/// Whether an object carries the operator's label.
fn managed(meta: &ObjectMeta) -> bool {
    let (key, value) = build::MANAGED_BY;
    meta.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str) == Some(value)
}

/// Whether an object is part of a namespace's shared engine as the operator makes it: its
/// label, and owned by ChronosDatabases.
fn shared_engine_part(meta: &ObjectMeta) -> bool {
    managed(meta)
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "ChronosDatabase" && o.api_version.starts_with("chronos.dev/"))
}

/// How the database is served, for its status.
struct Served {
    engine_url: String,
    database_url: String,
    config_hash: String,
}

async fn apply(db: &ChronosDatabase, ctx: &Context) -> Result<Action> {
    let ns = db.namespace().unwrap_or_default();
    let Check { checked, mongo_backend } = check(db, ctx).await?;
    let facts = Facts {
        mongo_backend,
        tokens_secret: matches!(checked, Checked::Usable(_)).then(|| build::tokens_name(db)),
    };
    let lock = ctx.namespace_lock(&ns);
    let _rendering = lock.lock().await;
    // Every outcome re-renders the shared engine: a member that became invalid or unreachable,
    // or moved to a dedicated engine, leaves it; one that became usable joins it.
    let usable = matches!(checked, Checked::Usable(_));
    let shared = sync_shared(ctx, &ns, Some((&db.name_any(), usable))).await?;
    let mut observed = match checked {
        Checked::Invalid(message) => {
            write_status(db, ctx, &[Observed::failed(READY, "InvalidSpec", message)], None, facts).await?;
            return Ok(Action::await_change());
        }
        Checked::Unavailable(observed, delay) => {
            write_status(db, ctx, &observed, None, facts).await?;
            return Ok(Action::requeue(delay));
        }
        Checked::Usable(observed) => observed,
    };

    let (engine_ready, served) = match &db.spec.engine {
        Some(engine) => {
            let collections: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), &ns);
            let collections = collections.list(&ListParams::default()).await?.items;
            let objects = build::dedicated_objects(db, engine, &collections, &ctx.engine_image)?;
            let deployment = apply_objects(ctx, &ns, &objects).await?;
            (readiness(&deployment), Some(served(db, objects.config_hash)))
        }
        None => match (shared.conflicts.get(&db.name_any()), shared.applied) {
            (Some(why), _) => (Observed::failed(ENGINE_READY, "Conflict", why.clone()), None),
            (None, Some((deployment, hash))) => {
                remove_dedicated(ctx, db).await?;
                (readiness(&deployment), Some(served(db, hash)))
            }
            // Usable yet not a member: only when the list we just read lacks it (deleted meanwhile).
            (None, None) => (
                Observed::failed(
                    ENGINE_READY,
                    "NotServed",
                    "the shared engine does not serve this database",
                ),
                None,
            ),
        },
    };
    let ready = engine_ready.status;
    let ready_message = if db.spec.engine.is_some() {
        "backends reachable, buckets ready, dedicated engine available"
    } else {
        "backends reachable, buckets ready, shared engine available"
    };
    let not_ready_reason = if engine_ready.reason == "Conflict" {
        "Conflict"
    } else {
        "EngineNotReady"
    };
    observed.push(engine_ready);
    observed.push(if ready {
        Observed::ok(READY, "Ready", ready_message)
    } else {
        Observed::failed(READY, not_ready_reason, "waiting for the engine")
    });
    write_status(db, ctx, &observed, served, facts).await?;
    // Not ready: the Deployment's status change wakes us (we own it). Ready: re-check now and then.
    // A conflict clears when the other database goes, which does not wake this one: look again.
    Ok(Action::requeue(if not_ready_reason == "Conflict" {
        requeue::MISSING
    } else {
        requeue::DRIFT
    }))
}

fn served(db: &ChronosDatabase, config_hash: String) -> Served {
    Served {
        engine_url: build::engine_url(&build::engine_name(db), &db.namespace().unwrap_or_default()),
        database_url: build::database_url(db),
        config_hash,
    }
}

fn readiness(deployment: &Deployment) -> Observed {
    let (ready, message) = build::deployment_ready(deployment);
    if ready {
        Observed::ok(ENGINE_READY, "Available", message)
    } else {
        Observed::failed(ENGINE_READY, "Progressing", message)
    }
}

/// The namespace's shared engine as just rendered.
struct SharedState {
    /// Its Deployment as stored and its configuration hash; `None` when it has no members
    /// (and so was removed).
    applied: Option<(Deployment, String)>,
    /// Databases that asked for it but conflict with a member (name → why).
    conflicts: BTreeMap<String, String>,
}

/// Render namespace `ns`'s shared engine from a fresh list of its databases and apply it, or
/// remove it when no database needs it any more. `fresh` is the reconciling database's own
/// backend check. Call with the namespace's lock held.
async fn sync_shared(ctx: &Context, ns: &str, fresh: Option<(&str, bool)>) -> Result<SharedState> {
    let databases: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), ns);
    let mut dbs = databases.list(&ListParams::default()).await?.items;
    dbs.sort_by_key(|db| db.name_any());
    let membership = build::membership(&dbs, fresh);
    if membership.members.is_empty() {
        remove_shared(ctx, ns).await?;
        return Ok(SharedState {
            applied: None,
            conflicts: membership.conflicts,
        });
    }
    let collections: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), ns);
    let collections = collections.list(&ListParams::default()).await?.items;
    let settings = build::SharedEngine {
        image: ctx.engine_image.clone(),
        replicas: ctx.shared_engine_replicas,
    };
    let objects = build::shared_objects(ns, &membership.members, &collections, &settings)?;
    let deployment = apply_objects(ctx, ns, &objects).await?;
    Ok(SharedState {
        applied: Some((deployment, objects.config_hash)),
        conflicts: membership.conflicts,
    })
}

/// Delete a namespace's shared engine once no database needs it. Removed rather than scaled to
/// zero: nothing is left to clutter the namespace, and the next shared database renders it
/// again in one reconcile. The configuration Secret is applied first and deleted last, so it
/// marks an engine that may still have objects to delete. Only objects that are the operator's
/// shared engine go: a namespace's own `chronos-engine` (another app's) is left alone.
async fn remove_shared(ctx: &Context, ns: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let config = build::config_name(build::SHARED_ENGINE);
    if secrets.get_opt(&config).await?.is_none() {
        return Ok(());
    }
    delete_engine(ctx, ns, build::SHARED_ENGINE, &shared_engine_part).await?;
    tracing::info!(namespace = %ns, "removed the shared engine: no database needs it");
    Ok(())
}

/// Delete a dedicated engine the database no longer asks for (it moved to the shared engine),
/// if it is the database's own (its controller owner is this database).
async fn remove_dedicated(ctx: &Context, db: &ChronosDatabase) -> Result<()> {
    let ns = db.namespace().unwrap_or_default();
    let name = build::dedicated_name(db);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(deployment) = deployments.get_opt(&name).await? else {
        return Ok(());
    };
    if controlled_by(deployment.meta(), db) {
        delete_engine(ctx, &ns, &name, &|meta| controlled_by(meta, db)).await?;
        tracing::info!(database = %db.name_any(), "removed its dedicated engine: the shared engine serves it now");
    }
    Ok(())
}

/// Delete an engine's Deployment, Service, NetworkPolicy and configuration Secret (in that
/// order), each if present and `ours`.
async fn delete_engine(ctx: &Context, ns: &str, name: &str, ours: &(dyn Fn(&ObjectMeta) -> bool + Sync)) -> Result<()> {
    delete_if_ours::<Deployment>(ctx, ns, name, ours).await?;
    delete_if_ours::<Service>(ctx, ns, name, ours).await?;
    delete_if_ours::<NetworkPolicy>(ctx, ns, name, ours).await?;
    delete_if_ours::<Secret>(ctx, ns, &build::config_name(name), ours).await
}

/// Delete object `name` if it is there and `ours`; the uid precondition makes sure the object
/// deleted is the one checked, not one re-created under its name meanwhile.
async fn delete_if_ours<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    ours: &(dyn Fn(&ObjectMeta) -> bool + Sync),
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !ours(obj.meta()) {
        tracing::warn!(namespace = %ns, kind = %K::kind(&()), %name, "not deleting: not made by the operator");
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        other => other.map(drop).map_err(Error::from),
    }
}

/// Apply an engine's Secret, Service, NetworkPolicy and Deployment (the policy before the pods
/// it guards); returns the Deployment as stored.
async fn apply_objects(ctx: &Context, ns: &str, objects: &build::EngineObjects) -> Result<Deployment> {
    apply_one(ctx, ns, &objects.config).await?;
    apply_one(ctx, ns, &objects.service).await?;
    apply_one(ctx, ns, &objects.network_policy).await?;
    apply_one(ctx, ns, &objects.deployment).await
}

/// Server-side apply of one object under the operator's field manager.
async fn apply_one<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&obj.name_any(), &pp, &Patch::Apply(typed(obj)?)).await?)
}

/// An object with its apiVersion and kind, as server-side apply needs them.
fn typed<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(obj)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    Ok(value)
}

/// What the status records besides conditions and how the database is served.
struct Facts {
    /// The MongoDB deployment found this time; the recorded one is kept when the Secrets could
    /// not be read (other databases' conflict checks rely on it).
    mongo_backend: Option<String>,
    /// Where the tokens are, once they exist.
    tokens_secret: Option<String>,
}

/// Write the status, then publish an Event if readiness changed (or why it is not ready).
async fn write_status(
    db: &ChronosDatabase,
    ctx: &Context,
    observed: &[Observed],
    served: Option<Served>,
    facts: Facts,
) -> Result<()> {
    let existing = db.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = db.metadata.generation;
    let recorded = db.status.as_ref().and_then(|s| s.mongo_backend.clone());
    let status = ChronosDatabaseStatus {
        conditions: conditions::merge(existing, observed, generation, conditions::now()),
        engine_url: served.as_ref().map(|s| s.engine_url.clone()),
        database_url: served.as_ref().map(|s| s.database_url.clone()),
        config_hash: served.map(|s| s.config_hash),
        tokens_secret: facts.tokens_secret,
        mongo_backend: facts.mongo_backend.or(recorded),
        observed_generation: generation,
    };
    crate::operator::apply_status(
        &Api::<ChronosDatabase>::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default()),
        &db.name_any(),
        &status,
    )
    .await?;
    let notice = observed
        .iter()
        .find(|o| o.type_ == READY)
        .and_then(|ready| events::transition(existing, ready, "Reconcile"));
    if let Some(notice) = notice {
        events::publish(&ctx.recorder, db, notice).await;
    }
    Ok(())
}

/// The resource is being deleted: it leaves the shared engine (which goes with its last member),
/// and its data is dropped only under `deletionPolicy: Delete`. A dedicated engine's objects go
/// with their owner (garbage collection by owner reference).
async fn cleanup(db: &ChronosDatabase, ctx: &Context) -> Result<Action> {
    let ns = db.namespace().unwrap_or_default();
    let shared = {
        let lock = ctx.namespace_lock(&ns);
        let _rendering = lock.lock().await;
        sync_shared(ctx, &ns, None).await?
    };
    if db.spec.deletion_policy == DeletionPolicy::Delete {
        let storage = match backends::storage(&ctx.client, db).await {
            Ok(storage) => storage,
            // The credentials went first (a namespace being deleted, `kubectl delete -k`): the
            // data can't be reached, so it is kept — waiting for Secrets that will not come back
            // would hold the namespace in Terminating for ever.
            Err(Error::Missing(why) | Error::NotPermitted(why)) => {
                let note = format!("deletionPolicy: Delete not applied, the data is kept: {why}");
                tracing::warn!(database = %db.name_any(), %why, "deletionPolicy: Delete not applied");
                events::publish(&ctx.recorder, db, Notice::warning("DataRetained", note, "Delete")).await;
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        };
        if let Some(why) = claim_conflict(db, ctx, &backends::mongo_backend(&storage)?).await? {
            // Irreversible, and the data was never this database's: keep it.
            tracing::warn!(database = %db.name_any(), %why, "deletionPolicy: Delete not applied");
            let note = format!("deletionPolicy: Delete not applied, the data is kept: {why}");
            events::publish(&ctx.recorder, db, Notice::warning("DataRetained", note, "Delete")).await;
            return Ok(Action::await_change());
        }
        // No engine may still be serving the database: a write it acknowledged during the drop
        // would be lost, and its upserts would bring the MongoDB database back half-empty.
        stop_serving(db, ctx, &ns, shared.applied.as_ref().map(|(d, _)| d)).await?;
        // No collection or restore reconcile may be writing (which would bring the MongoDB
        // database back) from here on.
        ctx.data_gates.close(&db.metadata.uid.clone().unwrap_or_default()).await;
        backends::drop_data(ctx, &storage, &build::database_key(db)).await?;
        tracing::info!(database = %db.name_any(), "dropped the MongoDB database and the buckets (deletionPolicy: Delete)");
    }
    Ok(Action::await_change())
}

/// Make sure no engine serves `db` any more before its data is dropped: its dedicated engine is
/// scaled to zero and must have no pods left; on the shared engine, the rollout of the
/// configuration without it (`shared`, just applied) must be complete. Until then a transient
/// error: the finalizer stays, and the Deployment's next status change reconciles again.
async fn stop_serving(db: &ChronosDatabase, ctx: &Context, ns: &str, shared: Option<&Deployment>) -> Result<()> {
    if db.spec.engine.is_none() {
        return match shared {
            Some(d) if !build::deployment_ready(d).0 => Err(Error::Waiting(format!(
                "the shared engine to roll out without database `{}` before its data is dropped \
                 (deletionPolicy: Retain deletes it without dropping anything)",
                db.name_any()
            ))),
            _ => Ok(()),
        };
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = build::engine_name(db);
    let Some(deployment) = deployments.get_opt(&name).await? else {
        return Ok(());
    };
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas);
    if wanted != Some(0) {
        let zero = serde_json::json!({"spec": {"replicas": 0}});
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Merge(&zero))
            .await?;
        return Err(Error::Waiting(format!(
            "engine {name} to scale to zero before the data is dropped"
        )));
    }
    let status = deployment.status.unwrap_or_default();
    let observed = status.observed_generation >= deployment.metadata.generation;
    if !observed || status.replicas.unwrap_or(0) > 0 {
        return Err(Error::Waiting(format!(
            "engine {name} to have no pods before the data is dropped (deletionPolicy: Retain deletes it \
             without dropping anything)"
        )));
    }
    Ok(())
}

/// The controller: watches databases, the Deployments they own (readiness), and collections
/// (whose maps go into the engine's configuration).
pub fn controller(
    ctx: Arc<Context>,
    api: Api<ChronosDatabase>,
    config: kube::runtime::watcher::Config,
    deployments: Api<Deployment>,
    owned: kube::runtime::watcher::Config,
    collections: Api<ChronosCollection>,
) -> impl futures::Stream<Item = ()> + Send {
    use futures::StreamExt;
    use kube::runtime::Controller;
    use kube::runtime::reflector::ObjectRef;

    Controller::new(api, config)
        .owns(deployments, owned)
        .watches(
            collections,
            kube::runtime::watcher::Config::default().any_semantic(),
            |c| {
                c.namespace()
                    .map(|ns| ObjectRef::<ChronosDatabase>::new(&c.spec.database).within(&ns))
            },
        )
        .run(reconcile, crate::operator::error_policy, ctx)
        .map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "database reconcile");
            }
        })
}
