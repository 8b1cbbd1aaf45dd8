//! The JSON document stored in the payload store for every version.
//!
//! It is self-describing — database, collection, id, ov, cv, op, attribution and `_system` travel
//! with the data — so a bucket alone is enough to audit or rebuild history, and so every read can
//! check that the object it fetched really is the version it asked for, of its own database.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::ledger::record::StampDoc;
use super::ledger::{LedgerRecord, PrevLink};
use super::model::{
    CollectionName, Content, ItemId, Op, SystemFields, Timestamp, VersionEntry, check_data, parse_checked,
};

/// 2: the header names the logical database. 3: it also carries what the index needs (indexed
/// metadata, the idempotency stamp) and the link to the item's previous version, so a rebuild
/// can take a version from its object alone.
const FORMAT: u32 = 3;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header<'a> {
    format: u32,
    #[serde(borrow)]
    database: &'a str,
    #[serde(borrow)]
    collection: &'a str,
    #[serde(borrow)]
    id: &'a str,
    ov: u64,
    cv: u64,
    op: Op,
    at: Timestamp,
    actor: Option<String>,
    reason: Option<String>,
    write_id: String,
    checksum: String,
    #[serde(rename = "_system")]
    system: SystemFields,
    meta: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<StampDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<PrevLink>,
}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    chronos: Header<'a>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Serialize a version of logical database `database`, which follows `prev` (`None` for a
/// create). `data_json` is embedded verbatim, so its checksum stays valid.
pub fn encode(
    database: &str,
    collection: &CollectionName,
    entry: &VersionEntry,
    system: &SystemFields,
    prev: Option<PrevLink>,
    data_json: &str,
) -> Result<Vec<u8>> {
    let data =
        RawValue::from_string(data_json.to_owned()).map_err(|e| Error::Corrupt(format!("data is not JSON: {e}")))?;
    let envelope = Envelope {
        chronos: Header {
            format: FORMAT,
            database,
            collection: collection.as_str(),
            id: entry.id.as_str(),
            ov: entry.ov,
            cv: entry.cv,
            op: entry.op,
            at: entry.at,
            actor: entry.actor.clone(),
            reason: entry.reason.clone(),
            write_id: entry.write_id.clone(),
            checksum: entry.checksum.clone(),
            system: system.clone(),
            meta: entry.meta.clone(),
            request: entry.request.as_ref().map(|s| StampDoc {
                key: s.key.clone(),
                fingerprint: s.fingerprint.clone(),
            }),
            prev,
        },
        data: &data,
    };
    serde_json::to_vec(&envelope).map_err(|e| Error::Corrupt(format!("cannot encode version: {e}")))
}

/// A verified version payload whose data is still text (see `model::RecordText`).
pub struct DecodedText {
    pub system: SystemFields,
    /// The exact data text, checked against the version's checksum.
    pub data_json: String,
}

impl DecodedText {
    pub fn parse(self, what: &dyn std::fmt::Display) -> Result<Decoded> {
        Ok(Decoded {
            data: parse_checked(&self.data_json, what)?,
            system: self.system,
            data_json: self.data_json,
        })
    }
}

/// A decoded, verified version payload.
pub struct Decoded {
    pub system: SystemFields,
    pub data: Map<String, Value>,
    /// The exact data text, for writes that carry data forward (delete, restore).
    pub data_json: String,
}

/// Which version a read expects a payload to be.
pub struct Expected<'a> {
    pub database: &'a str,
    pub collection: &'a CollectionName,
    pub id: &'a ItemId,
    pub ov: u64,
    pub write_id: &'a str,
    pub checksum: &'a str,
}

/// Decode a payload and check it is exactly the version the caller expects: same database,
/// collection, item, ov, write attempt and checksum. Anything else is reported as corruption,
/// never returned.
pub fn decode(bytes: &[u8], expected: &Expected<'_>) -> Result<Decoded> {
    decode_opened(bytes, expected, &|_| Ok(None))
}

/// [`decode`], leaving the data as text.
pub fn decode_text(bytes: &[u8], expected: &Expected<'_>) -> Result<DecodedText> {
    decode_text_opened(bytes, expected, &|_| Ok(None))
}

/// [`decode`] for data that may be sealed (`engine::sealed`): `open` gets the stored data text
/// and gives back the plaintext JSON (`None`: the data is not sealed), which is then checked
/// against the checksum like any other.
pub fn decode_opened(
    bytes: &[u8],
    expected: &Expected<'_>,
    open: &(dyn Fn(&str) -> Result<Option<String>> + Sync),
) -> Result<Decoded> {
    let what = format_args!("{}/{} v{}", expected.collection, expected.id, expected.ov);
    decode_text_opened(bytes, expected, open)?.parse(&what)
}

/// [`decode_opened`], leaving the data as text.
pub fn decode_text_opened(
    bytes: &[u8],
    expected: &Expected<'_>,
    open: &(dyn Fn(&str) -> Result<Option<String>> + Sync),
) -> Result<DecodedText> {
    let Expected {
        database,
        collection,
        id,
        ov,
        write_id,
        checksum,
    } = *expected;
    let what = format!("{collection}/{id} v{ov}");
    let envelope: Envelope<'_> = serde_json::from_slice(bytes)
        .map_err(|e| Error::Corrupt(format!("{what}: payload is not an envelope: {e}")))?;
    let h = &envelope.chronos;
    if h.format != FORMAT
        || h.database != database
        || h.collection != collection.as_str()
        || h.id != id.as_str()
        || h.ov != ov
        || h.write_id != write_id
        || h.checksum != checksum
    {
        return Err(Error::Corrupt(format!(
            "{what}: payload belongs to {}/{}/{} v{} (write {})",
            h.database, h.collection, h.id, h.ov, h.write_id
        )));
    }
    let stored = envelope.data.get();
    let data_json = open(stored)?.unwrap_or_else(|| stored.to_owned());
    check_data(&data_json, checksum, &what)?;
    Ok(DecodedText {
        system: envelope.chronos.system,
        data_json,
    })
}

/// What an object says about itself, read without knowing which version it should be: a
/// rebuild takes versions this way, a verify compares them with the index.
pub struct Described {
    pub database: String,
    pub collection: String,
    pub record: LedgerRecord,
    /// Whether the data matches the checksum the header names.
    pub data_intact: bool,
}

/// Read a version object's header (see [`Described`]).
pub fn describe(bytes: &[u8]) -> Result<Described> {
    let envelope: Envelope<'_> =
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("not a version object: {e}")))?;
    let h = envelope.chronos;
    if h.format != FORMAT {
        return Err(Error::Corrupt(format!("version object of format {}", h.format)));
    }
    let data = envelope.data.get();
    // Sealed data can't be checked against the plaintext's checksum without its key; its AEAD
    // tag checks it when it is opened.
    let data_intact = super::sealed::is_sealed(data) || Content::from_json(data.to_owned()).checksum == h.checksum;
    Ok(Described {
        database: h.database.to_owned(),
        collection: h.collection.to_owned(),
        data_intact,
        record: LedgerRecord {
            id: h.id.parse()?,
            ov: h.ov,
            cv: h.cv,
            op: h.op,
            at: h.at,
            actor: h.actor,
            reason: h.reason,
            write_id: h.write_id,
            size: data.len() as u64,
            checksum: h.checksum,
            meta: h.meta,
            deleted: h.system.deleted,
            request: h.request,
            payload_ref: None,
            inserted_at: h.system.inserted_at,
            function_ids: h.system.function_ids,
            prev: h.prev,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{Content, State, now};

    fn entry(id: &str, ov: u64, content: &Content) -> VersionEntry {
        VersionEntry {
            id: id.parse().unwrap(),
            ov,
            cv: 7,
            op: Op::Update,
            at: now(),
            actor: Some("a".into()),
            reason: None,
            write_id: "w".into(),
            size: content.size(),
            checksum: content.checksum.clone(),
            meta: Map::new(),
            deleted: false,
            request: None,
            payload_ref: None,
        }
    }

    fn system() -> SystemFields {
        SystemFields {
            inserted_at: now(),
            updated_at: now(),
            deleted_at: None,
            deleted: false,
            function_ids: vec![],
            state: State::New,
        }
    }

    #[test]
    fn round_trip_and_identity_checks() {
        let c: CollectionName = "c".parse().unwrap();
        let content = Content::from_json(r#"{"b":1,"a":[true,null]}"#.into());
        let e = entry("i", 2, &content);
        let bytes = encode("db", &c, &e, &system(), None, &content.json).unwrap();
        let expected = Expected {
            database: "db",
            collection: &c,
            id: &e.id,
            ov: 2,
            write_id: "w",
            checksum: &content.checksum,
        };
        let d = decode(&bytes, &expected).unwrap();
        assert_eq!(d.data_json, content.json);
        assert_eq!(d.data.keys().collect::<Vec<_>>(), ["b", "a"], "key order kept");

        let other: ItemId = "j".parse().unwrap();
        let wrong = [
            Expected {
                database: "other",
                ..expected
            },
            Expected { id: &other, ..expected },
            Expected { ov: 3, ..expected },
            Expected {
                write_id: "x",
                ..expected
            },
        ];
        for w in &wrong {
            assert!(matches!(decode(&bytes, w), Err(Error::Corrupt(_))));
        }
        assert!(matches!(decode(b"{}", &expected), Err(Error::Corrupt(_))));
    }
}
