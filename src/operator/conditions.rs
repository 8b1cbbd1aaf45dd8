//! Status conditions, keyed by type. A condition's `lastTransitionTime` moves only when its
//! status changes, so "Ready since" means what it says.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator};

/// A condition as a reconciler computes it; [`merge`] adds the times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn ok(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Observed {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Observed {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The new condition list: `observed` replaces the conditions of its types; others are kept.
/// `lastTransitionTime` is kept from `existing` unless the status changed.
pub fn merge(existing: &[Condition], observed: &[Observed], generation: Option<i64>, now: Time) -> Vec<Condition> {
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| !observed.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    for o in observed {
        let status = if o.status { "True" } else { "False" };
        let since = existing
            .iter()
            .find(|c| c.type_ == o.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        out.push(Condition {
            type_: o.type_.to_owned(),
            status: status.to_owned(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether the list has `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// The status of `type_`, if present: "True", "False" or "Unknown".
pub fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

/// The schema of a condition list: a map-list keyed by `type`, so server-side apply merges
/// conditions by type instead of replacing the whole list.
pub fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// `now` as an API time.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[Observed::failed("Ready", "Waiting", "engine starting")],
            Some(1),
            at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));
        assert_eq!(first[0].status, "False");

        // Same status, new message and generation: time kept, the rest updated.
        let second = merge(
            &first,
            &[Observed::failed("Ready", "Waiting", "still")],
            Some(2),
            at(20),
        );
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].message, "still");
        assert_eq!(second[0].observed_generation, Some(2));

        // Status flips: time moves.
        let third = merge(&second, &[Observed::ok("Ready", "Ready", "")], Some(2), at(30));
        assert_eq!(third[0].last_transition_time, at(30));
        assert_eq!(third[0].status, "True");
    }

    #[test]
    fn other_types_are_kept_and_the_list_is_sorted() {
        let a = merge(
            &[],
            &[Observed::ok("Ready", "R", ""), Observed::ok("BucketsReady", "B", "")],
            None,
            at(1),
        );
        let b = merge(&a, &[Observed::failed("EngineReady", "E", "")], None, at(2));
        let types: Vec<&str> = b.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["BucketsReady", "EngineReady", "Ready"]);
        assert!(is_true(&b, "Ready") && !is_true(&b, "EngineReady"));
        assert_eq!(status_of(&b, "EngineReady"), Some("False"));
        assert_eq!(status_of(&b, "Nope"), None);
    }
}
