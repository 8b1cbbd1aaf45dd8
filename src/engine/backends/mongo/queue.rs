//! The retry queue in MongoDB: `chronos_queue` (live and finished operations; finished ones
//! expire after a week through a TTL index) and `chronos_dead_letters`, in the database's own
//! MongoDB database. Moving an operation between the two is one transaction.

use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use tokio::sync::OnceCell;

use super::docs::{from_date, get_date, get_opt_string, get_string, get_u64, to_date};
use super::{durable_database, is_transient, map_err, may_have_written, start_transaction};
use crate::engine::error::{Error, Result};
use crate::engine::model::Timestamp;
use crate::engine::store::queue::{Job, Operation, OperationId, OperationStatus, QueueStats, QueueStore, Settlement};
use crate::engine::store::rules::lease_end;

/// Finished operations stay readable (their outcome) this long.
const KEEP_FINISHED: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
const TXN_ATTEMPTS: usize = 5;

pub struct MongoQueue {
    client: Client,
    db: Database,
    indexed: OnceCell<()>,
}

impl MongoQueue {
    /// The queue of the MongoDB database `db_name` (clients are pooled and shared).
    pub fn new(client: Client, db_name: &str) -> Self {
        // An accepted (202) write must survive a failover.
        let db = durable_database(&client, db_name);
        MongoQueue {
            client,
            db,
            indexed: OnceCell::new(),
        }
    }

    fn queue(&self) -> Collection<Document> {
        self.db.collection("chronos_queue")
    }

    fn dead(&self) -> Collection<Document> {
        self.db.collection("chronos_dead_letters")
    }

    /// Indexes, once per process: claims look for due work by status and time.
    async fn prepare(&self) -> Result<()> {
        self.indexed
            .get_or_try_init(|| async {
                let index = |keys: Document, name: &str| {
                    IndexModel::builder()
                        .keys(keys)
                        .options(IndexOptions::builder().name(name.to_owned()).build())
                        .build()
                };
                let ttl = IndexModel::builder()
                    .keys(doc! {"expireAt": 1})
                    .options(
                        IndexOptions::builder()
                            .name("expireAt".to_owned())
                            .expire_after(Duration::ZERO)
                            .build(),
                    )
                    .build();
                self.queue()
                    .create_indexes([
                        index(doc! {"status": 1, "dueAt": 1}, "status_dueAt"),
                        index(doc! {"status": 1, "leaseUntil": 1}, "status_leaseUntil"),
                        ttl,
                    ])
                    .await
                    .map_err(map_err)?;
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Move the document `filter` matches from one collection to the other, changed by `edit`,
    /// in one transaction; `false` when nothing matched.
    async fn move_doc(
        &self,
        from: &Collection<Document>,
        filter: Document,
        to: &Collection<Document>,
        edit: impl Fn(Document) -> Document,
    ) -> Result<bool> {
        for attempt in 1..=TXN_ATTEMPTS {
            let mut session = self.session().await?;
            let moved = async {
                let Some(found) = from.find_one_and_delete(filter.clone()).session(&mut session).await? else {
                    return Ok(false);
                };
                to.insert_one(edit(found)).session(&mut session).await?;
                session.commit_transaction().await?;
                Ok::<_, mongodb::error::Error>(true)
            }
            .await;
            match moved {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    let _ = session.abort_transaction().await;
                    return Ok(false);
                }
                Err(e) if is_transient(&e) && attempt < TXN_ATTEMPTS => {
                    let _ = session.abort_transaction().await;
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(map_err(e));
                }
            }
        }
        Err(Error::metadata("the queue transaction kept conflicting"))
    }

    async fn session(&self) -> Result<ClientSession> {
        start_transaction(&self.client).await
    }
}

fn job_json(op: &Operation) -> Result<String> {
    serde_json::to_string(&op.job).map_err(|e| Error::Corrupt(format!("operation {}: {e}", op.job.id)))
}

fn queue_doc(op: &Operation) -> Result<Document> {
    Ok(doc! {
        "_id": op.job.id.as_str(),
        "status": op.status.as_str(),
        "dueAt": to_date(op.due_at),
        "attempts": i64::from(op.attempts),
        "lastError": op.last_error.as_deref(),
        "result": op.result.as_ref().map(serde_json::to_string).transpose().map_err(|e| Error::Corrupt(e.to_string()))?,
        "updatedAt": to_date(op.updated_at),
        "job": job_json(op)?,
    })
}

fn from_doc(d: &Document, dead: bool) -> Result<Operation> {
    let job: Job = serde_json::from_str(&get_string(d, "job")?)
        .map_err(|e| Error::Corrupt(format!("a queued operation can't be read: {e}")))?;
    let updated_at = get_date(d, "updatedAt")?;
    Ok(Operation {
        status: if dead {
            OperationStatus::Dead
        } else {
            get_string(d, "status")?.parse()?
        },
        attempts: u32::try_from(get_u64(d, "attempts")?).unwrap_or(u32::MAX),
        due_at: match d.get_datetime("dueAt") {
            Ok(t) => from_date(*t)?,
            Err(_) => updated_at,
        },
        last_error: get_opt_string(d, "lastError"),
        result: get_opt_string(d, "result")
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("operation result: {e}")))?,
        updated_at,
        job,
    })
}

fn dead_doc(mut d: Document, error: Option<&str>, now: Timestamp) -> Document {
    for key in ["status", "dueAt", "leaseUntil", "claimToken", "result", "expireAt"] {
        d.remove(key);
    }
    if let Some(e) = error {
        d.insert("lastError", e);
    }
    d.insert("updatedAt", to_date(now));
    d
}

#[async_trait]
impl QueueStore for MongoQueue {
    async fn enqueue(&self, op: &Operation) -> Result<()> {
        self.prepare().await?;
        self.queue().insert_one(queue_doc(op)?).await.map_err(|e| {
            if may_have_written(&e) {
                Error::OutcomeUnknown(map_err(e).to_string())
            } else {
                map_err(e)
            }
        })?;
        Ok(())
    }

    async fn claim(&self, now: Timestamp, lease: Duration) -> Result<Option<(Operation, String)>> {
        self.prepare().await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now_d = to_date(now);
        let claimed = self
            .queue()
            .find_one_and_update(
                doc! {"$or": [
                    {"status": "pending", "dueAt": {"$lte": now_d}},
                    {"status": "running", "leaseUntil": {"$lt": now_d}},
                ]},
                doc! {
                    "$set": {
                        "status": "running",
                        "leaseUntil": to_date(lease_end(now, lease)),
                        "claimToken": &token,
                        "updatedAt": now_d,
                    },
                    "$inc": {"attempts": 1_i64},
                },
            )
            .sort(doc! {"dueAt": 1})
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?;
        claimed.map(|d| Ok((from_doc(&d, false)?, token))).transpose()
    }

    async fn settle(&self, id: &OperationId, token: &str, settlement: Settlement, now: Timestamp) -> Result<bool> {
        let held = doc! {"_id": id.as_str(), "status": "running", "claimToken": token};
        let unset = doc! {"leaseUntil": "", "claimToken": ""};
        let set = match settlement {
            Settlement::Succeeded(result) => doc! {
                "status": "succeeded",
                "result": serde_json::to_string(&result).map_err(|e| Error::Corrupt(e.to_string()))?,
                "updatedAt": to_date(now),
                "expireAt": to_date(now + KEEP_FINISHED),
            },
            Settlement::Retry { due_at, error } => doc! {
                "status": "pending",
                "dueAt": to_date(due_at),
                "lastError": error,
                "updatedAt": to_date(now),
            },
            Settlement::Dead { error } => {
                let (queue, dead) = (self.queue(), self.dead());
                return self
                    .move_doc(&queue, held, &dead, |d| dead_doc(d, Some(&error), now))
                    .await;
            }
        };
        let r = self
            .queue()
            .update_one(held, doc! {"$set": set, "$unset": unset})
            .await
            .map_err(map_err)?;
        Ok(r.matched_count == 1)
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>> {
        if let Some(d) = self
            .queue()
            .find_one(doc! {"_id": id.as_str()})
            .await
            .map_err(map_err)?
        {
            return from_doc(&d, false).map(Some);
        }
        let dead = self.dead().find_one(doc! {"_id": id.as_str()}).await.map_err(map_err)?;
        dead.map(|d| from_doc(&d, true)).transpose()
    }

    async fn list(&self, status: OperationStatus, after: Option<&OperationId>, limit: usize) -> Result<Vec<Operation>> {
        use futures::TryStreamExt;
        let mut filter = Document::new();
        if let Some(a) = after {
            filter.insert("_id", doc! {"$gt": a.as_str()});
        }
        let dead = status == OperationStatus::Dead;
        let coll = if dead {
            self.dead()
        } else {
            filter.insert("status", status.as_str());
            self.queue()
        };
        let docs: Vec<Document> = coll
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(limit).unwrap_or(1000))
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| from_doc(d, dead)).collect()
    }

    async fn stats(&self) -> Result<QueueStats> {
        let count = |status: &'static str| async move {
            self.queue()
                .count_documents(doc! {"status": status})
                .await
                .map_err(map_err)
        };
        Ok(QueueStats {
            pending: count("pending").await?,
            running: count("running").await?,
            dead: self.dead().count_documents(doc! {}).await.map_err(map_err)?,
        })
    }

    async fn revive(&self, id: &OperationId, now: Timestamp) -> Result<bool> {
        let (queue, dead) = (self.queue(), self.dead());
        self.move_doc(&dead, doc! {"_id": id.as_str()}, &queue, |mut d| {
            d.insert("status", "pending");
            d.insert("attempts", 0_i64);
            d.insert("dueAt", to_date(now));
            d.insert("updatedAt", to_date(now));
            d
        })
        .await
    }

    async fn cancel(&self, id: &OperationId, now: Timestamp) -> Result<Option<OperationStatus>> {
        let (queue, dead) = (self.queue(), self.dead());
        let moved = self
            .move_doc(&dead, doc! {"_id": id.as_str()}, &queue, |mut d| {
                d.insert("status", "cancelled");
                d.insert("updatedAt", to_date(now));
                d.insert("expireAt", to_date(now + KEEP_FINISHED));
                d
            })
            .await?;
        if moved {
            return Ok(Some(OperationStatus::Dead));
        }
        let before = self
            .queue()
            .find_one_and_update(
                doc! {"_id": id.as_str()},
                vec![doc! {"$set": {
                    "status": {"$cond": [{"$eq": ["$status", "pending"]}, "cancelled", "$status"]},
                    "expireAt": {"$cond": [{"$eq": ["$status", "pending"]}, to_date(now + KEEP_FINISHED), "$expireAt"]},
                    "updatedAt": {"$cond": [{"$eq": ["$status", "pending"]}, to_date(now), "$updatedAt"]},
                }}],
            )
            .return_document(ReturnDocument::Before)
            .await
            .map_err(map_err)?;
        before.map(|d| get_string(&d, "status")?.parse()).transpose()
    }

    async fn forget(&self, id: &OperationId) -> Result<()> {
        self.queue()
            .delete_one(doc! {"_id": id.as_str()})
            .await
            .map_err(map_err)?;
        self.dead()
            .delete_one(doc! {"_id": id.as_str()})
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
