//! The retry queue: queued writes land exactly once, and claims are exclusive.

use chronos::engine::{Attribution, Error};
use serde_json::json;

use super::fixtures::{LATEST, coll, obj, who};
use crate::support::Harness;

/// Wait (without sleeping) until an operation's next attempt is due.
async fn until_due(h: &Harness, id: &chronos::engine::OperationId) {
    let due = h.engine.operation(id).await.unwrap().due_at;
    while chronos::engine::model::now() <= due {
        tokio::task::yield_now().await;
    }
}

fn queued(s: chronos::engine::Submitted) -> chronos::engine::Operation {
    match s {
        chronos::engine::Submitted::Queued(op) => *op,
        other => panic!("expected the write to be queued, got {other:?}"),
    }
}

pub async fn queued_writes_land_exactly_once(h: &Harness) {
    use chronos::engine::{OperationStatus, Submitted, WriteRequest};
    use std::sync::atomic::Ordering;
    let e = &h.engine;
    let (id, _) = e
        .create(&coll(), Some("q".parse().unwrap()), obj(json!({"n": 0})), &who())
        .await
        .unwrap();

    // S3 down: the write is kept, not lost and not half-made.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let update = |n: i64, expected_ov: Option<u64>| WriteRequest::Update {
        id: id.clone(),
        data: obj(json!({"n": n})),
        expected_ov,
    };
    let op = queued(e.submit(&coll(), update(1, None), &who()).await.unwrap());
    assert_eq!(op.status, OperationStatus::Pending);
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().ov,
        0,
        "nothing visible yet"
    );
    let created = queued(
        e.submit(
            &coll(),
            WriteRequest::Create {
                id: "q2".parse().unwrap(),
                id_generated: false,
                data: obj(json!({"n": 9})),
            },
            &who(),
        )
        .await
        .unwrap(),
    );
    // Still down: the attempt fails and is retried later.
    until_due(h, &op.job.id).await;
    until_due(h, &created.job.id).await;
    // One run each (a drain would retry them again and again while they are due so soon).
    assert!(e.run_queued_once().await.unwrap() && e.run_queued_once().await.unwrap());
    let after = e.operation(&op.job.id).await.unwrap();
    assert_eq!((after.status, after.attempts), (OperationStatus::Pending, 1));
    assert!(after.last_error.unwrap().contains("injected fault"));
    assert_eq!(e.queue_stats().await.unwrap().pending, 2);

    // Back up: both land, once.
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    until_due(h, &op.job.id).await;
    until_due(h, &created.job.id).await;
    assert_eq!(e.drain_queue(4).await.unwrap(), 2);
    let done = e.operation(&op.job.id).await.unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded);
    assert_eq!(done.result.as_ref().unwrap().ov, 1);
    assert_eq!(
        e.get_latest(&coll(), &id, LATEST).await.unwrap().data,
        obj(json!({"n": 1}))
    );
    let q2 = e.get_latest(&coll(), &"q2".parse().unwrap(), LATEST).await.unwrap();
    assert_eq!((q2.ov, q2.data), (0, obj(json!({"n": 9}))));
    assert_eq!(e.queue_stats().await.unwrap(), Default::default());

    // A worker that made the write but died before recording it: the next run replays.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(2, None), &who()).await.unwrap());
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    until_due(h, &op.job.id).await;
    let lease = std::time::Duration::from_millis(1);
    let (claimed, stale_token) = h
        .queue
        .claim(chronos::engine::model::now(), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.job.id, op.job.id);
    let crashed_worker = Attribution {
        request_key: Some(claimed.job.request_key.clone()),
        ..who()
    };
    let (_, made) = e.apply(&coll(), &claimed.job.request, &crashed_worker).await.unwrap();
    let lease_end = chronos::engine::model::now() + jiff::SignedDuration::from_millis(2);
    while chronos::engine::model::now() <= lease_end {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        h.replica().drain_queue(2).await.unwrap(),
        1,
        "another worker takes the expired lease"
    );
    let done = e.operation(&op.job.id).await.unwrap();
    assert_eq!(
        (done.status, done.result.unwrap().ov),
        (OperationStatus::Succeeded, made.ov)
    );
    assert!(
        !h.queue
            .settle(
                &op.job.id,
                &stale_token,
                chronos::engine::store::queue::Settlement::Dead { error: "late".into() },
                chronos::engine::model::now()
            )
            .await
            .unwrap(),
        "a worker that lost its lease can't settle the job"
    );
    let history = e.history(&coll(), &id, None, 100, LATEST).await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.ov).collect::<Vec<_>>(),
        [0, 1, 2],
        "the update made one version"
    );

    // A write that can never succeed becomes a dead letter, which can be retried or cancelled.
    // (A precondition that fails at once is refused at once, even while S3 is down; this one
    // only fails once another write overtakes the queued one.)
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(3, Some(2)), &who()).await.unwrap());
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    e.update(&coll(), &id, obj(json!({"n": 30})), Some(2), &who())
        .await
        .unwrap();
    until_due(h, &op.job.id).await;
    e.drain_queue(1).await.unwrap();
    let dead = e.operation(&op.job.id).await.unwrap();
    assert_eq!(dead.status, OperationStatus::Dead);
    assert!(dead.last_error.unwrap().contains("version conflict"));
    let listed = e.list_operations(OperationStatus::Dead, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|o| &o.job.id).collect::<Vec<_>>(), [&op.job.id]);
    assert_eq!(e.queue_stats().await.unwrap().dead, 1);
    let revived = e.retry_dead_letter(&op.job.id).await.unwrap();
    assert_eq!((revived.status, revived.attempts), (OperationStatus::Pending, 0));
    let cancelled = e.cancel_operation(&op.job.id).await.unwrap();
    assert_eq!(cancelled.status, OperationStatus::Cancelled);
    assert!(e.cancel_operation(&op.job.id).await.is_err(), "cancelled already");
    assert!(e.retry_dead_letter(&op.job.id).await.is_err(), "not a dead letter");
    assert_eq!(e.drain_queue(1).await.unwrap(), 0, "cancelled operations never run");
    assert_eq!(e.get_latest(&coll(), &id, LATEST).await.unwrap().ov, 3);

    // Out of attempts while the outage lasts: a dead letter too.
    h.faults.fail_puts.store(true, Ordering::SeqCst);
    let op = queued(e.submit(&coll(), update(4, None), &who()).await.unwrap());
    loop {
        let current = e.operation(&op.job.id).await.unwrap();
        if current.status == OperationStatus::Dead {
            assert_eq!(current.attempts, h.engine.settings().queue.max_attempts);
            break;
        }
        until_due(h, &op.job.id).await;
        e.drain_queue(1).await.unwrap();
    }
    h.faults.fail_puts.store(false, Ordering::SeqCst);
    // Not queueable: a client mistake is refused at once.
    let refused = e.submit(&coll(), update(5, Some(99)), &who()).await;
    assert!(matches!(refused, Err(Error::VersionConflict { .. })), "{refused:?}");
    assert!(matches!(
        e.submit(&coll(), update(5, None), &who()).await,
        Ok(Submitted::Done { .. })
    ));
}

pub async fn queue_claims_are_exclusive(h: &Harness) {
    use chronos::engine::store::queue::{Job, Operation, OperationResult, Settlement};
    use chronos::engine::{OperationId, OperationStatus, WriteRequest};
    let now = chronos::engine::model::now();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..40 {
        let id = OperationId::generate();
        ids.insert(id.clone());
        let op = Operation {
            job: Job {
                id: id.clone(),
                collection: coll(),
                request: WriteRequest::Delete {
                    id: format!("i{i}").parse().unwrap(),
                    expected_ov: None,
                },
                actor: None,
                reason: None,
                request_key: format!("op:{id}").parse().unwrap(),
                created_at: now,
            },
            status: OperationStatus::Pending,
            attempts: 0,
            due_at: now,
            last_error: None,
            result: None,
            updated_at: now,
        };
        h.queue.enqueue(&op).await.unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let queue = h.queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let lease = std::time::Duration::from_secs(60);
                while let Some((op, token)) = queue.claim(chronos::engine::model::now(), lease).await.unwrap() {
                    let result = OperationResult {
                        id: op.job.request.id().clone(),
                        ov: 0,
                        cv: 0,
                        at: op.job.created_at,
                    };
                    assert!(
                        queue
                            .settle(
                                &op.job.id,
                                &token,
                                Settlement::Succeeded(result),
                                chronos::engine::model::now()
                            )
                            .await
                            .unwrap()
                    );
                    mine.push(op.job.id);
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    claimed.sort();
    assert_eq!(claimed.len(), 40, "every operation was claimed exactly once");
    assert_eq!(claimed.into_iter().collect::<std::collections::BTreeSet<_>>(), ids);
    let done = h.queue.list(OperationStatus::Succeeded, None, 100).await.unwrap();
    assert!(done.iter().all(|o| o.attempts == 1), "no operation ran twice");
    assert_eq!(h.queue.stats().await.unwrap(), Default::default());
}
