//! When scheduled work runs (a retention run, a database's verify): the first cron time after
//! the last run (or after the resource's creation, before its first run). A run that outlasts
//! its next slots skips them rather than queueing them.

use std::time::Duration;

use croner::Cron;
use jiff::Timestamp;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule(Cron);

impl Schedule {
    /// `pattern` as a cron schedule; the error names `field`.
    pub fn parse(field: &str, pattern: &str) -> Result<Schedule, String> {
        pattern
            .parse::<Cron>()
            .map(Schedule)
            .map_err(|e| format!("{field}: {pattern:?} is not a cron schedule: {e}"))
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = chrono::DateTime::from_timestamp_millis(after.as_millisecond())?;
        let next = self.0.find_next_occurrence(&start, false).ok()?;
        Timestamp::from_millisecond(next.timestamp_millis()).ok()
    }

    /// Whether a run is due at `now`: the first scheduled time after the last run (or after the
    /// resource's creation, before its first run) has come.
    pub fn is_due(&self, last: Option<Timestamp>, created: Option<Timestamp>, now: Timestamp) -> bool {
        let since = last.or(created).unwrap_or(now);
        self.next_after(since).is_some_and(|due| due <= now)
    }

    /// The next run: the first scheduled time after both `now` and the last run's start.
    pub fn next_run(&self, last: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
        self.next_after(now.max(last.unwrap_or(now)))
    }
}

/// How long from now until `at` (zero when it has passed).
pub fn until(at: Timestamp) -> Duration {
    Duration::from_millis(at.duration_since(Timestamp::now()).as_millis().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_runs_follow_the_pattern() {
        let s = Schedule::parse("spec.schedule", "0 3 * * *").unwrap();
        let t: Timestamp = "2030-01-01T04:00:00Z".parse().unwrap();
        assert_eq!(s.next_after(t).unwrap().to_string(), "2030-01-02T03:00:00Z");
        let every_2s = Schedule::parse("spec.schedule", "*/2 * * * * *").unwrap();
        let t: Timestamp = "2030-01-01T00:00:01Z".parse().unwrap();
        assert_eq!(every_2s.next_after(t).unwrap().to_string(), "2030-01-01T00:00:02Z");
        let err = Schedule::parse("spec.verify.schedule", "not a cron").unwrap_err();
        assert!(err.starts_with("spec.verify.schedule: \"not a cron\""), "{err}");
    }

    #[test]
    fn a_run_is_due_once_its_slot_has_come() {
        let daily = Schedule::parse("spec.schedule", "0 3 * * *").unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let created = Some(t("2030-01-01T04:00:00Z"));
        assert!(!daily.is_due(None, created, t("2030-01-02T02:59:59Z")));
        assert!(daily.is_due(None, created, t("2030-01-02T03:00:00Z")));
        let ran = Some(t("2030-01-02T03:00:00Z"));
        assert!(
            !daily.is_due(ran, created, t("2030-01-02T05:00:00Z")),
            "counted from the last run"
        );
        // A run that started at 03:00 and ended at 05:00 next runs the day after.
        let next = daily.next_run(Some(t("2030-01-02T03:00:00Z")), t("2030-01-02T05:00:00Z"));
        assert_eq!(next.unwrap().to_string(), "2030-01-03T03:00:00Z");
        // A last run recorded in the future (a clock skew) is not run again before it.
        let next = daily.next_run(Some(t("2030-01-05T03:00:00Z")), t("2030-01-02T05:00:00Z"));
        assert_eq!(next.unwrap().to_string(), "2030-01-06T03:00:00Z");
    }
}
