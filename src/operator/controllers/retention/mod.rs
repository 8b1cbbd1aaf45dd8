//! The `ChronosRetention` reconciler: when the schedule says a run is due, run it over the
//! selected collections, record the outcome, and requeue for the next scheduled time.
//!
//! Runs never overlap: a run happens inside the reconcile, the controller never reconciles one
//! object twice at once, and only the replica holding the lease runs controllers. A run that
//! outlasts its next slot skips the slots it missed rather than queueing them.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::engine::PrunePolicy;
use crate::operator::backends;
use crate::operator::conditions::{self, Observed};
use crate::operator::context::{Context, apply_status};
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::ChronosDatabase;
use crate::operator::crd::retention::{ChronosRetention, ChronosRetentionStatus, LastRun, SCHEDULED};
use crate::operator::error::Result;
use crate::operator::events::{self, Notice};
use crate::operator::schedule::{self, Schedule};

#[tracing::instrument(skip_all, fields(name = %r.name_any()))]
pub async fn reconcile(r: Arc<ChronosRetention>, ctx: Arc<Context>) -> Result<Action> {
    tick(&r, &ctx).await
}

async fn tick(r: &ChronosRetention, ctx: &Context) -> Result<Action> {
    // The cache may lag our last status write; whether a run is due must not.
    let api: Api<ChronosRetention> = Api::all(ctx.client.clone());
    let Some(r) = api.get_opt(&r.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let r = &r;
    let mut status = r.status.clone().unwrap_or_default();
    let generation = r.metadata.generation;
    status.observed_generation = generation;
    let mut problems = r.spec.problems();
    let schedule = Schedule::parse("spec.schedule", &r.spec.schedule)
        .map_err(|e| problems.push(e))
        .ok();
    let (Some(schedule), true) = (schedule, problems.is_empty()) else {
        let failed = Observed::failed(SCHEDULED, "InvalidSpec", problems.join("; "));
        let notice = events::transition(&status.conditions, &failed, "Schedule");
        status.conditions = conditions::merge(&status.conditions, &[failed], generation, conditions::now());
        status.next_run = None;
        write(ctx, r, &status).await?;
        if let Some(notice) = notice {
            events::publish(&ctx.recorder, r, notice).await;
        }
        return Ok(Action::await_change());
    };
    if r.spec.suspend {
        let suspended = Observed::failed(SCHEDULED, "Suspended", "spec.suspend is true");
        status.conditions = conditions::merge(&status.conditions, &[suspended], generation, conditions::now());
        status.next_run = None;
        write(ctx, r, &status).await?;
        return Ok(Action::await_change());
    }
    let last = status.last_run.as_ref().map(|l| l.time.0);
    let created = r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut ran = None;
    if schedule.is_due(last, created, jiff::Timestamp::now()) {
        // A run over a database still being set up would fail on its missing buckets and wait
        // for the next scheduled time: it waits for the database instead.
        let pending = databases_being_set_up(r, ctx).await?;
        if !pending.is_empty() {
            let waiting = Observed::failed(
                SCHEDULED,
                "WaitingForDatabase",
                format!("due, waiting for its buckets: {}", pending.join(", ")),
            );
            status.conditions = conditions::merge(&status.conditions, &[waiting], generation, conditions::now());
            write(ctx, r, &status).await?;
            return Ok(Action::requeue(std::time::Duration::from_secs(5)));
        }
        let last = run(r, ctx).await?;
        ran = Some(run_notice(&last));
        status.last_run = Some(last);
    }
    let next = schedule.next_run(status.last_run.as_ref().map(|l| l.time.0), jiff::Timestamp::now());
    status.next_run = next.map(Time);
    let scheduled = match next {
        Some(n) => Observed::ok(SCHEDULED, "Scheduled", format!("next run at {n}")),
        None => Observed::failed(SCHEDULED, "NoNextRun", "the schedule has no future time"),
    };
    status.conditions = conditions::merge(&status.conditions, &[scheduled], generation, conditions::now());
    write(ctx, r, &status).await?;
    if let Some(notice) = ran {
        events::publish(&ctx.recorder, r, notice).await;
    }
    Ok(match next {
        Some(n) => Action::requeue(schedule::until(n)),
        None => Action::await_change(),
    })
}

/// The databases the selector's labels pick in its namespaces, and a failure line for each listed
/// namespace the operator does not watch.
async fn labelled_databases(r: &ChronosRetention, ctx: &Context) -> Result<(Vec<ChronosDatabase>, Vec<String>)> {
    let sel = &r.spec.selector;
    let labels = sel
        .database_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let lp = ListParams::default().labels(&labels);
    // Only the listed namespaces (the spec's problems refuse an empty list): never all.
    let (mut databases, mut unwatched) = (Vec::new(), Vec::new());
    for ns in &sel.namespaces {
        // Outside the watched namespaces the operator has no rights (a Role per namespace).
        if !ctx.watches(ns) {
            unwatched.push(format!(
                "namespace {ns} is not watched by the operator (its --namespace list; chart value watchNamespaces)"
            ));
            continue;
        }
        databases.extend(
            Api::<ChronosDatabase>::namespaced(ctx.client.clone(), ns)
                .list(&lp)
                .await?
                .items,
        );
    }
    Ok((databases, unwatched))
}

/// The selected databases whose buckets the operator has not made yet (a retention applied
/// together with its database is due at once, before the database is set up).
async fn databases_being_set_up(r: &ChronosRetention, ctx: &Context) -> Result<Vec<String>> {
    let (databases, _) = labelled_databases(r, ctx).await?;
    Ok(databases
        .iter()
        .filter(|db| {
            let conditions = db.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            !conditions::is_true(conditions, crate::operator::crd::database::BUCKETS_READY)
        })
        .map(|db| format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any()))
        .collect())
}

/// One run over every selected collection. A collection that fails is listed and the others
/// still run.
async fn run(r: &ChronosRetention, ctx: &Context) -> Result<LastRun> {
    let started = Instant::now();
    let mut last = LastRun {
        time: conditions::now(),
        outcome: String::new(),
        dry_run: r.spec.dry_run,
        collections: 0,
        processed: 0,
        versions_pruned: 0,
        failures: Vec::new(),
        duration_seconds: 0.0,
    };
    let sel = &r.spec.selector;
    let (databases, unwatched) = labelled_databases(r, ctx).await?;
    last.failures.extend(unwatched);
    for db in &databases {
        let ns = db.namespace().unwrap_or_default();
        let collections = Api::<ChronosCollection>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items;
        let settings = backends::settings_of(db, &collections);
        let selected: Vec<&ChronosCollection> = collections
            .iter()
            .filter(|c| c.spec.database == db.name_any())
            .filter(|c| sel.collections.is_empty() || sel.collections.contains(&c.spec.name))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let engine = match backends::engine(ctx, db, settings).await {
            Ok(e) => e,
            Err(e) => {
                last.failures.push(format!("{ns}/{}: {e}", db.name_any()));
                continue;
            }
        };
        for c in selected {
            let rules = r.spec.rules.overridden_by(c.spec.retention.as_ref());
            let where_ = format!("{ns}/{}/{}", db.name_any(), c.spec.name);
            let outcome = async {
                let name = c.spec.name.parse()?;
                let mut processed = 0;
                let mut pruned = 0;
                if let Some(ttl) = rules.ttl_hours {
                    processed = engine
                        .mark_processed_by_ttl(&name, ttl, r.spec.dry_run, |_| {})
                        .await?
                        .processed;
                }
                if rules.keep_versions.is_some() || rules.max_version_age_days.is_some() {
                    let policy = PrunePolicy {
                        keep_last: rules.keep_versions,
                        max_age_days: rules.max_version_age_days,
                        delete_payloads: false,
                    };
                    pruned = engine
                        .prune_versions(&name, &policy, r.spec.dry_run)
                        .await?
                        .versions_pruned;
                }
                Ok::<_, crate::engine::Error>((processed, pruned))
            };
            match outcome.await {
                Ok((processed, pruned)) => {
                    last.collections += 1;
                    last.processed += processed;
                    last.versions_pruned += pruned;
                }
                Err(e) => last.failures.push(format!("{where_}: {e}")),
            }
        }
    }
    last.outcome = if last.failures.is_empty() {
        "Succeeded"
    } else {
        "Failed"
    }
    .to_owned();
    last.duration_seconds = started.elapsed().as_secs_f64();
    tracing::info!(retention = %r.name_any(), outcome = %last.outcome, collections = last.collections,
        processed = last.processed, pruned = last.versions_pruned, "retention run");
    Ok(last)
}

/// The Event of a finished run: its counts, and what failed.
fn run_notice(last: &LastRun) -> Notice {
    let dry = if last.dry_run { " (dry run)" } else { "" };
    let counts = format!(
        "{} collection(s), {} item(s) processed, {} version(s) pruned in {:.1} s{dry}",
        last.collections, last.processed, last.versions_pruned, last.duration_seconds
    );
    if last.failures.is_empty() {
        Notice::normal("RunSucceeded", counts, "Retention")
    } else {
        let failures = last.failures.join("; ");
        Notice::warning("RunFailed", format!("{counts}; failed: {failures}"), "Retention")
    }
}

async fn write(ctx: &Context, r: &ChronosRetention, status: &ChronosRetentionStatus) -> Result<()> {
    apply_status(&Api::<ChronosRetention>::all(ctx.client.clone()), &r.name_any(), status).await
}
