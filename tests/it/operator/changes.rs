//! The operator follows each collection's change feed into `status.changes`: it catches up with
//! what was written, resumes after `lastCv` when restarted (counting nothing twice), turns a burst
//! of writes into a few status writes, and says so when retention pruned what it had not seen.

use chronos::operator::crd::collection::{CHANGES_FOLLOWED, CollectionChanges};

use super::*;

/// A collection resource `notes` of database `db`.
async fn notes_collection(k: &Cluster, db: &ChronosDatabase) {
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "notes"},
        "spec": {"database": db.name_any(), "name": "notes"}
    }))
    .await;
}

/// Wait until `status.changes.lastCv` is `cv`; returns `status.changes` then.
async fn wait_last_cv(k: &Cluster, cv: u64) -> CollectionChanges {
    let c = wait_for(
        &k.api::<ChronosCollection>(),
        "notes",
        &format!("status.changes.lastCv = {cv}"),
        |c| changes_of(c).is_some_and(|ch| ch.last_cv == cv),
    )
    .await;
    changes_of(&c).cloned().unwrap()
}

fn changes_of(c: &ChronosCollection) -> Option<&CollectionChanges> {
    c.status.as_ref()?.changes.as_ref()
}

/// Write `n` new items `{prefix}-{i}` from `writers` concurrent tasks; returns the highest cv.
async fn write_items(engine: &Arc<chronos::engine::Engine>, prefix: &str, n: usize, writers: usize) -> u64 {
    let tasks = (0..writers).map(|w| {
        let engine = engine.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let c: CollectionName = "notes".parse().unwrap();
            let who = chronos::engine::Attribution::new("test", "burst");
            let mut top = 0;
            for i in (w..n).step_by(writers) {
                let data = json!({"i": i}).as_object().unwrap().clone();
                let id = format!("{prefix}-{i:04}").parse().unwrap();
                top = top.max(engine.create(&c, Some(id), data, &who).await.unwrap().1.cv);
            }
            top
        })
    });
    let tops = futures::future::join_all(tasks).await;
    tops.into_iter().map(Result::unwrap).max().unwrap_or(0)
}

/// A running operator and collection `notes` of a database [`seeded`] with `n` items, and an
/// engine over its backends.
async fn followed(n: usize) -> (Cluster, Arc<chronos::engine::Engine>) {
    let mut k = Cluster::new().await;
    let (db, engine, _) = seeded(&k, n).await;
    notes_collection(&k, &db).await;
    k.start();
    (k, engine)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_follows_a_collection_and_resumes_after_last_cv_when_restarted() {
    // Five items created, then updated: ten versions.
    let (mut k, engine) = followed(5).await;
    let last = write_items(&engine, "late", 1, 1).await;
    let changes = wait_last_cv(&k, last).await;
    assert_eq!(changes.versions_seen, 11, "every version once: {changes:?}");
    assert_eq!(
        (changes.last_item.as_deref(), changes.last_op.as_deref()),
        (Some("late-0000"), Some("CREATE"))
    );
    assert!(changes.last_change_at.is_some());
    let c = k.api::<ChronosCollection>().get("notes").await.unwrap();
    let status = c.status.unwrap();
    assert_eq!(
        conditions::status_of(&status.conditions, CHANGES_FOLLOWED),
        Some("True")
    );
    assert_eq!(
        conditions::status_of(&status.conditions, "IndexesReady"),
        Some("True"),
        "the reconcile's condition is kept beside the follower's"
    );

    // Written while no operator runs: a new one (nothing in memory) resumes after lastCv.
    k.stop().await;
    let last = write_items(&engine, "while-down", 4, 2).await;
    k.restart().await;
    let changes = wait_last_cv(&k, last).await;
    assert_eq!(
        changes.versions_seen, 15,
        "resumed after lastCv: the 4 new versions counted, none of the 11 again"
    );

    // Pointed at another collection: the follower starts over there, not after notes' lastCv.
    k.api::<ChronosCollection>()
        .patch(
            "notes",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"name": "other"}})),
        )
        .await
        .unwrap();
    let other: CollectionName = "other".parse().unwrap();
    let who = chronos::engine::Attribution::new("test", "other");
    let data = json!({"n": 1}).as_object().unwrap().clone();
    let cv = engine.create(&other, None, data, &who).await.unwrap().1.cv;
    wait_for(&k.api::<ChronosCollection>(), "notes", "following `other`", |c| {
        changes_of(c).is_some_and(|ch| (ch.collection.as_str(), ch.last_cv, ch.versions_seen) == ("other", cv, 1))
    })
    .await;

    // Deleted: its follower stops (no finalizer; the operator's watch of collections sees it).
    assert_eq!(k.ctx.followers.len(), 1);
    k.api::<ChronosCollection>()
        .delete("notes", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !k.ctx.followers.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower outlived its collection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_writes_becomes_a_few_status_writes() {
    use futures::StreamExt;
    let (mut k, engine) = followed(0).await;
    let first = write_items(&engine, "first", 1, 1).await;
    wait_last_cv(&k, first).await;

    // Every change of the object the API server makes, seen by a watch: each status write of the
    // follower is one (with a new status.changes).
    let api = k.api::<ChronosCollection>();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        let mut objects = std::pin::pin!(kube::runtime::watcher::watch_object(api, "notes"));
        while let Some(Ok(Some(c))) = objects.next().await {
            let _ = seen_tx.send(changes_of(&c).cloned());
        }
    });
    let n = 400;
    let started = std::time::Instant::now();
    let last = write_items(&engine, "burst", n, 8).await;
    let took = started.elapsed();
    let changes = wait_last_cv(&k, last).await;
    assert_eq!(changes.versions_seen, 1 + n as u64);
    watch.abort();
    let mut writes = 0;
    let mut before: Option<CollectionChanges> = None;
    while let Ok(seen) = seen_rx.try_recv() {
        if seen != before {
            writes += 1;
            before = seen;
        }
    }
    // The first event is the object as it was; then one per status write: at most one per
    // interval (3 s) while the burst lasts, and the last one (with a margin for a slow machine).
    let bound = 4 + (took.as_secs_f64() / 3.0).ceil() as usize;
    assert!(
        (1..=bound).contains(&writes),
        "{writes} status writes for {n} versions in {took:?} (at most {bound})"
    );
    assert!(writes < n / 10, "{writes} status writes for {n} versions");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pruned_before_the_operator_saw_it_is_skipped_and_said() {
    let mut k = Cluster::new().await;
    // Five items created (cvs up to `creates`), then updated; retention keeps the last version
    // of each, so the feed is complete only after `creates`.
    let (db, engine, creates) = seeded(&k, 5).await;
    let c: CollectionName = "notes".parse().unwrap();
    let policy = chronos::engine::PrunePolicy {
        keep_last: Some(1),
        max_age_days: None,
        delete_payloads: false,
    };
    assert_eq!(
        engine.prune_versions(&c, &policy, false).await.unwrap().versions_pruned,
        5
    );
    notes_collection(&k, &db).await;
    k.start();
    let last = write_items(&engine, "after", 1, 1).await;
    let changes = wait_last_cv(&k, last).await;
    assert_eq!(
        changes.versions_seen, 6,
        "the five updates and the new item; the pruned creates are not counted"
    );
    let event = wait_event(&k.client, &k.ns, "notes", "HistoryPruned").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains(&format!("following from cv {creates}")), "{note}");
    let status = k.api::<ChronosCollection>().get("notes").await.unwrap().status.unwrap();
    let followed = status.conditions.iter().find(|c| c.type_ == CHANGES_FOLLOWED).unwrap();
    assert_eq!(
        (followed.status.as_str(), followed.reason.as_str()),
        ("True", "SkippedPrunedHistory")
    );
    k.stop().await;
}
