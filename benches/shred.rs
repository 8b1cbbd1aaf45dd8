//! What `encryption: perItem` costs per write and per read (issue 17), on the in-memory stores
//! (CPU alone) and the embedded ones (SQLite's fsyncs added): the same workload on a plain
//! collection (data inline in the head, and not) and on an encrypted one (a data-key lookup, an
//! unwrap and an AES-256-GCM seal or open per operation, no inline data). Rounds alternate the
//! cases and the median is kept, so a busy moment of the machine hits every case alike. Every
//! read is checked to return what was written.
//!
//! `cargo bench --bench shred` (no services needed); `--smoke` for a second; prints a Markdown
//! table for docs/benchmarks.md.

use std::sync::Arc;
use std::time::Instant;

use chronos::engine::backends::{MemoryMetaStore, MemoryPayloadStore};
use chronos::engine::{
    Attribution, CollectionMap, CollectionName, Encryption, Engine, EngineSettings, ItemId, ReadOptions,
};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Items written, updated and read per case and round.
    #[arg(long, default_value_t = 150)]
    items: usize,
    /// Rounds over all cases (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// A second or so, for CI: 20 items, one round.
    #[arg(long)]
    smoke: bool,
    /// What `cargo bench` passes.
    #[arg(long, hide = true)]
    bench: bool,
}

const CASES: [(&str, Encryption, bool); 3] = [
    ("plain, inline", Encryption::None, true),
    ("plain, no inline", Encryption::None, false),
    ("perItem", Encryption::PerItem, false),
];

fn main() -> Result<(), String> {
    let mut args = Args::parse();
    if args.smoke {
        (args.items, args.rounds) = (20, 1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(&args))
}

async fn run(args: &Args) -> Result<(), String> {
    println!(
        "`cargo bench --bench shred -- --items {} --rounds {}`\n",
        args.items, args.rounds
    );
    println!("| backend | collection | create µs | update µs | read µs |");
    println!("|---|---|--:|--:|--:|");
    for (backend, embedded) in [("memory", false), ("embedded", true)] {
        let mut figures = vec![[Vec::new(), Vec::new(), Vec::new()]; CASES.len()];
        for _ in 0..args.rounds.max(1) {
            for (i, (_, encryption, inline)) in CASES.iter().enumerate() {
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let settings = settings(*encryption, *inline);
                let engine = if embedded {
                    chronos::connect::embedded(dir.path(), chronos::engine::DEFAULT_DATABASE, settings)
                        .map_err(|e| e.to_string())?
                } else {
                    let meta = Arc::new(MemoryMetaStore::new());
                    Engine::new(meta, Arc::new(MemoryPayloadStore::new()), settings)
                };
                for (kind, us) in measure(&engine, args.items).await?.into_iter().enumerate() {
                    figures[i][kind].push(us);
                }
            }
        }
        for ((name, ..), [c, u, r]) in CASES.iter().zip(figures.iter_mut()) {
            println!(
                "| {backend} | {name} | {:.0} | {:.0} | {:.0} |",
                median(c),
                median(u),
                median(r)
            );
        }
    }
    Ok(())
}

/// Per operation, in µs: create (an encrypted item's first write also makes its data key),
/// update, read of the latest version.
async fn measure(e: &Engine, items: usize) -> Result<[f64; 3], String> {
    let coll: CollectionName = "docs".parse().map_err(|e| format!("{e}"))?;
    let who = Attribution::new("bench", "shred cost");
    let body = "x".repeat(1000);
    let data = |i: usize| {
        json!({"kind": "doc", "n": i, "body": body})
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let per_op = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / items as f64;
    let started = Instant::now();
    let mut ids: Vec<ItemId> = Vec::with_capacity(items);
    for i in 0..items {
        ids.push(e.create(&coll, None, data(i), &who).await.map_err(|e| e.to_string())?.0);
    }
    let create = per_op(started);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        e.update(&coll, id, data(i), None, &who)
            .await
            .map_err(|e| e.to_string())?;
    }
    let update = per_op(started);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let r = e
            .get_latest(&coll, id, ReadOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if r.data["n"] != i {
            return Err(format!("{id} read back {:?}, not what was written", r.data["n"]));
        }
    }
    Ok([create, update, per_op(started)])
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
    // A fixed key: the cost does not depend on which one.
    s.encryption_key = chronos::engine::sealed::Kek::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").ok();
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
