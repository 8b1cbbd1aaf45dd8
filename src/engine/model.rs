//! The vocabulary of the versioning core: names, versions, heads and records.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{Error, Result};

/// Milliseconds are the resolution every backend can store (BSON dates are milliseconds).
pub type Timestamp = jiff::Timestamp;

/// The current time, truncated to whole milliseconds so that what is stored equals what was returned.
pub fn now() -> Timestamp {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A collection name. It becomes part of MongoDB collection names and S3 keys, so it is
/// restricted to a safe alphabet: ASCII letters, digits, `_` and `-`, 1–64 chars, starting with a
/// letter or digit. Names starting with `system` or `chronos` are reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

/// An item id. It becomes part of S3 keys: ASCII letters, digits and `_ - . :`, 1–128 chars,
/// starting with a letter or digit (so `.` and `..` can never appear as a path segment).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ItemId(String);

fn check_name(field: &str, s: &str, max: usize, extra: &[char]) -> Result<()> {
    let describe = || {
        let extras: String = extra.iter().map(|c| format!(" `{c}`")).collect();
        format!("must be 1-{max} characters of ASCII letters, digits and{extras}, starting with a letter or digit")
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err(Error::validation(field, describe())),
    }
    if s.len() > max || !chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(&c)) {
        return Err(Error::validation(field, describe()));
    }
    Ok(())
}

impl CollectionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CollectionName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        check_name("collection", s, 64, &['_', '-'])?;
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("system") || lower.starts_with("chronos") {
            return Err(Error::validation(
                "collection",
                "names starting with `system` or `chronos` are reserved",
            ));
        }
        Ok(CollectionName(s.to_owned()))
    }
}

impl ItemId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A new time-ordered id (UUIDv7): keeps index inserts local in MongoDB's B-trees.
    pub fn generate() -> Self {
        ItemId(uuid::Uuid::now_v7().to_string())
    }
}

impl FromStr for ItemId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        check_name("id", s, 128, &['_', '-', '.', ':'])?;
        Ok(ItemId(s.to_owned()))
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
display_as_str!(CollectionName, ItemId);

/// What a version did to its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Op {
    Create,
    Update,
    Delete,
    Restore,
    /// A tombstone: the version existed (its ov, cv and time stay, so numbering stays gapless)
    /// but its data, metadata and attribution were erased (`engine::erase`).
    Erased,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "CREATE",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Restore => "RESTORE",
            Op::Erased => "ERASED",
        }
    }
}

impl FromStr for Op {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "CREATE" => Op::Create,
            "UPDATE" => Op::Update,
            "DELETE" => Op::Delete,
            "RESTORE" => Op::Restore,
            "ERASED" => Op::Erased,
            other => return Err(Error::Corrupt(format!("unknown op `{other}`"))),
        })
    }
}

/// Where an item's latest payload lives (the cost-tiering state machine).
///
/// `new`: the payload is in S3 *and* inline in the metadata store (hot reads take one command).
/// `processed`: the inline copy was dropped after its TTL; the payload lives only in S3.
/// `new-not-synched` is reserved for a write-behind mode; this engine never produces it because a
/// write is acknowledged only after its payload is durable in S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    NewNotSynched,
    New,
    Processed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NewNotSynched => "new-not-synched",
            State::New => "new",
            State::Processed => "processed",
        }
    }
}

impl FromStr for State {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "new-not-synched" => State::NewNotSynched,
            "new" => State::New,
            "processed" => State::Processed,
            other => return Err(Error::Corrupt(format!("unknown state `{other}`"))),
        })
    }
}

/// The `_system` block every record carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemFields {
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    pub deleted: bool,
    pub function_ids: Vec<String>,
    pub state: State,
}

/// The serialized JSON of a record's data (a JSON object, without `_system`) with its digest.
/// Kept as text so what was written is byte-for-byte what is read back and checksummed.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub json: String,
    /// Hex SHA-256 of `json`.
    pub checksum: String,
}

impl Content {
    pub fn new(data: &Map<String, Value>) -> Result<Self> {
        let json =
            serde_json::to_string(data).map_err(|e| Error::validation("data", format!("not serializable: {e}")))?;
        Ok(Self::from_json(json))
    }

    pub fn from_json(json: String) -> Self {
        let checksum = sha256_hex(&json);
        Content { json, checksum }
    }

    pub fn size(&self) -> u64 {
        self.json.len() as u64
    }
}

/// Check stored data text against its version's checksum: it is then exactly the JSON written.
pub fn check_data(json: &str, expected_checksum: &str, what: &dyn fmt::Display) -> Result<()> {
    if sha256_hex(json) != expected_checksum {
        return Err(Error::Corrupt(format!("checksum mismatch for {what}")));
    }
    Ok(())
}

/// Parse data text already checked by [`check_data`].
pub fn parse_checked(json: &str, what: &dyn fmt::Display) -> Result<Map<String, Value>> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// The metadata store's view of an item's latest version: one document per item.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    /// Unique per write attempt; names the payload object (see [`payload_key`]).
    pub write_id: String,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    pub function_ids: Vec<String>,
    pub state: State,
    pub size: u64,
    pub checksum: String,
    /// Indexed metadata: the properties that queries may filter on.
    pub meta: Map<String, Value>,
    /// The data inline while the item is hot (`state == new`) and small enough.
    pub inline: Option<String>,
    /// Set when the latest version was appended by reference (see [`PayloadRef`]). Only valid
    /// while `of` equals this head's `write_id`: writes that know nothing of references leave a
    /// stale copy behind, which [`Head::payload`] then ignores.
    pub payload_ref: Option<PayloadRef>,
}

impl Head {
    pub fn deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// Whether the item was erased: its head is a tombstone, recognised by having no data
    /// checksum (every head that holds data has the SHA-256 of it; see `engine::erase`).
    pub fn erased(&self) -> bool {
        self.checksum.is_empty()
    }

    pub fn system(&self) -> SystemFields {
        SystemFields {
            inserted_at: self.inserted_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            deleted: self.deleted(),
            function_ids: self.function_ids.clone(),
            state: self.state,
        }
    }

    /// Where this head's data is: its own payload object, or the one its reference names.
    pub fn payload(&self) -> PayloadLoc<'_> {
        PayloadLoc::of(self.ov, &self.write_id, self.payload_ref.as_ref())
    }
}

/// A version whose data is another version's payload object (restore by reference): instead of
/// copying the payload, the version entry (and the head) name the object of version `ov`, write
/// `write_id` of the same item. Reads fetch that object and check its envelope against exactly
/// that (ov, write id) and the data checksum, so a read still never returns another item's (or
/// another version's) data. The envelope's `_system` block belongs to the referenced version, so
/// what differs for the referring version is kept here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadRef {
    /// The write id of the version that refers: a reference is valid only next to it.
    pub of: String,
    /// The version whose payload object is used.
    pub ov: u64,
    pub write_id: String,
    /// The referring version's `_system.functionIds`.
    pub function_ids: Vec<String>,
    /// Where the referenced version's envelope lies when it was written into a pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSlot>,
}

impl PayloadRef {
    /// The key of the pack it names (`None`: the payload's own object). What a restore by
    /// reference and a repointing compare, so a slot moved meanwhile is never written back.
    pub fn pack_key(&self) -> Option<&str> {
        self.pack.as_ref().map(|p| p.key.as_str())
    }
}

/// Where a version's envelope lies inside a pack: the object that holds the payloads of writes
/// made together (see `engine::pack`). Reads fetch exactly these bytes with one ranged GET.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackSlot {
    /// The pack's key in the JSON bucket (relative to the database, like every payload key).
    pub key: String,
    pub offset: u64,
    pub len: u64,
}

/// Where a version's data is: the payload object of version `ov` written by `write_id` — at its
/// own key ([`payload_key`]), or inside a pack when `pack` says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLoc<'a> {
    pub ov: u64,
    pub write_id: &'a str,
    pub pack: Option<&'a PackSlot>,
}

impl<'a> PayloadLoc<'a> {
    /// The location of version `ov` written by `write_id`, given its reference if any: a
    /// reference counts only next to the write that made it (`of`), so a stale copy a later
    /// write left behind is ignored. A packed version refers to itself, with its slot.
    pub fn of(ov: u64, write_id: &'a str, payload_ref: Option<&'a PayloadRef>) -> Self {
        match payload_ref {
            Some(r) if r.of == write_id => PayloadLoc {
                ov: r.ov,
                write_id: &r.write_id,
                pack: r.pack.as_ref(),
            },
            _ => PayloadLoc {
                ov,
                write_id,
                pack: None,
            },
        }
    }

    /// The object's own key; for a packed payload, where a standalone copy goes (presigning).
    pub fn key(&self, collection: &CollectionName, id: &ItemId) -> String {
        payload_key(collection, id, self.ov, self.write_id)
    }

    /// Whether this is the object the version itself wrote (not one it refers to).
    pub fn is_own(&self, ov: u64, write_id: &str) -> bool {
        self.ov == ov && self.write_id == write_id
    }
}

/// One entry of the version index: everything about a version except its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionEntry {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    pub op: Op,
    pub at: Timestamp,
    pub actor: Option<String>,
    pub reason: Option<String>,
    #[serde(skip)]
    pub write_id: String,
    pub size: u64,
    pub checksum: String,
    #[serde(skip)]
    pub meta: Map<String, Value>,
    pub deleted: bool,
    /// The idempotency key the write carried, if any (see [`RequestStamp`]).
    #[serde(skip)]
    pub request: Option<RequestStamp>,
    /// Set when this version was appended by reference (see [`PayloadRef`]).
    #[serde(skip)]
    pub payload_ref: Option<PayloadRef>,
}

impl VersionEntry {
    /// Whether this entry is an erased version's tombstone (see [`Op::Erased`]).
    pub fn erased(&self) -> bool {
        self.op == Op::Erased
    }

    /// The tombstone an erasure leaves of this version: its place (id, ov, cv, time) and
    /// nothing else — no data checksum, metadata, attribution, idempotency stamp or reference.
    pub fn tombstone(&self) -> VersionEntry {
        VersionEntry::tombstone_at(&self.id, self.ov, self.cv, self.at)
    }

    /// The tombstone of version `ov` (collection version `cv`, written at `at`) of item `id`.
    pub fn tombstone_at(id: &ItemId, ov: u64, cv: u64, at: Timestamp) -> VersionEntry {
        VersionEntry {
            id: id.clone(),
            ov,
            cv,
            op: Op::Erased,
            at,
            actor: None,
            reason: None,
            write_id: String::new(),
            size: 0,
            checksum: String::new(),
            meta: Map::new(),
            deleted: true,
            request: None,
            payload_ref: None,
        }
    }

    /// Where this version's data is: its own payload object, or the one its reference names.
    pub fn payload(&self) -> PayloadLoc<'_> {
        PayloadLoc::of(self.ov, &self.write_id, self.payload_ref.as_ref())
    }
}

/// Where the payload of version `ov` of an item lives in the JSON bucket.
///
/// The write id makes every write attempt's key unique, so a writer that loses the race for an ov
/// can neither overwrite nor (when it cleans up) delete the winner's payload.
///
/// One folder per item (`<collection>/<id>/`, which also holds its manifests, so erasing an item
/// deletes under one prefix) and none per version: an S3 server with a filer (SeaweedFS) makes a
/// directory entry for each new folder level, so a `v<ov>/` level cost every version one more
/// (docs/benchmarks.md, "Key layout").
pub fn payload_key(collection: &CollectionName, id: &ItemId, ov: u64, write_id: &str) -> String {
    format!("{collection}/{id}/v{ov}.{write_id}.json")
}

/// A record as readers see it: the data plus its version coordinates and `_system` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: ItemId,
    pub ov: u64,
    pub cv: u64,
    /// Names the version's payload object (see [`payload_key`]).
    pub write_id: String,
    pub system: SystemFields,
    pub data: Map<String, Value>,
    /// Set when the version was appended by reference (see [`PayloadRef`]).
    pub payload_ref: Option<PayloadRef>,
}

impl Record {
    /// Where this record's data is: its own payload object, or the one its reference names.
    pub fn payload(&self) -> PayloadLoc<'_> {
        PayloadLoc::of(self.ov, &self.write_id, self.payload_ref.as_ref())
    }
}

/// What a write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteOutcome {
    pub ov: u64,
    pub cv: u64,
    pub at: Timestamp,
    /// The write had been made before under the same idempotency key: this is that first
    /// outcome, and nothing was written now.
    #[serde(skip)]
    pub replayed: bool,
}

/// Who wrote and why; stored with every version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// The client's idempotency key: a write retried with the same key returns the first
    /// outcome instead of writing again.
    pub request_key: Option<RequestKey>,
}

/// A client-chosen idempotency key (`Idempotency-Key` header): 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestKey(String);

impl RequestKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RequestKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::validation(
                "idempotencyKey",
                "must be 1 to 255 visible ASCII characters (no spaces)",
            ));
        }
        Ok(RequestKey(s.to_owned()))
    }
}

impl TryFrom<String> for RequestKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<RequestKey> for String {
    fn from(k: RequestKey) -> String {
        k.0
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a version remembers of the request that wrote it: its idempotency key and a
/// fingerprint (SHA-256) of what was asked, so a key reused for a different request is refused
/// instead of answered with the wrong outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStamp {
    pub key: RequestKey,
    pub fingerprint: String,
}

impl Attribution {
    pub fn new(actor: impl Into<String>, reason: impl Into<String>) -> Self {
        Attribution {
            actor: Some(actor.into()),
            reason: Some(reason.into()),
            request_key: None,
        }
    }
}

/// The database key of the single-database configuration (`/v1/default/…`).
pub const DEFAULT_DATABASE: &str = "default";

/// The key under which records carry their system fields; never part of stored data.
pub const SYSTEM_KEY: &str = "_system";

/// Whether a top-level property name can be indexed metadata: a MongoDB field name (no leading
/// `$`, no `.`, and no NUL — BSON names are C strings) that is not ours.
pub(crate) fn metadata_name(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('$') && !p.contains(['.', '\0']) && p != SYSTEM_KEY
}

/// How [`Engine::enrich`](crate::engine::Engine::enrich) writes.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    /// Recorded in `_system.functionIds` (provenance).
    pub function_id: Option<String>,
    /// Optimistic lock; without it, concurrent writes are merged over.
    pub expected_ov: Option<u64>,
}

/// Which earlier version a restore brings back.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionTarget {
    Ov(u64),
    At(Timestamp),
}

impl VersionTarget {
    /// Whether `v` can be the version this names: the one with that ov, or any written at or
    /// before that time (the latest of those is the one current then).
    pub fn admits(&self, v: &VersionEntry) -> bool {
        match *self {
            VersionTarget::Ov(ov) => v.ov == ov,
            VersionTarget::At(at) => v.at <= at,
        }
    }
}

impl std::fmt::Display for VersionTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionTarget::Ov(ov) => write!(f, "ov {ov}"),
            VersionTarget::At(at) => write!(f, "{at}"),
        }
    }
}

#[cfg(test)]
mod tests;
