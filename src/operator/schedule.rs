//! When a retention runs: the first cron time after the last run (or after creation).

use croner::Cron;
use jiff::Timestamp;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule(Cron);

impl Schedule {
    pub fn parse(pattern: &str) -> Result<Schedule, String> {
        pattern
            .parse::<Cron>()
            .map(Schedule)
            .map_err(|e| format!("spec.schedule: {pattern:?} is not a cron schedule: {e}"))
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = chrono::DateTime::from_timestamp_millis(after.as_millisecond())?;
        let next = self.0.find_next_occurrence(&start, false).ok()?;
        Timestamp::from_millisecond(next.timestamp_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_runs_follow_the_pattern() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let t: Timestamp = "2030-01-01T04:00:00Z".parse().unwrap();
        assert_eq!(s.next_after(t).unwrap().to_string(), "2030-01-02T03:00:00Z");
        let every_2s = Schedule::parse("*/2 * * * * *").unwrap();
        let t: Timestamp = "2030-01-01T00:00:01Z".parse().unwrap();
        assert_eq!(every_2s.next_after(t).unwrap().to_string(), "2030-01-01T00:00:02Z");
        assert!(Schedule::parse("not a cron").unwrap_err().starts_with("spec.schedule"));
    }
}
