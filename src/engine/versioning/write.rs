//! The write protocol (see `docs/design.md`): hold the item, upload the payload under a key no
//! other attempt can use, commit, and remove only our own payload — keeping it when the outcome is
//! unknown. Creates, updates, deletes, enrichments (`enrich.rs`) and copying restores all go
//! through it.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::stamp::stamp;
use super::{Engine, NewContent, WriteIntent};
use crate::engine::envelope::{self};
use crate::engine::error::{Error, Result};
use crate::engine::ledger::{LedgerRecord, PrevLink};
use crate::engine::model::{
    Attribution, CollectionName, Content, Head, ItemId, Op, RequestStamp, SYSTEM_KEY, State, SystemFields,
    VersionEntry, WriteOutcome, metadata_name, now, payload_key,
};
use crate::engine::pack::packer::{Payload, Placement};
use crate::engine::pack::self_ref;
use crate::engine::settings::{CollectionMap, PackWrites};
use crate::engine::store::{CommitError, HeadChange, Held, NewData};

/// How many times a write whose commit failed transiently is redone from the start.
const COMMIT_ATTEMPTS: usize = 5;

impl Engine {
    /// Create an item at ov 0. With `id: None` a time-ordered id is generated.
    pub async fn create(
        &self,
        collection: &CollectionName,
        id: Option<ItemId>,
        data: Map<String, Value>,
        who: &Attribution,
    ) -> Result<(ItemId, WriteOutcome)> {
        let generated = id.is_none();
        let id = id.unwrap_or_else(ItemId::generate);
        self.create_as(collection, id, generated, data, who).await
    }

    /// [`Engine::create`] with the id chosen already; `generated` says the caller didn't name it
    /// (a retry under the same idempotency key without an id is then the same request).
    pub(crate) async fn create_as(
        &self,
        collection: &CollectionName,
        id: ItemId,
        generated: bool,
        data: Map<String, Value>,
        who: &Attribution,
    ) -> Result<(ItemId, WriteOutcome)> {
        let named = (!generated).then_some(&id);
        let stamp = stamp(who, collection, "create", named, None, &data)?;
        let mut data = data;
        self.contents
            .offload(self.map(collection), collection, &id, &mut data)
            .await?;
        let data = self.new_data(collection, data)?;
        self.write(
            collection,
            &id,
            who,
            WriteIntent {
                op: Op::Create,
                expected_ov: None,
                content: NewContent::Data(data),
                function_id: None,
                stamp,
            },
        )
        .await
    }

    /// Replace an item's data: ov + 1. `expected_ov: None` means last writer wins.
    pub async fn update(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        data: Map<String, Value>,
        expected_ov: Option<u64>,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        let stamp = stamp(who, collection, "update", Some(id), expected_ov, &data)?;
        let mut data = data;
        self.contents
            .offload(self.map(collection), collection, id, &mut data)
            .await?;
        let data = self.new_data(collection, data)?;
        let (_, outcome) = self
            .write(
                collection,
                id,
                who,
                WriteIntent {
                    op: Op::Update,
                    expected_ov,
                    content: NewContent::Data(data),
                    function_id: None,
                    stamp,
                },
            )
            .await?;
        Ok(outcome)
    }

    /// Logically delete an item: a new version marked deleted that keeps the last data.
    pub async fn delete(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        expected_ov: Option<u64>,
        who: &Attribution,
    ) -> Result<WriteOutcome> {
        let stamp = stamp(who, collection, "delete", Some(id), expected_ov, &Value::Null)?;
        let (_, outcome) = self
            .write(
                collection,
                id,
                who,
                WriteIntent {
                    op: Op::Delete,
                    expected_ov,
                    content: NewContent::KeepPrevious,
                    function_id: None,
                    stamp,
                },
            )
            .await?;
        Ok(outcome)
    }

    pub(crate) fn new_data(&self, collection: &CollectionName, mut data: Map<String, Value>) -> Result<NewData> {
        // `_system` is ours: a record read, edited and written back must not smuggle it in.
        data.remove(SYSTEM_KEY);
        let content = Content::new(&data)?;
        if content.json.len() > self.settings.max_payload_bytes {
            return Err(Error::TooLarge {
                actual: content.json.len(),
                limit: self.settings.max_payload_bytes,
            });
        }
        let map = self.map(collection);
        let meta = match map.and_then(CollectionMap::explicit) {
            Some(props) => explicit_meta(&data, props)?,
            None => default_meta(&data, self.settings.meta_max_string_bytes),
        };
        if let Some(map) = map {
            let missing: Vec<&str> = map
                .required_indexed
                .iter()
                .filter(|p| data.get(p.as_str()).is_none_or(Value::is_null))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(Error::validation(
                    "data",
                    format!("missing required indexed properties: {}", missing.join(", ")),
                ));
            }
        }
        // Sealed data is never also kept in clear in the head (see `engine::shred`).
        let inline = content.json.len() <= self.settings.inline_max_bytes && !self.encrypted(collection);
        Ok(NewData { content, meta, inline })
    }

    /// The write protocol: hold the item in the metadata store, upload the payload under a key no
    /// other attempt can use, then commit head + version atomically. See `docs/design.md`.
    ///
    /// With an idempotency stamp, a write already made under its key is not made again: its
    /// first outcome is returned (`replayed`), also when a concurrent attempt with the same key
    /// wins the race — the store refuses a second version with the key.
    pub(crate) async fn write(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        who: &Attribution,
        intent: WriteIntent,
    ) -> Result<(ItemId, WriteOutcome)> {
        self.prepare(collection).await?;
        let stamp = intent.stamp.clone();
        self.once_per_key(collection, stamp.as_ref(), || async {
            let outcome = self.write_once(collection, id, who, intent).await?;
            Ok((id.clone(), outcome))
        })
        .await
    }

    pub(crate) async fn write_once(
        &self,
        collection: &CollectionName,
        id: &ItemId,
        who: &Attribution,
        intent: WriteIntent,
    ) -> Result<WriteOutcome> {
        let WriteIntent {
            op,
            expected_ov,
            content,
            function_id,
            stamp,
        } = intent;
        let stamp = stamp.as_ref();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let write_id = uuid::Uuid::now_v7();
            let change = HeadChange {
                collection: collection.clone(),
                id: id.clone(),
                op,
                expected_ov,
                write_id: write_id.simple().to_string(),
                commit_by: crate::engine::store::rules::commit_deadline(&write_id, self.settings.orphan_grace),
                at: now(),
                data: match &content {
                    NewContent::Data(d) => Some(d.clone()),
                    NewContent::KeepPrevious => None,
                },
                function_id: function_id.clone(),
                request_key: stamp.map(|s| s.key.clone()),
            };
            let Held {
                previous,
                ov,
                cv,
                together,
                write: pending,
            } = self.meta.begin_write(change.clone()).await?;
            let prepared = match self.version_for(&change, previous.as_ref(), ov, cv, who, stamp).await {
                Ok(p) => p,
                Err(e) => {
                    pending.abort().await;
                    return Err(e);
                }
            };
            let (mut entry, body, mut record) = prepared;
            let key = payload_key(collection, id, ov, &change.write_id);
            let placement = match self
                .store_payload(collection, &entry, Bytes::from(body), together)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    pending.abort().await;
                    return Err(e);
                }
            };
            if let Placement::Packed(slot) = &placement {
                // The version names its slot by referring to itself; the store puts the same
                // reference on the head, so cold reads of either find it.
                let r = self_ref(ov, &entry.write_id, &record.function_ids, slot.clone());
                (entry.payload_ref, record.payload_ref) = (Some(r.clone()), Some(r));
            }
            let outcome = WriteOutcome {
                ov,
                cv,
                at: entry.at,
                replayed: false,
            };
            match pending.commit(entry).await {
                Ok(()) => {
                    self.ledger.record(collection, [record]);
                    return Ok(outcome);
                }
                Err(CommitError::NotCommitted { error, retry }) => {
                    // Our key is unique to this attempt, so removing it can't touch anyone else's.
                    // A pack is shared: its bytes of ours stay until scrub finds it unreferenced.
                    if placement == Placement::Own
                        && let Err(e) = self.payloads.delete(&key).await
                    {
                        tracing::warn!(%key, error = %e, "could not remove the payload of an aborted write; scrub will find it");
                    }
                    if !retry || attempt >= COMMIT_ATTEMPTS {
                        return Err(error);
                    }
                }
                Err(CommitError::Unknown(error)) => {
                    // The commit may have happened: the payload must stay.
                    tracing::warn!(%key, %error, "commit outcome unknown; payload kept");
                    return Err(Error::OutcomeUnknown(error.to_string()));
                }
            }
        }
    }

    /// Store a write's payload: into the collection's packer when packing is on and the object
    /// needs no lock of its own (Object Lock settings are per object, and would bind the other
    /// members), else at the version's own key.
    async fn store_payload(
        &self,
        collection: &CollectionName,
        entry: &VersionEntry,
        body: Bytes,
        together: usize,
    ) -> Result<Placement> {
        let locked = self.put_options(collection, &entry.id, entry.at).await?;
        let packing = matches!(self.settings.pack_writes, PackWrites::Together | PackWrites::Always);
        if packing && locked.is_plain() {
            let payload = Payload {
                collection,
                id: &entry.id,
                ov: entry.ov,
                write_id: &entry.write_id,
                body,
                together,
            };
            return self.packer.put(payload).await;
        }
        let key = payload_key(collection, &entry.id, entry.ov, &entry.write_id);
        self.payloads.put_with(&key, body, &locked).await?;
        Ok(Placement::Own)
    }

    /// Build the version entry, payload and ledger record of a write once the store has told us
    /// the previous head.
    async fn version_for(
        &self,
        change: &HeadChange,
        previous: Option<&Head>,
        ov: u64,
        cv: u64,
        who: &Attribution,
        stamp: Option<&RequestStamp>,
    ) -> Result<(VersionEntry, Vec<u8>, LedgerRecord)> {
        let collection = &change.collection;
        // Per item, time never runs backwards even if replicas' clocks disagree slightly.
        let at = previous.map_or(change.at, |p| p.updated_at.max(change.at));
        let (content, meta) = match (&change.data, previous) {
            (Some(d), _) => (d.content.clone(), d.meta.clone()),
            (None, Some(p)) => {
                let json = match &p.inline {
                    Some(json) => json.clone(),
                    None => self.load(collection, &p.id, p.payload(), &p.checksum).await?.data_json,
                };
                (Content::from_json(json), p.meta.clone())
            }
            (None, None) => {
                return Err(Error::Corrupt("a write without data needs a previous version".into()));
            }
        };
        let deleted = change.op == Op::Delete;
        let mut function_ids = previous.map(|p| p.function_ids.clone()).unwrap_or_default();
        if let Some(f) = &change.function_id
            && !function_ids.contains(f)
        {
            function_ids.push(f.clone());
        }
        let system = SystemFields {
            inserted_at: previous.map_or(at, |p| p.inserted_at),
            updated_at: at,
            deleted_at: deleted.then_some(at),
            deleted,
            function_ids,
            state: State::New,
        };
        let entry = VersionEntry {
            id: change.id.clone(),
            ov,
            cv,
            op: change.op,
            at,
            actor: who.actor.clone(),
            reason: who.reason.clone(),
            write_id: change.write_id.clone(),
            size: content.size(),
            checksum: content.checksum.clone(),
            meta,
            deleted,
            request: stamp.cloned(),
            payload_ref: None,
        };
        let prev = previous.map(PrevLink::of);
        let stored = self.data_to_store(collection, &entry, &content.json).await?;
        let body = envelope::encode(&self.database, collection, &entry, &system, prev, &stored)?;
        let record = LedgerRecord::new(&entry, &system, previous);
        Ok((entry, body, record))
    }
}

/// With no collection map, every top-level property whose value is a scalar (or an array of
/// scalars) becomes indexed metadata. Objects and very long strings are left out: the query
/// subset can't use them and they would bloat the head.
fn default_meta(data: &Map<String, Value>, max_string: usize) -> Map<String, Value> {
    let fits = |v: &Value| match v {
        Value::String(s) => s.len() <= max_string,
        Value::Object(_) | Value::Array(_) => false,
        _ => true,
    };
    data.iter()
        .filter(|(k, _)| metadata_name(k))
        .filter(|(_, v)| match v {
            Value::Array(items) => items.len() <= 64 && items.iter().all(fits),
            other => fits(other),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// With a collection map, exactly the listed properties are indexed metadata; each must be a
/// scalar or an array of scalars, since that is what queries can compare.
fn explicit_meta(data: &Map<String, Value>, props: &[String]) -> Result<Map<String, Value>> {
    let mut meta = Map::new();
    for p in props {
        let Some(v) = data.get(p) else { continue };
        let scalar = |v: &Value| !matches!(v, Value::Object(_) | Value::Array(_));
        let ok = match v {
            Value::Array(items) => items.iter().all(scalar),
            other => scalar(other),
        };
        if !ok {
            return Err(Error::validation(
                p.clone(),
                "an indexed property must be a string, number, boolean, null or an array of those",
            ));
        }
        meta.insert(p.clone(), v.clone());
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_meta_keeps_scalars_only() {
        let data = json!({
            "a": 1, "b": "x", "c": [1, "y"], "d": {"e": 1}, "$x": 1, "f.g": 2, "h": "z".repeat(2000),
            "i": [{"j": 1}], "k": null
        });
        let meta = default_meta(data.as_object().unwrap(), 1024);
        assert_eq!(meta.keys().collect::<Vec<_>>(), ["a", "b", "c", "k"]);
    }
}
