//! The lone-write protocol on MongoDB: take a cv, hold the item in a transaction (retrying while
//! another transaction holds it), and commit the head with its version entry. Concurrent writes
//! join a group instead when they can ([`super::group`]).

use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, doc};
use mongodb::options::{IndexOptions, ReadConcern, ReturnDocument};
use mongodb::{ClientSession, Collection, IndexModel};

use super::docs::{
    create_head, get_string, head_from_raw, head_update, packed_head_update, version_doc, version_from_doc,
};
use super::{
    Attempt, DUPLICATE_KEY, MongoMetaStore, NAMESPACE_NOT_FOUND, code, commit, commit_error, is_transient, map_err,
};
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, Op, RequestKey, Timestamp, VersionEntry};
use crate::engine::store::{CommitError, HeadChange, Held, MetaRead, MetaWrite, PendingWrite};

/// How often a write retries when another transaction holds its item, before giving up.
pub(super) const CONTENTION_ATTEMPTS: u32 = 40;

impl MongoMetaStore {
    /// A write on its own: the protocol of `docs/design.md`. A writer that finds its item held
    /// by another transaction backs off and tries again.
    async fn begin_alone(&self, change: HeadChange) -> Result<Held> {
        let mut cv = self.next_cv(&change.collection).await?;
        for attempt in 0..CONTENTION_ATTEMPTS {
            match self.try_hold(&change, cv).await? {
                Attempt::Held(pending) => return Ok(*pending),
                Attempt::StaleCv => cv = self.next_cv(&change.collection).await?,
                Attempt::Busy => backoff(attempt).await,
            }
        }
        Err(Error::Contended(format!("{}/{}", change.collection, change.id)))
    }

    /// One attempt to hold a write's item with cv `cv`.
    pub(super) async fn try_hold(&self, change: &HeadChange, cv: u64) -> Result<Attempt> {
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
        Ok(Attempt::Held(Box::new(Held {
            previous: None,
            ov: 0,
            cv,
            together: 1,
            write: Box::new(MongoPending {
                heads: self.heads(&change.collection),
                store_versions: self.versions_coll(&change.collection),
                session,
                commit_by: change.commit_by,
            }),
        })))
    }

    /// A lone write's first attempt, made by its lane's worker: what needs retries (contention,
    /// a stale cv) goes back to the writer, so the lane never waits on a backoff.
    pub(super) async fn first_attempt(&self, change: &HeadChange) -> super::group::Answer {
        let attempt = match self.next_cv(&change.collection).await {
            Ok(cv) => self.try_hold(change, cv).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Attempt::Held(pending)) => super::group::Answer::Held(Ok(pending)),
            Ok(Attempt::StaleCv | Attempt::Busy) => super::group::Answer::Alone,
            Err(e) => super::group::Answer::Held(Err(e)),
        }
    }

    /// Hold an existing item with cv `cv`: open a transaction and `findAndModify` its head.
    async fn try_change(&self, change: &HeadChange, cv: u64) -> Result<Attempt> {
        let (heads, raw_heads) = (self.heads(&change.collection), self.raw_heads(&change.collection));
        let (filter, update) = head_update(change, cv);
        let mut session = self.start().await?;
        let mut find = raw_heads
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::Before);
        if change.data.is_some() {
            // Only a write that keeps the previous data (a delete) needs it shipped.
            find = find.projection(doc! {"data": 0});
        }
        match find.session(&mut session).await {
            Ok(Some(before)) => {
                let previous = head_from_raw(&change.id, &before)?;
                let ov = previous.ov + 1;
                Ok(Attempt::Held(Box::new(Held {
                    previous: Some(previous),
                    ov,
                    cv,
                    together: 1,
                    write: Box::new(MongoPending {
                        heads: heads.clone(),
                        store_versions: self.versions_coll(&change.collection),
                        session,
                        commit_by: change.commit_by,
                    }),
                })))
            }
            Ok(None) => {
                let _ = session.abort_transaction().await;
                // Find out why nothing matched: missing, deleted, stale ov, or a newer cv.
                let current = self.head(&change.collection, &change.id).await?;
                crate::engine::store::rules::check_precondition(change, current.as_ref())?;
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

pub(super) async fn backoff(attempt: u32) {
    // Jittered exponential backoff, 1 ms … 64 ms: the holder's transaction lasts one S3 PUT.
    let cap = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % cap;
    tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
}

pub(super) struct MongoPending {
    heads: Collection<Document>,
    store_versions: Collection<Document>,
    session: ClientSession,
    commit_by: Timestamp,
}

#[async_trait]
impl PendingWrite for MongoPending {
    async fn commit(mut self: Box<Self>, v: VersionEntry) -> Result<(), CommitError> {
        if let Some((q, u)) = packed_head_update(&v)
            && let Err(e) = self.heads.update_one(q, u).session(&mut self.session).await
        {
            let _ = self.session.abort_transaction().await;
            let retry = is_transient(&e);
            return Err(CommitError::NotCommitted {
                error: map_err(e),
                retry,
            });
        }
        let entry = version_doc(&v, v.cv);
        if let Err(e) = self.store_versions.insert_one(entry).session(&mut self.session).await {
            let _ = self.session.abort_transaction().await;
            let retry = is_transient(&e);
            let error = match code(&e) {
                // The head is held, so the (itemId, ov) index can't clash: the idempotency key did.
                Some(DUPLICATE_KEY) => Error::RequestKeyTaken(format!("a write with the idempotency key of {}", v.id)),
                _ => map_err(e),
            };
            return Err(CommitError::NotCommitted { error, retry });
        }
        if let Err(late) = crate::engine::store::in_time(self.commit_by) {
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
impl MetaWrite for MongoMetaStore {
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
        self.prepare_meta_indexes(c, indexed).await
    }

    async fn begin_write(&self, change: HeadChange) -> Result<Held> {
        if !super::group::groupable(&change) {
            return self.begin_alone(change).await;
        }
        match self.lanes.join(self, &change).await {
            super::group::Answer::Held(pending) => pending.map(|held| *held),
            super::group::Answer::Alone => self.begin_alone(change).await,
        }
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
}

/// The keys of the index a listing filtered on property `p` walks: equal values of `p` in `_id`
/// order, which is the order a listing returns and pages (`afterId`) in. So a page reads only the
/// entries it returns, instead of sorting every head with that value to find them.
fn meta_index_keys(p: &str) -> Document {
    doc! {format!("meta.{p}"): 1, "_id": 1}
}

impl MongoMetaStore {
    /// One index per indexed property, named `meta_<prop>` so stale ones can be recognised: an
    /// index no longer asked for goes, and so does one of an earlier shape (a name can't be
    /// created again with other keys), to be made again as [`meta_index_keys`] says.
    async fn prepare_meta_indexes(&self, c: &CollectionName, indexed: &[String]) -> Result<()> {
        use futures::TryStreamExt;
        let heads = self.heads(c);
        let wanted: Vec<(String, Document)> = indexed
            .iter()
            .map(|p| (format!("meta_{p}"), meta_index_keys(p)))
            .collect();
        let existing: Vec<IndexModel> = match heads.list_indexes().await {
            Ok(cursor) => cursor.try_collect().await.map_err(map_err)?,
            // A collection that doesn't exist yet has no indexes to drop.
            Err(e) if code(&e) == Some(NAMESPACE_NOT_FOUND) => vec![],
            Err(e) => return Err(map_err(e)),
        };
        // A reshaped index goes before it is made again; one no longer wanted only after the
        // wanted ones exist, so listings never lose an index they could still use.
        let mut unwanted = Vec::new();
        for index in &existing {
            let Some(name) = index.options.as_ref().and_then(|o| o.name.as_deref()) else {
                continue;
            };
            if !name.starts_with("meta_") {
                continue;
            }
            match wanted.iter().find(|(n, _)| n == name) {
                Some((_, keys)) if keys.keys().eq(index.keys.keys()) => {}
                Some(_) => heads.drop_index(name).await.map_err(map_err)?,
                None => unwanted.push(name),
            }
        }
        if !wanted.is_empty() {
            let models = wanted.into_iter().map(|(name, keys)| {
                IndexModel::builder()
                    .keys(keys)
                    .options(IndexOptions::builder().name(name).build())
                    .build()
            });
            heads.create_indexes(models).await.map_err(map_err)?;
        }
        for name in unwanted {
            heads.drop_index(name).await.map_err(map_err)?;
        }
        Ok(())
    }
}
