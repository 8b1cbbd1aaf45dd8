//! The embedded metadata store on SQLite: the default when Chronos runs without MongoDB and S3.
//!
//! One database file holds three tables keyed by collection name: `heads` (one row per item),
//! `versions` (the version index) and `sequences` (one cv counter per collection). Meta and
//! function ids are stored as JSON text, timestamps as integer milliseconds.
//!
//! The store belongs to one process: an exclusive lock file next to the database makes a second
//! process fail at open. That lets a pending write hold its item with an in-process lock (as the
//! in-memory store does) instead of keeping a SQLite transaction open across the payload upload,
//! which would block every other writer of the database.
//!
//! This file opens the store and holds its item locks; the parts: `schema` (tables, migrations),
//! `rows` (rows in and out), `write`, `read`, `upkeep` (counters, tiering, retention), `rebuild`
//! (bulk loads from the buckets), `sidecar` (holds, data keys) and `queue` (the retry queue's tables).

pub mod queue;
mod read;
mod rebuild;
mod rows;
mod schema;
mod sidecar;
#[cfg(test)]
mod tests;
mod upkeep;
mod write;

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::OwnedMutexGuard;

use crate::engine::error::{Error, Failure, Result};
use crate::engine::model::{CollectionName, ItemId};
use rows::map_sql;
use schema::create_schema;

/// How long a write waits for another write of the same item before reporting contention.
const ITEM_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct SqliteMetaStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// One connection: SQLite serialises writers anyway, and this keeps the store simple.
    conn: Mutex<Connection>,
    /// How often the connection was taken: tests check that long work gives it up between steps.
    #[cfg(test)]
    taken: std::sync::atomic::AtomicUsize,
    items: ItemLocks,
    /// Wakes change feeds after commits (only this process writes the database).
    signals: crate::engine::store::signal::CommitSignals,
    /// Declared last so it is released only after the connection has closed.
    _lock: File,
}

fn lock_std<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteMetaStore {
    /// Open (or create) the database at `path`, taking the exclusive lock `<path>.lock`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                Error::metadata(Failure::new(
                    format!("cannot open lock file {}: {e}", lock_path.display()),
                    e,
                ))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::metadata(format!(
                    "{} is in use by another Chronos process (it holds {}); stop that process or \
                     use another data directory",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::metadata(Failure::new(
                    format!("cannot lock {}: {e}", lock_path.display()),
                    e,
                )));
            }
        }

        let mut conn = Connection::open(path).map_err(map_sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(map_sql)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(map_sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Unsupported(format!(
                "SQLite could not use write-ahead logging for {} (journal mode `{mode}`)",
                path.display()
            )));
        }
        // In WAL mode NORMAL may lose the last commits on power loss; an acknowledged write must not.
        conn.pragma_update(None, "synchronous", "FULL").map_err(map_sql)?;
        create_schema(&mut conn)?;
        Ok(SqliteMetaStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                #[cfg(test)]
                taken: Default::default(),
                items: ItemLocks::default(),
                signals: Default::default(),
                _lock: lock,
            }),
        })
    }

    pub(crate) async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        #[cfg(test)]
        inner.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || f(&mut lock_std(&inner.conn)))
            .await
            .map_err(Error::metadata)?
    }

    /// Run `f` in an immediate transaction on the connection: committed when `f` succeeds,
    /// rolled back when it fails.
    pub(crate) async fn in_transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_sql)?;
            let out = f(&tx)?;
            tx.commit().map_err(map_sql)?;
            Ok(out)
        })
        .await
    }
}

type ItemKey = (CollectionName, ItemId);

type LockMap = Arc<Mutex<HashMap<ItemKey, Arc<tokio::sync::Mutex<()>>>>>;

/// One async lock per item being written, held by its pending write like a row lock. Entries
/// are removed when the last user lets go, so the map stays as small as the set of busy items.
#[derive(Default)]
struct ItemLocks(LockMap);

struct ItemGuard {
    map: LockMap,
    key: ItemKey,
    slot: Option<Arc<tokio::sync::Mutex<()>>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl ItemLocks {
    async fn acquire(&self, key: ItemKey) -> Result<ItemGuard> {
        let slot = lock_std(&self.0).entry(key.clone()).or_default().clone();
        let mut guard = ItemGuard {
            map: self.0.clone(),
            key,
            slot: Some(slot.clone()),
            held: None,
        };
        match tokio::time::timeout(ITEM_WAIT, slot.lock_owned()).await {
            Ok(held) => {
                guard.held = Some(held);
                Ok(guard)
            }
            Err(_) => Err(Error::Contended(format!("{}/{}", guard.key.0, guard.key.1))),
        }
    }
}

impl Drop for ItemGuard {
    fn drop(&mut self) {
        let mut map = lock_std(&self.map);
        self.held = None;
        if let Some(slot) = self.slot.take()
            // Only the map and this guard still know the lock: nobody is waiting for it. Clones
            // are only made under the map's mutex, which we hold.
            && Arc::strong_count(&slot) == 2
        {
            map.remove(&self.key);
        }
    }
}
