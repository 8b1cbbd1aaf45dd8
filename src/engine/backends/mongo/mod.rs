//! The MongoDB metadata store.
//!
//! Collections per Chronos collection `c`: `c_head` (one document per item: the latest version's
//! coordinates, indexed metadata and, while hot, the data inline) and `c_ver` (the version index).
//! `chronos_sequences` holds one collection-version counter per collection, and `c/pruned`
//! with retention's counter tallies; `chronos_sides` the side records (holds, wrapped data keys).
//!
//! A lone write costs four commands: the cv `$inc`, the head `findOneAndUpdate` (or `insert` for
//! a create) that opens the transaction and holds the item, the version `insert`, and
//! `commitTransaction`. Concurrent writes to one collection share them ([`group`]), and so do
//! concurrent reads of its heads ([`coalesce`]). See `docs/design.md`.
//!
//! This file holds the store, its transactions and how driver errors are read; the parts: `docs`
//! (BSON in and out), `write` (the lone-write protocol), `group` (group commit), `read`,
//! `coalesce` (head reads that share a `find`), `upkeep` (counters, tiering, retention),
//! `rebuild` (bulk loads from the buckets), `watch` (change streams that wake change feeds),
//! `sidecar` (holds, data keys) and `queue` (the retry queue's collections).

mod coalesce;
mod docs;
mod group;
pub mod queue;
mod read;
mod rebuild;
mod sidecar;
#[cfg(test)]
mod tests;
mod upkeep;
mod watch;
mod write;

use std::sync::Arc;

use bson::{Document, doc};
use mongodb::error::{
    ErrorKind, NO_WRITES_PERFORMED, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};
use mongodb::options::{ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database};

use crate::engine::error::{Error, Result};
use crate::engine::model::CollectionName;
use crate::engine::store::{CommitError, Held};
use docs::get_u64;

/// MongoDB error codes the store tells apart.
const DUPLICATE_KEY: i32 = 11000;
const ILLEGAL_OPERATION: i32 = 20;
const NAMESPACE_NOT_FOUND: i32 = 26;

#[derive(Clone)]
pub struct MongoMetaStore {
    client: Client,
    db: Database,
    lanes: Arc<group::Lanes>,
    /// Concurrent head reads of one collection share a `find` ([`coalesce`]).
    head_reads: Arc<coalesce::HeadReads>,
    /// The change streams that wake change feeds, one per watched collection.
    watches: Arc<watch::Watches>,
}

impl MongoMetaStore {
    /// Use an existing client (clients are pooled: one per distinct URI, shared by every store).
    pub fn new(client: Client, db_name: &str) -> Self {
        let db = durable_database(&client, db_name);
        MongoMetaStore {
            client,
            db,
            lanes: Arc::default(),
            head_reads: Arc::default(),
            watches: Arc::default(),
        }
    }

    fn heads(&self, c: &CollectionName) -> Collection<Document> {
        self.db.collection(&format!("{c}_head"))
    }

    /// The heads as raw BSON, for what decodes them ([`docs::head_from_raw`] builds no `Document`).
    fn raw_heads(&self, c: &CollectionName) -> Collection<bson::RawDocumentBuf> {
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

    /// Erasure records (`_id` = erasure id, `record` = its JSON; see `engine::erase`).
    fn erasures(&self) -> Collection<Document> {
        self.db.collection("chronos_erasures")
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
}

/// Lock a lane of writes ([`group`]) or reads ([`coalesce`]). Their critical sections only move
/// requests around and count them, so a poisoned lock still holds valid state.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// How one attempt to hold an existing item went.
enum Attempt {
    Held(Box<Held>),
    /// The head has a cv at least ours: take a new one.
    StaleCv,
    /// Another transaction holds the item: back off and try again.
    Busy,
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
