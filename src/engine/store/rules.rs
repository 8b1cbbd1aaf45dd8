//! Rules every metadata store must follow the same way, written once: the head a write or an
//! append by reference produces, the precondition a write checks, a listing's cursor, and when a
//! claimed operation's lease ends, and by when a write must commit (which scrub relies on). The stores that build heads in process (memory, SQLite) call
//! them directly; the conformance suite holds MongoDB to the same results.

use std::time::Duration;

use super::{HeadChange, ListQuery, RefWrite};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, Head, ItemId, Op, State, Timestamp, VersionEntry, now};

/// The head a change produces; shared by the stores that build heads in process.
pub(crate) fn next_head(change: &HeadChange, previous: Option<&Head>, ov: u64, cv: u64, v: &VersionEntry) -> Head {
    let mut function_ids = previous.map(|p| p.function_ids.clone()).unwrap_or_default();
    if let Some(f) = &change.function_id
        && !function_ids.contains(f)
    {
        function_ids.push(f.clone());
    }
    let (inline, meta) = match (&change.data, previous) {
        (Some(d), _) => (d.inline.then(|| d.content.json.clone()), d.meta.clone()),
        (None, Some(p)) => (p.inline.clone(), p.meta.clone()),
        (None, None) => (None, Default::default()),
    };
    Head {
        id: change.id.clone(),
        ov,
        cv,
        write_id: change.write_id.clone(),
        inserted_at: previous.map_or(v.at, |p| p.inserted_at),
        updated_at: v.at,
        deleted_at: match change.op {
            Op::Delete => Some(v.at),
            _ => None,
        },
        function_ids,
        state: State::New,
        size: v.size,
        checksum: v.checksum.clone(),
        meta,
        inline,
        // A packed payload's slot (a write's only reference: to itself; see `engine::pack`).
        payload_ref: v.payload_ref.clone(),
    }
}

/// The head an append by reference produces from the head it was examined at; shared by the
/// stores that build heads in process.
pub(crate) fn ref_head(previous: &Head, w: &RefWrite, cv: u64) -> Head {
    let v = &w.version;
    let at = previous.updated_at.max(v.at);
    let keep = w.keep_inline && previous.checksum == v.checksum;
    Head {
        id: previous.id.clone(),
        ov: v.ov,
        cv,
        write_id: v.write_id.clone(),
        inserted_at: previous.inserted_at,
        updated_at: at,
        deleted_at: v.deleted.then_some(at),
        function_ids: previous.function_ids.clone(),
        state: if keep { previous.state } else { State::Processed },
        size: v.size,
        checksum: v.checksum.clone(),
        meta: v.meta.clone(),
        inline: if keep { previous.inline.clone() } else { None },
        payload_ref: v.payload_ref.clone(),
    }
}

/// Check a change against the current head; `Ok(previous)` when it may proceed.
pub(crate) fn check_precondition(change: &HeadChange, current: Option<&Head>) -> Result<()> {
    precondition(&change.collection, &change.id, change.op, change.expected_ov, current)
}

/// [`check_precondition`] for a write not yet prepared as a [`HeadChange`] (an enrichment looks
/// before it merges): the same errors the store would give.
pub(crate) fn precondition(
    collection: &CollectionName,
    id: &ItemId,
    op: Op,
    expected_ov: Option<u64>,
    current: Option<&Head>,
) -> Result<()> {
    let item = || format!("{collection}/{id}");
    match (op, current) {
        // An erased item keeps its id: a create is refused like any taken id's.
        (Op::Create, Some(_)) => Err(Error::AlreadyExists(item())),
        (_, Some(h)) if h.erased() => Err(Error::Erased(item())),
        (Op::Create, None) => Ok(()),
        (_, None) => Err(Error::NotFound(item())),
        (op, Some(h)) => {
            if h.deleted() && op != Op::Restore {
                return Err(Error::NotFound(format!("{} (deleted)", item())));
            }
            match expected_ov {
                Some(expected) if expected != h.ov => Err(Error::VersionConflict {
                    item: item(),
                    expected,
                    current: h.ov,
                }),
                _ => Ok(()),
            }
        }
    }
}

/// What an in-process store counts for a head besides its inline data (a rough figure, so that
/// tiering reports are comparable across stores).
pub(crate) const HEAD_OVERHEAD: u64 = 256;

/// Whether `id` comes after the query's cursor in its direction.
pub(crate) fn after(id: &ItemId, q: &ListQuery) -> bool {
    match &q.after_id {
        None => true,
        Some(a) if q.descending => id < a,
        Some(a) => id > a,
    }
}

/// When a lease taken `now` for `lease` runs out.
pub(crate) fn lease_end(now: Timestamp, lease: Duration) -> Timestamp {
    now + jiff::SignedDuration::try_from(lease).unwrap_or(jiff::SignedDuration::from_secs(30))
}

/// How much of the grace a write may spend between its write id and its commit; what is left
/// covers the commit command itself and clocks that differ between the engine and scrub hosts.
pub fn commit_window(grace: Duration) -> Duration {
    grace - grace / 4
}

/// When a write with this (UUIDv7) write id must have committed by, for scrub's `grace`.
pub(crate) fn commit_deadline(write_id: &uuid::Uuid, grace: Duration) -> Timestamp {
    let began = began_ms(write_id)
        .and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or_else(now);
    jiff::SignedDuration::try_from(commit_window(grace))
        .ok()
        .and_then(|window| began.checked_add(window).ok())
        .unwrap_or(Timestamp::MAX)
}

/// When a write began, in Unix milliseconds, from its UUIDv7 write id.
pub(crate) fn began_ms(write_id: &uuid::Uuid) -> Option<u64> {
    let (secs, nanos) = write_id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos / 1_000_000))
}
