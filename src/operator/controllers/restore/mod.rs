//! The `ChronosRestore` reconciler. A collection restore runs in pages; after each page the
//! status records the counts and the cursor, so progress is visible while it runs and an operator
//! that restarts continues after the last recorded page. Redoing a page is harmless (the engine
//! leaves items already at their target alone), so a crash between a page and its status write
//! costs only that page's reads.
//!
//! A rebuild (`source: buckets`) is its own job: [`rebuild`].

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::engine::{Attribution, Engine, ItemId, ReadOptions, VersionTarget};
use crate::operator::backends;
use crate::operator::conditions;
use crate::operator::context::{Context, apply_own_status, requeue};
use crate::operator::crd::database::ChronosDatabase;
use crate::operator::crd::restore::{ChronosRestore, ChronosRestoreStatus, Counts, Job, Phase, Progress};
use crate::operator::error::{Error, Result};
use crate::operator::events::{self, Notice};

mod rebuild;

#[tracing::instrument(skip_all, fields(name = %r.name_any(), namespace = r.namespace().unwrap_or_default()))]
pub async fn reconcile(r: Arc<ChronosRestore>, ctx: Arc<Context>) -> Result<Action> {
    run(&r, &ctx).await
}

async fn run(r: &ChronosRestore, ctx: &Context) -> Result<Action> {
    if matches!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let api: Api<ChronosRestore> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache may lag our last status write; the cursor must be the latest one.
    let Some(r) = api.get_opt(&r.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let mut status = r.status.clone().unwrap_or_default();
    if matches!(status.phase, Phase::Succeeded | Phase::Failed) {
        return Ok(Action::await_change());
    }
    status.observed_generation = r.metadata.generation;
    let job = match r.spec.job() {
        Ok(job) => job,
        Err(problem) => return finish(ctx, &r, status, Phase::Failed, format!("invalid spec: {problem}")).await,
    };
    let databases: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(db) = databases.get_opt(&r.spec.database).await? else {
        status.message = Some(format!("waiting for ChronosDatabase {ns}/{}", r.spec.database));
        write(ctx, &r, &status).await?;
        return Ok(Action::requeue(requeue::MISSING));
    };
    // Held for the whole run, so a drop of the database's data waits for it to end; a restore
    // never writes into a database that is being deleted (that would bring its data back).
    let pass = ctx.data_gates.enter(&db.metadata.uid.clone().unwrap_or_default());
    if db.metadata.deletion_timestamp.is_some() || pass.is_none() {
        status.message = Some(format!("ChronosDatabase {ns}/{} is being deleted", r.spec.database));
        write(ctx, &r, &status).await?;
        return Ok(Action::requeue(requeue::MISSING));
    }
    let engine = match backends::engine(ctx, &db, backends::settings(ctx, &db).await?).await {
        Ok(e) => e,
        Err(e) => {
            status.message = Some(format!("backends unavailable, retrying: {e}"));
            write(ctx, &r, &status).await?;
            return Err(e);
        }
    };
    if status.started_at.is_none() {
        status.started_at = Some(conditions::now());
        let what = match &job {
            Job::Item { collection, id, .. } => format!("item {collection}/{id}"),
            Job::Collection { collection, .. } => format!("collection {collection}"),
            Job::Rebuild(_) => "the whole metadata (from the buckets)".to_owned(),
        };
        let dry = if r.spec.dry_run { " (dry run)" } else { "" };
        let note = format!("restoring {what} of ChronosDatabase {}{dry}", r.spec.database);
        events::publish(&ctx.recorder, &r, Notice::normal("RestoreStarted", note, "Restore")).await;
    }
    if let Job::Rebuild(options) = job {
        return rebuild::run(ctx, &engine, options, &r, status).await;
    }
    let who = Attribution::new("chronos-operator", format!("ChronosRestore {ns}/{}", r.name_any()));
    let outcome = match job {
        Job::Item { collection, id, target } => item(&engine, &collection, &id, target, &r, &who).await,
        Job::Collection { collection, point } => {
            collection_pages(ctx, &engine, &collection, point, &r, &mut status, &who).await
        }
        Job::Rebuild(_) => Ok(None),
    };
    match outcome {
        Ok(Some((counts, total))) => {
            status.plan.get_or_insert(counts);
            if !r.spec.dry_run {
                status.applied.get_or_insert(counts);
            }
            status.progress.get_or_insert(Progress { done: total, total });
            let message = if r.spec.dry_run {
                "planned (dry run)"
            } else {
                "restored"
            };
            finish(ctx, &r, status, Phase::Succeeded, message.to_owned()).await
        }
        Ok(None) => finish(ctx, &r, status, Phase::Succeeded, "restored".to_owned()).await,
        // The request cannot work (unknown version, a delete as target…): final.
        Err(Error::Engine(e @ (crate::engine::Error::NotFound(_) | crate::engine::Error::Validation { .. }))) => {
            finish(ctx, &r, status, Phase::Failed, e.to_string()).await
        }
        Err(e) => {
            status.message = Some(format!("interrupted, will resume: {e}"));
            write(ctx, &r, &status).await?;
            Err(e)
        }
    }
}

/// One item: plan = that it exists; then one append-only restore write.
async fn item(
    engine: &Engine,
    collection: &crate::engine::CollectionName,
    id: &ItemId,
    target: VersionTarget,
    r: &ChronosRestore,
    who: &Attribution,
) -> Result<Option<(Counts, u64)>> {
    let opts = ReadOptions { include_deleted: true };
    engine.get_at(collection, id, target, opts).await?;
    if !r.spec.dry_run {
        // One key per ChronosRestore: a reconcile that runs again after the write (a restart, a
        // lost status write) replays the first outcome instead of appending a second version.
        let key = format!("crst:{}", r.metadata.uid.as_deref().unwrap_or_default());
        let who = Attribution {
            request_key: Some(key.parse()?),
            ..who.clone()
        };
        engine.restore_object(collection, id, target, None, &who).await?;
    }
    let counts = Counts {
        examined: 1,
        restored: 1,
        ..Counts::default()
    };
    Ok(Some((counts, 1)))
}

/// A collection, page by page from the recorded cursor, writing status after every page.
async fn collection_pages(
    ctx: &Context,
    engine: &Engine,
    collection: &crate::engine::CollectionName,
    point: crate::engine::HistoryPoint,
    r: &ChronosRestore,
    status: &mut ChronosRestoreStatus,
    who: &Attribution,
) -> Result<Option<(Counts, u64)>> {
    if status.plan.is_none() {
        let total = engine.count_items(collection).await?;
        let plan = engine
            .restore_collection(collection, point, true, who, |_, _| {})
            .await?;
        status.phase = Phase::Running;
        status.started_at.get_or_insert_with(conditions::now);
        status.plan = Some(plan.into());
        status.progress = Some(Progress { done: 0, total });
        status.message = Some("planned".to_owned());
        write(ctx, r, status).await?;
    }
    // Outside the planning step: a dry run interrupted after its plan was recorded must not
    // apply the plan when it resumes.
    if r.spec.dry_run {
        let total = status.progress.map_or(0, |p| p.total);
        status.progress = Some(Progress { done: total, total });
        return Ok(None);
    }
    let mut after: Option<ItemId> = status.cursor.as_deref().map(str::parse).transpose()?;
    loop {
        let page = engine
            .restore_collection_page(collection, point, after.clone(), ctx.restore_page, false, who)
            .await?;
        let applied = status.applied.get_or_insert_with(Counts::default);
        applied.add(page.counts);
        let progress = status.progress.get_or_insert_with(Progress::default);
        progress.done += page.counts.examined;
        progress.total = progress.total.max(progress.done);
        status.cursor = page.next_after_id.as_ref().map(|id| id.as_str().to_owned());
        status.message = Some("restoring".to_owned());
        write(ctx, r, status).await?;
        match page.next_after_id {
            Some(next) => after = Some(next),
            None => return Ok(None),
        }
    }
}

async fn finish(
    ctx: &Context,
    r: &ChronosRestore,
    mut status: ChronosRestoreStatus,
    phase: Phase,
    message: String,
) -> Result<Action> {
    status.phase = phase;
    status.message = Some(message.clone());
    status.started_at.get_or_insert_with(conditions::now);
    status.completed_at = Some(conditions::now());
    write(ctx, r, &status).await?;
    let notice = Notice::ended(phase == Phase::Succeeded, message, "Restore");
    events::publish(&ctx.recorder, r, notice).await;
    Ok(Action::await_change())
}

async fn write(ctx: &Context, r: &ChronosRestore, status: &ChronosRestoreStatus) -> Result<()> {
    apply_own_status(ctx, r, status).await
}
