//! A `ChronosRestore` with `source: buckets`: the database's whole metadata rebuilt from its
//! buckets by one call of `Engine::rebuild`. The engine records in the metadata store which
//! collections it finished, so after an operator restart the next reconcile calls it again and
//! it goes on from there; nothing about the rebuild's position needs to live in the status.
//! While it runs, the status shows the collections done every few seconds.

use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;

use super::{finish, write};
use crate::engine::Engine;
use crate::engine::rebuild::{RebuildOptions, RebuildProgress, RebuildReport};
use crate::operator::context::Context;
use crate::operator::crd::restore::{
    ChronosRestore, ChronosRestoreStatus, Phase, Progress, RebuildSpec, RebuildSummary,
};
use crate::operator::error::Result;

/// How often the status shows a running rebuild's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rebuild, then record the outcome. A store that holds data (and no unfinished rebuild of its
/// own) is refused unless `force`: final, since reconciling again would not change that.
pub(super) async fn run(
    ctx: &Context,
    engine: &Engine,
    options: RebuildSpec,
    r: &ChronosRestore,
    mut status: ChronosRestoreStatus,
) -> Result<Action> {
    status.phase = Phase::Running;
    status.message = Some("rebuilding the metadata from the buckets".to_owned());
    write(ctx, r, &status).await?;
    let options = RebuildOptions {
        force: options.force,
        accept_unconfirmed: options.accept_unconfirmed,
    };
    match with_progress(ctx, engine, &options, r, &mut status).await {
        Ok(report) => {
            let summary = RebuildSummary::from(&report);
            let message = format!(
                "rebuilt {} collection(s): {} version(s), {} head(s) in {:.1} s ({:.0} versions/s); \
                 {} unconfirmed object(s) left out, {} version(s) lost",
                summary.collections,
                summary.versions,
                summary.heads,
                summary.seconds,
                summary.versions_per_second,
                summary.unconfirmed,
                summary.lost,
            );
            status.progress = Some(Progress {
                done: summary.collections,
                total: summary.collections,
            });
            status.rebuild = Some(summary);
            finish(ctx, r, status, Phase::Succeeded, message).await
        }
        Err(crate::engine::Error::AlreadyExists(why)) => {
            let message = format!(
                "ChronosDatabase {} can't be rebuilt: {why}; set spec.rebuild.force: true in a new \
                 ChronosRestore to load into it anyway",
                r.spec.database
            );
            finish(ctx, r, status, Phase::Failed, message).await
        }
        Err(e) => {
            status.message = Some(format!("interrupted, will resume: {e}"));
            write(ctx, r, &status).await?;
            Err(e.into())
        }
    }
}

/// The rebuild, writing `status.progress` (collections done of all) every [`PROGRESS_EVERY`]
/// while it runs. A progress write that fails is logged: the rebuild goes on.
async fn with_progress(
    ctx: &Context,
    engine: &Engine,
    options: &RebuildOptions,
    r: &ChronosRestore,
    status: &mut ChronosRestoreStatus,
) -> crate::engine::Result<RebuildReport> {
    let latest: Mutex<Option<Progress>> = Mutex::new(None);
    let note = |p: &RebuildProgress| {
        let progress = Progress {
            done: p.done_collections,
            total: p.total_collections,
        };
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress);
    };
    let rebuild = engine.rebuild(options, &note);
    let mut rebuild = std::pin::pin!(rebuild);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            outcome = &mut rebuild => return outcome,
            _ = ticks.tick() => {
                let progress = *latest.lock().unwrap_or_else(|e| e.into_inner());
                if progress.is_some() && progress != status.progress {
                    status.progress = progress;
                    if let Err(error) = write(ctx, r, status).await {
                        tracing::warn!(%error, "could not record the rebuild's progress");
                    }
                }
            }
        }
    }
}
