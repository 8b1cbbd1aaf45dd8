//! ChronosRestore: collection restores in pages with progress, resumed after an interruption;
//! item restores, dry runs, and no double append.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn collection_restore_runs_in_pages_and_reports_progress() {
    let mut k = Cluster::new().await;
    Arc::get_mut(&mut k.ctx).unwrap().restore_page = 2;
    let (_, engine, cv) = seeded(&k, 5).await;
    k.start();
    k.create::<ChronosRestore>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "back"},
        "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}}
    }))
    .await;
    let restores = k.api::<ChronosRestore>();
    let r = wait_for(&restores, "back", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    let plan = s.plan.unwrap();
    assert_eq!((plan.examined, plan.restored), (5, 5));
    let applied = s.applied.unwrap();
    assert_eq!((applied.examined, applied.restored, applied.unchanged), (5, 5, 0));
    let progress = s.progress.unwrap();
    assert_eq!((progress.done, progress.total), (5, 5));
    assert!(s.started_at.is_some() && s.completed_at.is_some() && s.cursor.is_none());
    for i in 0..5 {
        assert_eq!(round(&engine, &format!("item-{i:02}")).await, 1, "restored to round 1");
    }
    let started = wait_event(&k.client, &k.ns, "back", "RestoreStarted").await;
    assert!(started.note.unwrap().contains("collection notes"));
    let done = wait_event(&k.client, &k.ns, "back", "RestoreSucceeded").await;
    assert_eq!(done.type_.as_deref(), Some("Normal"));

    // The spec is immutable (CEL on the server).
    let err = restores
        .patch(
            "back",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dryRun": true}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_resumes_after_its_recorded_cursor() {
    let mut k = Cluster::new().await;
    let (_, engine, cv) = seeded(&k, 5).await;
    let r: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "resume"},
            "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}}
        }))
        .await;
    // As a previous operator left it: planned, two items done, cursor after item-01.
    let body = json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore",
        "status": {"phase": "Running", "plan": {"examined": 5, "restored": 5, "deleted": 0, "unchanged": 0},
                   "applied": {"examined": 2, "restored": 2, "deleted": 0, "unchanged": 0},
                   "progress": {"done": 2, "total": 5}, "cursor": "item-01"}
    });
    let restores = k.api::<ChronosRestore>();
    restores
        .patch_status(
            &r.name_any(),
            &PatchParams::apply("previous-operator"),
            &Patch::Apply(body),
        )
        .await
        .unwrap();
    // A dry run interrupted right after its plan was recorded: resuming must not apply it.
    let dry: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "dry"},
            "spec": {"database": "data", "collection": "notes", "target": {"cv": cv}, "dryRun": true}
        }))
        .await;
    let planned = json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore",
        "status": {"phase": "Running", "plan": {"examined": 5, "restored": 5, "deleted": 0, "unchanged": 0},
                   "progress": {"done": 0, "total": 5}}
    });
    restores
        .patch_status(
            &dry.name_any(),
            &PatchParams::apply("previous-operator"),
            &Patch::Apply(planned),
        )
        .await
        .unwrap();
    k.start();
    let r = wait_for(&restores, "resume", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(
        s.applied.unwrap().examined,
        5,
        "2 recorded + the 3 after the cursor, none redone"
    );
    assert_eq!(s.progress.unwrap().done, 5);
    let dry = wait_for(&restores, "dry", "finished", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    })
    .await
    .status
    .unwrap();
    assert_eq!((dry.phase, dry.applied), (Phase::Succeeded, None));
    assert_eq!(
        round(&engine, "item-00").await,
        2,
        "before the cursor: not touched again (nor by the dry run)"
    );
    assert_eq!(round(&engine, "item-02").await, 1);
    assert_eq!(round(&engine, "item-04").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn item_restore_and_dry_run() {
    let mut k = Cluster::new().await;
    let (_, engine, cv) = seeded(&k, 2).await;
    k.start();
    let restore = |name: &str, spec: Value| json!({"apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": name}, "spec": spec});
    let restores = k.api::<ChronosRestore>();
    let done = |r: &ChronosRestore| {
        r.status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::Failed))
    };
    // The plan first: it counts what a restore would change, so it must not race the item
    // restore below (which changes item-01 back already).
    k.create::<ChronosRestore>(restore(
        "plan",
        json!({"database": "data", "collection": "notes", "target": {"cv": cv}, "dryRun": true}),
    ))
    .await;
    let plan = wait_for(&restores, "plan", "finished", done).await.status.unwrap();
    assert_eq!(plan.phase, Phase::Succeeded);
    assert_eq!(plan.plan.unwrap().restored, 2);
    assert!(plan.applied.is_none(), "a dry run applies nothing");
    assert_eq!(round(&engine, "item-00").await, 2, "dry run wrote nothing");
    k.create::<ChronosRestore>(restore(
        "one",
        json!({"database": "data", "collection": "notes", "itemId": "item-01", "target": {"ov": 0}}),
    ))
    .await;
    k.create::<ChronosRestore>(restore(
        "nope",
        json!({"database": "data", "collection": "notes", "itemId": "item-01", "target": {"ov": 9}}),
    ))
    .await;
    let one = wait_for(&restores, "one", "finished", done).await.status.unwrap();
    assert_eq!(one.phase, Phase::Succeeded, "{:?}", one.message);
    assert_eq!(round(&engine, "item-01").await, 1);
    let nope = wait_for(&restores, "nope", "finished", done).await.status.unwrap();
    assert_eq!(nope.phase, Phase::Failed);
    assert!(nope.message.unwrap().contains("not found"));
    let failed = wait_event(&k.client, &k.ns, "nope", "RestoreFailed").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_restore_reconciled_again_after_its_write_does_not_append_twice() {
    let k = Cluster::new().await;
    let (_, engine, _) = seeded(&k, 1).await;
    let r: ChronosRestore = k
        .create(json!({
            "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRestore", "metadata": {"name": "again"},
            "spec": {"database": "data", "collection": "notes", "itemId": "item-00", "target": {"ov": 0}}
        }))
        .await;
    let reconcile = || chronos::operator::controllers::restore::reconcile(Arc::new(r.clone()), k.ctx.clone());
    reconcile().await.unwrap();
    let c: CollectionName = "notes".parse().unwrap();
    let id: ItemId = "item-00".parse().unwrap();
    let latest = || async { engine.get_latest(&c, &id, ReadOptions::default()).await.unwrap().ov };
    assert_eq!(latest().await, 2, "created, updated, restored");
    // The status write after the append is lost (the operator restarted, the API server failed):
    // the next reconcile runs the restore again.
    let restores = k.api::<ChronosRestore>();
    restores
        .patch_status(
            "again",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "completedAt": null, "applied": null}})),
        )
        .await
        .unwrap();
    reconcile().await.unwrap();
    let s = restores.get("again").await.unwrap().status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{:?}", s.message);
    assert_eq!(
        latest().await,
        2,
        "the second run replays the first write instead of appending"
    );
}
