//! What a change-feed follower knows, without a client: the progress it reports in
//! `status.changes`, when it may write that status next (a burst of writes must not become a
//! burst of status patches), and the status it applies.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use crate::engine::VersionEntry;
use crate::operator::conditions::{self, Observed};
use crate::operator::crd::collection::{CHANGES_FOLLOWED, ChronosCollection, CollectionChanges};

/// The shortest time between two status writes of one follower.
pub const STATUS_EVERY: Duration = Duration::from_secs(3);

/// `status.changes` as the follower keeps it; `dirty` until written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub changes: CollectionChanges,
    pub dirty: bool,
}

impl Progress {
    /// The progress a (re)started follower of `collection` in `database` resumes from: what the
    /// status says, unless it is about another collection (the spec changed): then from the start.
    pub fn resumed(status: Option<&CollectionChanges>, database: &str, collection: &str) -> Progress {
        match status.filter(|s| s.database == database && s.collection == collection) {
            Some(changes) => Progress {
                changes: changes.clone(),
                dirty: false,
            },
            None => Progress {
                changes: CollectionChanges {
                    database: database.to_owned(),
                    collection: collection.to_owned(),
                    ..Default::default()
                },
                // Another collection's figures are replaced at the first write.
                dirty: status.is_some(),
            },
        }
    }

    /// Take versions the feed delivered (in cv order): the latest one is what the status shows.
    pub fn saw(&mut self, versions: &[VersionEntry]) {
        let Some(last) = versions.last() else { return };
        let changes = &mut self.changes;
        changes.versions_seen += versions.len() as u64;
        changes.last_cv = changes.last_cv.max(last.cv);
        changes.last_change_at = Some(Time(last.at));
        changes.last_item = Some(last.id.as_str().to_owned());
        changes.last_op = Some(last.op.as_str().to_owned());
        self.dirty = true;
    }

    /// Move past history retention pruned before the follower saw it: the feed is complete only
    /// after `pruned_through`. Returns the condition that says so (never a silent gap).
    pub fn skip_pruned(&mut self, pruned_through: u64, oldest_cv: Option<u64>) -> Observed {
        let from = self.changes.last_cv;
        self.changes.last_cv = from.max(pruned_through);
        self.dirty = true;
        let oldest = oldest_cv.map_or_else(|| "none".to_owned(), |cv| cv.to_string());
        Observed::ok(
            CHANGES_FOLLOWED,
            "SkippedPrunedHistory",
            format!(
                "retention pruned versions after cv {from} before the operator saw them: following from cv \
                 {pruned_through} on (oldest cv still kept: {oldest}); the versions in between are not counted"
            ),
        )
    }

    /// The condition of a follower that follows the feed normally.
    pub fn following(&self) -> Observed {
        Observed::ok(
            CHANGES_FOLLOWED,
            "Following",
            format!("following the change feed after cv {}", self.changes.last_cv),
        )
    }
}

/// The condition of a follower that can't read the feed (the backends failed).
pub fn unavailable(error: &impl std::fmt::Display) -> Observed {
    Observed::failed(
        CHANGES_FOLLOWED,
        "FeedUnavailable",
        format!("can't follow the change feed: {error}"),
    )
}

/// When the follower may write its status: at once after a quiet spell (so a single change shows
/// quickly), then at most every [`STATUS_EVERY`].
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// When the next write may happen (`now` or later).
    pub fn next_at(&self, now: Instant) -> Instant {
        self.last.map_or(now, |last| (last + STATUS_EVERY).max(now))
    }

    pub fn wrote(&mut self, at: Instant) {
        self.last = Some(at);
    }
}

/// The condition list the follower applies: its own condition only (the reconcile owns the
/// others), with `lastTransitionTime` kept while its status does not change.
pub fn own_conditions(
    existing: &[Condition],
    observed: &Observed,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let own: Vec<Condition> = existing
        .iter()
        .filter(|c| c.type_ == CHANGES_FOLLOWED)
        .cloned()
        .collect();
    conditions::merge(&own, std::slice::from_ref(observed), generation, now)
}

/// The body the follower applies to the status subresource: `changes` and its condition, and
/// nothing else — under server-side apply, what a field manager leaves out of its apply is
/// removed if it owned it, so it sends exactly the fields it owns, every time.
pub fn status_body(changes: &CollectionChanges, conditions: &[Condition]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": ChronosCollection::api_version(&()),
        "kind": ChronosCollection::kind(&()),
        "status": {"changes": changes, "conditions": conditions},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Op;

    /// A version of item `id` at `cv` (built from a tombstone, so fields the engine adds later
    /// don't need listing here).
    fn version(cv: u64, id: &str, op: Op) -> VersionEntry {
        let at = crate::engine::model::now();
        VersionEntry {
            op,
            deleted: false,
            ..VersionEntry::tombstone_at(&id.parse().unwrap(), 0, cv, at)
        }
    }

    #[test]
    fn progress_counts_every_version_and_shows_the_latest() {
        let resumed = CollectionChanges {
            database: "db".into(),
            collection: "notes".into(),
            last_cv: 7,
            versions_seen: 3,
            ..Default::default()
        };
        let elsewhere = Progress::resumed(Some(&resumed), "db", "other");
        assert_eq!(
            (
                elsewhere.changes.last_cv,
                elsewhere.changes.collection.as_str(),
                elsewhere.dirty
            ),
            (0, "other", true),
            "another collection's cv is not resumed after"
        );
        let mut p = Progress::resumed(Some(&resumed), "db", "notes");
        assert!(!p.dirty, "nothing new to write after a resume");
        p.saw(&[]);
        assert!(!p.dirty);
        p.saw(&[version(8, "a", Op::Create), version(10, "b", Op::Delete)]);
        assert_eq!(
            (
                p.changes.last_cv,
                p.changes.versions_seen,
                p.changes.last_item.as_deref(),
                p.changes.last_op.as_deref()
            ),
            (10, 5, Some("b"), Some("DELETE"))
        );
        assert!(p.dirty && p.changes.last_change_at.is_some());
    }

    #[test]
    fn a_prune_jump_moves_forward_only_and_says_so() {
        let mut p = Progress::resumed(None, "db", "notes");
        let said = p.skip_pruned(40, Some(12));
        assert_eq!(p.changes.last_cv, 40);
        assert_eq!((said.reason.as_str(), said.status), ("SkippedPrunedHistory", true));
        assert!(said.message.contains("after cv 0") && said.message.contains("oldest cv still kept: 12"));
        let mut ahead = Progress::resumed(
            Some(&CollectionChanges {
                last_cv: 50,
                ..Progress::resumed(None, "db", "notes").changes
            }),
            "db",
            "notes",
        );
        ahead.skip_pruned(40, None);
        assert_eq!(ahead.changes.last_cv, 50, "never backwards");
    }

    #[test]
    fn the_throttle_writes_at_once_after_a_quiet_spell_then_at_most_every_interval() {
        let t0 = Instant::now();
        let mut throttle = Throttle::default();
        assert_eq!(throttle.next_at(t0), t0, "first write at once");
        throttle.wrote(t0);
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(throttle.next_at(soon), t0 + STATUS_EVERY);
        let later = t0 + STATUS_EVERY * 2;
        assert_eq!(throttle.next_at(later), later, "quiet long enough");
    }

    #[test]
    fn the_follower_applies_its_own_fields_only() {
        let t = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let existing = vec![
            conditions::merge(&[], &[Observed::ok("IndexesReady", "Created", "")], None, t(1))[0].clone(),
            conditions::merge(&[], &[Observed::ok(CHANGES_FOLLOWED, "Following", "a")], None, t(2))[0].clone(),
        ];
        let p = Progress::resumed(None, "db", "notes");
        let own = own_conditions(&existing, &p.following(), Some(3), t(9));
        assert_eq!(own.len(), 1, "never the reconcile's IndexesReady");
        assert_eq!(
            own[0].last_transition_time,
            t(2),
            "status unchanged: transition time kept"
        );
        let body = status_body(&p.changes, &own);
        let status = body["status"].as_object().unwrap();
        assert_eq!(status.keys().collect::<Vec<_>>(), ["changes", "conditions"]);
        assert_eq!(body["kind"], "ChronosCollection");
    }
}
