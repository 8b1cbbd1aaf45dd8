//! Scheduled work and leadership: retention on its schedule, one replica holding the lease.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn retention_runs_on_schedule_and_marks_items_processed() {
    let mut k = Cluster::new().await;
    let (db, engine, _) = seeded(&k, 3).await;
    k.create::<ChronosCollection>(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosCollection", "metadata": {"name": "notes"},
        "spec": {"database": db.name_any(), "name": "notes", "retention": {"keepVersions": 1}}
    }))
    .await;
    k.start();
    let retentions: Api<ChronosRetention> = Api::all(k.client.clone());
    let name = k.ns.clone();
    let r: ChronosRetention = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRetention",
        "metadata": {"name": name, "labels": {"chronos.dev/test": k.ns}},
        "spec": {"selector": {"namespaces": [k.ns]}, "rules": {"ttlHours": 0}, "schedule": "* * * * * *"}
    }))
    .unwrap();
    retentions.create(&PostParams::default(), &r).await.unwrap();
    let r = wait_for(&retentions, &name, "a run", |r| {
        r.status.as_ref().is_some_and(|s| s.last_run.is_some())
    })
    .await;
    let status = r.status.clone().unwrap();
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, "Succeeded", "{:?}", last.failures);
    assert_eq!((last.collections, last.processed), (1, 3));
    assert_eq!(last.versions_pruned, 3, "the collection's keepVersions: 1 applies");
    assert!(status.next_run.is_some() && conditions::is_true(&status.conditions, "Scheduled"));
    let c: CollectionName = "notes".parse().unwrap();
    let rec = engine
        .get_latest(&c, &"item-00".parse().unwrap(), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(rec.system.state, State::Processed);
    // A cluster-scoped object's Events go to the `default` namespace.
    let event = wait_event(&k.client, "default", &name, "RunSucceeded").await;
    assert!(event.note.unwrap().contains("3 item(s) processed"));
    retentions.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_replica_holds_the_lease_until_it_lets_go() {
    use chronos::operator::leader::{Attempt, LeaseSettings, release, try_acquire};
    let k = Cluster::new().await;
    let a = LeaseSettings::new(&k.ns, "replica-a");
    let b = LeaseSettings::new(&k.ns, "replica-b");
    assert_eq!(try_acquire(&k.client, &a).await.unwrap(), Attempt::Leading);
    assert_eq!(
        try_acquire(&k.client, &b).await.unwrap(),
        Attempt::Following {
            holder: "replica-a".into()
        }
    );
    assert_eq!(try_acquire(&k.client, &a).await.unwrap(), Attempt::Leading, "renewal");
    release(&k.client, &a).await.unwrap();
    assert_eq!(
        try_acquire(&k.client, &b).await.unwrap(),
        Attempt::Leading,
        "free after release"
    );
    assert!(matches!(
        try_acquire(&k.client, &a).await.unwrap(),
        Attempt::Following { .. }
    ));
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(k.client.clone(), &k.ns)
        .get("chronos-operator")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // An expired lease (0 s, renewed microseconds ago) is taken over without its holder's help.
    let mut short = LeaseSettings::new(&k.ns, "replica-c");
    short.name = "short".into();
    short.duration = Duration::from_secs(0);
    assert_eq!(try_acquire(&k.client, &short).await.unwrap(), Attempt::Leading);
    let mut other = short.clone();
    other.identity = "replica-d".into();
    assert_eq!(
        try_acquire(&k.client, &other).await.unwrap(),
        Attempt::Leading,
        "expired lease taken"
    );
}

/// An operator watching two namespaces reconciles databases in both and leaves a third alone; a
/// cluster-wide retention that names the third reports it instead of acting there — where a
/// per-namespace Role gives the operator no rights (review M7).
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_watching_some_namespaces_acts_only_in_them() {
    let outside = Cluster::new().await;
    let mut a = Cluster::new().await;
    let b = Cluster::new().await;
    Arc::get_mut(&mut a.ctx).unwrap().watched_namespaces = vec![a.ns.clone(), b.ns.clone()];
    let invalid = |k: &Cluster| {
        let mut spec = k.database_spec("bad", json!({}));
        spec["spec"]["s3"]["buckets"]["json"] = "Not_A_Bucket".into();
        spec
    };
    // The unwatched namespace's database first: a watch over it would see it first, too.
    outside.create::<ChronosDatabase>(invalid(&outside)).await;
    a.create::<ChronosDatabase>(invalid(&a)).await;
    b.create::<ChronosDatabase>(invalid(&b)).await;
    let scope = Scope {
        retention_labels: Some(format!("chronos.dev/test={}", a.ns)),
    };
    a.controllers = tokio::spawn(chronos::operator::run_controllers(a.ctx.clone(), scope));
    for k in [&a, &b] {
        let db = wait_for(&k.api::<ChronosDatabase>(), "bad", "a Ready condition", |d| {
            condition(d, "Ready").is_some()
        })
        .await;
        assert_eq!(condition(&db, "Ready").as_deref(), Some("False"));
    }
    let untouched = outside.api::<ChronosDatabase>().get("bad").await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(
        untouched.finalizers().is_empty(),
        "no finalizer outside the watched namespaces"
    );

    let retentions: Api<ChronosRetention> = Api::all(a.client.clone());
    let name = a.ns.clone();
    let r: ChronosRetention = serde_json::from_value(json!({
        "apiVersion": "chronos.dev/v1alpha1", "kind": "ChronosRetention",
        "metadata": {"name": name, "labels": {"chronos.dev/test": a.ns}},
        "spec": {"selector": {"namespaces": [outside.ns]}, "rules": {"ttlHours": 0}, "schedule": "* * * * * *"}
    }))
    .unwrap();
    retentions.create(&PostParams::default(), &r).await.unwrap();
    let r = wait_for(&retentions, &name, "a run", |r| {
        r.status.as_ref().is_some_and(|s| s.last_run.is_some())
    })
    .await;
    let last = r.status.unwrap().last_run.unwrap();
    assert_eq!(last.failures.len(), 1, "{:?}", last.failures);
    assert!(
        last.failures[0].contains(&outside.ns) && last.failures[0].contains("not watched"),
        "{:?}",
        last.failures
    );
    retentions.delete(&name, &DeleteParams::default()).await.unwrap();
}
