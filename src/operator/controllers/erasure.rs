//! The `ChronosErasure` reconciler: runs the erasure on the database's backends and records its
//! summary in the status. The engine's erasure is resumable — its record is written `started`
//! before anything goes, and asking again finishes it — so a reconcile cut short (an operator
//! restart, a backend outage) simply asks again. The record's reason names this resource's uid,
//! which is how a later reconcile finds the erasure it already ran instead of starting another.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::engine::{Engine, EraseRequest, Erasure, ErasureStatus};
use crate::operator::backends;
use crate::operator::conditions;
use crate::operator::context::{Context, apply_own_status, requeue};
use crate::operator::crd::database::ChronosDatabase;
use crate::operator::crd::erasure::{ChronosErasure, ChronosErasureStatus, ErasureReport, Phase};
use crate::operator::error::{Error, Result};
use crate::operator::events::{self, Notice};

#[tracing::instrument(skip_all, fields(name = %r.name_any(), namespace = r.namespace().unwrap_or_default()))]
pub async fn reconcile(r: Arc<ChronosErasure>, ctx: Arc<Context>) -> Result<Action> {
    run(&r, &ctx).await
}

async fn run(r: &ChronosErasure, ctx: &Context) -> Result<Action> {
    if matches!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let mut status = r.status.clone().unwrap_or_default();
    status.observed_generation = r.metadata.generation;
    let (collection, target) = match r.spec.job() {
        Ok(job) => job,
        Err(problem) => return finish(ctx, r, status, Phase::Failed, format!("invalid spec: {problem}")).await,
    };
    let databases: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(db) = databases.get_opt(&r.spec.database).await? else {
        status.message = Some(format!("waiting for ChronosDatabase {ns}/{}", r.spec.database));
        write(ctx, r, &status).await?;
        return Ok(Action::requeue(requeue::MISSING));
    };
    let engine = match backends::engine(ctx, &db, backends::settings(ctx, &db).await?).await {
        Ok(e) => e,
        Err(e) => {
            status.message = Some(format!("backends unavailable, retrying: {e}"));
            write(ctx, r, &status).await?;
            return Err(e);
        }
    };
    if status.started_at.is_none() {
        status.started_at = Some(conditions::now());
        status.phase = Phase::Running;
        status.message = Some("erasing".to_owned());
        write(ctx, r, &status).await?;
        let note = format!("erasing from {collection} of ChronosDatabase {}", r.spec.database);
        events::publish(&ctx.recorder, r, Notice::normal("ErasureStarted", note, "Erase")).await;
    }
    let uid = r.metadata.uid.clone().unwrap_or_default();
    let request = EraseRequest {
        target: target.clone(),
        actor: Some(format!("ChronosErasure {ns}/{}", r.name_any())),
        reason: format!("{} (ChronosErasure uid {uid})", r.spec.reason.trim()),
    };
    match erase_once(&engine, &collection, &request, &uid).await {
        Ok(record) => {
            status.report = Some(ErasureReport {
                erasure_id: record.id.clone(),
                items: record.items.len() as u64,
                versions: record.versions,
                objects: record.objects,
                sha256: record.sha256.clone(),
            });
            // Written by the operator process: send its records now, not within a second.
            engine.flush_ledger().await?;
            finish(ctx, r, status, Phase::Succeeded, "erased".to_owned()).await
        }
        Err(Error::Engine(
            e @ (crate::engine::Error::NotFound(_)
            | crate::engine::Error::Validation { .. }
            | crate::engine::Error::Erased(_)),
        )) => finish(ctx, r, status, Phase::Failed, e.to_string()).await,
        Err(e) => {
            status.message = Some(format!("interrupted, will resume: {e}"));
            write(ctx, r, &status).await?;
            Err(e)
        }
    }
}

/// The erasure this resource asks for: the one it already ran (found by its uid in the reason),
/// finished if it was cut short, or a new one.
async fn erase_once(
    engine: &Engine,
    collection: &crate::engine::CollectionName,
    request: &EraseRequest,
    uid: &str,
) -> Result<Erasure> {
    let mine = engine
        .erasures(Some(collection))
        .await?
        .into_iter()
        .find(|e| !uid.is_empty() && e.reason.contains(uid));
    match mine {
        Some(e) if e.status == ErasureStatus::Done => Ok(e),
        // Asking again finishes it (the engine matches the item or the filter).
        Some(_) | None => Ok(engine.erase(collection, request).await?),
    }
}

async fn finish(
    ctx: &Context,
    r: &ChronosErasure,
    mut status: ChronosErasureStatus,
    phase: Phase,
    message: String,
) -> Result<Action> {
    status.phase = phase;
    status.message = Some(message.clone());
    status.started_at.get_or_insert_with(conditions::now);
    status.completed_at = Some(conditions::now());
    write(ctx, r, &status).await?;
    let notice = Notice::ended(phase == Phase::Succeeded, message, "Erase");
    events::publish(&ctx.recorder, r, notice).await;
    Ok(Action::await_change())
}

async fn write(ctx: &Context, r: &ChronosErasure, status: &ChronosErasureStatus) -> Result<()> {
    apply_own_status(ctx, r, status).await
}
