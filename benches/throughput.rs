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
//! does), S3 requests with a counting `PayloadStore` decorator, and each workload's peak RSS is
//! read from `/proc/self/status` after resetting the high-water mark.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chronos::api::{self, AppState, ServiceSettings};
use chronos::client::{self, Client as HttpClient};
use chronos::engine::backends::MongoMetaStore;
use chronos::engine::backends::{S3Connection, S3PayloadStore};
use chronos::engine::settings::RESTORE_PAGE;
use chronos::engine::{
    Attribution, CollectionMap, CollectionName, Engine, EngineSettings, Enrichment, HistoryPoint, ItemId, ListOptions,
    MetaWrite, PayloadStore, ReadOptions,
};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::cmap::CmapEvent;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ReadConcern, WriteConcern};
use serde_json::{Map, Value, json};

/// Items each client owns in the update / read pools (no two clients write the same item, so the
/// figures measure the write path, not contention).
const POOL_PER_CLIENT: usize = 8;
/// Distinct values of the indexed `status` property: a list page filters on one of them.
const STATUSES: u64 = 20;
/// Records per list page.
const LIST_LIMIT: usize = 20;
/// In-flight items of the floor restore: what `restore_collection_page` uses (`buffer_unordered(16)`).
const RESTORE_IN_FLIGHT: usize = 16;
/// Where hand-written analysis starts in the output file; everything from here on is kept.
const ANALYSIS_MARKER: &str = "<!-- analysis: kept across runs of the benchmark -->";

/// ~1 KiB records: the size of a typical business document.
static BODY: LazyLock<String> = LazyLock::new(|| "lorem ipsum dolor sit amet, ".repeat(28));

/// Every drive gets its own number, so ids created in one run never collide with another's.
static RUNS: AtomicU64 = AtomicU64::new(0);

#[derive(Parser, Debug)]
#[command(about = "Chronos throughput against the raw cost of MongoDB + S3")]
struct Args {
    /// Concurrent clients per workload.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds per workload (default 10; 0.3 with --smoke).
    #[arg(long, conflicts_with = "ops")]
    seconds: Option<f64>,
    /// Operations per workload instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Items in the restoreCollection workload (default 100000; 100 with --smoke).
    #[arg(long)]
    items: Option<usize>,
    /// Concurrent keep-alive connections to the `chronos serve` child in the memory workload
    /// (default 1000; 50 with --smoke).
    #[arg(long)]
    connections: Option<usize>,
    /// A few seconds in total, for CI: small pools, no warm-up, targets not judged; fails only
    /// when an operation fails.
    #[arg(long)]
    smoke: bool,
    /// Run only these workloads (comma-separated labels as in the table's first column, plus
    /// `memory`), e.g. `--only create,update,"S3 PUT alone"` while working on the write path.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the results as Markdown here (e.g. docs/benchmarks.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy)]
enum Budget {
    Time(Duration),
    Ops(u64),
}

impl Budget {
    /// A tenth of the budget, to warm connection pools and caches before measuring.
    fn warmup(self) -> Budget {
        match self {
            Budget::Time(d) => Budget::Time(d / 10),
            Budget::Ops(n) => Budget::Ops(n / 10),
        }
    }

    fn half(self) -> Budget {
        match self {
            Budget::Time(d) => Budget::Time(d / 2),
            Budget::Ops(n) => Budget::Ops(n.div_ceil(2)),
        }
    }

    fn describe(self) -> String {
        match self {
            Budget::Time(d) => format!("{:.1} s per workload", d.as_secs_f64()),
            Budget::Ops(n) => format!("{n} operations per workload"),
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// Counting: Mongo commands (driver monitoring), S3 requests (decorator), RSS.

/// Mongo commands by name: how many were started and how long they took (driver-measured round
/// trips, so their sum per operation is the time an operation spent waiting on mongod).
#[derive(Default)]
struct Monitor {
    commands: Mutex<BTreeMap<String, (u64, Duration)>>,
    /// Time spent waiting to check a connection out of the driver's pool (CMAP events).
    pool_wait_nanos: AtomicU64,
}

impl Monitor {
    fn record(&self, event: CommandEvent) {
        let (name, started, took) = match event {
            CommandEvent::Started(s) => (s.command_name, 1, Duration::ZERO),
            CommandEvent::Succeeded(s) => (s.command_name, 0, s.duration),
            CommandEvent::Failed(f) => (f.command_name, 0, f.duration),
            _ => return,
        };
        let mut map = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name).or_default();
        entry.0 += started;
        entry.1 += took;
    }

    fn record_pool(&self, event: CmapEvent) {
        if let CmapEvent::ConnectionCheckedOut(e) = event {
            self.pool_wait_nanos
                .fetch_add(e.duration.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> (BTreeMap<String, (u64, Duration)>, Duration) {
        let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (
            commands,
            Duration::from_nanos(self.pool_wait_nanos.load(Ordering::Relaxed)),
        )
    }
}

/// S3 requests made by the engine (through [`CountingStore`]) and by the floor, with their time.
#[derive(Default)]
struct S3Counter {
    requests: AtomicU64,
    nanos: AtomicU64,
}

impl S3Counter {
    fn record(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, Duration) {
        (
            self.requests.load(Ordering::Relaxed),
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        )
    }
}

/// A `PayloadStore` decorator that counts and times every request to the store it wraps.
struct CountingStore {
    inner: S3PayloadStore,
    counter: Arc<S3Counter>,
}

impl CountingStore {
    async fn timed<T>(&self, request: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = request.await;
        self.counter.record(started.elapsed());
        out
    }
}

#[async_trait]
impl PayloadStore for CountingStore {
    async fn put(&self, key: &str, body: Bytes) -> chronos::engine::Result<()> {
        self.timed(self.inner.put(key, body)).await
    }
    async fn get(&self, key: &str) -> chronos::engine::Result<Option<Bytes>> {
        self.timed(self.inner.get(key)).await
    }
    async fn delete(&self, key: &str) -> chronos::engine::Result<()> {
        self.timed(self.inner.delete(key)).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> chronos::engine::Result<Vec<String>> {
        self.timed(self.inner.list(prefix, start_after, limit)).await
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> chronos::engine::Result<Option<String>> {
        // Presigning is local signing, not a request: nothing to count.
        self.inner.presign_get(key, ttl).await
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn exists(&self) -> chronos::engine::Result<bool> {
        self.timed(self.inner.exists()).await
    }
    async fn create(&self) -> chronos::engine::Result<()> {
        self.timed(self.inner.create()).await
    }
}

/// Peak resident set size since the last [`reset_peak_rss`], in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM). Best effort: where
/// it is refused, the peaks are simply cumulative.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

// ---------------------------------------------------------------------------------------------
// Driving a workload.

/// One operation's place in a drive: which client, its own iteration, a drive-wide ticket, and
/// the drive's number.
#[derive(Debug, Clone, Copy)]
struct Tick {
    client: usize,
    i: u64,
    n: u64,
    run: u64,
}

struct Measured {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Per-operation latency in microseconds, sorted; empty when not observable per operation.
    latencies: Vec<u32>,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.iter().map(|&l| l as f64).sum::<f64>() / self.latencies.len() as f64 / 1000.0
    }
}

/// Run `op` from `clients` concurrent tasks until the budget is spent.
async fn drive<F, Fut>(clients: usize, budget: Budget, op: F) -> Measured
where
    F: Fn(Tick) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let tickets = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = op.clone();
        let tickets = tickets.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0_u64;
            let mut first_error = None;
            for i in 0_u64.. {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                let done = match budget {
                    Budget::Time(d) => started.elapsed() >= d,
                    Budget::Ops(max) => n >= max,
                };
                if done {
                    break;
                }
                let t = Instant::now();
                match op(Tick { client, i, n, run }).await {
                    Ok(()) => latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok((l, e, f)) => {
                all.extend(l);
                errors += e;
                first_error = first_error.or(f);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Measured {
        ops: all.len() as u64,
        errors,
        first_error,
        elapsed,
        latencies: all,
    }
}

/// Run `op(n)` for n in 0..count with `clients` in flight (setup: not measured, must not fail).
async fn setup<F, Fut>(clients: usize, count: u64, op: F) -> Result<Duration, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let m = drive(clients, Budget::Ops(count), move |t| op(t.n)).await;
    match m.first_error {
        Some(e) => Err(format!("setup failed ({} errors): {e}", m.errors)),
        None => Ok(m.elapsed),
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Floor,
    Engine,
    Http,
    Embedded,
    /// The real `chronos serve` binary as a child process on Mongo+S3 (its memory alone).
    Served,
    /// The same on its embedded default (SQLite + files).
    ServedEmbedded,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Floor => "raw floor",
            Via::Engine => "engine (Mongo+S3)",
            Via::Http => "HTTP (Mongo+S3)",
            Via::Embedded => "engine (embedded)",
            Via::Served => "`chronos serve` (Mongo+S3)",
            Via::ServedEmbedded => "`chronos serve` (embedded)",
        }
    }

    /// Whether this process's counters see the path's Mongo and S3 requests.
    fn counted(self) -> bool {
        matches!(self, Via::Floor | Via::Engine | Via::Http)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Create,
    Update,
    PutOnly,
    GetLatest,
    GetVersion,
    List,
    Enrich,
    Restore,
    /// The floor of a restore that batches each page's Mongo writes into one transaction.
    RestoreBatched,
    /// The floor of a restore by reference: batched pages and no payload requests.
    RestoreByRef,
    /// getLatest over many concurrent keep-alive connections to a `chronos serve` child.
    Connections,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Update => "update",
            Workload::PutOnly => "S3 PUT alone",
            Workload::GetLatest => "getLatest",
            Workload::GetVersion => "getVersion",
            Workload::List => "list",
            Workload::Enrich => "enrich",
            Workload::Restore => "restoreCollection",
            Workload::RestoreBatched => "restoreCollection, batched copy",
            Workload::RestoreByRef => "restoreCollection, by reference",
            Workload::Connections => "getLatest over N keep-alive connections",
        }
    }

    /// The floor a Chronos figure is a ratio to. A merge needs no more calls than a write (the
    /// head's previous data can come back from the same update), so enrich goes against update.
    fn floor(self) -> Workload {
        match self {
            Workload::Enrich => Workload::Update,
            Workload::Restore => Workload::RestoreByRef,
            w => w,
        }
    }

    fn what(self, via: Via) -> &'static str {
        use {Via::*, Workload::*};
        match (self, via) {
            (Create, Floor) => "S3 PUT + txn{insert version, upsert head}",
            (Update, Floor) => "S3 PUT + txn{insert version, update head at ov}",
            (PutOnly, _) => "one PutObject of the record",
            (GetLatest, Floor) => "findOne head by _id",
            (GetVersion, Floor) => "findOne version + S3 GET",
            (List, Floor) => "find by status, sort _id, limit 20",
            (Restore, Floor) => "per item: S3 GET + S3 PUT + txn, 16 in flight (copying)",
            (RestoreBatched, _) => "per 500-item page: S3 GET + PUT each (64 in flight), one txn of 3 commands",
            (RestoreByRef, _) => {
                "per 500-item page: find heads, find targets, one txn{insert versions, update heads}; no S3"
            }
            (Connections, _) => "GET …/items/{id} on each of N keep-alive connections, one request at a time",
            (Create, Http) => "POST …/items?id=",
            (Update, Http) => "PUT …/items/{id} with If-Match",
            (GetLatest, Http) => "GET …/items/{id}",
            (GetVersion, Http) => "GET …/items/{id}?ov=0",
            (List, Http) => "GET …/items?filter={status}&limit=20",
            (Enrich, Http) => "PATCH …/items/{id}",
            (Restore, Http) => "POST …/restore page by page (forward again)",
            (Create, _) => "Engine::create",
            (Update, _) => "Engine::update with expected ov",
            (GetLatest, _) => "Engine::get_latest (data inline)",
            (GetVersion, _) => "Engine::get_version(ov 0)",
            (List, _) => "Engine::list {status}, limit 20",
            (Enrich, _) => "Engine::enrich, one patch",
            (Restore, _) => "Engine::restore_collection to before the updates (by reference)",
        }
    }
}

fn text(e: impl Display) -> String {
    e.to_string()
}

fn err<E: Display>(context: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{context}: {e}")
}

fn name<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: Display,
{
    s.parse().map_err(|e| format!("{s}: {e}"))
}

/// A record: ~1 KiB, an indexed `status`, a counter.
fn record(n: u64, owner: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), format!("s{}", n % STATUSES).into());
    m.insert("n".into(), n.into());
    m.insert("owner".into(), format!("client-{owner}").into());
    m.insert("title".into(), format!("record {n}").into());
    m.insert("tags".into(), json!(["bench", "chronos"]));
    m.insert("body".into(), BODY.as_str().into());
    m
}

fn patch(n: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("enriched".into(), json!({"by": "bench", "n": n}));
    m
}

/// The pool item a client writes on its i-th operation (each client owns its own items).
fn own_item(t: Tick) -> usize {
    t.client * POOL_PER_CLIENT + (t.i as usize % POOL_PER_CLIENT)
}

/// The id of pool item `k`.
fn pool_id(k: usize) -> String {
    format!("p{k:06}")
}

/// A pseudo-random pool item to read (spreads reads over the pool without an RNG).
fn any_item(t: Tick, pool: usize) -> usize {
    (t.n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % pool
}

/// What the workloads share.
struct Ctx {
    engine: Arc<Engine>,
    embedded: Arc<Engine>,
    http: HttpClient,
    floor: Floor,
    who: Attribution,
    pool: usize,
    list_pool: u64,
    items: CollectionName,
    created: CollectionName,
    listed: CollectionName,
    /// The ov of each pool item: engine and HTTP share a pool; the floor and the embedded
    /// engine have their own. Only the owning client writes an item, so plain loads and stores do.
    ovs: [Vec<AtomicU64>; 3],
}

impl Ctx {
    fn engine(&self, via: Via) -> &Engine {
        if via == Via::Embedded {
            &self.embedded
        } else {
            &self.engine
        }
    }

    fn ovs(&self, via: Via) -> &[AtomicU64] {
        match via {
            Via::Engine | Via::Http | Via::Served => &self.ovs[0],
            Via::Floor => &self.ovs[1],
            Via::Embedded | Via::ServedEmbedded => &self.ovs[2],
        }
    }

    /// Create pool item `n` (setup).
    async fn seed(&self, via: Via, collection: &CollectionName, id: String, n: u64) -> Result<(), String> {
        match via {
            Via::Floor => self.floor.write("fp", &id, 0, n, 0).await,
            _ => {
                let id = name(&id)?;
                let engine = self.engine(via);
                engine
                    .create(collection, Some(id), record(n, 0), &self.who)
                    .await
                    .map(drop)
                    .map_err(text)
            }
        }
    }

    /// One operation of a workload along one path.
    async fn op(&self, w: Workload, via: Via, t: Tick) -> Result<(), String> {
        use {Via::*, Workload::*};
        let engine = self.engine(via);
        let any = pool_id(any_item(t, self.pool));
        match (w, via) {
            (Create, Floor) => {
                let id = format!("c{}-{}-{}", t.run, t.client, t.i);
                self.floor.write("fc", &id, 0, t.n, t.client).await
            }
            (Create, Http) => {
                let id = format!("h{}-{}-{}", t.run, t.client, t.i);
                let data = record(t.n, t.client);
                let opts = Default::default();
                self.http
                    .create("default", self.created.as_str(), Some(&id), &data, &opts)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (Create, _) => {
                let id = name(&format!("e{}-{}-{}", t.run, t.client, t.i))?;
                let data = record(t.n, t.client);
                engine
                    .create(&self.created, Some(id), data, &self.who)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (Update | Enrich, _) => {
                let k = own_item(t);
                let ovs = self.ovs(via);
                let expected = ovs[k].load(Ordering::Relaxed);
                let id = pool_id(k);
                let opts = client::WriteOptions {
                    expected_ov: Some(expected),
                    ..Default::default()
                };
                let ov = match (w, via) {
                    (Update, Floor) => self
                        .floor
                        .write("fp", &id, expected + 1, t.n, t.client)
                        .await
                        .map(|_| expected + 1),
                    (Update, Http) => {
                        let data = record(t.n, t.client);
                        self.http
                            .update("default", self.items.as_str(), &id, &data, &opts)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    (Update, _) => {
                        let data = record(t.n, t.client);
                        let id = name(&id)?;
                        engine
                            .update(&self.items, &id, data, Some(expected), &self.who)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    (_, Http) => {
                        let patches = [patch(t.n)];
                        let fid = Some("bench");
                        self.http
                            .enrich("default", self.items.as_str(), &id, &patches, fid, &opts)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    _ => {
                        let how = Enrichment {
                            function_id: Some("bench".into()),
                            expected_ov: Some(expected),
                        };
                        let id = name(&id)?;
                        engine
                            .enrich(&self.items, &id, &[patch(t.n)], &how, &self.who)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                }?;
                ovs[k].store(ov, Ordering::Relaxed);
                Ok(())
            }
            (PutOnly, _) => {
                let body = serde_json::to_vec(&record(t.n, t.client)).map_err(text)?;
                self.floor
                    .put(&format!("put/{}/{}/{}", t.run, t.client, t.i), Bytes::from(body))
                    .await
            }
            (GetLatest, Floor) => self.floor.find_head("fp", &any).await,
            (GetLatest, Http) => {
                let latest = client::Version::Latest;
                self.http
                    .get("default", self.items.as_str(), &any, &latest, false)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetLatest, _) => {
                let id: ItemId = name(&any)?;
                engine
                    .get_latest(&self.items, &id, ReadOptions::default())
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetVersion, Floor) => self.floor.get_version("fp", &any, 0).await,
            (GetVersion, Http) => {
                let v0 = client::Version::Ov(0);
                self.http
                    .get("default", self.items.as_str(), &any, &v0, false)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetVersion, _) => {
                let id: ItemId = name(&any)?;
                engine
                    .get_version(&self.items, &id, 0, ReadOptions::default())
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (List, _) => {
                let status = format!("s{}", t.n % STATUSES);
                let len = match via {
                    Floor => self.floor.list(&status).await?,
                    Http => {
                        let p = client::ListParams {
                            filter: Some(json!({"status": status})),
                            limit: Some(LIST_LIMIT),
                            ..Default::default()
                        };
                        self.http
                            .list("default", self.listed.as_str(), &p)
                            .await
                            .map_err(text)?
                            .items
                            .len()
                    }
                    _ => {
                        let opts = ListOptions {
                            filter: json!({"status": status}),
                            limit: LIST_LIMIT,
                            ..Default::default()
                        };
                        engine.list(&self.listed, &opts).await.map_err(text)?.records.len()
                    }
                };
                // A short page would be a cheap, wrong measurement.
                let want = LIST_LIMIT.min((self.list_pool / STATUSES) as usize);
                if len == want {
                    Ok(())
                } else {
                    Err(format!("list page had {len} records, expected {want}"))
                }
            }
            (Restore | RestoreBatched | RestoreByRef, _) => {
                Err("a restore is measured as a whole, not per operation".into())
            }
            (Connections, _) => Err("the memory workload drives its own connections".into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

struct Row {
    workload: Workload,
    via: Via,
    ops_per_s: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    mean: f64,
    has_latency: bool,
    /// Mongo commands per operation by name: (commands, ms spent in them) per operation.
    mongo: Option<BTreeMap<String, (f64, f64)>>,
    /// Time per operation spent waiting for a pooled Mongo connection (ms).
    pool_ms: f64,
    /// S3 requests per operation and the time spent in them (ms per operation).
    s3: Option<(f64, f64)>,
    rss_mib: f64,
    errors: u64,
    /// CPU ms per operation of mongod, the S3 server and this process (paths counted here).
    cpu_ms: Option<[f64; 3]>,
}

impl Row {
    fn mongo_per_op(&self) -> Option<f64> {
        self.mongo.as_ref().map(|m| m.values().fold(0.0, |a, v| a + v.0))
    }

    fn mongo_ms(&self) -> f64 {
        // `fold` from +0.0: an empty `sum` of floats is -0.0, which would print as "-0.0".
        self.mongo
            .as_ref()
            .map_or(0.0, |m| m.values().fold(0.0, |a, v| a + v.1))
    }
}

/// "findAndModify 2 (12.1 ms), insert 1 (3.0 ms)": what each operation sent and waited for.
fn fmt_breakdown(m: &BTreeMap<String, (f64, f64)>, scale: f64) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| v.0 * scale >= 0.005)
        .map(|(k, (n, ms))| format!("{k} {} ({:.1} ms)", fmt_count(n * scale), ms * scale))
        .collect();
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

fn fmt_count(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Counter readings at one moment.
struct Counts {
    mongo: BTreeMap<String, (u64, Duration)>,
    pool_wait: Duration,
    s3: (u64, Duration),
    cpu: Cpu,
}

/// CPU time (user + system) used so far by mongod, by the S3 server (SeaweedFS: `weed`) and by
/// this process (clients, engine, in-process HTTP server), from `/proc/<pid>/stat`.
#[derive(Default, Clone, Copy)]
struct Cpu([Duration; 3]);

impl Cpu {
    fn now() -> Cpu {
        let mut cpu = Cpu::default();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        let me = std::process::id().to_string();
        for entry in procs.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state …`: utime and stime are fields 14 and 15, in clock ticks (USER_HZ,
            // 100 on Linux).
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let slot = match comm {
                _ if pid == me => 2,
                "mongod" => 0,
                "weed" => 1,
                _ => continue,
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            cpu.0[slot] += Duration::from_millis(10 * (ticks(11) + ticks(12)));
        }
        cpu
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu([0, 1, 2].map(|i| self.0[i].saturating_sub(before.0[i])))
    }
}

/// What the counters moved by during a measurement (or several, added up).
#[derive(Default)]
struct Delta {
    mongo: BTreeMap<String, (u64, Duration)>,
    pool_wait: Duration,
    s3: (u64, Duration),
    cpu: Cpu,
    rss_kib: u64,
}

impl Delta {
    fn between(before: &Counts, after: &Counts, rss_kib: u64) -> Delta {
        let mut mongo = BTreeMap::new();
        for (name, (n, took)) in &after.mongo {
            let (n0, t0) = before.mongo.get(name).copied().unwrap_or_default();
            mongo.insert(name.clone(), (n - n0, took.saturating_sub(t0)));
        }
        Delta {
            mongo,
            pool_wait: after.pool_wait.saturating_sub(before.pool_wait),
            s3: (after.s3.0 - before.s3.0, after.s3.1.saturating_sub(before.s3.1)),
            cpu: after.cpu.since(before.cpu),
            rss_kib,
        }
    }

    fn add(&mut self, other: Delta) {
        for (name, (n, took)) in other.mongo {
            let entry = self.mongo.entry(name).or_default();
            entry.0 += n;
            entry.1 += took;
        }
        self.pool_wait += other.pool_wait;
        self.s3.0 += other.s3.0;
        self.s3.1 += other.s3.1;
        for i in 0..3 {
            self.cpu.0[i] += other.cpu.0[i];
        }
        self.rss_kib = self.rss_kib.max(other.rss_kib);
    }
}

/// The measuring side: counters, rows, errors.
struct Bench {
    clients: usize,
    budget: Budget,
    smoke: bool,
    monitor: Arc<Monitor>,
    s3_counter: Arc<S3Counter>,
    rows: Vec<Row>,
    peak_rss_kib: u64,
    errors: Vec<String>,
    /// The memory workload's readings of each `chronos serve` child, with its connection count.
    served: Vec<(Via, usize, ServedMemory)>,
    /// Mongo commands per create and per update made one at a time (nothing to group with).
    lone: Option<(f64, f64)>,
}

impl Bench {
    /// Measure one workload along several paths. The floor is measured in two halves, before and
    /// after the Chronos paths, and added up: on a machine whose load drifts, bracketing keeps
    /// the drift from favouring whichever side runs first.
    async fn measure(&mut self, ctx: &Arc<Ctx>, w: Workload, paths: &[Via]) {
        let bracket = paths.len() > 1 && paths.contains(&Via::Floor);
        let mut floor: Option<(Measured, Delta)> = None;
        if bracket {
            floor = Some(self.measure_one(ctx, w, Via::Floor, self.budget.half()).await);
        }
        let mut others = Vec::new();
        for &via in paths.iter().filter(|&&v| !bracket || v != Via::Floor) {
            others.push((via, self.measure_one(ctx, w, via, self.budget).await));
        }
        if let Some((mut m, mut delta)) = floor {
            let (m2, d2) = self.measure_one(ctx, w, Via::Floor, self.budget.half()).await;
            m.merge(m2);
            delta.add(d2);
            self.push(w, Via::Floor, m, delta);
        }
        for (via, (m, delta)) in others {
            self.push(w, via, m, delta);
        }
    }

    /// Warm up, then measure one workload along one path.
    async fn measure_one(&mut self, ctx: &Arc<Ctx>, w: Workload, via: Via, budget: Budget) -> (Measured, Delta) {
        let op = {
            let ctx = ctx.clone();
            move |t: Tick| {
                let ctx = ctx.clone();
                async move { ctx.op(w, via, t).await }
            }
        };
        if !self.smoke {
            let warm = drive(self.clients, budget.warmup(), op.clone()).await;
            if let Some(e) = warm.first_error {
                self.errors
                    .push(format!("{} via {}: warm-up: {e}", w.label(), via.label()));
            }
        }
        let before = self.start_window();
        let m = drive(self.clients, budget, op).await;
        let delta = self.end_window(&before);
        (m, delta)
    }

    fn counts(&self) -> Counts {
        let (mongo, pool_wait) = self.monitor.snapshot();
        Counts {
            mongo,
            pool_wait,
            s3: self.s3_counter.snapshot(),
            cpu: Cpu::now(),
        }
    }

    /// Begin measuring: counter readings and a fresh peak-RSS window.
    fn start_window(&mut self) -> Counts {
        self.note_rss();
        reset_peak_rss();
        self.counts()
    }

    fn end_window(&mut self, before: &Counts) -> Delta {
        let rss = self.note_rss();
        Delta::between(before, &self.counts(), rss)
    }

    /// Turn a measurement and what the counters moved by into a row.
    fn push(&mut self, workload: Workload, via: Via, m: Measured, delta: Delta) {
        let ops = m.ops.max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / ops;
        // The embedded engine's stores are SQLite and files, and a child process's requests are
        // its own: nothing to count there.
        let counted = via.counted();
        let mongo = counted.then(|| {
            let used = delta.mongo.iter().filter(|(_, (n, _))| *n > 0);
            used.map(|(name, (n, took))| (name.clone(), (*n as f64 / ops, ms(*took))))
                .collect()
        });
        let row = Row {
            workload,
            via,
            ops_per_s: m.ops as f64 / m.elapsed.as_secs_f64(),
            p50: m.percentile_ms(50.0),
            p95: m.percentile_ms(95.0),
            p99: m.percentile_ms(99.0),
            mean: m.mean_ms(),
            has_latency: !m.latencies.is_empty(),
            mongo,
            pool_ms: if counted { ms(delta.pool_wait) } else { 0.0 },
            s3: counted.then(|| (delta.s3.0 as f64 / ops, ms(delta.s3.1))),
            rss_mib: delta.rss_kib as f64 / 1024.0,
            errors: m.errors,
            cpu_ms: counted.then(|| delta.cpu.0.map(ms)),
        };
        let ratio = self.ratio(&row).map_or(String::new(), |r| format!(" = {r:.2}× floor"));
        let ms = |v: f64| {
            if row.has_latency {
                format!("{v:.2} ms")
            } else {
                "—".into()
            }
        };
        eprintln!(
            "  {:<26} {:<18} {:>8.0}/s{ratio:<15} p50 {:>9}  p99 {:>9}  mongo/op {:<4} s3/op {:<4} errors {}",
            workload.label(),
            via.label(),
            row.ops_per_s,
            ms(row.p50),
            ms(row.p99),
            row.mongo_per_op().map_or("—".into(), fmt_count),
            row.s3.map_or("—".into(), |s| fmt_count(s.0)),
            row.errors,
        );
        if let Some(e) = m.first_error {
            self.errors.push(format!(
                "{} via {}: {} errors, first: {e}",
                workload.label(),
                via.label(),
                m.errors
            ));
        }
        self.rows.push(row);
    }

    /// The current window's peak RSS, folded into the run's peak.
    fn note_rss(&mut self) -> u64 {
        let kib = peak_rss_kib().unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(kib);
        kib
    }

    fn find(&self, workload: Workload, via: Via) -> Option<&Row> {
        self.rows.iter().find(|r| r.workload == workload && r.via == via)
    }

    /// A Chronos row's throughput over its floor's, measured in this run.
    fn ratio(&self, row: &Row) -> Option<f64> {
        if !matches!(row.via, Via::Engine | Via::Http) {
            return None;
        }
        let floor = self.find(row.workload.floor(), Via::Floor)?;
        (floor.ops_per_s > 0.0).then(|| row.ops_per_s / floor.ops_per_s)
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!(
            "{name} is not set: the benchmark needs the real MongoDB and S3 services. Run `scripts/services.sh start` \
             and `source scripts/test-env.sh` first"
        )
    })
}

async fn run(args: Args) -> Result<(), String> {
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
    options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| m.record(e)));
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
    let s3_counter = Arc::new(S3Counter::default());
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
    let payloads = CountingStore {
        inner: json_store,
        counter: s3_counter.clone(),
    };
    let engine = Arc::new(Engine::new(Arc::new(meta), Arc::new(payloads), settings).with_backups(Arc::new(backups)));
    let dir = tempfile::tempdir().map_err(err("temporary directory"))?;
    let embedded = chronos::connect::embedded(dir.path(), chronos::engine::DEFAULT_DATABASE, EngineSettings::default());
    let embedded = Arc::new(embedded.map_err(err("embedded engine"))?);

    // The HTTP service, in-process: clients and server share this machine's cores.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err("bind 127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(err("local address"))?;
    let app = api::router(
        AppState::new(BTreeMap::from([("default".to_owned(), engine.clone())]), None),
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
        embedded,
        http,
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
        monitor,
        s3_counter,
        rows: Vec::new(),
        peak_rss_kib: 0,
        errors: Vec::new(),
        served: Vec::new(),
        lone: None,
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
        bench.lone = Some(lone_writes(&bench, &ctx).await?);
    }
    for (w, paths) in [
        (Workload::Create, &[Via::Floor, Via::Engine, Via::Http][..]),
        (Workload::Update, &[Via::Floor, Via::Engine, Via::Http]),
        (Workload::PutOnly, &[Via::Floor]),
        (Workload::GetLatest, &[Via::Floor, Via::Engine, Via::Http]),
        (Workload::GetVersion, &[Via::Floor, Via::Engine, Via::Http]),
        (Workload::List, &[Via::Floor, Via::Engine, Via::Http]),
        (Workload::Enrich, &[Via::Engine, Via::Http]),
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
        vec![(Via::Served, Some(served_config)), (Via::ServedEmbedded, None)]
    } else {
        vec![]
    };
    for (via, config) in memory {
        if let Err(e) = served(&mut bench, via, config, connections, ctx.items.as_str(), pool).await {
            bench.errors.push(format!("memory workload via {}: {e}", via.label()));
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
async fn lone_writes(bench: &Bench, ctx: &Ctx) -> Result<(f64, f64), String> {
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

/// Create `items` items of `c`, then update each once: returns the restore points "after the
/// creates" and "after the updates" (the highest cv each pass took; every update starts after the
/// last create, since a collection has one cv counter).
async fn seed_restore(
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
async fn restore(bench: &mut Bench, ctx: &Arc<Ctx>, items: usize) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------------
// Memory under many connections: the real `chronos serve` binary as a child process, so its
// resident set is measured alone (the load generator's share stays in this process).

/// A `chronos serve` child; killed (by its own pid) when dropped.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Start the binary with `config` (JSON; `None`: embedded in a temporary directory) and wait
    /// for the address it listens on.
    fn start(config: Option<Value>) -> Result<Served, String> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().map_err(err("temporary directory"))?;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"));
        cmd.args(["--log", "warn", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"));
        if let Some(config) = config {
            let path = dir.path().join("chronos.json");
            std::fs::write(&path, config.to_string()).map_err(err("config file"))?;
            cmd.arg("--config").arg(path);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(err("spawn chronos serve"))?;
        let stderr = child.stderr.take().ok_or("chronos serve: no stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => match l.split_once("serving http://") {
                    Some((_, addr)) => break addr.trim().parse().map_err(err("chronos serve address"))?,
                    None => said.push(l),
                },
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("chronos serve exited before listening: {}", said.join(" / ")));
                }
            }
        };
        // Keep reading what it says, so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Served { child, addr, _dir: dir })
    }

    /// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection doing one request at a time, by hand: reqwest would add
/// a pool, and the point is exactly one server-side connection per client connection.
struct Conn {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(err("connect"))?;
        stream.set_nodelay(true).map_err(text)?;
        Ok(Conn {
            stream: tokio::io::BufReader::new(stream),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send a request and read the whole response; returns its status.
    async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<u16, String> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: bench\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(err("send"))?;
        let mut status = 0;
        let mut length = None;
        loop {
            self.buf.clear();
            let n = self
                .stream
                .read_until(b'\n', &mut self.buf)
                .await
                .map_err(err("receive"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            let line = std::str::from_utf8(&self.buf).map_err(text)?.trim_end();
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
            } else if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or("response without content-length")?;
        self.buf.resize(length, 0);
        self.stream.read_exact(&mut self.buf).await.map_err(err("body"))?;
        Ok(status)
    }
}

/// What the memory workload saw of the child.
struct ServedMemory {
    /// After start-up and seeding, before any benchmark connection.
    idle_kib: u64,
    /// With every connection open, each after one request.
    open_kib: u64,
    /// The peak (VmHWM) over the whole workload.
    peak_kib: u64,
}

/// Open `conns` keep-alive connections to the child, then read pool items over all of them at
/// once until the budget is spent.
async fn many_connections(
    served: &Served,
    conns: usize,
    budget: Budget,
    collection: &str,
    pool: usize,
) -> Result<(Measured, ServedMemory), String> {
    let idle_kib = served.status_kib("VmRSS:").unwrap_or(0);
    served.reset_peak();
    let addr = served.addr;
    let mut opened: Vec<Conn> = futures::stream::iter(0..conns)
        .map(|_| Conn::open(addr))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    // One request on each, so the server has really taken every connection on.
    let path = |k: usize| format!("/v1/default/{collection}/items/{}", pool_id(k % pool));
    futures::stream::iter(opened.iter_mut().enumerate())
        .map(|(k, c)| {
            let path = path(k);
            async move {
                match c.request("GET", &path, None).await? {
                    200 => Ok(()),
                    s => Err(format!("GET {path}: status {s}")),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let open_kib = served.status_kib("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let per_conn = match budget {
        Budget::Ops(n) => n.div_ceil(conns as u64),
        Budget::Time(_) => u64::MAX,
    };
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let path = path(k * 7919);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut first_error = None;
                let mut errors = 0;
                for _ in 0..per_conn {
                    if let Budget::Time(d) = budget
                        && started.elapsed() >= d
                    {
                        break;
                    }
                    let t = Instant::now();
                    match c.request("GET", &path, None).await {
                        Ok(200) => latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Ok(s) => {
                            errors += 1;
                            first_error.get_or_insert(format!("GET {path}: status {s}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            break;
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut m = Measured {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (l, e, f) = task.await.map_err(text)?;
        m.latencies.extend(l);
        m.errors += e;
        m.first_error = m.first_error.take().or(f);
    }
    m.elapsed = started.elapsed();
    m.latencies.sort_unstable();
    m.ops = m.latencies.len() as u64;
    let peak_kib = served.status_kib("VmHWM:").unwrap_or(0);
    Ok((
        m,
        ServedMemory {
            idle_kib,
            open_kib,
            peak_kib,
        },
    ))
}

/// The memory workload on one kind of storage: start the child, seed it if it is empty, hammer.
async fn served(
    bench: &mut Bench,
    via: Via,
    config: Option<Value>,
    conns: usize,
    collection: &str,
    pool: usize,
) -> Result<(), String> {
    let child = tokio::task::spawn_blocking(move || Served::start(config))
        .await
        .map_err(text)??;
    if via == Via::ServedEmbedded {
        // Its own empty data directory: the pool items first (setup, not measured).
        let mut c = Conn::open(child.addr).await?;
        for k in 0..pool {
            let body = serde_json::to_string(&record(k as u64, 0)).map_err(text)?;
            let path = format!("/v1/default/{collection}/items?id={}", pool_id(k));
            match c.request("POST", &path, Some(&body)).await? {
                200 | 201 => {}
                s => return Err(format!("POST {path}: status {s}")),
            }
        }
    }
    let (m, mem) = many_connections(&child, conns, bench.budget, collection, pool).await?;
    eprintln!(
        "  {} with {conns} connections: RSS idle {:.0} MiB, all open {:.0} MiB, peak {:.0} MiB",
        via.label(),
        mem.idle_kib as f64 / 1024.0,
        mem.open_kib as f64 / 1024.0,
        mem.peak_kib as f64 / 1024.0
    );
    let delta = Delta {
        rss_kib: mem.peak_kib,
        ..Default::default()
    };
    bench.push(Workload::Connections, via, m, delta);
    bench.served.push((via, conns, mem));
    Ok(())
}

/// A restore measured as a whole: items per second. Per-item latency is not observable from
/// outside a page, so there are no percentiles.
fn whole(result: Result<u64, String>, started: Instant) -> Measured {
    let (ops, errors, first_error) = match result {
        Ok(n) => (n, 0, None),
        Err(e) => (0, 1, Some(e)),
    };
    Measured {
        ops,
        errors,
        first_error,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The raw floor: the fewest mongodb + aws-sdk-s3 calls that could still be correct.

struct Floor {
    mongo: mongodb::Client,
    /// The benchmark database, with Chronos's write concern (majority, journaled).
    db: mongodb::Database,
    s3: aws_sdk_s3::Client,
    bucket: String,
    counter: Arc<S3Counter>,
}

impl Floor {
    fn heads(&self, c: &str) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{c}_head"))
    }

    fn versions(&self, c: &str) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{c}_ver"))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), String> {
        let started = Instant::now();
        let result = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await;
        self.counter.record(started.elapsed());
        result
            .map(drop)
            .map_err(|e| format!("S3 PUT {key}: {}", DisplayErrorContext(&e)))
    }

    async fn get(&self, key: &str) -> Result<Bytes, String> {
        let started = Instant::now();
        let result = match self.s3.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out.body.collect().await.map(|b| b.into_bytes()).map_err(text),
            Err(e) => Err(DisplayErrorContext(&e).to_string()),
        };
        self.counter.record(started.elapsed());
        result.map_err(|e| format!("S3 GET {key}: {e}"))
    }

    /// A versioned write at its minimum: the payload to S3 first (so a committed version never
    /// points at a missing object), then one transaction that inserts the version (its `_id` is
    /// `id:ov`, so exactly one writer wins each ov) and moves the head from ov − 1 to ov (an
    /// upsert, so a create needs no separate path; a stale writer collides on `_id`).
    async fn write(&self, c: &str, id: &str, ov: u64, n: u64, owner: usize) -> Result<(), String> {
        let data = serde_json::to_string(&record(n, owner)).map_err(text)?;
        let key = format!("{c}/{id}/v{ov}");
        self.put(&key, Bytes::from(data.clone())).await?;
        let now = mongodb::bson::DateTime::now();
        let mut session = self.mongo.start_session().await.map_err(text)?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await
            .map_err(text)?;
        let version = doc! {"_id": format!("{id}:{ov}"), "itemId": id, "ov": ov as i64, "at": now, "key": &key};
        self.versions(c)
            .insert_one(version)
            .session(&mut session)
            .await
            .map_err(err("insert version"))?;
        let mut filter = doc! {"_id": id};
        if ov > 0 {
            filter.insert("ov", ov as i64 - 1);
        }
        let status = format!("s{}", n % STATUSES);
        let set = doc! {"$set": {"ov": ov as i64, "at": now, "key": &key, "status": status, "data": data}};
        self.heads(c)
            .update_one(filter, set)
            .upsert(true)
            .session(&mut session)
            .await
            .map_err(err("upsert head"))?;
        session.commit_transaction().await.map_err(err("commit"))
    }

    /// A hot read: one findOne on the head, and the inline data parsed (a reader needs it).
    async fn find_head(&self, c: &str, id: &str) -> Result<(), String> {
        let head = self.heads(c).find_one(doc! {"_id": id}).await.map_err(text)?;
        parse_inline(&head.ok_or_else(|| format!("{c}/{id} missing"))?)
    }

    async fn get_version(&self, c: &str, id: &str, ov: u64) -> Result<(), String> {
        let version = self
            .versions(c)
            .find_one(doc! {"_id": format!("{id}:{ov}")})
            .await
            .map_err(text)?
            .ok_or_else(|| format!("{c}/{id} v{ov} missing"))?;
        let body = self.get(version.get_str("key").map_err(text)?).await?;
        serde_json::from_slice::<Map<String, Value>>(&body).map_err(text)?;
        Ok(())
    }

    /// One page of a listing; returns how many records it had.
    async fn list(&self, status: &str) -> Result<usize, String> {
        let docs: Vec<Document> = self
            .heads("fl")
            .find(doc! {"status": status})
            .sort(doc! {"_id": 1})
            .limit(LIST_LIMIT as i64)
            .batch_size(LIST_LIMIT as u32)
            .await
            .map_err(text)?
            .try_collect()
            .await
            .map_err(text)?;
        docs.iter().try_for_each(parse_inline)?;
        Ok(docs.len())
    }

    /// Create the floor's collections before any transaction writes to them: creating a
    /// collection inside concurrent transactions fails them with `SnapshotUnavailable` (Chronos
    /// creates its collections with their indexes, once, the same way).
    async fn prepare(&self) -> Result<(), String> {
        for c in ["fc", "fp", "fl", "fr"] {
            for coll in [format!("{c}_head"), format!("{c}_ver")] {
                self.db.create_collection(&coll).await.map_err(err(&coll))?;
            }
        }
        Ok(())
    }

    /// The listing collection (setup, not measured): the same records, and an index on `status`
    /// of the same shape as the engine's `meta_status`.
    async fn setup_list(&self, list_pool: u64) -> Result<(), String> {
        let docs = (0..list_pool).map(|n| {
            let data = serde_json::to_string(&record(n, 0)).unwrap_or_default();
            doc! {"_id": format!("l{n:06}"), "ov": 0_i64, "status": format!("s{}", n % STATUSES), "data": data}
        });
        self.heads("fl").insert_many(docs).await.map_err(err("floor list"))?;
        let index = mongodb::IndexModel::builder().keys(doc! {"status": 1}).build();
        self.heads("fl")
            .create_index(index)
            .await
            .map_err(err("floor list index"))?;
        Ok(())
    }

    /// The floor restore's starting state (setup, not measured): `items` items at ov 0 with their
    /// payloads, written in bulk.
    async fn setup_restore(&self, items: usize) -> Result<(), String> {
        futures::stream::iter(0..items)
            .map(|k| async move {
                let data = serde_json::to_vec(&record(k as u64, 0)).map_err(text)?;
                self.put(&format!("fr/r{k:08}/v0"), Bytes::from(data)).await
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        let ids: Vec<usize> = (0..items).collect();
        for chunk in ids.chunks(1000) {
            let heads = chunk
                .iter()
                .map(|k| doc! {"_id": format!("r{k:08}"), "ov": 0_i64, "key": format!("fr/r{k:08}/v0")});
            let versions = chunk.iter().map(|k| {
                doc! {"_id": format!("r{k:08}:0"), "itemId": format!("r{k:08}"), "ov": 0_i64, "key": format!("fr/r{k:08}/v0")}
            });
            self.heads("fr")
                .insert_many(heads)
                .await
                .map_err(err("floor restore"))?;
            self.versions("fr")
                .insert_many(versions)
                .await
                .map_err(err("floor restore"))?;
        }
        Ok(())
    }

    /// A restore with each page's Mongo writes batched: the payloads are copied (GET the old
    /// one, PUT it as ov 2) many at a time, then one transaction inserts the page's versions
    /// (one `insert`) and moves its heads from ov 1 to 2 (one `update` command carrying a
    /// statement per item; a stale head makes the count fall short and the page abort).
    async fn restore_batched(&self, items: usize) -> Result<u64, String> {
        let ids: Vec<usize> = (0..items).collect();
        for page in ids.chunks(RESTORE_PAGE) {
            let copied: Vec<(usize, String)> = futures::stream::iter(page.iter().copied())
                .map(|k| async move {
                    let old = self.get(&format!("fr/r{k:08}/v0")).await?;
                    let data = String::from_utf8(old.to_vec()).map_err(text)?;
                    self.put(&format!("fr/r{k:08}/v2"), old).await?;
                    Ok::<_, String>((k, data))
                })
                .buffer_unordered(64)
                .try_collect()
                .await?;
            let now = mongodb::bson::DateTime::now();
            let mut session = self.mongo.start_session().await.map_err(text)?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
                .map_err(text)?;
            let versions = copied.iter().map(|(k, _)| {
                doc! {"_id": format!("r{k:08}:2"), "itemId": format!("r{k:08}"), "ov": 2_i64, "at": now, "key": format!("fr/r{k:08}/v2")}
            });
            self.versions("fr")
                .insert_many(versions)
                .session(&mut session)
                .await
                .map_err(err("insert versions"))?;
            let updates: Vec<Document> = copied
                .iter()
                .map(|(k, data)| {
                    let set = doc! {"ov": 2_i64, "at": now, "key": format!("fr/r{k:08}/v2"), "data": data};
                    doc! {"q": {"_id": format!("r{k:08}"), "ov": 1_i64}, "u": {"$set": set}}
                })
                .collect();
            let reply = self
                .db
                .run_command(doc! {"update": "fr_head", "updates": updates, "ordered": true})
                .session(&mut session)
                .await
                .map_err(err("update heads"))?;
            let matched = reply.get_i32("n").map_err(text)?;
            if matched as usize != page.len() {
                let _ = session.abort_transaction().await;
                return Err(format!("batched restore: {matched} of {} heads matched", page.len()));
            }
            session.commit_transaction().await.map_err(err("commit"))?;
        }
        Ok(items as u64)
    }

    /// A restore by reference at its minimum, page by page (ov 2 → 3): read the page's heads and
    /// their target versions (two `find`s), then one transaction inserts the page's versions,
    /// each naming the target's payload key, and moves the heads with a precondition per item
    /// (one `update` command): 5 Mongo commands per page and no S3 request.
    async fn restore_by_reference(&self, items: usize, from_ov: i64) -> Result<u64, String> {
        let to_ov = from_ov + 1;
        let mut after = String::new();
        let mut done = 0;
        loop {
            let heads: Vec<Document> = self
                .heads("fr")
                .find(doc! {"_id": {"$gt": &after}})
                .sort(doc! {"_id": 1})
                .limit(RESTORE_PAGE as i64)
                .batch_size(RESTORE_PAGE as u32)
                .await
                .map_err(text)?
                .try_collect()
                .await
                .map_err(text)?;
            let Some(last) = heads.last() else { break };
            after = last.get_str("_id").map_err(text)?.to_owned();
            let ids: Vec<&str> = heads.iter().filter_map(|h| h.get_str("_id").ok()).collect();
            let targets: Vec<Document> = self
                .versions("fr")
                .find(doc! {"itemId": {"$in": &ids}, "ov": 0_i64})
                .batch_size(RESTORE_PAGE as u32)
                .await
                .map_err(text)?
                .try_collect()
                .await
                .map_err(text)?;
            let now = mongodb::bson::DateTime::now();
            let mut session = self.mongo.start_session().await.map_err(text)?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
                .map_err(text)?;
            let mut versions = Vec::with_capacity(targets.len());
            let mut updates = Vec::with_capacity(targets.len());
            for t in &targets {
                let (id, key) = (t.get_str("itemId").map_err(text)?, t.get_str("key").map_err(text)?);
                versions.push(doc! {"_id": format!("{id}:{to_ov}"), "itemId": id, "ov": to_ov, "at": now, "key": key});
                let set = doc! {"ov": to_ov, "at": now, "key": key};
                updates.push(doc! {"q": {"_id": id, "ov": from_ov}, "u": {"$set": set, "$unset": {"data": ""}}});
            }
            self.versions("fr")
                .insert_many(versions)
                .session(&mut session)
                .await
                .map_err(err("insert versions"))?;
            let reply = self
                .db
                .run_command(doc! {"update": "fr_head", "updates": updates, "ordered": true})
                .session(&mut session)
                .await
                .map_err(err("update heads"))?;
            let matched = reply.get_i32("n").map_err(text)?;
            if matched as usize != heads.len() {
                let _ = session.abort_transaction().await;
                return Err(format!(
                    "restore by reference: {matched} of {} heads matched",
                    heads.len()
                ));
            }
            session.commit_transaction().await.map_err(err("commit"))?;
            done += heads.len() as u64;
        }
        if done != items as u64 {
            return Err(format!("restore by reference: {done} of {items} items"));
        }
        Ok(done)
    }

    /// Restoring one item at its minimum: read the old payload, write it as the next version.
    async fn restore_item(&self, k: usize) -> Result<(), String> {
        let old = self.get(&format!("fr/r{k:08}/v0")).await?;
        let data: Map<String, Value> = serde_json::from_slice(&old).map_err(text)?;
        let n = data.get("n").and_then(Value::as_u64).unwrap_or(0);
        self.write("fr", &format!("r{k:08}"), 1, n, 0).await
    }
}

fn parse_inline(head: &Document) -> Result<(), String> {
    let data = head.get_str("data").map_err(text)?;
    serde_json::from_str::<Map<String, Value>>(data).map_err(text)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report {
    command: String,
    clients: usize,
    budget: Budget,
    restore_items: usize,
    connections: usize,
    list_pool: u64,
    mongo_version: String,
    load_before: String,
    load_after: String,
    took: Duration,
    smoke: bool,
}

impl Report {
    fn markdown(&self, b: &Bench) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        let warmup = if self.smoke {
            "no warm-up".to_owned()
        } else {
            "each after a warm-up of a tenth of that".to_owned()
        };
        line("# Benchmarks: Chronos against the raw cost of MongoDB + S3\n".into());
        line("Generated by `benches/throughput.rs` (issue 9) with:\n".into());
        line(format!(
            "```sh\nscripts/services.sh start && source scripts/test-env.sh\n{}\n```\n",
            self.command
        ));
        line("## Setup\n".into());
        line(format!(
            "- Run {} UTC, {:.0} s in total; {} concurrent clients; {} ({warmup}).",
            jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M"),
            self.took.as_secs_f64(),
            self.clients,
            self.budget.describe(),
        ));
        line(format!("- Machine: {}.", machine()));
        line(format!(
            "- Load average (1/5/15 min) before the run: {}; after: {}. This is a **noisy shared box**: other \
             people's builds and tests use the same cores (and the same mongod) during the run, so absolute figures \
             move by tens of percent from run to run. The ratios — floor and Chronos measured back to back in the \
             same run — are the figures to read.",
            load3(&self.load_before),
            load3(&self.load_after),
        ));
        line(format!(
            "- Services of `scripts/services.sh` on loopback: MongoDB {} as a one-node replica set (WiredTiger cache \
             0.25 GB, driver defaults: pool of 10 connections), SeaweedFS `weed mini` as the S3 server. Writes use \
             write concern majority (journaled) in Chronos and in the floor alike. The benchmark process (clients, \
             engine, HTTP server) shares the cores with both.",
            self.mongo_version
        ));
        line(format!(
            "- Records are ~1 KiB JSON objects (kept inline in the head). Each client writes only its own \
             {POOL_PER_CLIENT} items (no contention); reads pick items at random from the pool of {}; list pages \
             filter on an indexed `status` ({STATUSES} values over {} items, {LIST_LIMIT} per page); the restore \
             covers {} items, each created and then updated, restored to before the updates.",
            self.clients * POOL_PER_CLIENT,
            self.list_pool,
            self.restore_items
        ));
        line(
            "- **Raw floor**: the same workload done directly with the `mongodb` and `aws-sdk-s3` crates with the \
             fewest calls that could still be correct. A write is one S3 PUT, then one transaction that inserts a \
             version document (`_id` = `id:ov`, so one writer wins each ov) and upserts the head at the expected ov: \
             3 Mongo commands. A hot read is one `findOne`; getVersion a `findOne` on the version plus an S3 GET; \
             list one `find` on an index of the same shape as Chronos's. Enrich is compared with the update floor. \
             The restore has three floors: *per-item copy* (per item what a copying restore must do: GET the old \
             payload, write it as a new version, 16 in flight), *batched copy* (the same copies, each 500-item \
             page's Mongo writes in one transaction) and *by reference*, the one Chronos is compared with: per \
             500-item page, one `find` of the heads, one `find` of the target versions and one transaction of an \
             `insert` of the page's versions (naming the targets' payload keys) and an `update` command moving the \
             heads with a per-item ov precondition; no S3 request (measured in two halves around the Chronos \
             restores). Each floor is measured in two halves, just before and \
             just after the Chronos paths of its workload, and the halves are added up, so load drift does not \
             favour whichever side runs first."
                .into(),
        );
        line(
            "- Mongo commands are counted with the driver's command monitoring and connection-pool waits with its \
             CMAP events; S3 requests with a counting `PayloadStore` decorator (the floor times its own). Peak RSS \
             is the process's VmHWM during each workload (reset before it)."
                .into(),
        );
        line(format!(
            "- **Memory under many connections**: the real `chronos serve` binary runs as a child process (on the \
             benchmark's MongoDB database and buckets, and again on its embedded default), so its RSS is its own; \
             this process opens {} keep-alive HTTP/1.1 connections to it, sends one request on each, then keeps \
             every connection busy with getLatest requests (one at a time per connection) for the workload's \
             budget. Its peak RSS is the child's VmHWM over that (reset first); the rows' other columns are the \
             client's view. The child's Mongo and S3 requests are not counted.\n",
            self.connections
        ));

        line("## Results\n".into());
        line(
            "| workload | path | ops/s | × floor | p50 ms | p95 ms | p99 ms | Mongo cmds/op | S3 req/op | peak RSS MiB | errors |"
                .into(),
        );
        line("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|".into());
        for r in &b.rows {
            let ratio = b.ratio(r).map_or("—".into(), |x| format!("**{x:.2}**"));
            let ms = |v: f64| if r.has_latency { format!("{v:.2}") } else { "—".into() };
            let unit = if matches!(
                r.workload,
                Workload::Restore | Workload::RestoreBatched | Workload::RestoreByRef
            ) {
                " items/s"
            } else {
                ""
            };
            line(format!(
                "| {} | {} | {:.0}{unit} | {ratio} | {} | {} | {} | {} | {} | {:.0} | {} |",
                r.workload.label(),
                r.via.label(),
                r.ops_per_s,
                ms(r.p50),
                ms(r.p95),
                ms(r.p99),
                r.mongo_per_op().map_or("—".into(), fmt_count),
                r.s3.map_or("—".into(), |x| fmt_count(x.0)),
                r.rss_mib,
                r.errors,
            ));
        }
        line(format!(
            "\nPeak RSS of the whole run: {:.0} MiB.\n",
            b.peak_rss_kib as f64 / 1024.0
        ));

        line("### Where the time goes\n".into());
        line(format!(
            "Per operation, in ms: Mongo commands sent (and the summed round trip of each kind), waiting for a \
             pooled connection, S3 requests; *rest* = mean latency − those three: CPU in the client, the engine and \
             the HTTP layer, plus scheduling on the saturated cores. The restore rows are **per {RESTORE_PAGE}-item \
             page** (per-item figures are too small to read) and have no latency of their own.\n"
        ));
        line(
            "| workload | path | what | Mongo commands per op (round trip) | Mongo | pool wait | S3 | mean | rest |"
                .into(),
        );
        line("|---|---|---|---|--:|--:|--:|--:|--:|".into());
        for r in &b.rows {
            let Some(breakdown) = &r.mongo else {
                continue;
            };
            let per_page = matches!(
                r.workload,
                Workload::Restore | Workload::RestoreBatched | Workload::RestoreByRef
            );
            let scale = if per_page { RESTORE_PAGE as f64 } else { 1.0 };
            let (mongo_ms, s3_ms) = (r.mongo_ms() * scale, r.s3.map_or(0.0, |x| x.1) * scale);
            let (mean, rest) = if r.has_latency {
                let rest = r.mean - mongo_ms - r.pool_ms - s3_ms;
                (format!("{:.1}", r.mean), format!("{rest:.1}"))
            } else {
                ("—".into(), "—".into())
            };
            line(format!(
                "| {} | {} | {} | {} | {mongo_ms:.1} | {:.1} | {s3_ms:.1} | {mean} | {rest} |",
                r.workload.label(),
                r.via.label(),
                r.workload.what(r.via),
                fmt_breakdown(breakdown, scale),
                r.pool_ms * scale,
            ));
        }
        line(String::new());

        line("### Where the CPU goes\n".into());
        line(
            "CPU time (user + system, from `/proc/<pid>/stat`) per operation, in ms, of mongod, of the S3 server \
             and of this process (clients, engine, HTTP server), while the workload ran: on a machine with 2 \
             cores shared by all three, what one path spends is what the others can't have.\n"
                .into(),
        );
        line("| workload | path | mongod | S3 server | this process | all three |\n|---|---|--:|--:|--:|--:|".into());
        for r in &b.rows {
            let Some([mongod, s3, me]) = r.cpu_ms else { continue };
            line(format!(
                "| {} | {} | {mongod:.2} | {s3:.2} | {me:.2} | {:.2} |",
                r.workload.label(),
                r.via.label(),
                mongod + s3 + me
            ));
        }
        line(String::new());

        line("## Targets\n".into());
        if self.smoke {
            line("Smoke run: far too short to judge targets; the verdicts below mean nothing.\n".into());
        }
        line("| target | measured | verdict |\n|---|---|---|".into());
        for (target, measured, met) in targets(b) {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "reported",
            };
            line(format!("| {target} | {measured} | {verdict} |"));
        }
        line(String::new());
        s
    }
}

/// (target, measured, met?) for each bar of issue 9.
fn targets(b: &Bench) -> Vec<(String, String, Option<bool>)> {
    let mut t = Vec::new();
    let engine_and_http = |w: Workload| {
        let r = b.find(w, Via::Engine)?;
        let ratio = b.ratio(r)?;
        let http = b.find(w, Via::Http).and_then(|h| b.ratio(h));
        let http = http.map_or(String::new(), |h| format!("; HTTP {h:.2}×"));
        Some((ratio, format!("engine {:.0}/s = {ratio:.2}×{http}", r.ops_per_s)))
    };
    for (w, target) in [
        (Workload::Create, "create ≥ 0.8× the per-op floor"),
        (Workload::Update, "update ≥ 0.8× the per-op floor"),
        (Workload::GetLatest, "getLatest ≥ 0.8× raw findOne (HTTP beside)"),
    ] {
        if let Some((ratio, measured)) = engine_and_http(w) {
            t.push((target.into(), measured, Some(ratio >= 0.8)));
        }
    }
    let writes: Vec<(&str, f64)> = [Workload::Create, Workload::Update]
        .iter()
        .filter_map(|&w| Some((w.label(), b.find(w, Via::Engine)?.mongo_per_op()?)))
        .collect();
    if !writes.is_empty() {
        let most = writes.iter().map(|w| w.1).fold(0.0, f64::max);
        let measured = writes
            .iter()
            .map(|(w, n)| format!("{w} {}", fmt_count(*n)))
            .collect::<Vec<_>>()
            .join(", ");
        t.push((
            format!("≤ 3 Mongo commands per write, {} clients (group commit)", b.clients),
            format!("{measured} (the per-op floor: 3)"),
            Some(most <= 3.0 + 1e-9),
        ));
    }
    if let Some((create, update)) = b.lone {
        t.push((
            "≤ 3 Mongo commands per write made alone (nothing to group with)".into(),
            format!(
                "create {}, update {} (cv `$inc`, head, version, commit)",
                fmt_count(create),
                fmt_count(update)
            ),
            Some(create.max(update) <= 3.0 + 1e-9),
        ));
    }
    if let Some(put) = b.find(Workload::PutOnly, Via::Floor) {
        for w in [Workload::Create, Workload::Update] {
            let Some(r) = b.find(w, Via::Engine) else { continue };
            let ratio = r.ops_per_s / put.ops_per_s.max(f64::MIN_POSITIVE);
            let http = b
                .find(w, Via::Http)
                .map_or(String::new(), |h| format!("; HTTP {:.2}×", h.ops_per_s / put.ops_per_s));
            t.push((
                format!("goal: {} ≥ 0.9× S3 PUT alone", w.label()),
                format!(
                    "engine {:.0}/s = {ratio:.2}× the {:.0} PUTs/s{http}",
                    r.ops_per_s, put.ops_per_s
                ),
                Some(ratio >= 0.9),
            ));
        }
    }
    if let Some(r) = b.find(Workload::Restore, Via::Engine) {
        let ratio = b
            .ratio(r)
            .map_or(String::new(), |x| format!(" = {x:.2}× the by-reference floor"));
        let floors: Vec<String> = [
            (Workload::Restore, "per-item copy"),
            (Workload::RestoreBatched, "batched copy"),
        ]
        .iter()
        .filter_map(|&(w, what)| Some(format!("{what} {:.0}", b.find(w, Via::Floor)?.ops_per_s)))
        .collect();
        let http = b
            .find(Workload::Restore, Via::Http)
            .map_or(String::new(), |h| format!("; HTTP {:.0} items/s", h.ops_per_s));
        t.push((
            "restoreCollection ≥ 5000 items/s".into(),
            format!(
                "engine {:.0} items/s{ratio}{http}; floors that copy payloads: {} items/s",
                r.ops_per_s,
                floors.join(", ")
            ),
            Some(r.ops_per_s >= 5000.0),
        ));
    }
    for (via, conns, mem) in &b.served {
        let mib = |kib: u64| kib as f64 / 1024.0;
        t.push((
            format!(
                "engine RSS ≤ 100 MiB with {conns} open HTTP connections ({})",
                via.label()
            ),
            format!(
                "peak {:.0} MiB (idle before connecting {:.0} MiB; all {conns} open {:.0} MiB)",
                mib(mem.peak_kib),
                mib(mem.idle_kib),
                mib(mem.open_kib)
            ),
            (*conns >= 1000).then_some(mem.peak_kib <= 100 * 1024),
        ));
    }
    t.push((
        "peak RSS of the benchmark process".into(),
        format!(
            "{:.0} MiB for the whole run (load generator, in-process HTTP server and engines)",
            b.peak_rss_kib as f64 / 1024.0
        ),
        None,
    ));
    let mut embedded: Vec<String> = [Workload::Create, Workload::Update, Workload::GetLatest]
        .iter()
        .filter_map(|&w| {
            let r = b.find(w, Via::Embedded)?;
            Some(format!("{} {:.0}/s (p99 {:.1} ms)", w.label(), r.ops_per_s, r.p99))
        })
        .collect();
    if let Some(r) = b.find(Workload::Restore, Via::Embedded) {
        embedded.push(format!("restoreCollection {:.0} items/s", r.ops_per_s));
    }
    if !embedded.is_empty() {
        t.push(("embedded default (SQLite + files)".into(), embedded.join(", "), None));
    }
    t
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".to_owned(), |kb| format!("{:.1}", kb / 1024.0 / 1024.0));
    format!("`nproc` = {cpus} ({model}), {mem_gib} GiB memory, Linux")
}

fn load3(loadavg: &str) -> String {
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" / ")
}

/// Write the report, keeping any hand-written analysis after [`ANALYSIS_MARKER`] in the old file.
fn write_out(out: &Path, markdown: &str) -> Result<(), String> {
    let kept = std::fs::read_to_string(out)
        .ok()
        .and_then(|old| old.find(ANALYSIS_MARKER).map(|i| old[i..].to_owned()))
        .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n"));
    std::fs::write(out, format!("{markdown}{kept}")).map_err(err(&out.display().to_string()))
}
