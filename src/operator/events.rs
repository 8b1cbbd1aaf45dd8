//! Kubernetes Events for what a user wants to see in `kubectl describe` / `kubectl events`:
//! readiness that changed, a spec that can't work, a restore or a retention run that started or
//! ended. Published through kube-runtime's [`Recorder`] (events.k8s.io/v1; a repeat within a few
//! minutes becomes a series on one Event rather than a new object).
//!
//! Events are best effort: failing to publish one is logged and never fails a reconcile, whose
//! status conditions remain the record of truth.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

use super::conditions::Observed;

/// One event to publish about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    /// PascalCase, why it happened (for a condition: its reason).
    pub reason: String,
    pub note: String,
    /// PascalCase, what the operator was doing.
    pub action: &'static str,
}

impl Notice {
    pub fn normal(reason: impl Into<String>, note: impl Into<String>, action: &'static str) -> Notice {
        Notice {
            type_: EventType::Normal,
            reason: reason.into(),
            note: note.into(),
            action,
        }
    }

    /// How a one-shot job (a restore, an erasure) ended: `<Action>Succeeded` or `<Action>Failed`.
    pub fn ended(succeeded: bool, note: String, action: &'static str) -> Notice {
        if succeeded {
            Notice::normal(format!("{action}Succeeded"), note, action)
        } else {
            Notice::warning(format!("{action}Failed"), note, action)
        }
    }

    pub fn warning(reason: impl Into<String>, note: impl Into<String>, action: &'static str) -> Notice {
        Notice {
            type_: EventType::Warning,
            reason: reason.into(),
            note: note.into(),
            action,
        }
    }
}

/// The event for a condition that changed: its status, or its reason while the status stayed
/// (False because of an invalid spec, then False because a backend is down, are two things to
/// know). `None` when nothing the user sees changed. True is Normal, False a Warning.
pub fn transition(existing: &[Condition], observed: &Observed, action: &'static str) -> Option<Notice> {
    let status = if observed.status { "True" } else { "False" };
    let before = existing.iter().find(|c| c.type_ == observed.type_);
    if before.is_some_and(|c| c.status == status && c.reason == observed.reason) {
        return None;
    }
    Some(if observed.status {
        Notice::normal(&observed.reason, &observed.message, action)
    } else {
        Notice::warning(&observed.reason, &observed.message, action)
    })
}

/// Publish `notice` about `obj`; a failure is logged, not returned.
pub async fn publish<K: Resource<DynamicType = ()>>(recorder: &Recorder, obj: &K, notice: Notice) {
    // The API limits the note to 1 kB.
    let mut note = notice.note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_: notice.type_,
        reason: notice.reason,
        note: Some(note),
        action: notice.action.to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, reason = %event.reason, "could not publish an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::conditions::merge;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn only_changes_of_status_or_reason_make_events() {
        let invalid = Observed::failed("Ready", "InvalidSpec", "spec.key: must not be empty");
        let first = transition(&[], &invalid, "Reconcile").unwrap();
        assert_eq!(
            (first.type_, first.reason.as_str(), first.note.as_str()),
            (EventType::Warning, "InvalidSpec", "spec.key: must not be empty")
        );
        let existing = merge(&[], std::slice::from_ref(&invalid), Some(1), at(1));
        let reworded = Observed::failed("Ready", "InvalidSpec", "another message");
        assert_eq!(
            transition(&existing, &reworded, "Reconcile"),
            None,
            "same state, new words"
        );
        let down = Observed::failed("Ready", "BackendsUnreachable", "S3 refused");
        assert_eq!(
            transition(&existing, &down, "Reconcile").map(|n| n.reason),
            Some("BackendsUnreachable".to_owned())
        );
        let ready = Observed::ok("Ready", "Ready", "all good");
        let up = transition(&existing, &ready, "Reconcile").unwrap();
        assert_eq!((up.type_, up.reason.as_str()), (EventType::Normal, "Ready"));
        let other_type = Observed::ok("EngineReady", "Available", "");
        assert!(transition(&existing, &other_type, "Reconcile").is_some(), "first seen");
    }
}
