//! A committed version as the ledger (and the version's own envelope) describe it: everything
//! the metadata store holds about it, so the index, the heads and the idempotency keys can be
//! rebuilt from the bucket alone — and its link to the item's previous version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::engine::model::{
    CollectionName, Head, ItemId, Op, PayloadRef, RequestKey, RequestStamp, State, SystemFields, Timestamp,
    VersionEntry,
};

/// Which version a version follows: the item's head it replaced. Taken from the head the write
/// held, so a version can only name a predecessor that was committed; a rebuild counts a payload
/// as committed when a committed successor names it this way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrevLink {
    pub ov: u64,
    pub cv: u64,
    pub write_id: String,
    /// The predecessor's data checksum: altering its object (or its index entry) breaks the link.
    pub checksum: String,
}

impl PrevLink {
    pub fn of(head: &Head) -> Self {
        PrevLink {
            ov: head.ov,
            cv: head.cv,
            write_id: head.write_id.clone(),
            checksum: head.checksum.clone(),
        }
    }
}

/// An idempotency stamp as stored (see [`RequestStamp`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampDoc {
    pub key: RequestKey,
    pub fingerprint: String,
}

/// One committed version: its index entry, what its head carries (`insertedAt`, `functionIds`)
/// and its predecessor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    pub op: Op,
    pub at: Timestamp,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub write_id: String,
    pub size: u64,
    pub checksum: String,
    pub meta: Map<String, Value>,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<StampDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<PayloadRef>,
    pub inserted_at: Timestamp,
    pub function_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<PrevLink>,
}

impl LedgerRecord {
    /// The record of `entry`, written over `previous` (`None` for a create).
    pub fn new(entry: &VersionEntry, system: &SystemFields, previous: Option<&Head>) -> Self {
        LedgerRecord {
            id: entry.id.clone(),
            ov: entry.ov,
            cv: entry.cv,
            op: entry.op,
            at: entry.at,
            actor: entry.actor.clone(),
            reason: entry.reason.clone(),
            write_id: entry.write_id.clone(),
            size: entry.size,
            checksum: entry.checksum.clone(),
            meta: entry.meta.clone(),
            deleted: entry.deleted,
            request: entry.request.as_ref().map(|s| StampDoc {
                key: s.key.clone(),
                fingerprint: s.fingerprint.clone(),
            }),
            payload_ref: entry.payload_ref.clone(),
            inserted_at: system.inserted_at,
            function_ids: system.function_ids.clone(),
            prev: previous.map(PrevLink::of),
        }
    }

    /// The version's digest: SHA-256 over its database, collection and this record. The ledger's
    /// Merkle roots are built over digests, so altering any field of a recorded version shows.
    pub fn digest(&self, database: &str, collection: &CollectionName) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        // serde_json writes a struct's fields in declaration order and `meta` in its stored
        // order (preserve_order), so a record read back digests to the same value.
        let bytes = serde_json::to_vec(&(database, collection.as_str(), self)).unwrap_or_default();
        hasher.update(&bytes);
        hasher.finalize().into()
    }

    /// What a rebuild makes of an erased version (its record redacted in the ledger): the
    /// tombstone the erasure left in the index, [`VersionEntry::tombstone`].
    pub fn tombstone(id: &ItemId, ov: u64, cv: u64, at: Timestamp) -> Self {
        let entry = VersionEntry::tombstone_at(id, ov, cv, at);
        let system = SystemFields {
            inserted_at: at,
            updated_at: at,
            deleted_at: Some(at),
            deleted: true,
            function_ids: Vec::new(),
            state: State::Processed,
        };
        LedgerRecord::new(&entry, &system, None)
    }

    /// The version index entry this record describes.
    pub fn entry(&self) -> VersionEntry {
        VersionEntry {
            id: self.id.clone(),
            ov: self.ov,
            cv: self.cv,
            op: self.op,
            at: self.at,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            write_id: self.write_id.clone(),
            size: self.size,
            checksum: self.checksum.clone(),
            meta: self.meta.clone(),
            deleted: self.deleted,
            request: self.request.as_ref().map(|s| RequestStamp {
                key: s.key.clone(),
                fingerprint: s.fingerprint.clone(),
            }),
            payload_ref: self.payload_ref.clone(),
        }
    }

    /// The head of an item whose latest version this is, without inline data: a rebuilt head is
    /// `processed` (its data is read from its payload object), since inlining every hot item would
    /// cost a GET per item.
    pub fn head(&self) -> Head {
        Head {
            id: self.id.clone(),
            ov: self.ov,
            cv: self.cv,
            write_id: self.write_id.clone(),
            inserted_at: self.inserted_at,
            updated_at: self.at,
            deleted_at: self.deleted.then_some(self.at),
            function_ids: self.function_ids.clone(),
            state: State::Processed,
            size: self.size,
            checksum: self.checksum.clone(),
            meta: self.meta.clone(),
            inline: None,
            payload_ref: self.payload_ref.clone(),
        }
    }

    /// Whether `self` is the version that directly follows `previous`.
    pub fn follows(&self, previous: &LedgerRecord) -> bool {
        self.prev.as_ref().is_some_and(|p| {
            p.ov == previous.ov
                && p.cv == previous.cv
                && p.write_id == previous.write_id
                && p.checksum == previous.checksum
        })
    }
}
