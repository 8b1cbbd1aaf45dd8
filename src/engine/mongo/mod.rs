//! The MongoDB metadata store.
//!
//! Collections per Chronos collection `c`: `c_head` (one document per item: the latest version's
//! coordinates, indexed metadata and, while hot, the data inline) and `c_ver` (the version index).
//! `chronos_sequences` holds one collection-version counter per collection, and `c/pruned`
//! with retention's counter tallies.
//!
//! A lone write costs four commands: the cv `$inc`, the head `findOneAndUpdate` (or `insert` for
//! a create) that opens the transaction and holds the item, the version `insert`, and
//! `commitTransaction`. Concurrent writes to one collection share them ([`group`]). See
//! `docs/design.md`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::{
    ErrorKind, NO_WRITES_PERFORMED, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};
use mongodb::options::{IndexOptions, ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::model::{
    CollectionName, Head, ItemId, Op, PayloadRef, RequestKey, RequestStamp, State, Timestamp, VersionEntry,
};
use super::query::{Cond, Filter};
use super::store::{
    CommitError, HeadChange, HistoryPoint, ListQuery, MetaStore, NewData, PendingWrite, PrunedVersion, RefWrite,
    TierBatch,
};

/// How often a write retries when another transaction holds its item, before giving up.
const CONTENTION_ATTEMPTS: u32 = 40;
const DUPLICATE_KEY: i32 = 11000;
const ILLEGAL_OPERATION: i32 = 20;
const NAMESPACE_NOT_FOUND: i32 = 26;

mod group;

#[derive(Clone)]
pub struct MongoMetaStore {
    client: Client,
    db: Database,
    lanes: Arc<group::Lanes>,
}

impl MongoMetaStore {
    /// Use an existing client (clients are pooled: one per distinct URI, shared by every store).
    pub fn new(client: Client, db_name: &str) -> Self {
        let db = durable_database(&client, db_name);
        MongoMetaStore {
            client,
            db,
            lanes: Arc::default(),
        }
    }

    fn heads(&self, c: &CollectionName) -> Collection<Document> {
        self.db.collection(&format!("{c}_head"))
    }

    fn versions_coll(&self, c: &CollectionName) -> Collection<Document> {
        self.db.collection(&format!("{c}_ver"))
    }

    /// Per collection its cv counter and counter mark (`_id` = name) and retention's tallies
    /// (`_id` = name/pruned).
    fn sequences(&self) -> Collection<Document> {
        self.db.collection("chronos_sequences")
    }

    /// Take `k` consecutive cvs; returns the last (the others are the `k - 1` before it).
    ///
    /// Acknowledged by a majority, like every write here: the transaction that uses the cv may
    /// run on another primary after a failover, and a `$inc` the old primary acknowledged alone
    /// could be lost there, so the new primary would hand the same cv out again.
    async fn take_cvs(&self, c: &CollectionName, k: u64) -> Result<u64> {
        let seq = self
            .sequences()
            .find_one_and_update(doc! {"_id": c.as_str()}, doc! {"$inc": {"cv": k as i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(Error::metadata)?
            .ok_or_else(|| Error::metadata("cv sequence upsert returned nothing"))?;
        get_u64(&seq, "cv")
    }

    async fn next_cv(&self, c: &CollectionName) -> Result<u64> {
        self.take_cvs(c, 1).await
    }

    async fn start(&self) -> Result<ClientSession> {
        start_transaction(&self.client).await
    }

    /// A write on its own: the protocol of `docs/design.md`. A writer that finds its item held
    /// by another transaction backs off and tries again.
    async fn begin_alone(&self, change: HeadChange) -> Result<Box<dyn PendingWrite>> {
        let mut cv = self.next_cv(&change.collection).await?;
        for attempt in 0..CONTENTION_ATTEMPTS {
            match self.try_hold(&change, cv).await? {
                Attempt::Held(pending) => return Ok(pending),
                Attempt::StaleCv => cv = self.next_cv(&change.collection).await?,
                Attempt::Busy => backoff(attempt).await,
            }
        }
        Err(Error::Contended(format!("{}/{}", change.collection, change.id)))
    }

    /// One attempt to hold a write's item with cv `cv`.
    async fn try_hold(&self, change: &HeadChange, cv: u64) -> Result<Attempt> {
        match change.op {
            Op::Create => self.try_create(change, cv).await,
            _ => self.try_change(change, cv).await,
        }
    }

    /// Open a create's transaction and insert its head, with cv `cv`. `Busy`: another
    /// transaction is inserting the same id; once it ends, the id is taken or free.
    async fn try_create(&self, change: &HeadChange, cv: u64) -> Result<Attempt> {
        let head = create_head(change, cv)?;
        let mut session = self.start().await?;
        if let Err(e) = self
            .heads(&change.collection)
            .insert_one(head)
            .session(&mut session)
            .await
        {
            let _ = session.abort_transaction().await;
            return match code(&e) {
                Some(DUPLICATE_KEY) => Err(Error::AlreadyExists(format!("{}/{}", change.collection, change.id))),
                _ if is_transient(&e) => Ok(Attempt::Busy),
                _ => Err(map_err(e)),
            };
        }
        Ok(Attempt::Held(Box::new(MongoPending {
            heads: self.heads(&change.collection),
            id: change.id.clone(),
            store_versions: self.versions_coll(&change.collection),
            session,
            previous: None,
            ov: 0,
            cv,
            commit_by: change.commit_by,
        })))
    }

    /// A lone write's first attempt, made by its lane's worker: what needs retries (contention,
    /// a stale cv) goes back to the writer, so the lane never waits on a backoff.
    async fn first_attempt(&self, change: &HeadChange) -> group::Answer {
        let attempt = match self.next_cv(&change.collection).await {
            Ok(cv) => self.try_hold(change, cv).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Attempt::Held(pending)) => group::Answer::Held(Ok(pending)),
            Ok(Attempt::StaleCv | Attempt::Busy) => group::Answer::Alone,
            Err(e) => group::Answer::Held(Err(e)),
        }
    }

    /// Hold an existing item with cv `cv`: open a transaction and `findAndModify` its head.
    async fn try_change(&self, change: &HeadChange, cv: u64) -> Result<Attempt> {
        let heads = self.heads(&change.collection);
        let (filter, update) = head_update(change, cv);
        let mut session = self.start().await?;
        let mut find = heads
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::Before);
        if change.data.is_some() {
            // Only writes that build on the previous data (delete, enrich) need it shipped.
            find = find.projection(doc! {"data": 0});
        }
        match find.session(&mut session).await {
            Ok(Some(before)) => {
                let previous = head_from_doc(&change.id, before)?;
                let ov = previous.ov + 1;
                Ok(Attempt::Held(Box::new(MongoPending {
                    heads: heads.clone(),
                    id: change.id.clone(),
                    store_versions: self.versions_coll(&change.collection),
                    session,
                    previous: Some(previous),
                    ov,
                    cv,
                    commit_by: change.commit_by,
                })))
            }
            Ok(None) => {
                let _ = session.abort_transaction().await;
                // Find out why nothing matched: missing, deleted, stale ov, or a newer cv.
                let current = self.head(&change.collection, &change.id).await?;
                super::store::rules::check_precondition(change, current.as_ref())?;
                if current.is_some_and(|h| h.cv >= cv) {
                    Ok(Attempt::StaleCv)
                } else {
                    // The head changed between the two looks: try again.
                    Ok(Attempt::Busy)
                }
            }
            Err(e) if is_transient(&e) => {
                // Another transaction holds this item; it will commit or abort shortly.
                let _ = session.abort_transaction().await;
                Ok(Attempt::Busy)
            }
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(map_err(e))
            }
        }
    }
}

/// How one attempt to hold an existing item went.
enum Attempt {
    Held(Box<dyn PendingWrite>),
    /// The head has a cv at least ours: take a new one.
    StaleCv,
    /// Another transaction holds the item: back off and try again.
    Busy,
}

/// The head document a create inserts.
fn create_head(change: &HeadChange, cv: u64) -> Result<Document> {
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

/// Commit a write's transaction. `commitTransaction` is idempotent: an unknown outcome is
/// retried before it is reported.
async fn commit(session: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {}
            done => return done,
        }
    }
}

/// What a failed commit means for the write.
fn commit_error(e: &mongodb::error::Error) -> CommitError {
    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        CommitError::Unknown(map_err(e.clone()))
    } else {
        CommitError::NotCommitted {
            error: map_err(e.clone()),
            retry: is_transient(e),
        }
    }
}

/// A database handle whose writes are acknowledged only when durable: majority + journal, on
/// every write (the cv's `$inc` and the retry queue included).
pub(crate) fn durable_database(client: &Client, db_name: &str) -> Database {
    client.database_with_options(
        db_name,
        mongodb::options::DatabaseOptions::builder()
            .write_concern(WriteConcern::majority())
            .build(),
    )
}

/// A session with a transaction started: snapshot reads, majority commit.
pub(crate) async fn start_transaction(client: &Client) -> Result<ClientSession> {
    let mut session = client.start_session().await.map_err(Error::metadata)?;
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .await
        .map_err(map_err)?;
    Ok(session)
}

impl MongoMetaStore {
    /// In the session's transaction: remove the versions still indexed and add them to the
    /// collection's tallies.
    async fn delete_and_tally(
        &self,
        session: &mut ClientSession,
        c: &CollectionName,
        id: &ItemId,
        versions: &[PrunedVersion],
    ) -> Result<u64, mongodb::error::Error> {
        use futures::TryStreamExt;
        let sequences = self.sequences();
        let ovs: Vec<i64> = versions.iter().map(|p| p.ov as i64).collect();
        let filter = doc! {"itemId": id.as_str(), "ov": {"$in": &ovs}};
        let present: Vec<Document> = self
            .versions_coll(c)
            .find(filter.clone())
            .projection(doc! {"ov": 1})
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        let present: std::collections::HashSet<u64> = present.iter().filter_map(|d| get_u64(d, "ov").ok()).collect();
        let deleted = self
            .versions_coll(c)
            .delete_many(filter)
            .session(&mut *session)
            .await?
            .deleted_count;
        let seq = sequences
            .find_one(doc! {"_id": c.as_str()})
            .session(&mut *session)
            .await?;
        let from = seq.and_then(|d| get_u64(&d, "countersFrom").ok()).unwrap_or(0);
        let tally = sequences
            .find_one(doc! {"_id": pruned_id(c)})
            .session(&mut *session)
            .await?;
        let mut counts = tally.map(|t| tally_counts(&t, from)).unwrap_or_default();
        for p in versions.iter().filter(|p| present.contains(&p.ov) && p.cv > from) {
            for name in &p.counts {
                *counts.entry(name.clone()).or_default() += 1;
            }
        }
        let counts: Vec<Document> = counts
            .into_iter()
            .map(|(name, n)| doc! {"name": name, "n": n as i64})
            .collect();
        sequences
            .replace_one(
                doc! {"_id": pruned_id(c)},
                doc! {"_id": pruned_id(c), "from": from as i64, "counts": counts},
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        Ok(deleted)
    }

    /// The heads a listing returns; without their inline data unless `with_data`.
    async fn find_heads(&self, c: &CollectionName, q: &ListQuery, with_data: bool) -> Result<Vec<Head>> {
        use futures::TryStreamExt;
        let mut filter = filter_doc(&q.filter);
        if !q.include_deleted {
            filter.insert("deletedAt", Bson::Null);
        }
        if let Some(after) = &q.after_id {
            filter.insert("_id", doc! {if q.descending { "$lt" } else { "$gt" }: after.as_str()});
        }
        let heads = self.heads(c);
        let mut find = heads
            .find(filter)
            .sort(doc! {"_id": if q.descending { -1 } else { 1 }})
            .limit(q.limit as i64)
            .batch_size(q.limit as u32);
        if !with_data {
            find = find.projection(doc! {"data": 0});
        }
        let docs: Vec<Document> = find.await.map_err(map_err)?.try_collect().await.map_err(map_err)?;
        docs.into_iter()
            .map(|d| {
                let id: ItemId = get_string(&d, "_id")?.parse()?;
                head_from_doc(&id, d)
            })
            .collect()
    }
}

/// Filter and update for a change to an existing head.
fn head_update(change: &HeadChange, cv: u64) -> (Document, Document) {
    // `cv < ours` keeps cv increasing along each item's history even though cvs are allocated
    // before the transaction: a writer holding an older cv than the head's must take a new one.
    let mut filter = doc! {"_id": change.id.as_str(), "cv": {"$lt": cv as i64}};
    if change.op != Op::Restore {
        filter.insert("deletedAt", Bson::Null);
    }
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
        Op::Create | Op::Update => {}
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

async fn backoff(attempt: u32) {
    // Jittered exponential backoff, 1 ms … 64 ms: the holder's transaction lasts one S3 PUT.
    let cap = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % cap;
    tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
}

struct MongoPending {
    heads: Collection<Document>,
    id: ItemId,
    store_versions: Collection<Document>,
    session: ClientSession,
    previous: Option<Head>,
    ov: u64,
    cv: u64,
    commit_by: Timestamp,
}

#[async_trait]
impl PendingWrite for MongoPending {
    fn previous(&self) -> Option<&Head> {
        self.previous.as_ref()
    }
    fn ov(&self) -> u64 {
        self.ov
    }
    fn cv(&self) -> u64 {
        self.cv
    }

    async fn set_data(&mut self, data: NewData) -> Result<()> {
        let mut set = doc! {
            "size": data.content.size() as i64,
            "checksum": &data.content.checksum,
            "meta": to_bson_doc(&data.meta),
        };
        let mut update = Document::new();
        if data.inline {
            set.insert("data", data.content.json.as_str());
        } else {
            update.insert("$unset", doc! {"data": ""});
        }
        update.insert("$set", set);
        self.heads
            .update_one(doc! {"_id": self.id.as_str()}, update)
            .session(&mut self.session)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, v: VersionEntry) -> Result<(), CommitError> {
        let entry = version_doc(&v, v.cv);
        if let Err(e) = self.store_versions.insert_one(entry).session(&mut self.session).await {
            let _ = self.session.abort_transaction().await;
            let retry = is_transient(&e);
            let error = match code(&e) {
                // The head is held, so the (itemId, ov) index can't clash: the idempotency key did.
                Some(DUPLICATE_KEY) => Error::AlreadyExists(format!("a write with the idempotency key of {}", v.id)),
                _ => map_err(e),
            };
            return Err(CommitError::NotCommitted { error, retry });
        }
        if let Err(late) = super::store::in_time(self.commit_by) {
            let _ = self.session.abort_transaction().await;
            return Err(late);
        }
        commit(&mut self.session).await.map_err(|e| commit_error(&e))
    }

    async fn abort(mut self: Box<Self>) {
        let _ = self.session.abort_transaction().await;
    }
}

#[async_trait]
impl MetaStore for MongoMetaStore {
    async fn ping(&self) -> Result<()> {
        let hello = self.db.run_command(doc! {"hello": 1}).await.map_err(Error::metadata)?;
        let replica_set = hello.get_str("setName").is_ok();
        let mongos = hello.get_str("msg").is_ok_and(|m| m == "isdbgrid");
        if !replica_set && !mongos {
            return Err(Error::Unsupported(
                "MongoDB is a standalone server; Chronos needs a replica set (one node is enough) or a \
                 sharded cluster, because every write is a multi-document transaction"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn prepare_collection(&self, c: &CollectionName, indexed: &[String]) -> Result<()> {
        let unique = IndexOptions::builder()
            .unique(true)
            .name("itemId_ov".to_owned())
            .build();
        self.versions_coll(c)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"itemId": 1, "ov": 1})
                    .options(unique)
                    .build(),
            )
            .await
            .map_err(map_err)?;
        // Cost tiering looks for hot heads by age.
        self.heads(c)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"state": 1, "updatedAt": 1})
                    .options(IndexOptions::builder().name("state_updatedAt".to_owned()).build())
                    .build(),
            )
            .await
            .map_err(map_err)?;
        // Idempotency keys: unique per collection, for the versions that carry one.
        self.versions_coll(c)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"requestId": 1})
                    .options(
                        IndexOptions::builder()
                            .name("requestId".to_owned())
                            .unique(true)
                            .partial_filter_expression(doc! {"requestId": {"$exists": true}})
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(map_err)?;
        // Counters and collection-wide scans read the version index by cv.
        self.versions_coll(c)
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"cv": 1})
                    .options(IndexOptions::builder().name("cv".to_owned()).build())
                    .build(),
            )
            .await
            .map_err(map_err)?;
        // One index per indexed property, named `meta_<prop>` so stale ones can be recognised.
        let heads = self.heads(c);
        let wanted: Vec<String> = indexed.iter().map(|p| format!("meta_{p}")).collect();
        if !indexed.is_empty() {
            let models = indexed.iter().zip(&wanted).map(|(p, name)| {
                IndexModel::builder()
                    .keys(doc! {format!("meta.{p}"): 1})
                    .options(IndexOptions::builder().name(name.clone()).build())
                    .build()
            });
            heads.create_indexes(models).await.map_err(map_err)?;
        }
        let existing = match heads.list_index_names().await {
            Ok(names) => names,
            // A collection that doesn't exist yet has no indexes to drop.
            Err(e) if code(&e) == Some(NAMESPACE_NOT_FOUND) => vec![],
            Err(e) => return Err(map_err(e)),
        };
        for stale in existing
            .iter()
            .filter(|n| n.starts_with("meta_") && !wanted.contains(n))
        {
            heads.drop_index(stale).await.map_err(map_err)?;
        }
        Ok(())
    }

    async fn begin_write(&self, change: HeadChange) -> Result<Box<dyn PendingWrite>> {
        if !group::groupable(&change) {
            return self.begin_alone(change).await;
        }
        match self.lanes.join(self, &change).await {
            group::Answer::Held(pending) => pending,
            group::Answer::Alone => self.begin_alone(change).await,
        }
    }

    async fn append_by_reference(&self, c: &CollectionName, writes: Vec<RefWrite>) -> Result<Option<u64>> {
        if writes.is_empty() {
            return Ok(Some(0));
        }
        let k = writes.len() as u64;
        // One `$inc` for the whole batch: its cvs are `last - k + 1 ..= last`, in order.
        let first = self.take_cvs(c, k).await? + 1 - k;
        let updates: Vec<Document> = (first..).zip(&writes).map(|(cv, w)| ref_head_update(w, cv)).collect();
        let entries: Vec<Document> = (first..)
            .zip(&writes)
            .map(|(cv, w)| version_doc(&w.version, cv))
            .collect();
        // The index entries whose data restored versions take: each must still be there, and
        // is written to (`refs`), so retention's removal of it conflicts with this transaction.
        let sources: Vec<Document> = writes
            .iter()
            .filter_map(|w| {
                w.source.map(|ov| {
                    doc! {"q": {"itemId": w.version.id.as_str(), "ov": ov as i64}, "u": {"$inc": {"refs": 1}}}
                })
            })
            .collect();
        let n_sources = sources.len() as u64;
        let mut session = self.start().await?;
        // One `update` command carrying a statement per item: every head moves, or (a
        // precondition failed, or another transaction holds an item) the batch is given up.
        if update_all(&self.db, &mut session, format!("{c}_head"), updates).await? != k
            || (n_sources > 0 && update_all(&self.db, &mut session, format!("{c}_ver"), sources).await? != n_sources)
        {
            let _ = session.abort_transaction().await;
            return Ok(None);
        }
        match self.versions_coll(c).insert_many(entries).session(&mut session).await {
            Ok(_) => {}
            Err(e) => {
                let _ = session.abort_transaction().await;
                return match code(&e) {
                    // The heads matched, so (itemId, ov) can't clash: an idempotency key did.
                    Some(DUPLICATE_KEY) => {
                        Err(Error::AlreadyExists(format!("a write with the idempotency key of {c}")))
                    }
                    _ if is_transient(&e) => Ok(None),
                    _ => Err(map_err(e)),
                };
            }
        }
        // An unknown outcome is reported as such, never as an outage: the batch may have
        // committed, and only the caller's idempotency key makes another attempt safe.
        match commit(&mut session).await {
            Ok(()) => Ok(Some(first)),
            Err(e) => match commit_error(&e) {
                CommitError::Unknown(error) => Err(Error::OutcomeUnknown(error.to_string())),
                CommitError::NotCommitted { retry: true, .. } => Ok(None),
                CommitError::NotCommitted { error, .. } => Err(error),
            },
        }
    }

    async fn head(&self, c: &CollectionName, id: &ItemId) -> Result<Option<Head>> {
        let found = self
            .heads(c)
            .find_one(doc! {"_id": id.as_str()})
            .await
            .map_err(map_err)?;
        found.map(|d| head_from_doc(id, d)).transpose()
    }

    async fn version(&self, c: &CollectionName, id: &ItemId, ov: u64) -> Result<Option<VersionEntry>> {
        let found = self
            .versions_coll(c)
            .find_one(doc! {"itemId": id.as_str(), "ov": ov as i64})
            .await
            .map_err(map_err)?;
        found.map(|d| version_from_doc(id, &d)).transpose()
    }

    async fn version_as_of(&self, c: &CollectionName, id: &ItemId, at: Timestamp) -> Result<Option<VersionEntry>> {
        let found = self
            .versions_coll(c)
            .find_one(doc! {"itemId": id.as_str(), "at": {"$lte": to_date(at)}})
            .sort(doc! {"itemId": 1, "ov": -1})
            .await
            .map_err(map_err)?;
        found.map(|d| version_from_doc(id, &d)).transpose()
    }

    async fn list_heads(&self, c: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        self.find_heads(c, q, true).await
    }

    async fn list_heads_without_data(&self, c: &CollectionName, q: &ListQuery) -> Result<Vec<Head>> {
        self.find_heads(c, q, false).await
    }

    async fn heads_without_data(&self, c: &CollectionName, ids: &[ItemId]) -> Result<Vec<Head>> {
        use futures::TryStreamExt;
        let ids: Vec<&str> = ids.iter().map(ItemId::as_str).collect();
        let docs: Vec<Document> = self
            .heads(c)
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"data": 0})
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.into_iter()
            .map(|d| {
                let id: ItemId = get_string(&d, "_id")?.parse()?;
                head_from_doc(&id, d)
            })
            .collect()
    }

    async fn versions_at(&self, c: &CollectionName, ids: &[ItemId], point: HistoryPoint) -> Result<Vec<VersionEntry>> {
        let bound = match point {
            HistoryPoint::Cv(cv) => doc! {"cv": {"$lte": cv as i64}},
            HistoryPoint::At(at) => doc! {"at": {"$lte": to_date(at)}},
        };
        let mut first = doc! {"itemId": {"$in": ids.iter().map(ItemId::as_str).collect::<Vec<_>>()}};
        first.extend(bound);
        let pipeline = vec![
            doc! {"$match": first},
            // Backwards along the (itemId, ov) index: no in-memory sort (the order of the
            // result does not matter).
            doc! {"$sort": {"itemId": -1, "ov": -1}},
            doc! {"$group": {"_id": "$itemId", "v": {"$first": "$$ROOT"}}},
            doc! {"$replaceRoot": {"newRoot": "$v"}},
        ];
        versions_of(self.versions_coll(c).aggregate(pipeline).await).await
    }

    async fn oldest_versions(&self, c: &CollectionName, ids: &[ItemId]) -> Result<Vec<VersionEntry>> {
        let pipeline = vec![
            doc! {"$match": {"itemId": {"$in": ids.iter().map(ItemId::as_str).collect::<Vec<_>>()}}},
            // Along the (itemId, ov) index, each item's first entry first.
            doc! {"$sort": {"itemId": 1, "ov": 1}},
            doc! {"$group": {"_id": "$itemId", "v": {"$first": "$$ROOT"}}},
            doc! {"$replaceRoot": {"newRoot": "$v"}},
        ];
        versions_of(self.versions_coll(c).aggregate(pipeline).await).await
    }

    async fn count_versions(
        &self,
        c: &CollectionName,
        after_cv: u64,
        filter: &Filter,
    ) -> Result<std::collections::HashMap<Op, u64>> {
        use futures::TryStreamExt;
        let mut m = filter_doc(filter);
        m.insert("cv", doc! {"$gt": after_cv as i64});
        let pipeline = vec![
            doc! {"$match": m},
            doc! {"$group": {"_id": "$op", "n": {"$sum": 1_i64}}},
        ];
        let docs: Vec<Document> = self
            .versions_coll(c)
            .aggregate(pipeline)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter()
            .map(|d| Ok((get_string(d, "_id")?.parse()?, get_u64(d, "n")?)))
            .collect()
    }

    async fn counters_from(&self, c: &CollectionName) -> Result<u64> {
        let seq = self
            .sequences()
            .find_one(doc! {"_id": c.as_str()})
            .await
            .map_err(map_err)?;
        Ok(seq.and_then(|d| get_u64(&d, "countersFrom").ok()).unwrap_or(0))
    }

    async fn reset_counters(&self, c: &CollectionName) -> Result<u64> {
        // A pipeline update copies the current cv in one atomic step.
        let seq = self
            .sequences()
            .find_one_and_update(
                doc! {"_id": c.as_str()},
                vec![doc! {"$set": {"cv": {"$ifNull": ["$cv", 0_i64]}, "countersFrom": {"$ifNull": ["$cv", 0_i64]}}}],
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?
            .ok_or_else(|| Error::metadata("counter reset returned nothing"))?;
        get_u64(&seq, "countersFrom")
    }

    async fn mark_processed(
        &self,
        c: &CollectionName,
        older_than: Timestamp,
        only: Option<&ItemId>,
        after_id: Option<&ItemId>,
        limit: usize,
        dry_run: bool,
    ) -> Result<TierBatch> {
        use futures::TryStreamExt;
        let mut filter = doc! {"state": State::New.as_str(), "updatedAt": {"$lt": to_date(older_than)}};
        match (only, after_id) {
            (Some(id), _) => {
                filter.insert("_id", id.as_str());
            }
            (None, Some(after)) => {
                filter.insert("_id", doc! {"$gt": after.as_str()});
            }
            (None, None) => {}
        }
        let heads = self.heads(c);
        // The documents' real size in MongoDB, before and after.
        let sizes = |ids: Vec<&str>| {
            let heads = heads.clone();
            let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
            async move {
                let docs: Vec<Document> = heads
                    .find(doc! {"_id": {"$in": ids}})
                    .projection(doc! {"s": {"$bsonSize": "$$ROOT"}})
                    .await
                    .map_err(map_err)?
                    .try_collect()
                    .await
                    .map_err(map_err)?;
                Ok::<u64, Error>(docs.iter().filter_map(|d| get_u64(d, "s").ok()).sum())
            }
        };
        let candidates: Vec<Document> = heads
            .find(filter.clone())
            .projection(doc! {"_id": 1, "s": {"$bsonSize": "$$ROOT"}})
            .sort(doc! {"_id": 1})
            .limit(limit as i64)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        let ids: Vec<ItemId> = candidates
            .iter()
            .map(|d| get_string(d, "_id")?.parse())
            .collect::<Result<_>>()?;
        let bytes_before: u64 = candidates.iter().filter_map(|d| get_u64(d, "s").ok()).sum();
        if dry_run || ids.is_empty() {
            return Ok(TierBatch {
                ids,
                bytes_before,
                bytes_after: bytes_before,
            });
        }
        let id_strs: Vec<&str> = ids.iter().map(ItemId::as_str).collect();
        filter.insert("_id", doc! {"$in": &id_strs});
        // The filter is re-checked per document: an item written meanwhile stays `new`.
        heads
            .update_many(
                filter,
                doc! {"$unset": {"data": ""}, "$set": {"state": State::Processed.as_str()}},
            )
            .await
            .map_err(map_err)?;
        let bytes_after = sizes(id_strs).await?;
        Ok(TierBatch {
            ids,
            bytes_before,
            bytes_after,
        })
    }

    async fn delete_versions(&self, c: &CollectionName, id: &ItemId, versions: &[PrunedVersion]) -> Result<u64> {
        // One transaction per try; concurrent prunes of one collection meet on its tally
        // document, and the loser tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut session = self.start().await?;
            let done = match self.delete_and_tally(&mut session, c, id, versions).await {
                Ok(n) => commit(&mut session).await.map(|()| n),
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    Err(e)
                }
            };
            match done {
                Ok(n) => return Ok(n),
                Err(e) if is_transient(&e) && attempt < PRUNE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(1 << attempt.min(6))).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
    }

    async fn pruned_counts(&self, c: &CollectionName) -> Result<std::collections::HashMap<String, u64>> {
        let from = self.counters_from(c).await?;
        let tally = self
            .sequences()
            .find_one(doc! {"_id": pruned_id(c)})
            .await
            .map_err(map_err)?;
        Ok(tally.map(|t| tally_counts(&t, from)).unwrap_or_default())
    }

    async fn version_by_request(&self, c: &CollectionName, key: &RequestKey) -> Result<Option<VersionEntry>> {
        // Only a majority-committed version may answer for the key: one the primary alone has
        // can still be rolled back in a failover, and acknowledging it would lose the write.
        let found = self
            .versions_coll(c)
            .find_one(doc! {"requestId": key.as_str()})
            .read_concern(ReadConcern::majority())
            .await
            .map_err(map_err)?;
        found
            .map(|d| {
                let id: ItemId = get_string(&d, "itemId")?.parse()?;
                version_from_doc(&id, &d)
            })
            .transpose()
    }

    async fn count_items(&self, c: &CollectionName) -> Result<u64> {
        self.heads(c).estimated_document_count().await.map_err(map_err)
    }

    async fn versions(
        &self,
        c: &CollectionName,
        id: &ItemId,
        after_ov: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionEntry>> {
        use futures::TryStreamExt;
        let mut filter = doc! {"itemId": id.as_str()};
        if let Some(after) = after_ov {
            filter.insert("ov", doc! {"$gt": after as i64});
        }
        let docs: Vec<Document> = self
            .versions_coll(c)
            .find(filter)
            .sort(doc! {"itemId": 1, "ov": 1})
            .limit(limit as i64)
            .batch_size(limit as u32)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| version_from_doc(id, d)).collect()
    }
}

/// The safe query subset as a MongoDB filter on `meta.<property>`.
fn filter_doc(filter: &Filter) -> Document {
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

pub(crate) fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        // An ordered `insertMany` stops at its first failed document.
        ErrorKind::InsertMany(m) => m.write_errors.as_ref().and_then(|w| w.first()).map(|w| w.code),
        _ => None,
    }
}

/// Whether a failed write may have been applied anyway: its reply was lost (a network error),
/// it was applied but not confirmed durable (a write concern error), or the driver's retry failed
/// after such an attempt. A write the server refused outright, or that the driver says wrote
/// nothing, did not happen.
pub(crate) fn may_have_written(e: &mongodb::error::Error) -> bool {
    if e.contains_label(NO_WRITES_PERFORMED) {
        return false;
    }
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(_))
        | ErrorKind::InsertMany(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::Authentication { .. } => false,
        ErrorKind::Command(_) => e.contains_label(RETRYABLE_WRITE_ERROR),
        _ => true,
    }
}

pub(crate) fn is_transient(e: &mongodb::error::Error) -> bool {
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

pub(crate) fn map_err(e: mongodb::error::Error) -> Error {
    if code(&e) == Some(ILLEGAL_OPERATION) && e.to_string().contains("Transaction numbers") {
        return Error::Unsupported(
            "MongoDB refused a transaction: Chronos needs a replica set or a sharded cluster".into(),
        );
    }
    Error::metadata(e)
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

fn get_opt_date(d: &Document, key: &str) -> Result<Option<Timestamp>> {
    match d.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::DateTime(t)) => from_date(*t).map(Some),
        _ => Err(Error::Corrupt(format!("field `{key}` is not a date"))),
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

fn get_meta(d: &Document) -> Map<String, Value> {
    match d.get("meta") {
        Some(Bson::Document(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_relaxed_extjson()))
            .collect(),
        _ => Map::new(),
    }
}

fn head_from_doc(id: &ItemId, d: Document) -> Result<Head> {
    let function_ids = match d.get("functionIds") {
        Some(Bson::Array(a)) => a.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    };
    let updated_at = get_date(&d, "updatedAt")?;
    Ok(Head {
        id: id.clone(),
        ov: get_u64(&d, "ov")?,
        cv: get_u64(&d, "cv")?,
        write_id: get_string(&d, "writeId")?,
        inserted_at: get_date(&d, "insertedAt")?,
        updated_at,
        // A deleted head's latest version is its delete, whose time is the head's `updatedAt`
        // (clamped so time never runs backwards per item). The stored `deletedAt` is written
        // before that clamp is known — it serves as the "is deleted" flag — so its time is the
        // version's, as the other stores report it.
        deleted_at: get_opt_date(&d, "deletedAt")?.map(|_| updated_at),
        function_ids,
        state: get_string(&d, "state")?.parse()?,
        size: get_u64(&d, "size")?,
        checksum: get_string(&d, "checksum")?,
        meta: get_meta(&d),
        inline: get_opt_string(&d, "data"),
        payload_ref: get_payload_ref(&d)?,
    })
}

/// The version entries an aggregation over a version index returns.
async fn versions_of(cursor: mongodb::error::Result<mongodb::Cursor<Document>>) -> Result<Vec<VersionEntry>> {
    use futures::TryStreamExt;
    let docs: Vec<Document> = cursor.map_err(map_err)?.try_collect().await.map_err(map_err)?;
    docs.iter()
        .map(|d| {
            let id: ItemId = get_string(d, "itemId")?.parse()?;
            version_from_doc(&id, d)
        })
        .collect()
}

fn version_from_doc(id: &ItemId, d: &Document) -> Result<VersionEntry> {
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

fn get_payload_ref(d: &Document) -> Result<Option<PayloadRef>> {
    match d.get("payloadRef") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(r)) => Ok(Some(PayloadRef {
            of: get_string(r, "of")?,
            ov: get_u64(r, "ov")?,
            write_id: get_string(r, "writeId")?,
            function_ids: match r.get("functionIds") {
                Some(Bson::Array(a)) => a.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect(),
                _ => vec![],
            },
        })),
        Some(_) => Err(Error::Corrupt("field `payloadRef` is not a document".into())),
    }
}

fn payload_ref_doc(r: &PayloadRef) -> Document {
    doc! {"of": &r.of, "ov": r.ov as i64, "writeId": &r.write_id, "functionIds": &r.function_ids}
}

/// A version entry as stored, with collection version `cv`.
fn version_doc(v: &VersionEntry, cv: u64) -> Document {
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

/// One statement of the batched head `update` of an append by reference.
/// One `update` command with these statements, in the session's transaction: how many
/// documents matched (0 when a statement failed or met a transient conflict). On any other
/// error the transaction is aborted.
async fn update_all(
    db: &Database,
    session: &mut ClientSession,
    collection: String,
    updates: Vec<Document>,
) -> Result<u64> {
    let reply = db
        .run_command(doc! {"update": collection, "updates": updates, "ordered": true})
        .session(&mut *session)
        .await;
    match reply {
        Ok(reply) if reply.get_array("writeErrors").is_err() => Ok(match reply.get("n") {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            _ => 0,
        }),
        Ok(_) => Ok(0),
        Err(e) if is_transient(&e) => Ok(0),
        Err(e) => {
            let _ = session.abort_transaction().await;
            Err(map_err(e))
        }
    }
}

/// How many times retention's delete of an item's versions is tried when it meets another's.
const PRUNE_ATTEMPTS: u32 = 20;

/// The `chronos_sequences` document with retention's tallies of a collection: `{from, counts:
/// [{name, n}]}`, counting versions pruned with a cv above `from`. Apart from the cv sequence
/// document, so it never holds up a writer's `$inc`; a counter reset moves `countersFrom` past
/// `from`, which voids the tallies without touching them.
fn pruned_id(c: &CollectionName) -> String {
    // `/` is not allowed in collection names, so this can't be another collection's sequence.
    format!("{c}/pruned")
}

/// The tallies of a tally document, if they count from the counters' mark `from`.
fn tally_counts(tally: &Document, from: u64) -> std::collections::HashMap<String, u64> {
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

fn ref_head_update(w: &RefWrite, cv: u64) -> Document {
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
fn to_bson(v: &Value) -> Bson {
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

fn to_bson_doc(m: &Map<String, Value>) -> Document {
    m.iter().map(|(k, v)| (k.clone(), to_bson(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With clocks that disagree, a delete's own time was stored (`deletedAt` earlier than the
    /// clamped `updatedAt`), so the head said it was deleted before its last update (review L10).
    #[test]
    fn a_deleted_head_is_deleted_at_its_delete_versions_time() {
        let later = bson::DateTime::from_millis(2_000);
        let doc = doc! {
            "ov": 3_i64, "cv": 9_i64, "writeId": "w", "insertedAt": bson::DateTime::from_millis(0),
            "updatedAt": later, "deletedAt": bson::DateTime::from_millis(1_000),
            "state": "new", "size": 0_i64, "checksum": "c",
        };
        let head = head_from_doc(&"x".parse().unwrap(), doc).unwrap();
        assert_eq!(head.deleted_at, Some(head.updated_at));
        assert_eq!(head.updated_at.as_millisecond(), 2_000);
    }
}
