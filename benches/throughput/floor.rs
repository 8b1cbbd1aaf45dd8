//! The raw floor: the fewest `mongodb` + `aws-sdk-s3` calls that could still be correct, done
//! by hand with the same write concern and the same S3 round trips. Every Chronos figure is a
//! ratio to this, measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chronos::engine::settings::RESTORE_PAGE;
use chronos::engine::store::decorators::RequestCounter;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use mongodb::options::{ReadConcern, WriteConcern};
use serde_json::{Map, Value};

use crate::errors::{err, text};
use crate::records::{LIST_LIMIT, STATUSES, record};

/// In-flight items of the floor restore: what `restore_collection_page` uses (`buffer_unordered(16)`).
pub const RESTORE_IN_FLIGHT: usize = 16;

pub struct Floor {
    pub mongo: mongodb::Client,
    /// The benchmark database, with Chronos's write concern (majority, journaled).
    pub db: mongodb::Database,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub counter: Arc<RequestCounter>,
}

impl Floor {
    pub fn heads(&self, c: &str) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{c}_head"))
    }

    pub fn versions(&self, c: &str) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{c}_ver"))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), String> {
        let started = Instant::now();
        let result = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await;
        self.counter.record(started.elapsed());
        result
            .map(drop)
            .map_err(|e| format!("S3 PUT {key}: {}", DisplayErrorContext(&e)))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, String> {
        let started = Instant::now();
        let result = match self.s3.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out.body.collect().await.map(|b| b.into_bytes()).map_err(text),
            Err(e) => Err(DisplayErrorContext(&e).to_string()),
        };
        self.counter.record(started.elapsed());
        result.map_err(|e| format!("S3 GET {key}: {e}"))
    }

    /// A versioned write at its minimum: the payload to S3 first (so a committed version never
    /// points at a missing object), then one transaction that inserts the version (its `_id` is
    /// `id:ov`, so exactly one writer wins each ov) and moves the head from ov − 1 to ov (an
    /// upsert, so a create needs no separate path; a stale writer collides on `_id`).
    pub async fn write(&self, c: &str, id: &str, ov: u64, n: u64, owner: usize) -> Result<(), String> {
        let data = serde_json::to_string(&record(n, owner)).map_err(text)?;
        let key = format!("{c}/{id}/v{ov}");
        self.put(&key, Bytes::from(data.clone())).await?;
        let now = mongodb::bson::DateTime::now();
        let mut session = self.mongo.start_session().await.map_err(text)?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await
            .map_err(text)?;
        let version = doc! {"_id": format!("{id}:{ov}"), "itemId": id, "ov": ov as i64, "at": now, "key": &key};
        self.versions(c)
            .insert_one(version)
            .session(&mut session)
            .await
            .map_err(err("insert version"))?;
        let mut filter = doc! {"_id": id};
        if ov > 0 {
            filter.insert("ov", ov as i64 - 1);
        }
        let status = format!("s{}", n % STATUSES);
        let set = doc! {"$set": {"ov": ov as i64, "at": now, "key": &key, "status": status, "data": data}};
        self.heads(c)
            .update_one(filter, set)
            .upsert(true)
            .session(&mut session)
            .await
            .map_err(err("upsert head"))?;
        session.commit_transaction().await.map_err(err("commit"))
    }

    /// A hot read: one findOne on the head, and the inline data parsed (a reader needs it).
    pub async fn find_head(&self, c: &str, id: &str) -> Result<(), String> {
        let head = self.heads(c).find_one(doc! {"_id": id}).await.map_err(text)?;
        parse_inline(&head.ok_or_else(|| format!("{c}/{id} missing"))?)
    }

    pub async fn get_version(&self, c: &str, id: &str, ov: u64) -> Result<(), String> {
        let version = self
            .versions(c)
            .find_one(doc! {"_id": format!("{id}:{ov}")})
            .await
            .map_err(text)?
            .ok_or_else(|| format!("{c}/{id} v{ov} missing"))?;
        let body = self.get(version.get_str("key").map_err(text)?).await?;
        serde_json::from_slice::<Map<String, Value>>(&body).map_err(text)?;
        Ok(())
    }

    /// One page of a listing; returns how many records it had.
    pub async fn list(&self, status: &str) -> Result<usize, String> {
        let docs: Vec<Document> = self
            .heads("fl")
            .find(doc! {"status": status})
            .sort(doc! {"_id": 1})
            .limit(LIST_LIMIT as i64)
            .batch_size(LIST_LIMIT as u32)
            .await
            .map_err(text)?
            .try_collect()
            .await
            .map_err(text)?;
        docs.iter().try_for_each(parse_inline)?;
        Ok(docs.len())
    }

    /// Create the floor's collections before any transaction writes to them: creating a
    /// collection inside concurrent transactions fails them with `SnapshotUnavailable` (Chronos
    /// creates its collections with their indexes, once, the same way).
    pub async fn prepare(&self) -> Result<(), String> {
        for c in ["fc", "fp", "fl", "fr"] {
            for coll in [format!("{c}_head"), format!("{c}_ver")] {
                self.db.create_collection(&coll).await.map_err(err(&coll))?;
            }
        }
        Ok(())
    }

    /// The listing collection (setup, not measured): the same records, and an index on `status`
    /// of the same shape as the engine's `meta_status`.
    pub async fn setup_list(&self, list_pool: u64) -> Result<(), String> {
        let docs = (0..list_pool).map(|n| {
            let data = serde_json::to_string(&record(n, 0)).unwrap_or_default();
            doc! {"_id": format!("l{n:06}"), "ov": 0_i64, "status": format!("s{}", n % STATUSES), "data": data}
        });
        self.heads("fl").insert_many(docs).await.map_err(err("floor list"))?;
        let index = mongodb::IndexModel::builder()
            .keys(doc! {"status": 1, "_id": 1})
            .build();
        self.heads("fl")
            .create_index(index)
            .await
            .map_err(err("floor list index"))?;
        Ok(())
    }

    /// The floor restore's starting state (setup, not measured): `items` items at ov 0 with their
    /// payloads, written in bulk.
    pub async fn setup_restore(&self, items: usize) -> Result<(), String> {
        futures::stream::iter(0..items)
            .map(|k| async move {
                let data = serde_json::to_vec(&record(k as u64, 0)).map_err(text)?;
                self.put(&format!("fr/r{k:08}/v0"), Bytes::from(data)).await
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        let ids: Vec<usize> = (0..items).collect();
        for chunk in ids.chunks(1000) {
            let heads = chunk
                .iter()
                .map(|k| doc! {"_id": format!("r{k:08}"), "ov": 0_i64, "key": format!("fr/r{k:08}/v0")});
            let versions = chunk.iter().map(|k| {
                doc! {"_id": format!("r{k:08}:0"), "itemId": format!("r{k:08}"), "ov": 0_i64, "key": format!("fr/r{k:08}/v0")}
            });
            self.heads("fr")
                .insert_many(heads)
                .await
                .map_err(err("floor restore"))?;
            self.versions("fr")
                .insert_many(versions)
                .await
                .map_err(err("floor restore"))?;
        }
        Ok(())
    }

    /// A restore with each page's Mongo writes batched: the payloads are copied (GET the old
    /// one, PUT it as ov 2) many at a time, then one transaction inserts the page's versions
    /// (one `insert`) and moves its heads from ov 1 to 2 (one `update` command carrying a
    /// statement per item; a stale head makes the count fall short and the page abort).
    pub async fn restore_batched(&self, items: usize) -> Result<u64, String> {
        let ids: Vec<usize> = (0..items).collect();
        for page in ids.chunks(RESTORE_PAGE) {
            let copied: Vec<(usize, String)> = futures::stream::iter(page.iter().copied())
                .map(|k| async move {
                    let old = self.get(&format!("fr/r{k:08}/v0")).await?;
                    let data = String::from_utf8(old.to_vec()).map_err(text)?;
                    self.put(&format!("fr/r{k:08}/v2"), old).await?;
                    Ok::<_, String>((k, data))
                })
                .buffer_unordered(64)
                .try_collect()
                .await?;
            let now = mongodb::bson::DateTime::now();
            let mut session = self.mongo.start_session().await.map_err(text)?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
                .map_err(text)?;
            let versions = copied.iter().map(|(k, _)| {
                doc! {"_id": format!("r{k:08}:2"), "itemId": format!("r{k:08}"), "ov": 2_i64, "at": now, "key": format!("fr/r{k:08}/v2")}
            });
            self.versions("fr")
                .insert_many(versions)
                .session(&mut session)
                .await
                .map_err(err("insert versions"))?;
            let updates: Vec<Document> = copied
                .iter()
                .map(|(k, data)| {
                    let set = doc! {"ov": 2_i64, "at": now, "key": format!("fr/r{k:08}/v2"), "data": data};
                    doc! {"q": {"_id": format!("r{k:08}"), "ov": 1_i64}, "u": {"$set": set}}
                })
                .collect();
            let reply = self
                .db
                .run_command(doc! {"update": "fr_head", "updates": updates, "ordered": true})
                .session(&mut session)
                .await
                .map_err(err("update heads"))?;
            let matched = reply.get_i32("n").map_err(text)?;
            if matched as usize != page.len() {
                let _ = session.abort_transaction().await;
                return Err(format!("batched restore: {matched} of {} heads matched", page.len()));
            }
            session.commit_transaction().await.map_err(err("commit"))?;
        }
        Ok(items as u64)
    }

    /// A restore by reference at its minimum, page by page (ov 2 → 3): read the page's heads and
    /// their target versions (two `find`s), then one transaction inserts the page's versions,
    /// each naming the target's payload key, and moves the heads with a precondition per item
    /// (one `update` command): 5 Mongo commands per page and no S3 request.
    pub async fn restore_by_reference(&self, items: usize, from_ov: i64) -> Result<u64, String> {
        let to_ov = from_ov + 1;
        let mut after = String::new();
        let mut done = 0;
        loop {
            let heads: Vec<Document> = self
                .heads("fr")
                .find(doc! {"_id": {"$gt": &after}})
                .sort(doc! {"_id": 1})
                .limit(RESTORE_PAGE as i64)
                .batch_size(RESTORE_PAGE as u32)
                .await
                .map_err(text)?
                .try_collect()
                .await
                .map_err(text)?;
            let Some(last) = heads.last() else { break };
            after = last.get_str("_id").map_err(text)?.to_owned();
            let ids: Vec<&str> = heads.iter().filter_map(|h| h.get_str("_id").ok()).collect();
            let targets: Vec<Document> = self
                .versions("fr")
                .find(doc! {"itemId": {"$in": &ids}, "ov": 0_i64})
                .batch_size(RESTORE_PAGE as u32)
                .await
                .map_err(text)?
                .try_collect()
                .await
                .map_err(text)?;
            let now = mongodb::bson::DateTime::now();
            let mut session = self.mongo.start_session().await.map_err(text)?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
                .map_err(text)?;
            let mut versions = Vec::with_capacity(targets.len());
            let mut updates = Vec::with_capacity(targets.len());
            for t in &targets {
                let (id, key) = (t.get_str("itemId").map_err(text)?, t.get_str("key").map_err(text)?);
                versions.push(doc! {"_id": format!("{id}:{to_ov}"), "itemId": id, "ov": to_ov, "at": now, "key": key});
                let set = doc! {"ov": to_ov, "at": now, "key": key};
                updates.push(doc! {"q": {"_id": id, "ov": from_ov}, "u": {"$set": set, "$unset": {"data": ""}}});
            }
            self.versions("fr")
                .insert_many(versions)
                .session(&mut session)
                .await
                .map_err(err("insert versions"))?;
            let reply = self
                .db
                .run_command(doc! {"update": "fr_head", "updates": updates, "ordered": true})
                .session(&mut session)
                .await
                .map_err(err("update heads"))?;
            let matched = reply.get_i32("n").map_err(text)?;
            if matched as usize != heads.len() {
                let _ = session.abort_transaction().await;
                return Err(format!(
                    "restore by reference: {matched} of {} heads matched",
                    heads.len()
                ));
            }
            session.commit_transaction().await.map_err(err("commit"))?;
            done += heads.len() as u64;
        }
        if done != items as u64 {
            return Err(format!("restore by reference: {done} of {items} items"));
        }
        Ok(done)
    }

    /// Restoring one item at its minimum: read the old payload, write it as the next version.
    pub async fn restore_item(&self, k: usize) -> Result<(), String> {
        let old = self.get(&format!("fr/r{k:08}/v0")).await?;
        let data: Map<String, Value> = serde_json::from_slice(&old).map_err(text)?;
        let n = data.get("n").and_then(Value::as_u64).unwrap_or(0);
        self.write("fr", &format!("r{k:08}"), 1, n, 0).await
    }
}

pub fn parse_inline(head: &Document) -> Result<(), String> {
    let data = head.get_str("data").map_err(text)?;
    serde_json::from_str::<Map<String, Value>>(data).map_err(text)?;
    Ok(())
}
