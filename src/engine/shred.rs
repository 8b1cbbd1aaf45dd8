//! Crypto-shredding: collections with `encryption: perItem` seal each version's data under a
//! data key of its item (`engine::sealed`), kept wrapped by the KEK as a side record of the item
//! (`store::sidecar`). Destroying that record ([`Engine::shred_item_key`]) erases every version
//! of the item at once, wherever its objects are and whether or not they can be deleted (S3
//! Object Lock): a read then answers 410 `erased`.
//!
//! What stays in clear, by design: the envelope header (a rebuild and a verify read it with no
//! key) — which includes the indexed metadata — and the heads' and version entries' indexed
//! metadata in the metadata store. Don't index personal data in a collection meant to be
//! shredded. Data is never kept inline in the head of such a collection. A queued write keeps
//! its data in the retry queue until it lands.

use std::borrow::Cow;

use crate::engine::envelope::{self, Decoded, DecodedText, Expected};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, VersionEntry};
use crate::engine::sealed::{self, DataKey, Kek, OpenError, WrappedKey};
use crate::engine::settings::Encryption;
use crate::engine::store::sidecar::SideKind;
use crate::engine::versioning::Engine;

impl Engine {
    /// Whether the collection's payloads are sealed per item.
    pub(crate) fn encrypted(&self, collection: &CollectionName) -> bool {
        self.map(collection)
            .is_some_and(|m| m.encryption == Encryption::PerItem)
    }

    fn kek(&self, collection: &CollectionName) -> Result<&Kek> {
        self.settings().encryption_key.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "collection {collection} has `encryption: perItem` but the engine has no encryptionKey"
            ))
        })
    }

    /// What a data key of the item is bound to.
    fn key_owner(&self, collection: &CollectionName, id: &ItemId) -> String {
        format!("{}/{collection}/{id}", self.database())
    }

    /// The item's data key as stored now, unwrapped (`None`: never made, or destroyed).
    async fn stored_key(&self, collection: &CollectionName, id: &ItemId) -> Result<Option<DataKey>> {
        let Some(record) = self.meta().side(collection, SideKind::DataKey, id).await? else {
            return Ok(None);
        };
        self.unwrap_key(collection, id, &record).map(Some)
    }

    fn unwrap_key(&self, collection: &CollectionName, id: &ItemId, record: &str) -> Result<DataKey> {
        let wrapped: WrappedKey =
            serde_json::from_str(record).map_err(|e| Error::Corrupt(format!("data key of {collection}/{id}: {e}")))?;
        DataKey::unwrap(self.kek(collection)?, &self.key_owner(collection, id), &wrapped)
    }

    /// The item's data key, made on its first write. Two first writes racing agree on one key:
    /// the store keeps the first record created.
    async fn key_for_write(&self, collection: &CollectionName, id: &ItemId) -> Result<DataKey> {
        if let Some(key) = self.stored_key(collection, id).await? {
            return Ok(key);
        }
        let (key, wrapped) = DataKey::generate(self.kek(collection)?, &self.key_owner(collection, id))?;
        let record =
            serde_json::to_string(&wrapped).map_err(|e| Error::Corrupt(format!("cannot encode a data key: {e}")))?;
        let stored = self
            .meta()
            .create_side(collection, SideKind::DataKey, id, &record)
            .await?;
        if stored == record {
            Ok(key)
        } else {
            self.unwrap_key(collection, id, &stored)
        }
    }

    /// The data a version's envelope carries: `data_json` itself, or sealed for its version in
    /// an encrypted collection.
    pub(crate) async fn data_to_store<'a>(
        &self,
        collection: &CollectionName,
        entry: &VersionEntry,
        data_json: &'a str,
    ) -> Result<Cow<'a, str>> {
        if !self.encrypted(collection) {
            return Ok(Cow::Borrowed(data_json));
        }
        let key = self.key_for_write(collection, &entry.id).await?;
        let aad = version_aad(self.database(), collection, &entry.id, entry.ov, &entry.write_id);
        key.seal(data_json, &aad).map(Cow::Owned)
    }

    /// [`envelope::decode`], opening sealed data with the item's key: `Erased` once the key is
    /// destroyed.
    pub(crate) async fn decode_payload(&self, bytes: &[u8], expected: &Expected<'_>) -> Result<Decoded> {
        let text = self.decode_payload_text(bytes, expected).await?;
        // Formatted only if the data fails to parse: this is every payload read's path.
        text.parse(&format_args!(
            "{}/{} v{}",
            expected.collection, expected.id, expected.ov
        ))
    }

    /// [`Engine::decode_payload`], leaving the data as text.
    pub(crate) async fn decode_payload_text(&self, bytes: &[u8], expected: &Expected<'_>) -> Result<DecodedText> {
        if !self.encrypted(expected.collection) {
            return envelope::decode_text(bytes, expected);
        }
        let key = self.stored_key(expected.collection, expected.id).await?;
        let aad = version_aad(
            expected.database,
            expected.collection,
            expected.id,
            expected.ov,
            expected.write_id,
        );
        let what = format!("{}/{} v{}", expected.collection, expected.id, expected.ov);
        envelope::decode_text_opened(bytes, expected, &|data| {
            if !sealed::is_sealed(data) {
                return Ok(None);
            }
            sealed::open(data, key.as_ref(), &aad).map(Some).map_err(|e| match e {
                OpenError::KeyGone => Error::Erased(what.clone()),
                OpenError::Damaged(why) => Error::Corrupt(format!("{what}: sealed data {why}")),
            })
        })
    }

    /// Destroy the item's data key: every version sealed under it becomes unreadable for good
    /// (reads answer `Erased`), in every object and every copy. Returns whether there was one.
    /// The erase path calls this for encrypted collections, where it is the erasure.
    pub async fn shred_item_key(&self, collection: &CollectionName, id: &ItemId) -> Result<bool> {
        self.meta().delete_side(collection, SideKind::DataKey, id).await
    }
}

/// What a version's sealed data is bound to.
fn version_aad(database: &str, collection: &CollectionName, id: &ItemId, ov: u64, write_id: &str) -> String {
    format!("{database}/{collection}/{id}/{ov}/{write_id}")
}
