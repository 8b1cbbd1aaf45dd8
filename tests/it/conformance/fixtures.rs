//! What every check of the suite shares: its collection, attribution and read options, and the
//! few builders more than one subject uses.

use chronos::engine::{Attribution, CollectionName, Enrichment, ItemId, ReadOptions};
use serde_json::{Map, Value};

use crate::support::Harness;

pub fn coll() -> CollectionName {
    "things".parse().unwrap()
}

pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

pub fn who() -> Attribution {
    Attribution::new("tester", "conformance")
}

/// [`who`] with an idempotency key.
pub fn keyed(key: &str) -> Attribution {
    Attribution {
        request_key: Some(key.parse().unwrap()),
        ..who()
    }
}

/// An idempotency key unlike any other, named after what it is for.
pub fn unique_key(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

pub const LATEST: ReadOptions = ReadOptions { include_deleted: false };
pub const WITH_DELETED: ReadOptions = ReadOptions { include_deleted: true };

pub fn enrichment(function_id: &str) -> Enrichment {
    Enrichment {
        function_id: Some(function_id.into()),
        expected_ov: None,
    }
}

/// Every stored payload of an item, at its own key or in a pack (`Engine::stored_payloads`): what
/// checks that count payloads count, so they hold with write packing on too.
pub async fn stored_payloads(h: &Harness, id: &ItemId) -> Vec<chronos::engine::pack::stored::StoredPayload> {
    let all = h.engine.stored_payloads(&coll()).await.unwrap();
    all.into_iter().filter(|p| &p.id == id).collect()
}

/// Every payload object key of an item.
pub async fn payload_keys(h: &Harness, id: &ItemId) -> Vec<String> {
    h.payloads.list(&format!("things/{id}/v"), None, 1000).await.unwrap()
}

/// A retention policy that keeps each item's last `n` versions.
pub fn keep_last(n: u64) -> chronos::engine::PrunePolicy {
    chronos::engine::PrunePolicy {
        keep_last: Some(n),
        ..Default::default()
    }
}

/// Every item of the collection, deleted ones included, in id order (up to 1000).
pub async fn all_ids(e: &chronos::engine::Engine) -> Vec<ItemId> {
    let opts = chronos::engine::ListOptions {
        limit: 1000,
        include_deleted: true,
        ..Default::default()
    };
    e.list(&coll(), &opts)
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// The append a restore of `source` (an indexed version of its item) builds over a head at
/// `expected_ov`, copying `source`'s slot as it was read: what a restore that read the entry
/// earlier still holds when it commits.
pub fn stale_restore(source: &chronos::engine::VersionEntry, expected_ov: u64) -> chronos::engine::RefWrite {
    let write_id = uuid::Uuid::now_v7().simple().to_string();
    chronos::engine::RefWrite {
        expected_ov,
        keep_inline: false,
        source: Some(source.ov),
        version: chronos::engine::VersionEntry {
            id: source.id.clone(),
            ov: expected_ov + 1,
            cv: 0,
            op: chronos::engine::Op::Restore,
            at: chronos::engine::model::now(),
            actor: None,
            reason: None,
            payload_ref: Some(chronos::engine::PayloadRef {
                of: write_id.clone(),
                ov: source.payload().ov,
                write_id: source.payload().write_id.to_owned(),
                function_ids: vec![],
                pack: source.payload().pack.cloned(),
            }),
            write_id,
            size: source.size,
            checksum: source.checksum.clone(),
            meta: source.meta.clone(),
            deleted: false,
            request: None,
        },
    }
}
