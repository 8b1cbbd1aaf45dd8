//! The `ChronosCollection` reconciler: validate → find the database → ensure the MongoDB indexes
//! (idempotent: `createIndexes` of an existing index is a no-op) → status; then make sure the
//! collection's change feed is followed ([`changes`]), or stop following it when it can't be.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::engine::EngineSettings;
use crate::operator::conditions::{self, Observed};
use crate::operator::context::{Context, apply_status, requeue};
use crate::operator::controllers::changes;
use crate::operator::crd::collection::{ChronosCollection, ChronosCollectionStatus, INDEXES_READY};
use crate::operator::crd::database::ChronosDatabase;
use crate::operator::error::{Error, Result};
use crate::operator::{backends, events};

#[tracing::instrument(skip_all, fields(name = %c.name_any(), namespace = c.namespace().unwrap_or_default()))]
pub async fn reconcile(c: Arc<ChronosCollection>, ctx: Arc<Context>) -> Result<Action> {
    ensure(&c, &ctx).await
}

async fn ensure(c: &ChronosCollection, ctx: &Context) -> Result<Action> {
    let (name, map) = match c.spec.map() {
        Ok(m) => m,
        Err(problems) => {
            changes::stop(ctx, c).await;
            let failed = Observed::failed(INDEXES_READY, "InvalidSpec", problems.join("; "));
            write_status(c, ctx, failed, Vec::new()).await?;
            return Ok(Action::await_change());
        }
    };
    let ns = c.namespace().unwrap_or_default();
    let databases: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(db) = databases.get_opt(&c.spec.database).await? else {
        changes::stop(ctx, c).await;
        let message = format!("ChronosDatabase {ns}/{} not found", c.spec.database);
        write_status(
            c,
            ctx,
            Observed::failed(INDEXES_READY, "DatabaseNotFound", message),
            Vec::new(),
        )
        .await?;
        return Ok(Action::requeue(requeue::MISSING));
    };
    let uid = db.metadata.uid.clone().unwrap_or_default();
    // Held until the indexes are in place, so a drop of the database's data waits for them.
    let pass = ctx.data_gates.enter(&uid);
    if db.metadata.deletion_timestamp.is_some() || pass.is_none() {
        // Its data may be being dropped (deletionPolicy: Delete): creating indexes now would
        // bring the MongoDB database back.
        drop(pass);
        changes::stop(ctx, c).await;
        let message = format!("ChronosDatabase {ns}/{} is being deleted", c.spec.database);
        write_status(
            c,
            ctx,
            Observed::failed(INDEXES_READY, "DatabaseDeleting", message),
            Vec::new(),
        )
        .await?;
        return Ok(Action::requeue(requeue::MISSING));
    }
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(name.as_str().to_owned(), map);
    let indexes = async {
        let engine = backends::engine(ctx, &db, settings).await?;
        let indexes = engine.ensure_indexes(&name).await?;
        Ok::<_, Error>((engine, indexes))
    };
    let indexes = indexes.await;
    drop(pass);
    match indexes {
        Ok((engine, indexes)) => {
            let message = format!("{} index(es) on indexed properties", indexes.len());
            write_status(c, ctx, Observed::ok(INDEXES_READY, "Created", message), indexes).await?;
            changes::ensure(ctx, c, &name, &db, engine).await;
            Ok(Action::requeue(requeue::DRIFT))
        }
        Err(e @ (Error::Missing(_) | Error::NotPermitted(_) | Error::Engine(_))) => {
            write_status(
                c,
                ctx,
                Observed::failed(INDEXES_READY, "BackendUnavailable", e.to_string()),
                Vec::new(),
            )
            .await?;
            Ok(Action::requeue(requeue::TRANSIENT))
        }
        Err(e) => Err(e),
    }
}

/// Write the status, then publish an Event if `IndexesReady` changed (an invalid spec, a
/// missing database, indexes in place). Only the fields this reconcile owns: `changes` and the
/// `ChangesFollowed` condition belong to the follower's field manager.
async fn write_status(c: &ChronosCollection, ctx: &Context, observed: Observed, indexes: Vec<String>) -> Result<()> {
    let existing = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = c.metadata.generation;
    let notice = events::transition(existing, &observed, "EnsureIndexes");
    let mut conditions = conditions::merge(existing, &[observed], generation, conditions::now());
    conditions.retain(|c| c.type_ == INDEXES_READY);
    let status = ChronosCollectionStatus {
        conditions,
        indexes,
        observed_generation: generation,
        changes: None,
    };
    apply_status(
        &Api::<ChronosCollection>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default()),
        &c.name_any(),
        &status,
    )
    .await?;
    if let Some(notice) = notice {
        events::publish(&ctx.recorder, c, notice).await;
    }
    Ok(())
}
