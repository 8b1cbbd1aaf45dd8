//! What a restore does to one item: the version it goes back to (and where that was found), the
//! action that takes it there, and the version appended by reference to do it. Shared by item and
//! collection restores; the counts they report.

use serde::Serialize;

use crate::engine::model::{Attribution, Head, ItemId, Op, PayloadLoc, PayloadRef, Timestamp, VersionEntry, now};
use crate::engine::store::RefWrite;
use crate::engine::store::rules::commit_deadline;

/// An item's version at a point in history, and where it was found.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub entry: VersionEntry,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The version index.
    Index,
    /// A retention manifest (see [`crate::engine::retention::manifests::Pruned`]).
    Manifest { payload_kept: bool },
}

impl Target {
    /// Found in the manifest of a run that deleted payloads: its object may be gone.
    pub(super) fn payload_may_be_gone(&self) -> bool {
        self.origin == Origin::Manifest { payload_kept: false }
    }

    pub(super) fn indexed(entry: VersionEntry) -> Self {
        Target {
            entry,
            origin: Origin::Index,
        }
    }

    pub(super) fn pruned(p: crate::engine::retention::manifests::Pruned) -> Self {
        Target {
            entry: p.entry,
            origin: Origin::Manifest {
                payload_kept: p.payload_kept,
            },
        }
    }
}

/// What the restore would do (dry run) or did, for one page or summed over pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCounts {
    /// Items looked at.
    pub examined: u64,
    /// Items given back their data at the target.
    pub restored: u64,
    /// Items logically deleted (created after the target, or deleted at the target).
    pub deleted: u64,
    /// Items already equal to their state at the target.
    pub unchanged: u64,
}

impl RestoreCounts {
    pub fn add(&mut self, other: &RestoreCounts) {
        self.examined += other.examined;
        self.restored += other.restored;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
    }
}

/// One page of a collection restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePage {
    pub counts: RestoreCounts,
    /// Continue after this id; `None` when the collection is done.
    pub next_after_id: Option<ItemId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Restore,
    Delete,
    Keep,
}

pub(super) fn action(head: &Head, target: Option<&Target>) -> Action {
    match target.map(|t| &t.entry) {
        Some(t) if !t.deleted => {
            if head.deleted() || head.checksum != t.checksum {
                Action::Restore
            } else {
                Action::Keep
            }
        }
        // Created after the target, or deleted at the target.
        _ if head.deleted() => Action::Keep,
        _ => Action::Delete,
    }
}

/// Whether bringing `head` to `target` takes a copy of the target's data (see
/// [`Engine::restore_by_copy`](crate::engine::versioning::Engine::restore_by_copy)) rather than a reference.
pub(super) fn copies(head: &Head, target: &Target) -> bool {
    !erased(head, Some(target)) && target.payload_may_be_gone() && action(head, Some(target)) == Action::Restore
}

/// The append that brings `head` to its target state, or `None` when it is already there.
pub(super) fn ref_write(head: &Head, target: Option<&Target>, who: &Attribution) -> Option<RefWrite> {
    if erased(head, target) {
        return None;
    }
    match (action(head, target), target) {
        (Action::Keep, _) => None,
        (Action::Restore, Some(t)) => Some(restore_write(head, t, who)),
        _ => Some(delete_write(head, who)),
    }
}

/// Whether the item was erased: a restore leaves it as it is (nothing of it may come back).
fn erased(head: &Head, target: Option<&Target>) -> bool {
    head.erased() || target.is_some_and(|t| t.entry.erased())
}

/// A new version of `head`'s item: its coordinates, time and attribution, with the data of the
/// payload object named by `payload`.
pub(super) fn ref_entry(head: &Head, op: Op, payload: PayloadLoc<'_>, who: &Attribution) -> VersionEntry {
    let write_id = uuid::Uuid::now_v7().simple().to_string();
    VersionEntry {
        id: head.id.clone(),
        ov: head.ov + 1,
        cv: 0,
        op,
        // Per item, time never runs backwards (as in single writes).
        at: head.updated_at.max(now()),
        actor: who.actor.clone(),
        reason: who.reason.clone(),
        payload_ref: Some(PayloadRef {
            of: write_id.clone(),
            ov: payload.ov,
            write_id: payload.write_id.to_owned(),
            function_ids: head.function_ids.clone(),
            pack: payload.pack.cloned(),
        }),
        write_id,
        size: 0,
        checksum: String::new(),
        meta: Default::default(),
        deleted: false,
        request: None,
    }
}

/// Bring back `target`'s data: the new version names the payload object that holds it.
pub(super) fn restore_write(head: &Head, target: &Target, who: &Attribution) -> RefWrite {
    let source = (target.origin == Origin::Index).then_some(target.entry.ov);
    let target = &target.entry;
    let mut v = ref_entry(head, Op::Restore, target.payload(), who);
    v.size = target.size;
    v.checksum = target.checksum.clone();
    v.meta = target.meta.clone();
    RefWrite {
        expected_ov: head.ov,
        // Restoring a deleted item to the data it still holds keeps its inline copy.
        keep_inline: head.checksum == target.checksum,
        version: v,
        source,
    }
}

/// A logical delete that keeps the current data: the new version names the current payload.
pub(super) fn delete_write(head: &Head, who: &Attribution) -> RefWrite {
    let mut v = ref_entry(head, Op::Delete, head.payload(), who);
    v.size = head.size;
    v.checksum = head.checksum.clone();
    v.meta = head.meta.clone();
    v.deleted = true;
    RefWrite {
        expected_ov: head.ov,
        keep_inline: true,
        version: v,
        // The head's own data, which its entry (the item's latest, which retention always
        // keeps) names too: checked at the append like a restore's source, so a slot compaction
        // moved meanwhile is never committed.
        source: Some(head.ov),
    }
}

/// By when an append of `writes` must commit: the earliest deadline of their write ids, as for a
/// single write (each write id is taken when its write is built, right before the append).
pub(super) fn commit_by(writes: &[RefWrite], grace: std::time::Duration) -> Timestamp {
    writes
        .iter()
        .map(|w| match uuid::Uuid::parse_str(&w.version.write_id) {
            Ok(id) => commit_deadline(&id, grace),
            // Not a write id of ours: no time to spare.
            Err(_) => now(),
        })
        .min()
        .unwrap_or_else(now)
}
