//! Side records of the MongoDB store (holds, wrapped data keys): one document per (collection,
//! kind, item) in `chronos_sides`, keyed by `<collection>/<kind>/<id>` — none of the three can
//! hold a `/`, so keys of different records never meet.

use async_trait::async_trait;
use bson::{Document, doc};
use mongodb::Collection;

use super::docs::get_string;
use super::{DUPLICATE_KEY, MongoMetaStore, code, map_err};
use crate::engine::error::Result;
use crate::engine::model::{CollectionName, ItemId};
use crate::engine::store::sidecar::{MetaSidecar, SideKind};

impl MongoMetaStore {
    fn sides(&self) -> Collection<Document> {
        self.db.collection("chronos_sides")
    }
}

fn side_id(collection: &CollectionName, kind: SideKind, id: &ItemId) -> String {
    format!("{collection}/{}/{id}", kind.as_str())
}

fn side_doc(collection: &CollectionName, kind: SideKind, id: &ItemId, record: &str) -> Document {
    doc! {
        "_id": side_id(collection, kind, id),
        "collection": collection.as_str(),
        "kind": kind.as_str(),
        "itemId": id.as_str(),
        "record": record,
    }
}

#[async_trait]
impl MetaSidecar for MongoMetaStore {
    async fn put_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId, record: &str) -> Result<()> {
        self.sides()
            .replace_one(
                doc! {"_id": side_id(collection, kind, id)},
                side_doc(collection, kind, id, record),
            )
            .upsert(true)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn create_side(
        &self,
        collection: &CollectionName,
        kind: SideKind,
        id: &ItemId,
        record: &str,
    ) -> Result<String> {
        match self.sides().insert_one(side_doc(collection, kind, id, record)).await {
            Ok(_) => Ok(record.to_owned()),
            Err(e) if code(&e) == Some(DUPLICATE_KEY) => self
                .side(collection, kind, id)
                .await?
                .ok_or_else(|| crate::engine::error::Error::metadata("a side record vanished while being created")),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<Option<String>> {
        let found = self
            .sides()
            .find_one(doc! {"_id": side_id(collection, kind, id)})
            .await
            .map_err(map_err)?;
        found.map(|d| get_string(&d, "record")).transpose()
    }

    async fn delete_side(&self, collection: &CollectionName, kind: SideKind, id: &ItemId) -> Result<bool> {
        let out = self
            .sides()
            .delete_one(doc! {"_id": side_id(collection, kind, id)})
            .await
            .map_err(map_err)?;
        Ok(out.deleted_count > 0)
    }
}
