//! A proof that one version is part of the recorded history, checkable offline: the version's
//! ledger record, the segment that holds it, and the Merkle path from the record's digest to the
//! segment's root. A client that keeps (or is given through another channel) the roots of the
//! segments it cares about can tell whether a version it is shown was changed since.

use rs_merkle::{MerkleProof, MerkleTree, algorithms::Sha256};
use serde::{Deserialize, Serialize};

use super::history::{read_segments, segment_keys};
use crate::engine::error::{Error, Result};
use crate::engine::ledger::LedgerRecord;
use crate::engine::model::{CollectionName, ItemId, VersionTarget};
use crate::engine::versioning::Engine;

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub database: String,
    pub collection: String,
    /// The version as recorded.
    #[schema(value_type = Object)]
    pub record: LedgerRecord,
    /// Hex SHA-256 of (database, collection, record) as JSON.
    pub digest: String,
    /// The segment's key in the payload bucket.
    pub segment: String,
    /// The record's place among the segment's records, and how many there are.
    pub leaf_index: usize,
    pub leaf_count: usize,
    /// The Merkle path (hex SHA-256 hashes, rs_merkle's order).
    pub path: Vec<String>,
    /// The segment's Merkle root (hex).
    pub root: String,
}

impl Proof {
    /// Check the proof by itself: the record digests to `digest`, and the path leads from it to
    /// `root`. Whether `root` is one to trust is the caller's to know.
    pub fn check(&self) -> Result<(), String> {
        let collection: CollectionName = self.collection.parse().map_err(|e| format!("{e}"))?;
        let digest = self.record.digest(&self.database, &collection);
        if hex::encode(digest) != self.digest {
            return Err("the record does not digest to the proof's digest".into());
        }
        let hashes = self
            .path
            .iter()
            .map(|h| {
                let bytes = hex::decode(h).map_err(|e| format!("path hash: {e}"))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "path hash of the wrong length".to_owned())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let root = hex::decode(&self.root).map_err(|e| format!("root: {e}"))?;
        let root = <[u8; 32]>::try_from(root.as_slice()).map_err(|_| "root of the wrong length".to_owned())?;
        let proof = MerkleProof::<Sha256>::new(hashes);
        if proof.verify(root, &[self.leaf_index], &[digest], self.leaf_count) {
            Ok(())
        } else {
            Err("the Merkle path does not lead to the root".into())
        }
    }
}

impl Engine {
    /// The proof for version `ov` of an item (see [`Proof`]). 404 when the version does not exist
    /// (or is in no segment: written before the ledger existed).
    pub async fn proof(&self, collection: &CollectionName, id: &ItemId, ov: u64) -> Result<Proof> {
        let version = self
            .version_entry(collection, id, VersionTarget::Ov(ov))
            .await?
            .ok_or_else(|| Error::NotFound(format!("{collection}/{id} v{ov}")))?;
        if version.erased() {
            // Its record is redacted: nothing of it is left to prove.
            return Err(Error::Erased(format!("{collection}/{id} v{ov}")));
        }
        self.flush_ledger().await?;
        let keys = segment_keys(self).await?;
        let candidates: Vec<_> = keys
            .get(collection.as_str())
            .into_iter()
            .flatten()
            .filter(|k| (k.cvs.0..=k.cvs.1).contains(&version.cv))
            .cloned()
            .collect();
        for (segment, _) in read_segments(self, &candidates).await? {
            let Some(index) = segment.records.iter().position(|r| r.id() == id && r.ov() == ov) else {
                continue;
            };
            let digests: Vec<[u8; 32]> = segment
                .records
                .iter()
                .map(|r| r.digest(&segment.database, &segment.collection))
                .collect();
            let tree = MerkleTree::<Sha256>::from_leaves(&digests);
            return Ok(Proof {
                database: segment.database.clone(),
                collection: segment.collection.to_string(),
                digest: hex::encode(digests[index]),
                segment: segment.key().key(),
                leaf_index: index,
                leaf_count: digests.len(),
                path: tree.proof(&[index]).proof_hashes_hex(),
                root: segment.root.clone(),
                record: segment.records[index].record(),
            });
        }
        Err(Error::NotFound(format!("a ledger record of {collection}/{id} v{ov}")))
    }
}
