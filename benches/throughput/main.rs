//! Throughput benchmark (issue 9): how close Chronos gets to the raw cost of MongoDB + S3.
//!
//! `cargo bench --bench throughput -- [--clients N] [--seconds S | --ops N] [--items N] [--smoke]
//! [--out docs/benchmarks.md]` drives each workload with N concurrent clients through the engine
//! library, through the HTTP service (in-process, on 127.0.0.1:0) and — in the same run, right
//! next to it — as the "raw floor": the fewest `mongodb` + `aws-sdk-s3` calls that could still be
//! correct. Every Chronos figure is reported as a ratio to the floor measured in this run, because
//! on a shared machine only numbers taken side by side are comparable.
//!
//! Mongo commands are counted with the driver's command monitoring (as `tests/it/support.rs`
//! does; `--no-command-monitor` leaves it off, because it costs every Mongo path CPU), S3
//! requests with the `engine::store::decorators::Counting` decorator, and each workload's peak
//! RSS is read from `/proc/self/status` after resetting the high-water mark. The change feed's
//! workload (`feed`) measures delivery latency and a `chronos serve` child's memory and CPU
//! under many Server-Sent-Events subscribers.

mod args;
mod errors;
mod feed;
mod floor;
mod measure;
mod packing;
mod probes;
mod records;
mod report;
mod restore;
mod served;
mod workloads;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chronos::api::{self, AppState, ServiceSettings};
use chronos::client::Client as HttpClient;
use chronos::engine::backends::MongoMetaStore;
use chronos::engine::backends::{S3Connection, S3PayloadStore};
use chronos::engine::store::decorators::{Counting, RequestCounter};
use chronos::engine::{Attribution, CollectionMap, Engine, EngineSettings, ItemId, MetaWrite};
use clap::Parser;
use mongodb::bson::doc;
use mongodb::event::EventHandler;
use mongodb::event::cmap::CmapEvent;
use mongodb::event::command::CommandEvent;
use mongodb::options::WriteConcern;
use serde_json::json;

use crate::args::{Args, Budget};
use crate::errors::{err, name};
use crate::feed::feed;
use crate::floor::Floor;
use crate::measure::{Bench, Delta, setup};
use crate::probes::Monitor;
use crate::records::record;
use crate::report::{Report, write_out};
use crate::restore::restore;
use crate::served::served;
use crate::workloads::{Ctx, POOL_PER_CLIENT, Via, Workload};

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("throughput: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("throughput: {e}");
        std::process::exit(1);
    }
}

pub fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!(
            "{name} is not set: the benchmark needs the real MongoDB and S3 services. Run `scripts/services.sh start` \
             and `source scripts/test-env.sh` first"
        )
    })
}

pub async fn run(args: Args) -> Result<(), String> {
    let clients = if args.smoke { args.clients.min(8) } else { args.clients }.max(1);
    let budget = match (args.ops, args.seconds) {
        (Some(n), _) => Budget::Ops(n),
        (None, Some(s)) => Budget::Time(Duration::from_secs_f64(s)),
        (None, None) if args.smoke => Budget::Time(Duration::from_millis(300)),
        (None, None) => Budget::Time(Duration::from_secs(10)),
    };
    let restore_items = args.items.unwrap_or(if args.smoke { 100 } else { 100_000 }).max(1);
    let connections = args.connections.unwrap_or(if args.smoke { 50 } else { 1000 }).max(1);
    let list_pool = if args.smoke { 100 } else { 2000 };
    let shown: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let command = format!("cargo bench --bench throughput -- {}", shown.join(" "));
    let wanted = |label: &str| args.only.is_empty() || args.only.iter().any(|o| o == label);
    let mongo_uri = env("CHRONOS_TEST_MONGO_URI")?;
    let s3_conn = S3Connection {
        endpoint: env("CHRONOS_TEST_S3_ENDPOINT")?,
        region: env("CHRONOS_TEST_S3_REGION")?,
        access_key: env("CHRONOS_TEST_S3_ACCESS_KEY")?,
        secret_key: env("CHRONOS_TEST_S3_SECRET_KEY")?,
        force_path_style: true,
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    eprintln!(
        "throughput: {clients} clients, {}, restore of {restore_items} items",
        budget.describe()
    );

    // One monitored Mongo client for everything (engine and floor), so the command counts come
    // from one place; workloads run one at a time, so a delta belongs to the workload measured.
    let monitor = Arc::new(Monitor::default());
    let mut options = mongodb::options::ClientOptions::parse(&mongo_uri)
        .await
        .map_err(err("CHRONOS_TEST_MONGO_URI"))?;
    let m = monitor.clone();
    if !args.no_command_monitor {
        options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| m.record(e)));
    }
    let m = monitor.clone();
    options.cmap_event_handler = Some(EventHandler::callback(move |e: CmapEvent| m.record_pool(e)));
    let mongo = mongodb::Client::with_options(options).map_err(err("MongoDB client"))?;
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let db_name = format!("bench_{suffix}");
    let meta = MongoMetaStore::new(mongo.clone(), &db_name);
    meta.ping().await.map_err(err("MongoDB"))?;
    let mongo_version = mongo
        .database("admin")
        .run_command(doc! {"buildInfo": 1})
        .await
        .ok()
        .and_then(|d| d.get_str("version").ok().map(str::to_owned))
        .unwrap_or_else(|| "?".into());

    let s3 = s3_conn.client();
    let s3_counter = Arc::new(RequestCounter::default());
    let json_store = S3PayloadStore::new(s3.clone(), format!("bench-json-{suffix}"));
    let backups = S3PayloadStore::new(s3.clone(), format!("bench-backups-{suffix}"));
    let floor_bucket = format!("bench-floor-{suffix}");
    let content_bucket = format!("bench-content-{suffix}");
    for store in [
        &json_store,
        &backups,
        &S3PayloadStore::new(s3.clone(), floor_bucket.clone()),
        &S3PayloadStore::new(s3.clone(), content_bucket.clone()),
    ] {
        store.ensure_bucket().await.map_err(err("S3"))?;
    }
    let mut settings = EngineSettings::default();
    settings.collection_maps.insert(
        "blist".into(),
        CollectionMap {
            indexed_props: Some(vec!["status".into()]),
            ..Default::default()
        },
    );
    let json_store: Arc<dyn chronos::engine::PayloadStore> = Arc::new(json_store);
    let backups: Arc<dyn chronos::engine::PayloadStore> = Arc::new(backups);
    let payloads = Arc::new(Counting::new(json_store.clone(), s3_counter.clone()));
    let packed = EngineSettings {
        pack_writes: chronos::engine::settings::PackWrites::Together,
        ..settings.clone()
    };
    let packed = Arc::new(
        Engine::new(
            Arc::new(MongoMetaStore::new(mongo.clone(), &db_name)),
            payloads.clone(),
            packed,
        )
        .with_backups(backups.clone()),
    );
    let engine = Arc::new(Engine::new(Arc::new(meta), payloads, settings).with_backups(backups));
    let dir = tempfile::tempdir().map_err(err("temporary directory"))?;
    let embedded = chronos::connect::embedded(dir.path(), chronos::engine::DEFAULT_DATABASE, EngineSettings::default());
    let embedded = Arc::new(embedded.map_err(err("embedded engine"))?);

    // The HTTP service, in-process: clients and server share this machine's cores. Its engine packs
    // writes made together, as `chronos serve` does on S3 by default (`packWrites: auto`).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err("bind 127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(err("local address"))?;
    let app = api::router(
        AppState::new(BTreeMap::from([("default".to_owned(), packed.clone())]), None),
        &ServiceSettings::new(16 << 20),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let http = HttpClient::new(format!("http://{addr}"), None).map_err(err("HTTP client"))?;

    let pool = clients * POOL_PER_CLIENT;
    let ovs = || (0..pool).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let ctx = Arc::new(Ctx {
        engine: engine.clone(),
        packed,
        embedded,
        http,
        addr,
        lean: (0..clients).map(|_| tokio::sync::Mutex::new(None)).collect(),
        floor: Floor {
            mongo: mongo.clone(),
            db: mongo.database_with_options(
                &db_name,
                mongodb::options::DatabaseOptions::builder()
                    .write_concern(WriteConcern::majority())
                    .build(),
            ),
            s3,
            bucket: floor_bucket,
            counter: s3_counter.clone(),
        },
        who: Attribution::new("bench", "throughput"),
        pool,
        list_pool,
        items: name("bitems")?,
        created: name("bcreate")?,
        listed: name("blist")?,
        ovs: [ovs(), ovs(), ovs()],
    });
    let mut bench = Bench {
        clients,
        budget,
        smoke: args.smoke,
        commands_counted: !args.no_command_monitor,
        monitor,
        s3_counter,
        rows: Vec::new(),
        peak_rss_kib: 0,
        errors: Vec::new(),
        served: Vec::new(),
        lone: None,
        lone_latency: None,
        feeds: Vec::new(),
    };

    eprintln!("setup: {pool} pool items per path, {list_pool} items to list");
    ctx.floor.prepare().await?;
    for (via, collection, count, prefix) in [
        (Via::Engine, ctx.items.clone(), pool as u64, "p"),
        (Via::Engine, ctx.listed.clone(), list_pool, "l"),
        (Via::Floor, ctx.items.clone(), pool as u64, "p"),
        (Via::Embedded, ctx.items.clone(), pool as u64, "p"),
        // The first write to a collection ensures its indexes; that belongs to setup, not to
        // the measured creates.
        (Via::Engine, ctx.created.clone(), 1, "seed"),
        (Via::Packed, ctx.created.clone(), 1, "pseed"),
        (Via::Embedded, ctx.created.clone(), 1, "seed"),
    ] {
        let ctx = ctx.clone();
        setup(clients, count, move |n| {
            let (ctx, collection) = (ctx.clone(), collection.clone());
            async move { ctx.seed(via, &collection, format!("{prefix}{n:06}"), n).await }
        })
        .await?;
    }
    ctx.floor.setup_list(list_pool).await?;

    if wanted(Workload::Create.label()) || wanted(Workload::Update.label()) {
        if bench.commands_counted {
            bench.lone = Some(lone_writes(&bench, &ctx).await?);
        }
        bench.lone_latency = Some(packing::lone_latency(&ctx).await?);
    }
    for (w, paths) in [
        (Workload::Create, &[Via::Floor, Via::Engine, Via::Packed, Via::Http][..]),
        (Workload::Update, &[Via::Floor, Via::Engine, Via::Packed, Via::Http]),
        (Workload::PutOnly, &[Via::Floor]),
        (
            Workload::GetLatest,
            &[Via::Floor, Via::Engine, Via::Http, Via::HttpLean],
        ),
        (Workload::GetVersion, &[Via::Floor, Via::Engine, Via::Http]),
        (Workload::List, &[Via::Floor, Via::Engine, Via::Http, Via::HttpLean]),
        (Workload::Enrich, &[Via::Floor, Via::Engine, Via::Packed, Via::Http]),
        (Workload::Create, &[Via::Embedded]),
        (Workload::Update, &[Via::Embedded]),
        (Workload::GetLatest, &[Via::Embedded]),
    ] {
        if wanted(w.label()) {
            bench.measure(&ctx, w, paths).await;
        }
    }
    // The child reads the same database and buckets as the engine (secrets by env reference).
    let served_config = json!({
        "mongoUris": [{"env": "CHRONOS_TEST_MONGO_URI"}],
        "spacesConns": [{
            "endpoint": s3_conn.endpoint.clone(),
            "region": s3_conn.region.clone(),
            "accessKey": {"env": "CHRONOS_TEST_S3_ACCESS_KEY"},
            "secretKey": {"env": "CHRONOS_TEST_S3_SECRET_KEY"},
            "jsonBucket": format!("bench-json-{suffix}"),
            "contentBucket": content_bucket,
            "backupsBucket": format!("bench-backups-{suffix}"),
            "forcePathStyle": true,
        }],
        "dbName": db_name,
    });
    eprintln!("memory: `chronos serve` children, {connections} keep-alive connections each:");
    let memory = if wanted("memory") {
        vec![(Via::Served, Some(served_config.clone())), (Via::ServedEmbedded, None)]
    } else {
        vec![]
    };
    for (via, config) in memory {
        if let Err(e) = served(&mut bench, via, config, connections, ctx.items.as_str(), pool).await {
            bench.errors.push(format!("memory workload via {}: {e}", via.label()));
        }
    }
    if wanted("feed") {
        let writes = if args.smoke { 5 } else { 200 };
        eprintln!("feed: {connections} SSE subscribers on `chronos serve` children, {writes} versions:");
        for (via, config) in [(Via::Served, Some(served_config)), (Via::ServedEmbedded, None)] {
            if let Err(e) = feed(&mut bench, via, config, connections, writes).await {
                bench.errors.push(format!("feed workload via {}: {e}", via.label()));
            }
        }
    }
    if wanted(Workload::Restore.label()) {
        eprintln!("restoreCollection of {restore_items} items:");
        restore(&mut bench, &ctx, restore_items).await?;
    }

    let _ = stop.send(());
    let _ = server.await;
    // The services are shared with other test runs: leave no benchmark database behind.
    let _ = mongo.database(&db_name).drop().await;
    bench.note_rss();

    let report = Report {
        command,
        clients,
        budget,
        restore_items,
        connections,
        list_pool,
        mongo_version,
        load_before,
        load_after: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        took: started.elapsed(),
        smoke: args.smoke,
    };
    let markdown = report.markdown(&bench);
    println!("{markdown}");
    if let Some(out) = &args.out {
        write_out(out, &markdown)?;
        eprintln!("wrote {}", out.display());
    }
    if !bench.errors.is_empty() {
        return Err(format!("operations failed:\n  {}", bench.errors.join("\n  ")));
    }
    Ok(())
}

/// Mongo commands per create and per update when each write is alone (one client, one write at
/// a time): what group commit can't share.
pub async fn lone_writes(bench: &Bench, ctx: &Ctx) -> Result<(f64, f64), String> {
    const N: u64 = 20;
    let commands = |d: Delta| d.mongo.values().map(|(n, _)| *n).sum::<u64>() as f64 / N as f64;
    let ids = (0..N)
        .map(|i| name::<ItemId>(&format!("lone-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let before = bench.counts();
    for (n, id) in (0..).zip(&ids) {
        let data = record(n, 0);
        ctx.engine
            .create(&ctx.created, Some(id.clone()), data, &ctx.who)
            .await
            .map_err(err("lone create"))?;
    }
    let created = bench.counts();
    for (n, id) in (0..).zip(&ids) {
        let data = record(n, 1);
        ctx.engine
            .update(&ctx.created, id, data, Some(0), &ctx.who)
            .await
            .map_err(err("lone update"))?;
    }
    let updated = bench.counts();
    Ok((
        commands(Delta::between(&before, &created, 0)),
        commands(Delta::between(&created, &updated, 0)),
    ))
}
