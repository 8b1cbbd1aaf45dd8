//! A ledger segment: the versions one engine process committed in one collection during one
//! flush interval, in one object of the payload bucket,
//! `chronos-ledger/<collection>/<writer>/<seq>-<lowest cv>-<highest cv>.json` (under the
//! database's prefix; the cv range lets a proof find a version's segment from a listing). A segment carries the Merkle root of its records' digests and
//! the seal (header hash) of its writer's previous segment of the collection, so a changed record, a changed
//! segment and a missing segment (before the writer's last) all show in a verify.
//!
//! An erasure (`engine::erase`) redacts records in place: a record becomes
//! `{"redacted": {id, ov, cv, at, digest}}`, keeping the digest it had, so the root — and with it
//! the seal and the chain — still hold while nothing of the version's metadata is left.

use rs_merkle::{MerkleTree, algorithms::Sha256};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::record::LedgerRecord;
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, Timestamp};

/// Where the ledger lives in the payload bucket. `chronos…` can't be a collection's name, so no
/// payload key starts with it.
pub const LEDGER_PREFIX: &str = "chronos-ledger/";

const FORMAT: u32 = 1;

/// One segment (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub format: u32,
    pub database: String,
    pub collection: CollectionName,
    /// The engine process that wrote it (a UUIDv7 taken when its ledger started: keys sort by
    /// process start).
    pub writer: String,
    /// 0, 1, 2, … per writer and collection.
    pub seq: u64,
    /// The [`Segment::seal`] of this writer's segment `seq - 1` of the collection.
    pub prev: Option<String>,
    /// Hex Merkle root (SHA-256) over the records' digests, in order.
    pub root: String,
    pub records: Vec<SegmentRecord>,
}

/// One record of a segment: as written, or redacted by an erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SegmentRecord {
    Redacted {
        redacted: Redacted,
    },
    /// Boxed: a kept record is several times a redacted one's size.
    Kept(Box<LedgerRecord>),
}

/// What is left of an erased version's record: where it was, and the digest it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    pub at: Timestamp,
    /// Hex SHA-256: the record's digest before it was redacted.
    pub digest: String,
}

impl SegmentRecord {
    pub fn id(&self) -> &ItemId {
        match self {
            SegmentRecord::Redacted { redacted } => &redacted.id,
            SegmentRecord::Kept(r) => &r.id,
        }
    }

    pub fn ov(&self) -> u64 {
        match self {
            SegmentRecord::Redacted { redacted } => redacted.ov,
            SegmentRecord::Kept(r) => r.ov,
        }
    }

    pub fn is_redacted(&self) -> bool {
        matches!(self, SegmentRecord::Redacted { .. })
    }

    /// The record's digest: computed from a kept record, the one kept by a redacted record (all
    /// zeros if that is not 32 hex bytes, so the root then fails to hold).
    pub fn digest(&self, database: &str, collection: &CollectionName) -> [u8; 32] {
        match self {
            SegmentRecord::Kept(r) => r.digest(database, collection),
            SegmentRecord::Redacted { redacted } => hex::decode(&redacted.digest)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .unwrap_or([0; 32]),
        }
    }

    /// The version as a rebuild takes it: the record itself, or an erased version's tombstone.
    pub fn record(&self) -> LedgerRecord {
        match self {
            SegmentRecord::Kept(r) => (**r).clone(),
            SegmentRecord::Redacted { redacted: r } => LedgerRecord::tombstone(&r.id, r.ov, r.cv, r.at),
        }
    }

    /// Replace a kept record by what an erasure leaves of it (a redacted one stays as it is).
    pub fn redact(&mut self, database: &str, collection: &CollectionName) {
        if let SegmentRecord::Kept(r) = self {
            let redacted = Redacted {
                id: r.id.clone(),
                ov: r.ov,
                cv: r.cv,
                at: r.at,
                digest: hex::encode(r.digest(database, collection)),
            };
            *self = SegmentRecord::Redacted { redacted };
        }
    }
}

/// Where a segment is, taken apart from its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentKey {
    pub collection: String,
    pub writer: String,
    pub seq: u64,
    /// The lowest and highest cv of its records.
    pub cvs: (u64, u64),
}

impl SegmentKey {
    pub fn key(&self) -> String {
        format!(
            "{LEDGER_PREFIX}{}/{}/{:012}-{:020}-{:020}.json",
            self.collection, self.writer, self.seq, self.cvs.0, self.cvs.1
        )
    }

    /// `None` for a key that is not a segment's.
    pub fn parse(key: &str) -> Option<SegmentKey> {
        let rest = key.strip_prefix(LEDGER_PREFIX)?;
        let mut parts = rest.split('/');
        let (collection, writer, file) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let mut numbers = file.strip_suffix(".json")?.split('-').map(|n| n.parse::<u64>().ok());
        let (seq, low, high) = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() {
            return None;
        }
        Some(SegmentKey {
            collection: collection.to_owned(),
            writer: writer.to_owned(),
            seq,
            cvs: (low, high),
        })
    }
}

/// The Merkle root (hex) over these digests; all zeros for none.
pub fn merkle_root(digests: &[[u8; 32]]) -> String {
    let root = MerkleTree::<Sha256>::from_leaves(digests).root().unwrap_or([0; 32]);
    hex::encode(root)
}

impl Segment {
    pub fn new(
        database: &str,
        collection: &CollectionName,
        writer: &str,
        seq: u64,
        prev: Option<String>,
        records: Vec<LedgerRecord>,
    ) -> Self {
        let digests: Vec<[u8; 32]> = records.iter().map(|r| r.digest(database, collection)).collect();
        Segment {
            format: FORMAT,
            database: database.to_owned(),
            collection: collection.clone(),
            writer: writer.to_owned(),
            seq,
            prev,
            root: merkle_root(&digests),
            records: records.into_iter().map(|r| SegmentRecord::Kept(Box::new(r))).collect(),
        }
    }

    pub fn key(&self) -> SegmentKey {
        let cvs = self.records.iter().map(|r| match r {
            SegmentRecord::Kept(r) => r.cv,
            SegmentRecord::Redacted { redacted } => redacted.cv,
        });
        SegmentKey {
            collection: self.collection.to_string(),
            writer: self.writer.clone(),
            seq: self.seq,
            cvs: (cvs.clone().min().unwrap_or(0), cvs.max().unwrap_or(0)),
        }
    }

    /// Hex SHA-256 of the segment's header — where it is, its predecessor, and its root — which
    /// the writer's next segment names. Over the root rather than the bytes: a record redacted
    /// later (an erasure keeps its digest in place of its fields) leaves the root, and so the
    /// chain, intact.
    pub fn seal(&self) -> String {
        let header = (
            self.format,
            &self.database,
            self.collection.as_str(),
            &self.writer,
            self.seq,
            &self.prev,
            &self.root,
        );
        hex::encode(sha2::Sha256::digest(serde_json::to_vec(&header).unwrap_or_default()))
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Corrupt(format!("cannot encode a ledger segment: {e}")))
    }

    /// Decode a segment found under `key` of database `database`; one that is not a segment, or
    /// names another database or place, is corrupt.
    pub fn decode(bytes: &[u8], key: &SegmentKey, database: &str) -> Result<Segment> {
        let s: Segment = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("{}: not a ledger segment: {e}", key.key())))?;
        if s.format != FORMAT || s.database != database || s.key() != *key {
            return Err(Error::Corrupt(format!(
                "{}: the segment names {}/{}/{}/{}",
                key.key(),
                s.database,
                s.collection,
                s.writer,
                s.seq
            )));
        }
        Ok(s)
    }

    /// Whether the stored root is the root of the records as they are now.
    pub fn root_holds(&self) -> bool {
        let digests: Vec<[u8; 32]> = self
            .records
            .iter()
            .map(|r| r.digest(&self.database, &self.collection))
            .collect();
        merkle_root(&digests) == self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_others() {
        let k = SegmentKey {
            collection: "orders".into(),
            writer: "0190abc".into(),
            seq: 7,
            cvs: (3, 12),
        };
        assert_eq!(
            k.key(),
            "chronos-ledger/orders/0190abc/000000000007-00000000000000000003-00000000000000000012.json"
        );
        assert_eq!(SegmentKey::parse(&k.key()), Some(k));
        for other in [
            "orders/x/v0/w.json",
            "chronos-ledger/orders/w/7",
            "chronos-ledger/orders/w/x.json",
            "chronos-ledger/orders/w/7.json",
            "chronos-ledger/orders/w/7-1-2-3.json",
            "chronos-ledger/a/b/c/1.json",
        ] {
            assert_eq!(SegmentKey::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_redacted_record_keeps_the_root_and_the_seal_and_nothing_else() {
        use crate::engine::model::Op;
        let c: CollectionName = "c".parse().unwrap();
        let record = |id: &str, ov: u64, subject: &str| {
            let mut r = LedgerRecord::tombstone(&id.parse().unwrap(), ov, ov + 1, crate::engine::model::now());
            r.op = Op::Create;
            r.checksum = "ab".repeat(32);
            r.meta.insert("subject".into(), subject.into());
            r
        };
        let mut s = Segment::new(
            "db",
            &c,
            "w",
            0,
            None,
            vec![record("a", 0, "SECRET"), record("b", 0, "bob")],
        );
        let (root, seal) = (s.root.clone(), s.seal());
        s.records[0].redact("db", &c);
        let bytes = s.encode().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("SECRET"));
        let back = Segment::decode(&bytes, &s.key(), "db").unwrap();
        assert!(back.root_holds() && back.root == root && back.seal() == seal);
        assert!(back.records[0].is_redacted() && !back.records[1].is_redacted());
        assert_eq!(back.records[0].record().op, Op::Erased);
        assert_eq!(back.records[1].record().meta["subject"], "bob");
    }

    #[test]
    fn roots_depend_on_every_leaf_and_their_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let ab = merkle_root(&[a, b]);
        assert_ne!(ab, merkle_root(&[b, a]));
        assert_ne!(ab, merkle_root(&[a]));
        assert_eq!(ab, merkle_root(&[a, b]));
    }
}
