//! The database's periodic verify (`spec.verify`): `Engine::verify` on a cron schedule, its
//! outcome recorded as `status.lastVerify`, the `HistoryVerified` condition and the
//! `chronos_history_findings` gauge.
//!
//! It runs inside the database's reconcile, after the engine's objects are applied and the
//! status written, so a slow verify delays only itself; the reconcile then requeues at the next
//! due time. When a run is due comes from [`Schedule`] (as for retention), counted from the
//! last run recorded in the status — read fresh, since the cache may lag the write that
//! recorded it and a lagging copy would run the verify twice.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Api, ResourceExt};

use crate::engine::rebuild::verify::VerifyReport;
use crate::operator::backends;
use crate::operator::conditions::{self, Observed};
use crate::operator::context::Context;
use crate::operator::crd::database::{ChronosDatabase, HISTORY_VERIFIED, LastVerify};
use crate::operator::error::Result;
use crate::operator::schedule::Schedule;

/// At most this many findings are listed in the status (all are counted).
const LISTED: usize = 20;

/// Where the database's verify stands as this reconcile begins.
pub(super) struct Plan {
    /// The last run recorded (fresh), carried into every status write.
    pub(super) last: Option<LastVerify>,
    /// `HistoryVerified` as recorded (fresh), kept unless this reconcile changes it.
    pub(super) recorded: Option<Condition>,
    schedule: Scheduled,
}

enum Scheduled {
    /// No `spec.verify`: never (and nothing of a former schedule is kept).
    Never,
    Suspended,
    Invalid(String),
    On(Box<Schedule>, Duration),
}

impl Plan {
    /// Read the freshest status and parse the schedule.
    pub(super) async fn read(db: &ChronosDatabase, ctx: &Context) -> Result<Plan> {
        let Some(spec) = &db.spec.verify else {
            return Ok(Plan {
                last: None,
                recorded: None,
                schedule: Scheduled::Never,
            });
        };
        let api: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
        let fresh = api.get_opt(&db.name_any()).await?.and_then(|d| d.status);
        let status = fresh.as_ref().or(db.status.as_ref());
        let schedule = match Schedule::parse("spec.verify.schedule", &spec.schedule) {
            Err(problem) => Scheduled::Invalid(problem),
            Ok(_) if spec.suspend => Scheduled::Suspended,
            Ok(s) => Scheduled::On(
                Box::new(s),
                spec.grace_secs
                    .map_or(crate::engine::settings::ORPHAN_GRACE, Duration::from_secs),
            ),
        };
        Ok(Plan {
            last: status.and_then(|s| s.last_verify.clone()),
            recorded: status.and_then(|s| s.conditions.iter().find(|c| c.type_ == HISTORY_VERIFIED).cloned()),
            schedule,
        })
    }

    /// What this reconcile says about `HistoryVerified` before any run: only an invalid
    /// schedule changes it.
    pub(super) fn observed(&self) -> Option<Observed> {
        match &self.schedule {
            Scheduled::Invalid(problem) => Some(Observed::failed(HISTORY_VERIFIED, "InvalidSchedule", problem)),
            _ => None,
        }
    }

    /// The grace of a run due now, or `None` when no run is due.
    pub(super) fn due(&self, db: &ChronosDatabase) -> Option<Duration> {
        let Scheduled::On(schedule, grace) = &self.schedule else {
            return None;
        };
        let last = self.last.as_ref().map(|l| l.time.0);
        let created = db.metadata.creation_timestamp.as_ref().map(|t| t.0);
        schedule.is_due(last, created, jiff::Timestamp::now()).then_some(*grace)
    }

    /// When the next run is due after `last`.
    pub(super) fn next(&self, last: Option<&LastVerify>) -> Option<Time> {
        let Scheduled::On(schedule, _) = &self.schedule else {
            return None;
        };
        schedule
            .next_run(last.map(|l| l.time.0), jiff::Timestamp::now())
            .map(Time)
    }
}

/// One verify of the database: its record and the condition it sets. A failure to run is an
/// outcome too (`VerifyFailed`), not an error of the reconcile.
pub(super) async fn run(db: &ChronosDatabase, ctx: &Context, grace: Duration) -> (LastVerify, Observed) {
    let time = conditions::now();
    let started = std::time::Instant::now();
    let report = async {
        let engine = backends::engine(ctx, db, backends::settings(ctx, db).await?).await?;
        Ok::<_, crate::operator::Error>(engine.verify(grace).await?)
    }
    .await;
    let (last, observed) = match report {
        Ok(report) => {
            let last = recorded(time, &report, started.elapsed().as_secs_f64());
            let observed = condition(&last);
            (last, observed)
        }
        Err(e) => {
            let last = LastVerify {
                time,
                versions: 0,
                objects: 0,
                segments: 0,
                missing: 0,
                altered: 0,
                orphaned: 0,
                dangling: 0,
                unconfirmed: 0,
                duration_seconds: started.elapsed().as_secs_f64(),
                findings: Vec::new(),
                error: Some(e.to_string()),
            };
            (
                last,
                Observed::failed(HISTORY_VERIFIED, "VerifyFailed", format!("verify failed: {e}")),
            )
        }
    };
    gauge(db, &last);
    tracing::info!(database = %db.name_any(), reason = %observed.reason, versions = last.versions,
        seconds = last.duration_seconds, "verified the history");
    (last, observed)
}

/// The report as the status records it: counts, and the first findings (what is wrong first,
/// then the unconfirmed entries).
fn recorded(time: Time, r: &VerifyReport, duration_seconds: f64) -> LastVerify {
    let findings = r
        .by_kind()
        .into_iter()
        .flat_map(|(kind, list)| list.iter().map(move |f| format!("{kind}: {} ({})", f.key, f.detail)))
        .take(LISTED)
        .collect();
    LastVerify {
        time,
        versions: r.versions,
        objects: r.objects,
        segments: r.segments,
        missing: r.missing.len() as u64,
        altered: r.altered.len() as u64,
        orphaned: r.orphaned.len() as u64,
        dangling: r.dangling.len() as u64,
        unconfirmed: r.unconfirmed.len() as u64,
        duration_seconds,
        findings,
        error: None,
    }
}

/// `HistoryVerified` for a run that completed.
fn condition(last: &LastVerify) -> Observed {
    let wrong = last.missing + last.altered + last.orphaned + last.dangling;
    if wrong == 0 {
        let message = format!(
            "{} version(s), {} object(s) and {} ledger segment(s) match",
            last.versions, last.objects, last.segments
        );
        return Observed::ok(HISTORY_VERIFIED, "Intact", message);
    }
    let first = last.findings.first().map(String::as_str).unwrap_or_default();
    let message = format!(
        "{wrong} finding(s): {} missing, {} altered, {} orphaned, {} dangling; first: {first}",
        last.missing, last.altered, last.orphaned, last.dangling
    );
    Observed::failed(HISTORY_VERIFIED, "FindingsReported", message)
}

/// `chronos_history_findings{namespace, database, kind}`: the counts of the last run.
fn gauge(db: &ChronosDatabase, last: &LastVerify) {
    let ns = db.namespace().unwrap_or_default();
    let counts = [
        ("missing", last.missing),
        ("altered", last.altered),
        ("orphaned", last.orphaned),
        ("dangling", last.dangling),
        ("unconfirmed", last.unconfirmed),
    ];
    for (kind, count) in counts {
        metrics::gauge!("chronos_history_findings", "namespace" => ns.clone(), "database" => db.name_any(), "kind" => kind)
            .set(count as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rebuild::verify::Finding;

    fn finding(key: &str) -> Finding {
        Finding {
            collection: "notes".into(),
            key: key.into(),
            detail: "why".into(),
        }
    }

    #[test]
    fn findings_are_counted_listed_wrong_first_and_named_in_the_condition() {
        let time = Time(jiff::Timestamp::UNIX_EPOCH);
        let intact = VerifyReport {
            versions: 3,
            unconfirmed: vec![finding("u")],
            ..Default::default()
        };
        let last = recorded(time.clone(), &intact, 0.1);
        assert_eq!(last.unconfirmed, 1);
        let c = condition(&last);
        assert!(
            c.status && c.reason == "Intact",
            "unconfirmed alone is not wrong: {c:?}"
        );

        let report = VerifyReport {
            altered: vec![finding("a1"), finding("a2")],
            orphaned: (0..30).map(|i| finding(&format!("o{i}"))).collect(),
            unconfirmed: vec![finding("u")],
            ..Default::default()
        };
        let last = recorded(time, &report, 0.1);
        assert_eq!((last.altered, last.orphaned, last.missing), (2, 30, 0));
        assert_eq!(last.findings.len(), LISTED);
        assert_eq!(last.findings[0], "altered: a1 (why)");
        assert_eq!(last.findings[2], "orphaned: o0 (why)");
        let c = condition(&last);
        assert_eq!((c.status, c.reason.as_str()), (false, "FindingsReported"));
        assert!(
            c.message
                .starts_with("32 finding(s): 0 missing, 2 altered, 30 orphaned"),
            "{}",
            c.message
        );
        assert!(c.message.ends_with("first: altered: a1 (why)"), "{}", c.message);
    }

    #[test]
    fn the_gauge_has_one_series_per_kind_of_finding() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let report = VerifyReport {
            altered: vec![finding("a1"), finding("a2")],
            ..Default::default()
        };
        let last = recorded(Time(jiff::Timestamp::UNIX_EPOCH), &report, 0.1);
        metrics::with_local_recorder(&recorder, || gauge(&ChronosDatabase::test("orders"), &last));
        let text = handle.render();
        let series = |kind: &str, n: u64| {
            format!("chronos_history_findings{{namespace=\"shop\",database=\"orders\",kind=\"{kind}\"}} {n}")
        };
        assert!(text.contains(&series("altered", 2)), "{text}");
        assert!(text.contains(&series("missing", 0)), "{text}");
        assert!(text.contains(&series("unconfirmed", 0)), "{text}");
    }
}
