//! The `ChronosDatabase` reconciler: validate → reach the backends → ensure the buckets → apply
//! the engine → status. Deletion goes through a finalizer so `deletionPolicy` is always honoured.
//!
//! - [`check`](mod@check): whether the database can be served (spec, Secrets, claims, backends, tokens).
//! - [`names`], [`render`], [`shape`], [`pod`], [`objects`], [`membership`]: the engines as pure
//!   functions of the resources — names, configuration, what differs between a dedicated and
//!   the shared engine, Deployment, the other objects, and which databases the namespace's
//!   shared engine serves.
//! - [`claims`]: which databases would share a MongoDB database or a bucket they must not.
//! - [`engines`]: applying and removing engines in the cluster.
//! - [`verify`]: the periodic verify of the database's history (`spec.verify`).

pub mod check;
pub mod claims;
pub mod engines;
pub mod membership;
pub mod names;
pub mod objects;
pub mod pod;
pub mod render;
pub mod shape;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Api, ResourceExt};

use crate::operator::backends;
use crate::operator::conditions::{self, Observed};
use crate::operator::context::{Context, requeue};
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::{
    ChronosDatabase, ChronosDatabaseStatus, DeletionPolicy, ENGINE_READY, HISTORY_VERIFIED, READY, database_key,
};
use crate::operator::error::{Error, Result};
use crate::operator::events::{self, Notice};
use crate::operator::schedule;
use check::{Check, Checked, check, claim_conflict};
use engines::{apply_objects, remove_dedicated, stop_serving, sync_shared};
use names::{database_url, engine_name, engine_url, tokens_name};
use objects::{dedicated_objects, deployment_ready};

/// The finalizer that stands between `kubectl delete` and the data.
pub const FINALIZER: &str = "chronos.dev/data";

#[tracing::instrument(skip_all, fields(name = %db.name_any(), namespace = db.namespace().unwrap_or_default()))]
pub async fn reconcile(db: Arc<ChronosDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let ns = db.namespace().unwrap_or_default();
    let api: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer::finalizer(&api, FINALIZER, db, |event| async {
        match event {
            Finalizer::Apply(db) => apply(&db, &ctx).await,
            Finalizer::Cleanup(db) => cleanup(&db, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
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
        tokens_secret: matches!(checked, Checked::Usable(_)).then(|| tokens_name(db)),
    };
    let plan = verify::Plan::read(db, ctx).await?;
    let lock = ctx.namespace_lock(&ns);
    let rendering = lock.lock().await;
    // Every outcome re-renders the shared engine: a member that became invalid or unreachable,
    // or moved to a dedicated engine, leaves it; one that became usable joins it.
    let usable = matches!(checked, Checked::Usable(_));
    let shared = sync_shared(ctx, &ns, Some((&db.name_any(), usable))).await?;
    let mut observed = match checked {
        Checked::Invalid(message) => {
            let invalid = [Observed::failed(READY, "InvalidSpec", message)];
            write_status(db, ctx, &invalid, None, facts, &plan).await?;
            return Ok(Action::await_change());
        }
        Checked::Unavailable(observed, delay) => {
            write_status(db, ctx, &observed, None, facts, &plan).await?;
            return Ok(Action::requeue(delay));
        }
        Checked::Usable(observed) => observed,
    };

    let (engine_ready, served) = match &db.spec.engine {
        Some(engine) => {
            let collections: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), &ns);
            let collections = collections.list(&ListParams::default()).await?.items;
            let objects = dedicated_objects(db, engine, &collections, &ctx.engine_image)?;
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
    let mut status = write_status(db, ctx, &observed, served, facts, &plan).await?;
    // The namespace's other databases need not wait for this one's verify.
    drop(rendering);
    if let Some(grace) = plan.due(db) {
        let (last, verified) = verify::run(db, ctx, grace).await;
        let existing = status.conditions.clone();
        status.conditions = conditions::merge(
            &existing,
            std::slice::from_ref(&verified),
            db.metadata.generation,
            conditions::now(),
        );
        status.next_verify = plan.next(Some(&last));
        status.last_verify = Some(last);
        apply_status(db, ctx, &status).await?;
        if let Some(notice) = events::transition(&existing, &verified, "Verify") {
            events::publish(&ctx.recorder, db, notice).await;
        }
    }
    // Not ready: the Deployment's status change wakes us (we own it). Ready: re-check now and then.
    // A conflict clears when the other database goes, which does not wake this one: look again.
    let usual = if not_ready_reason == "Conflict" {
        requeue::MISSING
    } else {
        requeue::DRIFT
    };
    let next_verify = status.next_verify.as_ref().map_or(usual, |t| schedule::until(t.0));
    Ok(Action::requeue(usual.min(next_verify.max(Duration::from_millis(100)))))
}

fn served(db: &ChronosDatabase, config_hash: String) -> Served {
    Served {
        engine_url: engine_url(&engine_name(db), &db.namespace().unwrap_or_default()),
        database_url: database_url(db),
        config_hash,
    }
}

fn readiness(deployment: &Deployment) -> Observed {
    let (ready, message) = deployment_ready(deployment);
    if ready {
        Observed::ok(ENGINE_READY, "Available", message)
    } else {
        Observed::failed(ENGINE_READY, "Progressing", message)
    }
}

/// What the status records besides conditions and how the database is served.
struct Facts {
    /// The MongoDB deployment found this time; the recorded one is kept when the Secrets could
    /// not be read (other databases' conflict checks rely on it).
    mongo_backend: Option<String>,
    /// Where the tokens are, once they exist.
    tokens_secret: Option<String>,
}

/// Write the status, then publish an Event if readiness changed (or why it is not ready), or
/// the verify's schedule became invalid. What the verify recorded is carried from `plan`
/// (read fresh), not from the cached copy.
async fn write_status(
    db: &ChronosDatabase,
    ctx: &Context,
    observed: &[Observed],
    served: Option<Served>,
    facts: Facts,
    plan: &verify::Plan,
) -> Result<ChronosDatabaseStatus> {
    let existing = db.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut carried: Vec<_> = existing
        .iter()
        .filter(|c| c.type_ != HISTORY_VERIFIED)
        .cloned()
        .collect();
    carried.extend(plan.recorded.clone());
    let mut observed = observed.to_vec();
    observed.extend(plan.observed());
    let generation = db.metadata.generation;
    let recorded = db.status.as_ref().and_then(|s| s.mongo_backend.clone());
    let status = ChronosDatabaseStatus {
        conditions: conditions::merge(&carried, &observed, generation, conditions::now()),
        engine_url: served.as_ref().map(|s| s.engine_url.clone()),
        database_url: served.as_ref().map(|s| s.database_url.clone()),
        config_hash: served.map(|s| s.config_hash),
        tokens_secret: facts.tokens_secret,
        mongo_backend: facts.mongo_backend.or(recorded),
        last_verify: plan.last.clone(),
        next_verify: plan.next(plan.last.as_ref()),
        observed_generation: generation,
    };
    apply_status(db, ctx, &status).await?;
    let notices = observed
        .iter()
        .filter(|o| o.type_ == READY || o.type_ == HISTORY_VERIFIED)
        .filter_map(|o| events::transition(&carried, o, "Reconcile"));
    for notice in notices {
        events::publish(&ctx.recorder, db, notice).await;
    }
    Ok(status)
}

async fn apply_status(db: &ChronosDatabase, ctx: &Context, status: &ChronosDatabaseStatus) -> Result<()> {
    crate::operator::context::apply_status(
        &Api::<ChronosDatabase>::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default()),
        &db.name_any(),
        status,
    )
    .await
}

/// The resource is being deleted: it leaves the shared engine (which goes with its last member),
/// and its data is dropped only under `deletionPolicy: Delete`. A dedicated engine's objects go
/// with their owner (garbage collection by owner reference).
async fn cleanup(db: &ChronosDatabase, ctx: &Context) -> Result<Action> {
    let ns = db.namespace().unwrap_or_default();
    // Nobody follows its collections' feeds any more: their engines go, and maybe their data.
    ctx.followers
        .stop_database(db.metadata.uid.as_deref().unwrap_or_default())
        .await;
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
        backends::drop_data(ctx, &storage, &database_key(db)).await?;
        tracing::info!(database = %db.name_any(), "dropped the MongoDB database and the buckets (deletionPolicy: Delete)");
    }
    Ok(Action::await_change())
}
