//! The `ChronosDatabase` reconciler: validate → reach the backends → ensure the buckets → apply
//! the engine → status. Deletion goes through a finalizer so `deletionPolicy` is always honoured.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Api, Resource, ResourceExt};

use super::build;
use super::crd::{ChronosDatabase, ChronosDatabaseStatus, DeletionPolicy};
use crate::operator::collection::ChronosCollection;
use crate::operator::conditions::{self, Observed};
use crate::operator::{Context, Error, FIELD_MANAGER, Result, backends, requeue};

/// The finalizer that stands between `kubectl delete` and the data.
pub const FINALIZER: &str = "chronos.dev/data";
const NAME: &str = "database";

pub const BACKENDS_REACHABLE: &str = "BackendsReachable";
pub const BUCKETS_READY: &str = "BucketsReady";
pub const ENGINE_READY: &str = "EngineReady";
pub const READY: &str = "Ready";

pub async fn reconcile(db: Arc<ChronosDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = db.namespace().unwrap_or_default();
    let api: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer::finalizer(&api, FINALIZER, db, |event| async {
        match event {
            Finalizer::Apply(db) => apply(&db, &ctx).await,
            Finalizer::Cleanup(db) => cleanup(&db, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    crate::operator::health::record(NAME, started, result.is_ok());
    result
}

async fn apply(db: &ChronosDatabase, ctx: &Context) -> Result<Action> {
    let problems = db.spec.problems();
    if !problems.is_empty() {
        let message = problems.join("; ");
        write_status(db, ctx, &[Observed::failed(READY, "InvalidSpec", &message)], None, None).await?;
        return Ok(Action::await_change());
    }

    let storage = match backends::storage(&ctx.client, db).await {
        Ok(s) => s,
        Err(e @ (Error::Missing(_) | Error::Invalid(_))) => {
            let message = e.to_string();
            let observed = [
                Observed::failed(BACKENDS_REACHABLE, "SecretUnavailable", &message),
                Observed::failed(READY, "SecretUnavailable", &message),
            ];
            write_status(db, ctx, &observed, None, None).await?;
            return Ok(Action::requeue(requeue::MISSING));
        }
        Err(e) => return Err(e),
    };

    let reachable = async {
        backends::ping_mongo(ctx, &storage).await?;
        backends::ensure_buckets(ctx, &storage).await
    };
    let created = match reachable.await {
        Ok(created) => created,
        Err(Error::Engine(e)) => {
            let message = e.to_string();
            let observed = [
                Observed::failed(BACKENDS_REACHABLE, "Unreachable", &message),
                Observed::failed(READY, "BackendsUnreachable", &message),
            ];
            write_status(db, ctx, &observed, None, None).await?;
            return Ok(Action::requeue(requeue::TRANSIENT));
        }
        Err(e) => return Err(e),
    };
    let buckets = if created.is_empty() {
        "all three buckets exist".to_owned()
    } else {
        format!("created {}", created.join(", "))
    };
    let mut observed = vec![
        Observed::ok(BACKENDS_REACHABLE, "Reachable", "MongoDB and S3 answer"),
        Observed::ok(BUCKETS_READY, "BucketsExist", buckets),
    ];

    let (engine_ready, url, hash) = match &db.spec.engine {
        Some(engine) => {
            let collections: Api<ChronosCollection> =
                Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
            let collections = collections.list(&ListParams::default()).await?.items;
            let objects = build::engine_objects(db, engine, &collections, &ctx.engine_image)?;
            let deployment = apply_engine(db, ctx, &objects).await?;
            let (ready, message) = build::deployment_ready(&deployment);
            let condition = if ready {
                Observed::ok(ENGINE_READY, "Available", message)
            } else {
                Observed::failed(ENGINE_READY, "Progressing", message)
            };
            (condition, Some(build::engine_url(db)), Some(objects.config_hash))
        }
        None => (
            Observed::failed(
                ENGINE_READY,
                "SharedEngineNotImplemented",
                "set spec.engine: shared namespace engines are not implemented yet",
            ),
            None,
            None,
        ),
    };
    let ready = engine_ready.status;
    observed.push(engine_ready);
    observed.push(if ready {
        Observed::ok(READY, "Ready", "backends reachable, buckets ready, engine available")
    } else {
        Observed::failed(READY, "EngineNotReady", "waiting for the engine")
    });
    write_status(db, ctx, &observed, url, hash).await?;
    // Not ready: the Deployment's status change wakes us (we own it). Ready: re-check now and then.
    Ok(Action::requeue(requeue::DRIFT))
}

/// Apply the engine's Secret, Service and Deployment; returns the Deployment as stored.
async fn apply_engine(db: &ChronosDatabase, ctx: &Context, objects: &build::EngineObjects) -> Result<Deployment> {
    let ns = db.namespace().unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    secrets
        .patch(&build::config_name(db), &pp, &Patch::Apply(typed(&objects.config)?))
        .await?;
    services
        .patch(&build::engine_name(db), &pp, &Patch::Apply(typed(&objects.service)?))
        .await?;
    Ok(deployments
        .patch(&build::engine_name(db), &pp, &Patch::Apply(typed(&objects.deployment)?))
        .await?)
}

/// An object with its apiVersion and kind, as server-side apply needs them.
fn typed<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(obj)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    Ok(value)
}

async fn write_status(
    db: &ChronosDatabase,
    ctx: &Context,
    observed: &[Observed],
    engine_url: Option<String>,
    config_hash: Option<String>,
) -> Result<()> {
    let existing = db.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = db.metadata.generation;
    let status = ChronosDatabaseStatus {
        conditions: conditions::merge(existing, observed, generation, conditions::now()),
        engine_url,
        config_hash,
        observed_generation: generation,
    };
    crate::operator::apply_status(
        &Api::<ChronosDatabase>::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default()),
        &db.name_any(),
        &status,
    )
    .await
}

/// The resource is being deleted: drop the data only under `deletionPolicy: Delete`. The engine's
/// objects go with their owner (garbage collection by owner reference).
async fn cleanup(db: &ChronosDatabase, ctx: &Context) -> Result<Action> {
    if db.spec.deletion_policy == DeletionPolicy::Delete {
        let storage = backends::storage(&ctx.client, db).await?;
        backends::drop_data(ctx, &storage).await?;
        tracing::info!(database = %db.name_any(), "dropped the MongoDB database and the buckets (deletionPolicy: Delete)");
    }
    Ok(Action::await_change())
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
