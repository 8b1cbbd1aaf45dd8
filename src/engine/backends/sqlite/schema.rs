//! The tables of the embedded store and the steps that migrate an older database in place; a
//! database from a newer build is refused rather than misread.

use rusqlite::{Connection, TransactionBehavior};

use super::rows::map_sql;
use crate::engine::error::{Error, Result};

/// Bumped whenever the tables change; a database from a newer build is refused, not misread.
pub(super) const SCHEMA_VERSION: i64 = 8;

pub(super) const SCHEMA: &str = "
CREATE TABLE sequences (
    collection TEXT NOT NULL PRIMARY KEY,
    cv INTEGER NOT NULL,
    counters_from INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE heads (
    collection TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ov INTEGER NOT NULL,
    cv INTEGER NOT NULL,
    write_id TEXT NOT NULL,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER,
    function_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    meta TEXT NOT NULL,
    inline_data TEXT,
    PRIMARY KEY (collection, item_id)
) STRICT;
CREATE TABLE versions (
    collection TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ov INTEGER NOT NULL,
    cv INTEGER NOT NULL,
    op TEXT NOT NULL,
    at INTEGER NOT NULL,
    actor TEXT,
    reason TEXT,
    write_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    meta TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (collection, item_id, ov)
) STRICT;
";

/// Schema 2: idempotency keys on versions, and the retry queue with its dead letters.
pub(super) const MIGRATE_2: &str = "
ALTER TABLE versions ADD COLUMN request_id TEXT;
ALTER TABLE versions ADD COLUMN request_hash TEXT;
CREATE UNIQUE INDEX versions_request ON versions (collection, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE queue (
    id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    lease_until INTEGER,
    claim_token TEXT,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    result TEXT,
    updated_at INTEGER NOT NULL,
    job TEXT NOT NULL
) STRICT;
CREATE INDEX queue_due ON queue (status, due_at);
CREATE TABLE dead_letters (
    id TEXT NOT NULL PRIMARY KEY,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    job TEXT NOT NULL
) STRICT;
";

/// Schema changes after version 1, in order; entry `i` takes a database from version `i + 1` to
/// `i + 2`. Only additive changes, so a database is upgraded in place at open.
pub(super) const MIGRATIONS: &[&str] = &[
    // 2: idempotency keys on versions, and the retry queue with its dead letters.
    MIGRATE_2,
    // 3: restore by reference. A JSON `PayloadRef`; NULL = the version's own payload object.
    "ALTER TABLE heads ADD COLUMN payload_ref TEXT; ALTER TABLE versions ADD COLUMN payload_ref TEXT;",
    // 4: retention's tallies per counter name since `counters_from` (JSON object; NULL = none).
    "ALTER TABLE sequences ADD COLUMN pruned TEXT;",
    // 5: a rebuild's progress (`rebuild.rs`): at most one row, opaque text.
    "CREATE TABLE rebuild_progress (id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1), progress TEXT NOT NULL) STRICT;",
    // 6: the change feed reads a collection's versions in cv order, and tells a resume point
    // retention cut into by the highest cv it removed (see `HistoryStart`).
    "CREATE INDEX versions_cv ON versions (collection, cv); \
     ALTER TABLE sequences ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;",
    // 7: side records (`sidecar.rs`): legal holds and wrapped data keys, one per item and kind.
    "CREATE TABLE sides (collection TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL, \
     record TEXT NOT NULL, PRIMARY KEY (collection, kind, item_id)) STRICT;",
    // 8: erasure records (`engine::erase`), opaque JSON by erasure id.
    "CREATE TABLE erasures (id TEXT NOT NULL PRIMARY KEY, record TEXT NOT NULL) STRICT;",
];

pub(super) fn create_schema(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_sql)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(map_sql)?;
    match version {
        0..SCHEMA_VERSION => {
            if version == 0 {
                tx.execute_batch(SCHEMA).map_err(map_sql)?;
            }
            for step in &MIGRATIONS[(version.max(1) - 1) as usize..] {
                tx.execute_batch(step).map_err(map_sql)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(map_sql)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(Error::Unsupported(format!(
                "the database has schema version {other}; this build of Chronos knows version \
                 {SCHEMA_VERSION} (was it written by a newer Chronos?)"
            )));
        }
    }
    tx.commit().map_err(map_sql)
}
