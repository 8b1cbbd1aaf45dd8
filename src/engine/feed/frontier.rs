//! The frontier rule: how far a change feed may deliver without ever skipping a version.
//!
//! cvs have gaps (a write that took its cv and failed) and a version with a smaller cv can become
//! visible after one with a larger cv. So a feed delivers the visible versions above its frontier
//! in cv order only as long as there is no gap; at a gap it waits until the gap is *settled*: no
//! write can commit into it any more. Two facts settle a gap `g` below a visible version `c`:
//!
//! - **Seen**: every commit is fenced to its write id's time + the commit window, and `g`'s write
//!   id was taken before `c`'s cv, so `g` commits before `commit window` after any moment `c` was
//!   already visible. A reader that saw `c` at `t` knows `g` is settled at `t + grace` (window +
//!   the quarter of slack for the commit command itself).
//! - **Written**: a version's `at` is never before its write id, and it committed within the
//!   window, so `g` (allocated before `c`) commits before `c.at + 2 × window`. With slack for
//!   clocks that differ between hosts, a gap below a version written more than [`WRITTEN_FACTOR`]
//!   graces ago is settled at once: old gaps (after a restart, or an old resume point) cost nothing.
//!
//! Everything here is pure (times are passed in), so the rule is tested without clocks or stores.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::engine::error::{Error, Result};
use crate::engine::model::Timestamp;

/// A gap below a version whose `at` is older than this many orphan graces is settled.
pub const WRITTEN_FACTOR: u32 = 3;

/// When a collection's versions were first seen by this process: per read, the highest cv it
/// returned and when. A version visible at `t` proves every smaller cv was taken before `t`, so
/// the first read that returned a cv above a gap bounds the gap. Entries only grow in both cv and
/// time (a later read that tops out lower adds nothing), so the map stays small.
#[derive(Debug, Default, Clone)]
pub struct Sightings {
    /// The top cv of a read → when that read finished.
    tops: BTreeMap<u64, Instant>,
}

impl Sightings {
    /// Record that a read finishing at `now` returned versions up to `top`.
    pub fn saw(&mut self, top: u64, now: Instant) {
        if self.tops.last_key_value().is_none_or(|(&highest, _)| top > highest) {
            self.tops.insert(top, now);
        }
    }

    /// When a version above `gap` was first seen: the earliest sighting of a larger cv.
    pub fn first_above(&self, gap: u64) -> Option<Instant> {
        self.tops.range(gap + 1..).next().map(|(_, &t)| t)
    }

    /// Forget what no longer matters: of the sightings older than `grace`, only the highest is
    /// kept (every gap below it is settled; the smaller ones say nothing more).
    pub fn forget_settled(&mut self, now: Instant, grace: Duration) {
        let settled: Vec<u64> = self
            .tops
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= grace)
            .map(|(&cv, _)| cv)
            .collect();
        if let Some((_, older)) = settled.split_last() {
            for cv in older {
                self.tops.remove(cv);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.tops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tops.is_empty()
    }
}

/// What the rule needs to know of a visible version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub cv: u64,
    pub at: Timestamp,
}

/// How far a read may be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// How many of the visible versions (a prefix) may be delivered now; any at or below the
    /// old frontier among them (a read that overlapped it) are not new.
    pub count: usize,
    /// The new frontier: everything up to it is delivered or settled.
    pub frontier: u64,
    /// When the first unsettled gap settles at the latest, if one holds versions back.
    pub wait: Option<Duration>,
}

/// Apply the rule to `visible` (versions above `frontier`, in cv order) at `now` (monotonic, for
/// sightings) and `wall` (for versions' `at`), for the orphan grace `grace`.
pub fn settle(
    frontier: u64,
    visible: &[Visible],
    sightings: &Sightings,
    now: Instant,
    wall: Timestamp,
    grace: Duration,
) -> Settled {
    let mut at = frontier;
    for (i, v) in visible.iter().enumerate() {
        if v.cv <= at {
            // Not above the frontier (a caller's overlap): nothing to deliver, nothing to wait for.
            continue;
        }
        if v.cv == at + 1 {
            at = v.cv;
            continue;
        }
        // A gap (at + 1 ..= v.cv - 1): settled by the seen or the written bound, whichever is first.
        let seen_wait = sightings
            .first_above(at + 1)
            .map_or(grace, |t| grace.saturating_sub(now.saturating_duration_since(t)));
        let oldest_above = visible[i..].iter().map(|v| v.at).min().unwrap_or(v.at);
        let written_wait = written_wait(oldest_above, wall, grace);
        let wait = seen_wait.min(written_wait);
        if wait.is_zero() {
            at = v.cv;
            continue;
        }
        return Settled {
            count: i,
            frontier: at,
            wait: Some(wait),
        };
    }
    Settled {
        count: visible.len(),
        frontier: at,
        wait: None,
    }
}

/// cvs are stored as 64-bit signed integers: a larger resume point is no cv at all.
pub fn check_cursor(after: u64) -> Result<()> {
    if i64::try_from(after).is_err() {
        return Err(Error::validation(
            "after",
            format!("must be a cv, at most {}", i64::MAX),
        ));
    }
    Ok(())
}

/// How long until a gap below a version written at `at` is settled by the written bound.
fn written_wait(at: Timestamp, wall: Timestamp, grace: Duration) -> Duration {
    let bound = grace.saturating_mul(WRITTEN_FACTOR);
    let age = wall.duration_since(at);
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
    bound.saturating_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn wall() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// Versions written just now (the written bound does not help).
    fn fresh(cvs: &[u64]) -> Vec<Visible> {
        cvs.iter().map(|&cv| Visible { cv, at: wall() }).collect()
    }

    #[test]
    fn without_gaps_everything_goes_at_once() {
        let s = Sightings::default();
        let got = settle(3, &fresh(&[4, 5, 6]), &s, Instant::now(), wall(), GRACE);
        assert_eq!(
            got,
            Settled {
                count: 3,
                frontier: 6,
                wait: None
            }
        );
        let none = settle(3, &[], &s, Instant::now(), wall(), GRACE);
        assert_eq!((none.count, none.frontier, none.wait), (0, 3, None));
    }

    #[test]
    fn a_fresh_gap_holds_the_versions_above_it_for_the_grace() {
        let t0 = Instant::now();
        let mut s = Sightings::default();
        s.saw(7, t0);
        let visible = fresh(&[4, 5, 7]);
        let got = settle(3, &visible, &s, t0, wall(), GRACE);
        assert_eq!(
            got,
            Settled {
                count: 2,
                frontier: 5,
                wait: Some(GRACE)
            },
            "4 and 5 go, 7 waits for 6"
        );
        let later = settle(5, &visible[2..], &s, t0 + GRACE / 2, wall(), GRACE);
        assert_eq!((later.count, later.frontier, later.wait), (0, 5, Some(GRACE / 2)));
        let settled = settle(5, &visible[2..], &s, t0 + GRACE, wall(), GRACE);
        assert_eq!(
            (settled.count, settled.frontier, settled.wait),
            (1, 7, None),
            "6 never came"
        );
    }

    #[test]
    fn a_late_lower_cv_is_delivered_not_skipped() {
        let t0 = Instant::now();
        let mut s = Sightings::default();
        s.saw(7, t0);
        let first = settle(5, &fresh(&[7]), &s, t0, wall(), GRACE);
        assert_eq!(first.frontier, 5, "7 waits");
        // 6 commits late, a little later: the next read sees both, in order.
        s.saw(7, t0 + Duration::from_secs(1));
        let second = settle(5, &fresh(&[6, 7]), &s, t0 + Duration::from_secs(1), wall(), GRACE);
        assert_eq!((second.count, second.frontier, second.wait), (2, 7, None));
    }

    #[test]
    fn the_earliest_sighting_above_a_gap_bounds_it() {
        let t0 = Instant::now();
        let mut s = Sightings::default();
        s.saw(9, t0);
        s.saw(8, t0 + Duration::from_secs(10)); // lower top, later: adds nothing
        s.saw(12, t0 + Duration::from_secs(20));
        assert_eq!(s.len(), 2);
        assert_eq!(s.first_above(5), Some(t0));
        assert_eq!(s.first_above(9), Some(t0 + Duration::from_secs(20)));
        assert_eq!(s.first_above(12), None);
        // A gap at 6 below 7 and 9: 9 was seen at t0, so it settles at t0 + grace even though 7
        // (the version right above it) was first read later.
        // …and the gap at 8 is bounded by the same sighting of 9.
        let got = settle(5, &fresh(&[7, 9]), &s, t0 + GRACE, wall(), GRACE);
        assert_eq!((got.count, got.frontier, got.wait), (2, 9, None));
        let early = settle(5, &fresh(&[7, 9]), &s, t0 + GRACE / 2, wall(), GRACE);
        assert_eq!((early.count, early.frontier, early.wait), (0, 5, Some(GRACE / 2)));
    }

    #[test]
    fn an_unseen_gap_waits_a_whole_grace() {
        let got = settle(1, &fresh(&[3]), &Sightings::default(), Instant::now(), wall(), GRACE);
        assert_eq!((got.count, got.frontier, got.wait), (0, 1, Some(GRACE)));
    }

    #[test]
    fn gaps_below_old_versions_are_settled_at_once() {
        let old = wall() - jiff::SignedDuration::from_secs(3 * 60 + 1);
        let visible = [Visible { cv: 10, at: old }, Visible { cv: 12, at: old }];
        let got = settle(2, &visible, &Sightings::default(), Instant::now(), wall(), GRACE);
        assert_eq!((got.count, got.frontier, got.wait), (2, 12, None));
        // Written 2 graces ago: a grace to go by that bound (the seen bound says a whole one).
        let recent = wall() - jiff::SignedDuration::from_secs(2 * 60);
        let got = settle(
            2,
            &[Visible { cv: 4, at: recent }],
            &Sightings::default(),
            Instant::now(),
            wall(),
            GRACE,
        );
        assert_eq!(got.wait, Some(GRACE));
        // A version stamped in the future (another host's clock ahead) waits the full bound.
        let ahead = wall() + jiff::SignedDuration::from_secs(30);
        let got = settle(
            2,
            &[Visible { cv: 4, at: ahead }],
            &Sightings::default(),
            Instant::now(),
            wall(),
            GRACE,
        );
        assert_eq!(got.wait, Some(GRACE));
    }

    #[test]
    fn overlapping_reads_deliver_nothing_twice() {
        let got = settle(
            5,
            &fresh(&[4, 5, 6]),
            &Sightings::default(),
            Instant::now(),
            wall(),
            GRACE,
        );
        assert_eq!((got.count, got.frontier), (3, 6));
    }

    #[test]
    fn settled_sightings_are_forgotten_but_the_highest() {
        let t0 = Instant::now();
        let mut s = Sightings::default();
        for (i, cv) in [3u64, 5, 8].into_iter().enumerate() {
            s.saw(cv, t0 + Duration::from_secs(i as u64 * 40));
        }
        s.forget_settled(t0 + Duration::from_secs(100), GRACE);
        assert_eq!(s.len(), 2, "3 is older than 5 and settled: only 5 and 8 matter");
        assert_eq!(s.first_above(1), Some(t0 + Duration::from_secs(40)));
        assert!(!s.is_empty());
    }
}
