//! What making the buckets self-describing costs and gives (issue 15): write throughput with the
//! ledger against the same writes whose ledger never reaches the bucket during the run, the S3
//! PUTs per write, and how fast a rebuild (into an empty metadata store) and a verify run — on
//! MongoDB + S3 and on the embedded default.
//!
//! `cargo bench --bench history -- --versions 50000` (services running, `source
//! scripts/test-env.sh`); `--smoke` for a few seconds. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronos::engine::backends::sqlite::SqliteMetaStore;
use chronos::engine::backends::{LocalPayloadStore, MongoMetaStore, S3Connection, S3PayloadStore};
use chronos::engine::rebuild::RebuildOptions;
use chronos::engine::store::decorators::{Counting, RequestCounter};
use chronos::engine::{Attribution, CollectionName, Engine, EngineSettings, ItemId, MetaStore, PayloadStore};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Map, Value, json};

#[derive(Parser)]
struct Args {
    /// Versions written per measured run (and rebuilt).
    #[arg(long, default_value_t = 50_000)]
    versions: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// A few seconds, for CI.
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("history: {name} is not set: run `scripts/services.sh start` and `source scripts/test-env.sh`");
        std::process::exit(1)
    })
}

fn record(n: u64, v: u64) -> Map<String, Value> {
    let json = json!({"n": n, "v": v, "status": format!("s{}", n % 20), "text": "x".repeat(900)});
    json.as_object().cloned().unwrap_or_default()
}

/// `count` writes by `clients` writers over `clients * 8` items of `c` (creates, then updates):
/// writes per second.
async fn write(engine: &Arc<Engine>, c: &CollectionName, clients: usize, count: u64) -> f64 {
    let who = Attribution::new("bench", "history");
    let items = (clients * 8) as u64;
    let started = Instant::now();
    futures::stream::iter(0..clients as u64)
        .for_each_concurrent(None, |w| {
            let (engine, who, c) = (engine.clone(), who.clone(), c.clone());
            async move {
                let mut n = w;
                while n < count {
                    let item = n % items;
                    let id: ItemId = format!("i{item:06}").parse().unwrap_or_else(|_| ItemId::generate());
                    let r = if n < items {
                        engine.create(&c, Some(id), record(item, 0), &who).await.map(|_| ())
                    } else {
                        engine.update(&c, &id, record(item, n), None, &who).await.map(|_| ())
                    };
                    if let Err(e) = r {
                        eprintln!("history: write failed: {e}");
                        std::process::exit(1);
                    }
                    n += clients as u64;
                }
            }
        })
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

struct Stores {
    meta: Arc<dyn MetaStore>,
    fresh: Arc<dyn MetaStore>,
    payloads: Arc<dyn PayloadStore>,
    backups: Arc<dyn PayloadStore>,
}

fn engine(meta: Arc<dyn MetaStore>, s: &Stores, ledger_flush: Duration) -> Arc<Engine> {
    let settings = EngineSettings {
        ledger_flush,
        ..Default::default()
    };
    Arc::new(Engine::new(meta, s.payloads.clone(), settings).with_backups(s.backups.clone()))
}

/// One backend's rows: writes with and without the ledger reaching the bucket (alternated
/// twice, so load drift does not favour either), PUTs per write, rebuild and verify rates.
async fn rows(label: &str, s: Stores, puts: &RequestCounter, args: &Args) -> Vec<String> {
    let with = engine(s.meta.clone(), &s, Duration::from_secs(1));
    // The same engine code whose ledger waits an hour: its segments never reach the bucket
    // during the run (the per-write bookkeeping still happens).
    let without = engine(s.meta.clone(), &s, Duration::from_secs(3600));
    let half = args.versions / 2;
    let (mut rate_with, mut rate_without) = (0.0, 0.0);
    let mut puts_with = 0;
    for round in 0..2 {
        let c: CollectionName = format!("with{round}").parse().unwrap_or_else(|_| unreachable_name());
        let before = puts.snapshot().0;
        rate_with += write(&with, &c, args.clients, half).await / 2.0;
        let _ = with.flush_ledger().await;
        puts_with += puts.snapshot().0 - before;
        let c: CollectionName = format!("without{round}").parse().unwrap_or_else(|_| unreachable_name());
        rate_without += write(&without, &c, args.clients, half).await / 2.0;
    }
    // Before the rebuild, the "without" engine's records reach the bucket too.
    let _ = without.flush_ledger().await;
    let total = 4 * half;
    let rebuilt = engine(s.fresh.clone(), &s, Duration::from_secs(1));
    let started = Instant::now();
    let report = match rebuilt.rebuild(&RebuildOptions::default(), &|_| {}).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("history: rebuild failed: {e}");
            std::process::exit(1);
        }
    };
    let rebuild_s = started.elapsed().as_secs_f64();
    if report.versions != total || report.unconfirmed != 0 {
        eprintln!("history: rebuilt {} of {total} versions: {report:?}", report.versions);
        std::process::exit(1);
    }
    let verify = match rebuilt.verify(Duration::ZERO).await {
        Ok(v) if v.intact() => v,
        other => {
            eprintln!("history: verify: {other:?}");
            std::process::exit(1);
        }
    };
    vec![
        format!(
            "| {label} | {rate_without:.0} | {rate_with:.0} | **{:.3}** | {:.4} |",
            rate_with / rate_without,
            puts_with as f64 / (2 * half) as f64
        ),
        format!(
            "| {label} | {total} versions, {} items, {} segments | **{:.0}** versions/s ({rebuild_s:.1} s) | **{:.0}** versions/s ({:.1} s, {} objects read) |",
            report.heads,
            report.segments,
            total as f64 / rebuild_s,
            verify.versions_per_second,
            verify.seconds,
            verify.objects
        ),
    ]
}

fn unreachable_name() -> CollectionName {
    eprintln!("history: bad collection name");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.versions = args.versions.min(400);
        args.clients = args.clients.min(8);
    }
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();

    // MongoDB + S3.
    let mongo = mongodb::Client::with_uri_str(env("CHRONOS_TEST_MONGO_URI")).await;
    let mongo = mongo.unwrap_or_else(|e| {
        eprintln!("history: MongoDB: {e}");
        std::process::exit(1)
    });
    let s3 = S3Connection {
        endpoint: env("CHRONOS_TEST_S3_ENDPOINT"),
        region: env("CHRONOS_TEST_S3_REGION"),
        access_key: env("CHRONOS_TEST_S3_ACCESS_KEY"),
        secret_key: env("CHRONOS_TEST_S3_SECRET_KEY"),
        force_path_style: true,
    }
    .client();
    let json = S3PayloadStore::new(s3.clone(), format!("bench-hist-json-{suffix}"));
    let backups = S3PayloadStore::new(s3.clone(), format!("bench-hist-backups-{suffix}"));
    for b in [&json, &backups] {
        if let Err(e) = b.ensure_bucket().await {
            eprintln!("history: S3: {e}");
            std::process::exit(1);
        }
    }
    let puts = Arc::new(RequestCounter::default());
    let (db, fresh_db) = (format!("bench_hist_{suffix}"), format!("bench_hist_{suffix}_rebuilt"));
    let mongo_rows = rows(
        "MongoDB + S3",
        Stores {
            meta: Arc::new(MongoMetaStore::new(mongo.clone(), &db)),
            fresh: Arc::new(MongoMetaStore::new(mongo.clone(), &fresh_db)),
            payloads: Arc::new(Counting::new(Arc::new(json), puts.clone())),
            backups: Arc::new(backups),
        },
        &puts,
        &args,
    )
    .await;
    for name in [&db, &fresh_db] {
        let _ = mongo.database(name).drop().await;
    }

    // Embedded: SQLite + local files.
    let dir = tempfile::tempdir().unwrap_or_else(|e| {
        eprintln!("history: temporary directory: {e}");
        std::process::exit(1)
    });
    let open = |f: &str| -> Arc<dyn MetaStore> {
        match SqliteMetaStore::open(&dir.path().join(f)) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                eprintln!("history: SQLite: {e}");
                std::process::exit(1)
            }
        }
    };
    let local = |f: &str| -> Arc<LocalPayloadStore> {
        match LocalPayloadStore::open(&dir.path().join(f)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("history: local files: {e}");
                std::process::exit(1)
            }
        }
    };
    let local_puts = Arc::new(RequestCounter::default());
    let embedded_rows = rows(
        "embedded",
        Stores {
            meta: open("chronos.db"),
            fresh: open("rebuilt.db"),
            payloads: Arc::new(Counting::new(local("payloads"), local_puts.clone())),
            backups: local("backups"),
        },
        &local_puts,
        &args,
    )
    .await;

    let command: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    println!(
        "`cargo bench --bench history -- {}` ({} clients)\n",
        command.join(" "),
        args.clients
    );
    println!("| backend | writes/s, ledger held back | writes/s, ledger written | ratio | PUTs per write |");
    println!("|---|--:|--:|--:|--:|");
    println!("{}\n{}", mongo_rows[0], embedded_rows[0]);
    println!("\n| backend | history | rebuild | verify |\n|---|---|--:|--:|");
    println!("{}\n{}", mongo_rows[1], embedded_rows[1]);
}
