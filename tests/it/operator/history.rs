//! The operator's side of issue 15: a `ChronosRestore` with `source: buckets` rebuilds a
//! database's metadata after its MongoDB database is lost, and a `ChronosDatabase` with
//! `spec.verify` reports its history's state as `HistoryVerified`.

use super::*;

use chronos::operator::crd::database::HISTORY_VERIFIED;

/// Every item's latest version as a reader sees it: (id, data, ov, cv).
async fn snapshot(engine: &chronos::engine::Engine, n: usize) -> Vec<(String, Value, u64, u64)> {
    let c: CollectionName = "notes".parse().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let id: ItemId = format!("item-{i:02}").parse().unwrap();
        let r = engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap();
        out.push((id.to_string(), Value::Object(r.data), r.ov, r.cv));
    }
    out
}

/// The disaster: the engine stops (writing its ledger's last segments, as a stopping engine
/// does) and the database's MongoDB database is dropped. Returns what the `n` items read before.
async fn lose_metadata(
    db: &ChronosDatabase,
    engine: Arc<chronos::engine::Engine>,
    n: usize,
) -> Vec<(String, Value, u64, u64)> {
    engine.flush_ledger().await.unwrap();
    let before = snapshot(&engine, n).await;
    drop(engine);
    crate::support::mongo_client(Default::default())
        .await
        .database(&db.spec.mongodb.db_name)
        .drop()
        .await
        .unwrap();
    before
}

fn finished(r: &ChronosRestore) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_the_buckets_rebuilds_a_lost_metadata_database() {
    let mut k = Cluster::new().await;
    let (db, engine, _) = seeded(&k, 5).await;
    let before = lose_metadata(&db, engine, 5).await;
    k.start();
    let restore = |name: &str, spec: Value| json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": name}, "spec": spec});
    k.create::<ChronosRestore>(restore("rebuild", json!({"database": "data", "source": "buckets"})))
        .await;
    let restores = k.api::<ChronosRestore>();
    let s = wait_for(&restores, "rebuild", "finished", finished)
        .await
        .status
        .unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(s.progress.map(|p| (p.done, p.total)), Some((1, 1)));
    let report = s.rebuild.unwrap();
    assert_eq!(
        (report.collections, report.versions, report.heads, report.lost),
        (1, 10, 5, 0),
        "{report:?}"
    );
    assert!(report.seconds > 0.0 && report.versions_per_second > 0.0, "{report:?}");
    let started = wait_event(&k.client, &k.ns, "rebuild", "RestoreStarted").await;
    assert!(started.note.unwrap().contains("from the buckets"));
    let done = wait_event(&k.client, &k.ns, "rebuild", "RestoreSucceeded").await;
    assert!(done.note.unwrap().contains("10 version(s)"));

    let engine = backends::engine(&k.ctx, &db, Default::default()).await.unwrap();
    assert_eq!(snapshot(&engine, 5).await, before, "same data, same ov and cv");
    let c: CollectionName = "notes".parse().unwrap();
    let first = engine
        .get_at(
            &c,
            &"item-03".parse().unwrap(),
            chronos::engine::VersionTarget::Ov(0),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(first.data["round"], 1, "the older versions are back too");

    // The store holds data now: a second rebuild is refused, unless forced.
    k.create::<ChronosRestore>(restore("again", json!({"database": "data", "source": "buckets"})))
        .await;
    let again = wait_for(&restores, "again", "finished", finished).await.status.unwrap();
    assert_eq!(again.phase, Phase::Failed);
    let message = again.message.unwrap();
    assert!(
        message.contains("data in the metadata store") && message.contains("spec.rebuild.force: true"),
        "{message}"
    );
    let failed = wait_event(&k.client, &k.ns, "again", "RestoreFailed").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    k.create::<ChronosRestore>(restore(
        "forced",
        json!({"database": "data", "source": "buckets", "rebuild": {"force": true}}),
    ))
    .await;
    let forced = wait_for(&restores, "forced", "finished", finished)
        .await
        .status
        .unwrap();
    assert_eq!(forced.phase, Phase::Succeeded, "{:?}", forced.message);
    assert_eq!(
        snapshot(&engine, 5).await,
        before,
        "a forced rebuild changes nothing here"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_a_restore_that_mixes_a_rebuild_and_a_restore_from_the_index() {
    let k = Cluster::new().await;
    let refusal = |spec: Value| {
        let obj: ChronosRestore = serde_json::from_value(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "bad"},
            "spec": spec
        }))
        .unwrap();
        let api = k.api::<ChronosRestore>();
        async move { api.create(&PostParams::default(), &obj).await.unwrap_err().to_string() }
    };
    let err = refusal(json!({"database": "data", "source": "buckets", "collection": "notes"})).await;
    assert!(err.contains("source: buckets rebuilds the whole database"), "{err}");
    let err = refusal(json!({"database": "data", "collection": "notes"})).await;
    assert!(err.contains("needs a collection and a target"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_verify_reports_an_altered_object() {
    let mut k = Cluster::new().await;
    let verify = json!({"verify": {"schedule": "* * * * * *"}});
    let (db, engine, _) = seeded_with(&k, 3, verify).await;
    engine.flush_ledger().await.unwrap();
    k.start();
    let databases = k.api::<ChronosDatabase>();
    let verified =
        |want: &'static str| move |d: &ChronosDatabase| condition(d, HISTORY_VERIFIED).as_deref() == Some(want);
    let d = wait_for(&databases, "data", "HistoryVerified=True", verified("True")).await;
    let s = d.status.unwrap();
    let last = s.last_verify.unwrap();
    assert_eq!(
        (last.versions, last.missing, last.altered, last.orphaned),
        (6, 0, 0, 0),
        "{last:?}"
    );
    assert!(s.next_verify.is_some());
    let intact = s.conditions.iter().find(|c| c.type_ == HISTORY_VERIFIED).unwrap();
    assert_eq!(intact.reason, "Intact");

    // One byte of item-00's first version, behind the engine's back.
    let s3 = s3_connection().client();
    let bucket = &db.spec.s3.buckets.json;
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let key = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .find(|k| k.contains("/item-00/v0."))
        .unwrap()
        .to_owned();
    let object = s3.get_object().bucket(bucket).key(&key).send().await.unwrap();
    let text = String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap();
    let altered = text.replacen("\"round\":1", "\"round\":7", 1);
    assert_ne!(altered, text);
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .body(altered.into_bytes().into())
        .send()
        .await
        .unwrap();

    let d = wait_for(&databases, "data", "HistoryVerified=False", verified("False")).await;
    let s = d.status.unwrap();
    let c = s.conditions.iter().find(|c| c.type_ == HISTORY_VERIFIED).unwrap();
    assert_eq!(c.reason, "FindingsReported", "{c:?}");
    let last = s.last_verify.unwrap();
    assert_eq!((last.altered, last.missing, last.orphaned), (1, 0, 0), "{last:?}");
    let named = |line: &str| {
        line.strip_prefix("altered: ")
            .and_then(|rest| rest.split(' ').next())
            .is_some_and(|k| key.ends_with(k))
    };
    assert!(last.findings.iter().any(|f| named(f)), "{key} in {:?}", last.findings);
    assert!(
        named(c.message.split("first: ").nth(1).unwrap_or_default()),
        "{}",
        c.message
    );
    let event = wait_event(&k.client, &k.ns, "data", "FindingsReported").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    // A schedule that is not one says so, and the last run stays on record.
    let bad = json!({"spec": {"verify": {"schedule": "every night"}}});
    databases
        .patch("data", &PatchParams::default(), &Patch::Merge(bad))
        .await
        .unwrap();
    let d = wait_for(&databases, "data", "InvalidSchedule", |d| {
        d.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == HISTORY_VERIFIED))
            .is_some_and(|c| c.reason == "InvalidSchedule")
    })
    .await;
    let s = d.status.unwrap();
    let c = s.conditions.iter().find(|c| c.type_ == HISTORY_VERIFIED).unwrap();
    assert!(
        c.message.starts_with("spec.verify.schedule: \"every night\""),
        "{}",
        c.message
    );
    assert!(s.last_verify.is_some() && s.next_verify.is_none(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_cut_short_is_resumed_by_the_restore() {
    let mut k = Cluster::new().await;
    let (db, engine, _) = seeded(&k, 3).await;
    let others: CollectionName = "others".parse().unwrap();
    let who = chronos::engine::Attribution::new("test", "seed");
    let data = json!({"n": 1}).as_object().unwrap().clone();
    engine
        .create(&others, Some("o-1".parse().unwrap()), data, &who)
        .await
        .unwrap();
    let before = lose_metadata(&db, engine, 3).await;
    // A rebuild killed after its first collection (as an operator restarted midway would be):
    // the store now holds part of the data and the engine's mark.
    let engine = backends::engine(&k.ctx, &db, Default::default()).await.unwrap();
    let crash = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        engine.rebuild(&Default::default(), &|p| {
            assert!(p.done_collections < 1, "killed after its first collection")
        }),
    ))
    .await;
    assert!(crash.is_err(), "the first run was cut short");
    k.start();
    k.create::<ChronosRestore>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "resume"},
        "spec": {"database": "data", "source": "buckets"}
    }))
    .await;
    let s = wait_for(&k.api::<ChronosRestore>(), "resume", "finished", finished)
        .await
        .status
        .unwrap();
    assert_eq!(
        s.phase,
        Phase::Succeeded,
        "not refused as a non-empty store: {:?}",
        s.message
    );
    let report = s.rebuild.unwrap();
    assert_eq!((report.collections, report.resumed_past), (2, 1), "{report:?}");
    assert_eq!(snapshot(&engine, 3).await, before);
    let o = engine
        .get_latest(&others, &"o-1".parse().unwrap(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(o.data["n"], 1);
}
