//! What `encryption: perItem` costs per write and per read on the in-memory and embedded backends: the same
//! workload on a plain collection (data inline in the head, and not), and on an encrypted one
//! (a data-key lookup, an unwrap and an AES-256-GCM seal or open per operation, no inline data).
//! Prints the figures (`cargo test --test it shred_cost -- --ignored --nocapture`; quoted in
//! `docs/benchmarks.md`)
//! and checks every read returns what was written.

use std::time::Instant;

use chronos::engine::{CollectionMap, Encryption, EngineSettings, ItemId, ReadOptions};
use serde_json::json;

use crate::support;

const ITEMS: usize = 150;

/// Per operation, in µs: create (an encrypted item's first write also makes its data key),
/// update, read of the latest version.
async fn run(settings: EngineSettings, embedded: bool) -> [f64; 3] {
    let h = if embedded {
        support::embedded(settings)
    } else {
        support::memory(settings)
    };
    let e = &h.engine;
    let coll: chronos::engine::CollectionName = "docs".parse().unwrap();
    let who = chronos::engine::Attribution::new("bench", "shred cost");
    let body = "x".repeat(1000);
    let started = Instant::now();
    let mut ids: Vec<ItemId> = Vec::with_capacity(ITEMS);
    for i in 0..ITEMS {
        let data = json!({"kind": "doc", "n": i, "body": body})
            .as_object()
            .unwrap()
            .clone();
        ids.push(e.create(&coll, None, data, &who).await.unwrap().0);
    }
    let create_us = started.elapsed().as_secs_f64() * 1e6 / ITEMS as f64;
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let data = json!({"kind": "doc", "n": i, "body": body})
            .as_object()
            .unwrap()
            .clone();
        e.update(&coll, id, data, None, &who).await.unwrap();
    }
    let update_us = started.elapsed().as_secs_f64() * 1e6 / ITEMS as f64;
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let r = e.get_latest(&coll, id, ReadOptions::default()).await.unwrap();
        assert_eq!(r.data["n"], i, "reads return what was written");
    }
    let read_us = started.elapsed().as_secs_f64() * 1e6 / ITEMS as f64;
    [create_us, update_us, read_us]
}

fn settings(encryption: Encryption, inline: bool) -> EngineSettings {
    let mut s = EngineSettings::default();
    if !inline {
        s.inline_max_bytes = 0;
    }
    s.collection_maps.insert(
        "docs".into(),
        CollectionMap {
            indexed_props: Some(vec!["kind".into()]),
            encryption,
            ..Default::default()
        },
    );
    s.encryption_key = Some(crate::conformance::test_kek());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 100 s): cargo test --test it shred_cost -- --ignored --nocapture"]
async fn shred_cost_per_write_and_read() {
    let cases = [
        ("plain, inline", Encryption::None, true),
        ("plain, no inline", Encryption::None, false),
        ("perItem", Encryption::PerItem, false),
    ];
    // Alternating rounds, the median kept, so a busy moment of the machine hits every case alike.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The in-memory stores show the CPU cost alone; the embedded ones add SQLite's fsyncs.
    for (backend, embedded) in [("memory", false), ("embedded", true)] {
        let mut figures = vec![[Vec::new(), Vec::new(), Vec::new()]; cases.len()];
        for _ in 0..5 {
            for (i, (_, enc, inline)) in cases.iter().enumerate() {
                for (kind, us) in run(settings(*enc, *inline), embedded).await.into_iter().enumerate() {
                    figures[i][kind].push(us);
                }
            }
        }
        for ((name, ..), [c, u, r]) in cases.iter().zip(figures.iter_mut()) {
            println!(
                "shred cost, {backend}, {ITEMS} items of ~1 KiB: {name:<16} create {:>6.0} µs  update {:>6.0} µs  read {:>5.0} µs",
                median(c),
                median(u),
                median(r)
            );
        }
    }
}
