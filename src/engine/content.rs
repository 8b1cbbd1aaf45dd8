//! Content properties: large text or binary values kept in the content bucket.
//!
//! A collection map declares them (`contentProps: {photo: binary, body: text}`). On write, such a
//! property's value — text, or base64 for binary — is stored under a content-addressed key,
//! `<collection>/<itemId>/content/<sha256>.bin|txt` (under the database's prefix), and the JSON
//! keeps a reference: `{"$content": {"kind", "key", "size", "sha256"}}`. A reference must be
//! exactly that key of its own item, when written and again when resolved or presigned. Content addressing means an unchanged
//! property is stored once across versions, and two racing writers of the same bytes write the
//! same object, so no attempt ever needs to delete a content object another version may use.
//! Reads resolve references back to values, or to presigned URLs.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest;

use super::error::{Error, Result};
use super::model::{CollectionName, ItemId, Record};
use super::settings::{CollectionMap, ContentKind, ContentMode};
use super::store::PayloadStore;

/// The reference key in the JSON.
pub const CONTENT_KEY: &str = "$content";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reference {
    kind: ContentKind,
    key: String,
    size: u64,
    sha256: String,
}

fn reference_of(v: &Value) -> Option<Reference> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    serde_json::from_value(obj.get(CONTENT_KEY)?.clone()).ok()
}

fn extension(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Binary => "bin",
        ContentKind::Text => "txt",
    }
}

/// The content key of `sha256` (64 lowercase hex digits) of kind `kind` for an item.
fn content_key(collection: &CollectionName, id: &ItemId, sha256: &str, kind: ContentKind) -> String {
    format!("{collection}/{id}/content/{sha256}.{}", extension(kind))
}

impl Reference {
    /// Whether this is exactly a reference to one of this item's content objects of `kind`:
    /// `<collection>/<id>/content/<sha256>.txt|bin` with a 64-digit lowercase hex SHA-256 — no
    /// other key (`..` segments, another item's, another bucket path) is ever read or presigned.
    fn is_own(&self, collection: &CollectionName, id: &ItemId, kind: ContentKind) -> bool {
        self.kind == kind
            && self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && self.key == content_key(collection, id, &self.sha256, kind)
    }
}

/// The content properties a collection map declares.
fn content_props(map: Option<&CollectionMap>) -> Vec<(String, ContentKind)> {
    map.map(|m| m.content_props.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// The content store and the moves of content properties in and out of it: the engine holds one,
/// offloads through it on every write and resolves through it on reads that ask for content.
/// It knows nothing of the engine — the caller passes the collection's map.
#[derive(Default)]
pub(crate) struct Contents {
    /// The content bucket; `None` when the database has none (content properties are refused).
    store: Option<Arc<dyn PayloadStore>>,
}

impl Contents {
    pub(crate) fn new(store: Arc<dyn PayloadStore>) -> Self {
        Contents { store: Some(store) }
    }

    pub(crate) fn store(&self) -> Option<&dyn PayloadStore> {
        self.store.as_deref()
    }

    /// Move the content properties `map` declares from `data` to the content store, leaving
    /// references.
    pub(crate) async fn offload(
        &self,
        map: Option<&CollectionMap>,
        collection: &CollectionName,
        id: &ItemId,
        data: &mut Map<String, Value>,
    ) -> Result<()> {
        let props = content_props(map);
        if props.is_empty() {
            return Ok(());
        }
        for (prop, kind) in props {
            let Some(value) = data.get(&prop) else { continue };
            let bytes = match (value, kind) {
                (Value::Null, _) => continue,
                (Value::String(s), ContentKind::Text) => Bytes::from(s.clone().into_bytes()),
                (Value::String(s), ContentKind::Binary) => Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| Error::validation(prop.clone(), format!("must be base64: {e}")))?,
                ),
                (v, _) => match reference_of(v) {
                    // A record read with references and written back: keep them, but only
                    // if they point at this item's own content.
                    Some(r) if r.is_own(collection, id, kind) => continue,
                    Some(_) => {
                        return Err(Error::validation(
                            prop,
                            "references only this item's own content of this kind",
                        ));
                    }
                    None => {
                        return Err(Error::validation(
                            prop,
                            match kind {
                                ContentKind::Text => "a text content property must be a string",
                                ContentKind::Binary => "a binary content property must be a base64 string",
                            },
                        ));
                    }
                },
            };
            let store = self.store().ok_or_else(|| {
                Error::validation(
                    prop.clone(),
                    "content properties need a content store (spacesConns[].contentBucket)",
                )
            })?;
            let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
            let key = content_key(collection, id, &sha256, kind);
            let size = bytes.len() as u64;
            store.put(&key, bytes).await?;
            data.insert(prop, json!({CONTENT_KEY: Reference { kind, key, size, sha256 }}));
        }
        Ok(())
    }

    /// Show a record's content properties (those `map` declares) as `mode` says.
    pub(crate) async fn resolve(
        &self,
        map: Option<&CollectionMap>,
        collection: &CollectionName,
        record: &mut Record,
        mode: ContentMode,
    ) -> Result<()> {
        if mode == ContentMode::Reference {
            return Ok(());
        }
        for (prop, kind) in content_props(map) {
            let Some(r) = record.data.get(&prop).and_then(reference_of) else {
                continue;
            };
            // Checked again at read: a value stored before the property became a content
            // property was never checked, and must not reach another object of the bucket.
            if !r.is_own(collection, &record.id, kind) {
                return Err(Error::Corrupt(format!(
                    "{collection}/{} v{}: `{prop}` is not a content reference of this item",
                    record.id, record.ov
                )));
            }
            let store = self.store().ok_or_else(|| {
                Error::Corrupt(format!("{prop} references content but no content store is configured"))
            })?;
            let value = match mode {
                ContentMode::Presigned(ttl) => {
                    let url = store.presign_get(&r.key, ttl).await?.ok_or_else(no_presign)?;
                    let mut with_url = serde_json::to_value(&r).map_err(|e| Error::Corrupt(e.to_string()))?;
                    with_url["url"] = Value::String(url);
                    json!({CONTENT_KEY: with_url})
                }
                _ => {
                    let bytes = store
                        .get(&r.key)
                        .await?
                        .ok_or_else(|| Error::Corrupt(format!("content {} is missing", r.key)))?;
                    if hex::encode(sha2::Sha256::digest(&bytes)) != r.sha256 {
                        return Err(Error::Corrupt(format!("content {} does not match its checksum", r.key)));
                    }
                    match r.kind {
                        ContentKind::Binary => Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                        ContentKind::Text => Value::String(
                            String::from_utf8(bytes.to_vec()).map_err(|e| Error::Corrupt(format!("{}: {e}", r.key)))?,
                        ),
                    }
                }
            };
            record.data.insert(prop, value);
        }
        Ok(())
    }
}

/// The refusal of a presigned URL by a store that cannot make one.
pub(crate) fn no_presign() -> Error {
    Error::validation(
        "presign",
        "this database's payload store cannot presign URLs (it needs an S3 store)",
    )
}
