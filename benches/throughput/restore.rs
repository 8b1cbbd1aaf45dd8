//! The collection-restore workload: many items created then updated, restored through the
//! engine, over HTTP, and on the floor (batched, and by reference), measured as a whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chronos::client::{self};
use chronos::engine::{Attribution, CollectionName, Engine, HistoryPoint, ItemId};
use futures::{StreamExt, TryStreamExt};

use crate::errors::{name, text};
use crate::floor::RESTORE_IN_FLIGHT;
use crate::measure::{Bench, setup, whole};
use crate::records::record;
use crate::workloads::{Ctx, Via, Workload};

/// Create `items` items of `c`, then update each once: returns the restore points "after the
/// creates" and "after the updates" (the highest cv each pass took; every update starts after the
/// last create, since a collection has one cv counter).
pub async fn seed_restore(
    clients: usize,
    engine: &Arc<Engine>,
    who: &Attribution,
    c: &CollectionName,
    items: usize,
) -> Result<(u64, u64), String> {
    let max_cv = Arc::new(AtomicU64::new(0));
    let mut created_cv = 0;
    for update in [false, true] {
        let (engine, who, c, highest) = (engine.clone(), who.clone(), c.clone(), max_cv.clone());
        let took = setup(clients, items as u64, move |n| {
            let (engine, who, c, max_cv) = (engine.clone(), who.clone(), c.clone(), highest.clone());
            async move {
                let id: ItemId = name(&format!("r{n:08}"))?;
                let out = if update {
                    engine.update(&c, &id, record(n + 1, 1), Some(0), &who).await
                } else {
                    engine.create(&c, Some(id), record(n, 0), &who).await.map(|(_, o)| o)
                };
                max_cv.fetch_max(out.map_err(text)?.cv, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        eprintln!(
            "  setup: {} {items} items in {:.1} s ({:.0}/s)",
            if update { "updated" } else { "created" },
            took.as_secs_f64(),
            items as f64 / took.as_secs_f64()
        );
        if !update {
            created_cv = max_cv.load(Ordering::Relaxed);
        }
    }
    Ok((created_cv, max_cv.load(Ordering::Relaxed)))
}

/// The collection restore: `items` items are created (the target point), then all updated, so a
/// restore to the point writes every item back (an S3 GET of the old payload plus a write). The
/// HTTP restore then goes forward to the updated state, so it too rewrites every item.
pub async fn restore(bench: &mut Bench, ctx: &Arc<Ctx>, items: usize) -> Result<(), String> {
    let c: CollectionName = name("brestore")?;
    let (created_cv, updated_cv) = seed_restore(bench.clients, &ctx.engine, &ctx.who, &c, items).await?;

    // Floor: the same per-item work done directly, as many items in flight as the engine has.
    ctx.floor.setup_restore(items).await?;
    let before = bench.start_window();
    let started = Instant::now();
    let result = futures::stream::iter(0..items)
        .map(|k| ctx.floor.restore_item(k))
        .buffer_unordered(RESTORE_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map(|v| v.len() as u64);
    let delta = bench.end_window(&before);
    bench.push(Workload::Restore, Via::Floor, whole(result, started), delta);

    // What batching would buy: the same items again (ov 1 → 2), a page per transaction.
    let before = bench.start_window();
    let started = Instant::now();
    let result = ctx.floor.restore_batched(items).await;
    let delta = bench.end_window(&before);
    bench.push(Workload::RestoreBatched, Via::Floor, whole(result, started), delta);

    // What a restore by reference needs at least: the same items again, no S3. Measured in two
    // halves bracketing the Chronos restores (ov 2 → 3 before, 3 → 4 after) and added up, as the
    // per-operation floors are, so load drift does not favour either side.
    let before = bench.start_window();
    let started = Instant::now();
    let result = ctx.floor.restore_by_reference(items, 2).await;
    let delta = bench.end_window(&before);
    let mut by_ref = (whole(result, started), delta);
    let mut chronos_rows = Vec::new();

    let before = bench.start_window();
    let started = Instant::now();
    let result = ctx
        .engine
        .restore_collection(&c, HistoryPoint::Cv(created_cv), false, &ctx.who, |_, _| {})
        .await
        .map_err(text)
        .and_then(|counts| match counts.restored {
            n if n == items as u64 => Ok(n),
            _ => Err(format!("restored {} of {items} items: {counts:?}", counts.restored)),
        });
    let delta = bench.end_window(&before);
    chronos_rows.push((Via::Engine, whole(result, started), delta));

    let before = bench.start_window();
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut restored = 0;
    let result = loop {
        let page = ctx
            .http
            .restore_collection_page(
                "default",
                c.as_str(),
                &client::RestorePoint::Cv(updated_cv),
                false,
                after.as_deref(),
                &Default::default(),
            )
            .await;
        match page {
            Ok(page) => {
                restored += page.counts.restored;
                match page.next_after_id {
                    Some(next) => after = Some(next),
                    None if restored == items as u64 => break Ok(restored),
                    None => break Err(format!("restored {restored} of {items} items")),
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let delta = bench.end_window(&before);
    chronos_rows.push((Via::Http, whole(result, started), delta));

    let before = bench.start_window();
    let started = Instant::now();
    let result = ctx.floor.restore_by_reference(items, 3).await;
    let delta = bench.end_window(&before);
    by_ref.0.merge(whole(result, started));
    by_ref.1.add(delta);
    bench.push(Workload::RestoreByRef, Via::Floor, by_ref.0, by_ref.1);
    for (via, m, delta) in chronos_rows {
        bench.push(Workload::Restore, via, m, delta);
    }

    // The embedded default, the same way.
    let (created_cv, _) = seed_restore(bench.clients, &ctx.embedded, &ctx.who, &c, items).await?;
    let before = bench.start_window();
    let started = Instant::now();
    let result = ctx
        .embedded
        .restore_collection(&c, HistoryPoint::Cv(created_cv), false, &ctx.who, |_, _| {})
        .await
        .map_err(text)
        .and_then(|counts| match counts.restored {
            n if n == items as u64 => Ok(n),
            _ => Err(format!("restored {} of {items} items: {counts:?}", counts.restored)),
        });
    let delta = bench.end_window(&before);
    bench.push(Workload::Restore, Via::Embedded, whole(result, started), delta);
    Ok(())
}
