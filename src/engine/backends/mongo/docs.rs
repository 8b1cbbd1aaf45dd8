//! Documents as stored and back: heads, version entries and payload references to and from BSON,
//! the head updates a write applies, and the query subset as a MongoDB filter.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, doc, oid::ObjectId};
use serde_json::{Map, Value};

use crate::engine::error::{Error, Result};
use crate::engine::model::{
    CollectionName, Head, ItemId, Op, PackSlot, PayloadRef, RequestStamp, State, Timestamp, VersionEntry,
};
use crate::engine::query::{Cond, Filter};
use crate::engine::store::{HeadChange, RefWrite};

/// The head document a create inserts.
pub(super) fn create_head(change: &HeadChange, cv: u64) -> Result<Document> {
    let data = change
        .data
        .as_ref()
        .ok_or_else(|| Error::validation("data", "a create needs data"))?;
    let mut head = doc! {
        "_id": change.id.as_str(),
        "ov": 0_i64,
        "cv": cv as i64,
        "writeId": &change.write_id,
        "insertedAt": to_date(change.at),
        "updatedAt": to_date(change.at),
        "deletedAt": Bson::Null,
        "functionIds": change.function_id.iter().cloned().collect::<Vec<_>>(),
        "state": State::New.as_str(),
        "size": data.content.size() as i64,
        "checksum": &data.content.checksum,
        "meta": to_bson_doc(&data.meta),
    };
    if data.inline {
        head.insert("data", data.content.json.as_str());
    }
    Ok(head)
}

/// Filter and update for a change to an existing head.
pub(super) fn head_update(change: &HeadChange, cv: u64) -> (Document, Document) {
    // `cv < ours` keeps cv increasing along each item's history even though cvs are allocated
    // before the transaction: a writer holding an older cv than the head's must take a new one.
    let mut filter = doc! {"_id": change.id.as_str(), "cv": {"$lt": cv as i64}};
    if change.op != Op::Restore {
        filter.insert("deletedAt", Bson::Null);
    }
    // An erased item's head (no data checksum) takes no write, not even a restore.
    filter.insert("checksum", doc! {"$ne": ""});
    let mut set = doc! {
        "cv": cv as i64,
        "writeId": &change.write_id,
        "state": State::New.as_str(),
    };
    let mut update = Document::new();
    match change.expected_ov {
        Some(expected) => {
            filter.insert("ov", expected as i64);
            set.insert("ov", expected as i64 + 1);
        }
        None => {
            update.insert("$inc", doc! {"ov": 1_i64});
        }
    }
    match change.op {
        Op::Delete => {
            set.insert("deletedAt", to_date(change.at));
        }
        Op::Restore => {
            set.insert("deletedAt", Bson::Null);
        }
        // The engine never writes an erasure as a change (see `engine::erase`).
        Op::Create | Op::Update | Op::Erased => {}
    }
    let mut unset = Document::new();
    if let Some(data) = &change.data {
        set.insert("size", data.content.size() as i64);
        set.insert("checksum", &data.content.checksum);
        set.insert("meta", to_bson_doc(&data.meta));
        if data.inline {
            set.insert("data", data.content.json.as_str());
        } else {
            unset.insert("data", "");
        }
    }
    update.insert("$set", set);
    // Per item, time never runs backwards even if replicas' clocks disagree slightly.
    update.insert("$max", doc! {"updatedAt": to_date(change.at)});
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    if let Some(f) = &change.function_id {
        update.insert("$addToSet", doc! {"functionIds": f});
    }
    (filter, update)
}

/// The safe query subset as a MongoDB filter on `meta.<property>`.
pub(super) fn filter_doc(filter: &Filter) -> Document {
    let mut out = Document::new();
    for (field, cond) in &filter.clauses {
        let (op, value) = match cond {
            Cond::Eq(v) => ("$eq", to_bson(v)),
            Cond::Ne(v) => ("$ne", to_bson(v)),
            Cond::Gt(v) => ("$gt", to_bson(v)),
            Cond::Gte(v) => ("$gte", to_bson(v)),
            Cond::Lt(v) => ("$lt", to_bson(v)),
            Cond::Lte(v) => ("$lte", to_bson(v)),
            Cond::In(vs) => ("$in", Bson::Array(vs.iter().map(to_bson).collect())),
            Cond::Nin(vs) => ("$nin", Bson::Array(vs.iter().map(to_bson).collect())),
            Cond::Exists(b) => ("$exists", Bson::Boolean(*b)),
        };
        let key = format!("meta.{field}");
        match out.get_mut(&key) {
            Some(Bson::Document(ops)) => {
                ops.insert(op, value);
            }
            _ => {
                out.insert(key, doc! {op: value});
            }
        }
    }
    out
}

pub(crate) fn to_date(t: Timestamp) -> bson::DateTime {
    bson::DateTime::from_millis(t.as_millisecond())
}

pub(crate) fn from_date(d: bson::DateTime) -> Result<Timestamp> {
    Timestamp::from_millisecond(d.timestamp_millis()).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn get_u64(d: &Document, key: &str) -> Result<u64> {
    match d.get(key) {
        Some(Bson::Int64(n)) if *n >= 0 => Ok(*n as u64),
        Some(Bson::Int32(n)) if *n >= 0 => Ok(*n as u64),
        _ => Err(Error::Corrupt(format!("field `{key}` missing or not a count"))),
    }
}

pub(crate) fn get_date(d: &Document, key: &str) -> Result<Timestamp> {
    match d.get(key) {
        Some(Bson::DateTime(t)) => from_date(*t),
        _ => Err(Error::Corrupt(format!("field `{key}` missing or not a date"))),
    }
}

pub(crate) fn get_string(d: &Document, key: &str) -> Result<String> {
    d.get_str(key)
        .map(str::to_owned)
        .map_err(|_| Error::Corrupt(format!("field `{key}` missing or not a string")))
}

pub(crate) fn get_opt_string(d: &Document, key: &str) -> Option<String> {
    d.get_str(key).ok().map(str::to_owned)
}

pub(super) fn get_meta(d: &Document) -> Map<String, Value> {
    match d.get("meta") {
        Some(Bson::Document(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_relaxed_extjson()))
            .collect(),
        _ => Map::new(),
    }
}

/// A head as stored → [`Head`], in one pass over its raw BSON. Listings decode many heads: this
/// builds no `Document` (a key and a value allocated per field) on the way.
pub(super) fn head_from_raw(id: &ItemId, d: &RawDocument) -> Result<Head> {
    let corrupt = |e: bson::error::Error| Error::Corrupt(format!("head of {id}: {e}"));
    let (mut ov, mut cv, mut write_id, mut inserted_at, mut updated_at) = (None, None, None, None, None);
    let (mut state, mut size, mut checksum) = (None, None, None);
    let mut head_deleted = false;
    let (mut function_ids, mut meta, mut inline, mut payload_ref) = (vec![], Map::new(), None, None);
    for field in d {
        let (key, value) = field.map_err(corrupt)?;
        let key = key.as_str();
        match key {
            "ov" => ov = Some(raw_u64(key, value)?),
            "cv" => cv = Some(raw_u64(key, value)?),
            "writeId" => write_id = Some(raw_str(key, value)?.to_owned()),
            "insertedAt" => inserted_at = Some(raw_date(key, value)?),
            "updatedAt" => updated_at = Some(raw_date(key, value)?),
            "deletedAt" => {
                head_deleted = match value {
                    RawBsonRef::Null => false,
                    RawBsonRef::DateTime(_) => true,
                    _ => return Err(Error::Corrupt(format!("field `{key}` is not a date"))),
                }
            }
            "functionIds" => {
                if let RawBsonRef::Array(a) = value {
                    function_ids = a
                        .into_iter()
                        .filter_map(|b| b.ok()?.as_str().map(str::to_owned))
                        .collect();
                }
            }
            "state" => state = Some(raw_str(key, value)?.parse()?),
            "size" => size = Some(raw_u64(key, value)?),
            "checksum" => checksum = Some(raw_str(key, value)?.to_owned()),
            "meta" => {
                if let RawBsonRef::Document(m) = value {
                    meta = raw_meta(m).map_err(corrupt)?;
                }
            }
            "data" => inline = value.as_str().map(str::to_owned),
            "payloadRef" => {
                payload_ref = match value {
                    RawBsonRef::Null => None,
                    RawBsonRef::Document(r) => Some(payload_ref_from(&Document::try_from(r).map_err(corrupt)?)?),
                    _ => return Err(Error::Corrupt("field `payloadRef` is not a document".into())),
                };
            }
            _ => {}
        }
    }
    let missing = |key: &str| Error::Corrupt(format!("head of {id}: field `{key}` missing"));
    let updated_at = updated_at.ok_or_else(|| missing("updatedAt"))?;
    Ok(Head {
        id: id.clone(),
        ov: ov.ok_or_else(|| missing("ov"))?,
        cv: cv.ok_or_else(|| missing("cv"))?,
        write_id: write_id.ok_or_else(|| missing("writeId"))?,
        inserted_at: inserted_at.ok_or_else(|| missing("insertedAt"))?,
        updated_at,
        // A deleted head's latest version is its delete, whose time is the head's `updatedAt`
        // (clamped so time never runs backwards per item). The stored `deletedAt` is written
        // before that clamp is known — it serves as the "is deleted" flag — so its time is the
        // version's, as the other stores report it.
        deleted_at: head_deleted.then_some(updated_at),
        function_ids,
        state: state.ok_or_else(|| missing("state"))?,
        size: size.ok_or_else(|| missing("size"))?,
        checksum: checksum.ok_or_else(|| missing("checksum"))?,
        meta,
        inline,
        payload_ref,
    })
}

fn raw_u64(key: &str, v: RawBsonRef<'_>) -> Result<u64> {
    match v {
        RawBsonRef::Int64(n) if n >= 0 => Ok(n as u64),
        RawBsonRef::Int32(n) if n >= 0 => Ok(n as u64),
        _ => Err(Error::Corrupt(format!("field `{key}` is not a count"))),
    }
}

fn raw_str<'a>(key: &str, v: RawBsonRef<'a>) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| Error::Corrupt(format!("field `{key}` is not a string")))
}

fn raw_date(key: &str, v: RawBsonRef<'_>) -> Result<Timestamp> {
    match v {
        RawBsonRef::DateTime(t) => from_date(t),
        _ => Err(Error::Corrupt(format!("field `{key}` is not a date"))),
    }
}

/// Indexed metadata as JSON: the scalars it holds directly, anything else as relaxed extended
/// JSON (as [`get_meta`] does from a `Document`).
fn raw_meta(m: &RawDocument) -> bson::error::Result<Map<String, Value>> {
    let mut out = Map::new();
    for field in m {
        let (key, value) = field?;
        let json = match value {
            RawBsonRef::String(s) => Value::String(s.to_owned()),
            RawBsonRef::Int64(n) => Value::from(n),
            RawBsonRef::Int32(n) => Value::from(n),
            RawBsonRef::Boolean(b) => Value::Bool(b),
            RawBsonRef::Null => Value::Null,
            other => Bson::try_from(other)?.into_relaxed_extjson(),
        };
        out.insert(key.as_str().to_owned(), json);
    }
    Ok(out)
}

pub(super) fn version_from_doc(id: &ItemId, d: &Document) -> Result<VersionEntry> {
    Ok(VersionEntry {
        id: id.clone(),
        ov: get_u64(d, "ov")?,
        cv: get_u64(d, "cv")?,
        op: get_string(d, "op")?.parse()?,
        at: get_date(d, "at")?,
        actor: get_opt_string(d, "actor"),
        reason: get_opt_string(d, "reason"),
        write_id: get_string(d, "writeId")?,
        size: get_u64(d, "size")?,
        checksum: get_string(d, "checksum")?,
        meta: get_meta(d),
        deleted: d.get_bool("deleted").unwrap_or(false),
        request: match (d.get_str("requestId"), d.get_str("requestHash")) {
            (Ok(key), Ok(fingerprint)) => Some(RequestStamp {
                key: key.parse()?,
                fingerprint: fingerprint.to_owned(),
            }),
            _ => None,
        },
        payload_ref: get_payload_ref(d)?,
    })
}

pub(super) fn get_payload_ref(d: &Document) -> Result<Option<PayloadRef>> {
    match d.get("payloadRef") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(r)) => payload_ref_from(r).map(Some),
        Some(_) => Err(Error::Corrupt("field `payloadRef` is not a document".into())),
    }
}

fn payload_ref_from(r: &Document) -> Result<PayloadRef> {
    Ok(PayloadRef {
        of: get_string(r, "of")?,
        ov: get_u64(r, "ov")?,
        write_id: get_string(r, "writeId")?,
        function_ids: match r.get("functionIds") {
            Some(Bson::Array(a)) => a.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect(),
            _ => vec![],
        },
        pack: match r.get("pack") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(p)) => Some(PackSlot {
                key: get_string(p, "key")?,
                offset: get_u64(p, "offset")?,
                len: get_u64(p, "len")?,
            }),
            Some(_) => return Err(Error::Corrupt("field `payloadRef.pack` is not a document".into())),
        },
    })
}

pub(super) fn payload_ref_doc(r: &PayloadRef) -> Document {
    let mut d = doc! {"of": &r.of, "ov": r.ov as i64, "writeId": &r.write_id, "functionIds": &r.function_ids};
    if let Some(p) = &r.pack {
        d.insert("pack", pack_doc(p));
    }
    d
}

/// A pack slot as stored inside `payloadRef`.
pub(super) fn pack_doc(p: &PackSlot) -> Document {
    doc! {"key": &p.key, "offset": p.offset as i64, "len": p.len as i64}
}

/// For a version whose payload was packed (a reference to itself with its slot; see
/// `engine::pack`), the head's matching update: the head names the slot too, so a cold read of the
/// head finds the data without the version entry. `None` for every other version.
pub(super) fn packed_head_update(v: &VersionEntry) -> Option<(Document, Document)> {
    let r = v
        .payload_ref
        .as_ref()
        .filter(|r| r.of == v.write_id && r.pack.is_some())?;
    Some((
        doc! {"_id": v.id.as_str()},
        doc! {"$set": {"payloadRef": payload_ref_doc(r)}},
    ))
}

/// A head as a write leaves it, with every field of [`Head`] (a rebuild loads heads this way):
/// `data` only while inline, `payloadRef` only when set.
pub(super) fn head_doc(h: &Head) -> Document {
    let mut d = doc! {
        "_id": h.id.as_str(),
        "ov": h.ov as i64,
        "cv": h.cv as i64,
        "writeId": &h.write_id,
        "insertedAt": to_date(h.inserted_at),
        "updatedAt": to_date(h.updated_at),
        "deletedAt": h.deleted_at.map_or(Bson::Null, |t| Bson::DateTime(to_date(t))),
        "functionIds": &h.function_ids,
        "state": h.state.as_str(),
        "size": h.size as i64,
        "checksum": &h.checksum,
        "meta": to_bson_doc(&h.meta),
    };
    if let Some(data) = &h.inline {
        d.insert("data", data.as_str());
    }
    if let Some(r) = &h.payload_ref {
        d.insert("payloadRef", payload_ref_doc(r));
    }
    d
}

/// A version entry as stored, with collection version `cv`.
pub(super) fn version_doc(v: &VersionEntry, cv: u64) -> Document {
    let mut d = doc! {
        "_id": ObjectId::new(),
        "itemId": v.id.as_str(),
        "ov": v.ov as i64,
        "cv": cv as i64,
        "op": v.op.as_str(),
        "at": to_date(v.at),
        "actor": v.actor.as_deref(),
        "reason": v.reason.as_deref(),
        "writeId": &v.write_id,
        "size": v.size as i64,
        "checksum": &v.checksum,
        "meta": to_bson_doc(&v.meta),
        "deleted": v.deleted,
    };
    if let Some(r) = &v.payload_ref {
        d.insert("payloadRef", payload_ref_doc(r));
    }
    if let Some(r) = &v.request {
        d.insert("requestId", r.key.as_str());
        d.insert("requestHash", &r.fingerprint);
    }
    d
}

/// The `chronos_sequences` document with retention's tallies of a collection: `{from, counts:
/// [{name, n}], through}`, counting versions pruned with a cv above `from`; `through` is the
/// highest cv retention removed (the change feed's `HistoryStart::pruned_through`). Apart from the cv sequence
/// document, so it never holds up a writer's `$inc`; a counter reset moves `countersFrom` past
/// `from`, which voids the tallies without touching them.
pub(super) fn pruned_id(c: &CollectionName) -> String {
    // `/` is not allowed in collection names, so this can't be another collection's sequence.
    format!("{c}/pruned")
}

/// The tallies of a tally document, if they count from the counters' mark `from`.
pub(super) fn tally_counts(tally: &Document, from: u64) -> std::collections::HashMap<String, u64> {
    if get_u64(tally, "from").ok() != Some(from) {
        return Default::default();
    }
    let counts = tally.get_array("counts").map(|a| a.as_slice()).unwrap_or_default();
    counts
        .iter()
        .filter_map(|c| {
            let c = c.as_document()?;
            Some((c.get_str("name").ok()?.to_owned(), get_u64(c, "n").ok()?))
        })
        .collect()
}

pub(super) fn ref_head_update(w: &RefWrite, cv: u64) -> Document {
    let v = &w.version;
    // `cv < ours` as in single writes; `ov` pins the head the engine examined.
    let filter = doc! {"_id": v.id.as_str(), "ov": w.expected_ov as i64, "cv": {"$lt": cv as i64}};
    let mut set = doc! {
        "ov": v.ov as i64,
        "cv": cv as i64,
        "writeId": &v.write_id,
        "deletedAt": if v.deleted { Bson::DateTime(to_date(v.at)) } else { Bson::Null },
        "size": v.size as i64,
        "checksum": &v.checksum,
        "meta": to_bson_doc(&v.meta),
    };
    if let Some(r) = &v.payload_ref {
        set.insert("payloadRef", payload_ref_doc(r));
    }
    let mut update = doc! {"$max": {"updatedAt": to_date(v.at)}};
    if !w.keep_inline {
        set.insert("state", State::Processed.as_str());
        update.insert("$unset", doc! {"data": ""});
    }
    update.insert("$set", set);
    doc! {"q": filter, "u": update}
}

/// JSON → BSON for indexed metadata. Integers stay integers (as i64 when they fit) so equality
/// and range queries compare numerically.
pub(super) fn to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Bson::Int64(i),
            (None, Some(f)) => Bson::Double(f),
            (None, None) => Bson::String(n.to_string()),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(to_bson).collect()),
        Value::Object(o) => Bson::Document(to_bson_doc(o)),
    }
}

pub(super) fn to_bson_doc(m: &Map<String, Value>) -> Document {
    m.iter().map(|(k, v)| (k.clone(), to_bson(v))).collect()
}
