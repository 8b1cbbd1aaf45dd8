//! Tests of the SQLite store that need its insides: item locks, connection hand-off, migrations
//! and how commit failures are classified.

use serde_json::Map;

use super::schema::{SCHEMA, SCHEMA_VERSION};
use super::write::refs_commit_failed;
use super::*;
use crate::engine::model::{Content, Op, RequestKey, VersionEntry, now};
use crate::engine::store::{HeadChange, Held, ListQuery, MetaRead, MetaWrite, NewData};

/// Review L1: a COMMIT of appends by reference that failed after writing may still have
/// happened, so it is `OutcomeUnknown` (never queued without the caller's key); a busy
/// COMMIT wrote nothing.
#[test]
fn a_failed_commit_of_appends_by_reference_keeps_its_outcome_unknown() {
    let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    let io = refs_commit_failed(failure(rusqlite::ffi::SQLITE_IOERR));
    assert!(matches!(io, Error::OutcomeUnknown(_)), "{io:?}");
    let busy = refs_commit_failed(failure(rusqlite::ffi::SQLITE_BUSY));
    assert!(matches!(busy, Error::Unavailable { .. }), "{busy:?}");
}

fn change(id: &str, op: Op, expected_ov: Option<u64>) -> HeadChange {
    HeadChange {
        collection: "c".parse().unwrap(),
        id: id.parse().unwrap(),
        op,
        expected_ov,
        write_id: uuid::Uuid::now_v7().simple().to_string(),
        at: now(),
        data: Some(NewData {
            content: Content::from_json("{}".into()),
            meta: Map::new(),
            inline: true,
        }),
        function_id: None,
        request_key: None,
        commit_by: jiff::Timestamp::MAX,
    }
}

fn entry(p: &Held, c: &HeadChange) -> VersionEntry {
    VersionEntry {
        id: c.id.clone(),
        ov: p.ov,
        cv: p.cv,
        op: c.op,
        at: c.at,
        actor: None,
        reason: None,
        write_id: c.write_id.clone(),
        size: 2,
        checksum: Content::from_json("{}".into()).checksum,
        meta: Map::new(),
        deleted: false,
        request: None,
        payload_ref: None,
    }
}

fn busy_items(s: &SqliteMetaStore) -> usize {
    lock_std(&s.inner.items.0).len()
}

/// A collection restore asks for each item's version at a cv. Without statistics SQLite
/// answered that through `versions_cv` (collection, cv), walking every version of the
/// collection below the cv for each item: a restore of 20 000 items ran at 114 items/s. It must
/// read the item's own versions (the primary key) only.
#[tokio::test]
async fn an_items_version_at_a_cv_is_read_from_its_own_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteMetaStore::open(&dir.path().join("db")).unwrap();
    let plan = s
        .with_conn(|conn| {
            let sql = format!("EXPLAIN QUERY PLAN {}", super::rows::versions_sql(super::read::AT_CV));
            let mut st = conn.prepare(&sql).map_err(map_sql)?;
            let rows = st
                .query_map(rusqlite::params!["c", "i", 5], |r| r.get::<_, String>(3))
                .and_then(Iterator::collect::<rusqlite::Result<Vec<String>>>)
                .map_err(map_sql)?;
            Ok(rows.join("; "))
        })
        .await
        .unwrap();
    assert!(
        plan.contains("sqlite_autoindex_versions_1 (collection=? AND item_id=?") && !plan.contains("versions_cv"),
        "{plan}"
    );
}

/// A filter that matches nothing made the listing scan the whole collection while holding
/// the one connection, so every other request, writes included, waited for it (review L7).
#[tokio::test]
async fn a_long_listing_gives_the_connection_up_between_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteMetaStore::open(&dir.path().join("db")).unwrap();
    for i in 0..600 {
        let c = change(&format!("i{i:04}"), Op::Create, None);
        let p = s.begin_write(c.clone()).await.unwrap();
        let v = entry(&p, &c);
        p.write.commit(v).await.unwrap();
    }
    let none = crate::engine::query::Filter::parse(&serde_json::json!({"k": "no such value"}), &|_| true).unwrap();
    let q = ListQuery {
        filter: none,
        after_id: None,
        limit: 10,
        descending: false,
        include_deleted: false,
    };
    let before = s.inner.taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(s.list_heads(&"c".parse().unwrap(), &q).await.unwrap().is_empty());
    let taken = s.inner.taken.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        taken >= 3,
        "600 heads in pages of 256: the connection was taken {taken} time(s)"
    );
}

#[tokio::test]
async fn item_locks_are_held_until_commit_or_drop_and_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteMetaStore::open(&dir.path().join("db")).unwrap();
    let create = change("a", Op::Create, None);
    let p = s.begin_write(create.clone()).await.unwrap();
    assert_eq!(busy_items(&s), 1);
    // A second writer of the same item waits for the first.
    let update = change("a", Op::Update, Some(0));
    let waiting = tokio::spawn({
        let s = SqliteMetaStore { inner: s.inner.clone() };
        async move { s.begin_write(update).await.map(|p| p.ov) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    let v = entry(&p, &create);
    p.write.commit(v).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 1);
    assert_eq!(busy_items(&s), 0, "released locks are removed");

    let other = s.begin_write(change("b", Op::Create, None)).await.unwrap();
    drop(other);
    assert_eq!(busy_items(&s), 0);
    assert_eq!(
        s.head(&"c".parse().unwrap(), &"b".parse().unwrap()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_schema_1_database_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO versions (collection, item_id, ov, cv, op, at, write_id, size, checksum, meta, deleted) \
             VALUES ('c', 'a', 0, 1, 'CREATE', 0, 'w', 2, 'x', '{}', 0)",
            [],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let s = SqliteMetaStore::open(&path).unwrap();
    let v = s
        .version(&"c".parse().unwrap(), &"a".parse().unwrap(), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.write_id.as_str(), v.request), ("w", None));
    let key: RequestKey = "k".parse().unwrap();
    assert_eq!(s.version_by_request(&"c".parse().unwrap(), &key).await.unwrap(), None);
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(SqliteMetaStore::open(&path), Err(Error::Unsupported(_))));
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO heads (collection, item_id, ov, cv, write_id, inserted_at, updated_at, function_ids, \
             state, size, checksum, meta) VALUES ('c', 'i', 0, 1, 'w', 0, 0, '[]', 'new', 2, 'x', '{}')",
            [],
        )
        .unwrap();
    }
    let s = SqliteMetaStore::open(&path).unwrap();
    let head = s
        .head(&"c".parse().unwrap(), &"i".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((head.ov, head.write_id.as_str(), head.payload_ref), (0, "w", None));
    let version: i64 = lock_std(&s.inner.conn)
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
