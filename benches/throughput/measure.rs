//! Driving a workload and turning what it did into a row: `drive` runs N clients against a
//! budget, `Bench` brackets each measurement with counter readings (Mongo commands, S3
//! requests, CPU, peak RSS) and keeps the rows the report is made of.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chronos::engine::store::decorators::RequestCounter;

use crate::args::Budget;
use crate::probes::{Counts, Cpu, Monitor, peak_rss_kib, reset_peak_rss};
use crate::workloads::{Ctx, RUNS, Tick, Via, Workload};

pub struct Measured {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Per-operation latency in microseconds, sorted; empty when not observable per operation.
    pub latencies: Vec<u32>,
}

impl Measured {
    pub fn merge(&mut self, other: Measured) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.iter().map(|&l| l as f64).sum::<f64>() / self.latencies.len() as f64 / 1000.0
    }
}

/// Run `op` from `clients` concurrent tasks until the budget is spent.
pub async fn drive<F, Fut>(clients: usize, budget: Budget, op: F) -> Measured
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
pub async fn setup<F, Fut>(clients: usize, count: u64, op: F) -> Result<Duration, String>
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

pub struct Row {
    pub workload: Workload,
    pub via: Via,
    pub ops_per_s: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub has_latency: bool,
    /// Mongo commands per operation by name: (commands, ms spent in them) per operation.
    pub mongo: Option<BTreeMap<String, (f64, f64)>>,
    /// Time per operation spent waiting for a pooled Mongo connection (ms).
    pub pool_ms: f64,
    /// S3 requests per operation and the time spent in them (ms per operation).
    pub s3: Option<(f64, f64)>,
    pub rss_mib: f64,
    pub errors: u64,
    /// CPU ms per operation of mongod, the S3 server and this process (paths counted here).
    pub cpu_ms: Option<[f64; 3]>,
}

impl Row {
    pub fn mongo_per_op(&self) -> Option<f64> {
        self.mongo.as_ref().map(|m| m.values().fold(0.0, |a, v| a + v.0))
    }

    /// CPU ms per operation of mongod, the S3 server and this process together.
    pub fn cpu_per_op(&self) -> Option<f64> {
        self.cpu_ms.map(|c| c.iter().sum()).filter(|&ms: &f64| ms > 0.0)
    }

    pub fn mongo_ms(&self) -> f64 {
        // `fold` from +0.0: an empty `sum` of floats is -0.0, which would print as "-0.0".
        self.mongo
            .as_ref()
            .map_or(0.0, |m| m.values().fold(0.0, |a, v| a + v.1))
    }
}

pub fn fmt_count(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

/// What the counters moved by during a measurement (or several, added up).
#[derive(Default)]
pub struct Delta {
    pub mongo: BTreeMap<String, (u64, Duration)>,
    pub pool_wait: Duration,
    pub s3: (u64, Duration),
    pub cpu: Cpu,
    pub rss_kib: u64,
}

impl Delta {
    pub fn between(before: &Counts, after: &Counts, rss_kib: u64) -> Delta {
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

    pub fn add(&mut self, other: Delta) {
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
pub struct Bench {
    pub clients: usize,
    pub budget: Budget,
    pub smoke: bool,
    /// Mongo commands are counted (`--no-command-monitor` not given).
    pub commands_counted: bool,
    pub monitor: Arc<Monitor>,
    pub s3_counter: Arc<RequestCounter>,
    pub rows: Vec<Row>,
    pub peak_rss_kib: u64,
    pub errors: Vec<String>,
    /// The memory workload's readings of each `chronos serve` child, with its connection count.
    pub served: Vec<(Via, usize, ServedMemory)>,
    /// Mongo commands per create and per update made one at a time (nothing to group with).
    pub lone: Option<(f64, f64)>,
    /// p50 ms of a create made alone, packing off and on (`packing.rs`).
    pub lone_latency: Option<(f64, f64)>,
    /// The change feed's readings (`feed.rs`).
    pub feeds: Vec<crate::feed::FeedReading>,
}

impl Bench {
    /// Measure one workload along several paths. The floor is measured in two halves, before and
    /// after the Chronos paths, and added up: on a machine whose load drifts, bracketing keeps
    /// the drift from favouring whichever side runs first.
    pub async fn measure(&mut self, ctx: &Arc<Ctx>, w: Workload, paths: &[Via]) {
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
    pub async fn measure_one(&mut self, ctx: &Arc<Ctx>, w: Workload, via: Via, budget: Budget) -> (Measured, Delta) {
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

    pub fn counts(&self) -> Counts {
        let (mongo, pool_wait) = self.monitor.snapshot();
        Counts {
            mongo,
            pool_wait,
            s3: self.s3_counter.snapshot(),
            cpu: Cpu::now(),
        }
    }

    /// Begin measuring: counter readings and a fresh peak-RSS window.
    pub fn start_window(&mut self) -> Counts {
        self.note_rss();
        reset_peak_rss();
        self.counts()
    }

    pub fn end_window(&mut self, before: &Counts) -> Delta {
        let rss = self.note_rss();
        Delta::between(before, &self.counts(), rss)
    }

    /// Turn a measurement and what the counters moved by into a row.
    pub fn push(&mut self, workload: Workload, via: Via, m: Measured, delta: Delta) {
        let ops = m.ops.max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / ops;
        // The embedded engine's stores are SQLite and files, and a child process's requests are
        // its own: nothing to count there.
        let counted = via.counted();
        let mongo = (counted && self.commands_counted).then(|| {
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
    pub fn note_rss(&mut self) -> u64 {
        let kib = peak_rss_kib().unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(kib);
        kib
    }

    pub fn find(&self, workload: Workload, via: Via) -> Option<&Row> {
        self.rows.iter().find(|r| r.workload == workload && r.via == via)
    }

    /// A Chronos row's throughput over its floor's, measured in this run.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        if !matches!(row.via, Via::Engine | Via::Packed | Via::Http | Via::HttpLean) {
            return None;
        }
        let floor = self.find(row.workload.floor(), Via::Floor)?;
        (floor.ops_per_s > 0.0).then(|| row.ops_per_s / floor.ops_per_s)
    }
}

/// What the memory workload saw of the child.
pub struct ServedMemory {
    /// After start-up and seeding, before any benchmark connection.
    pub idle_kib: u64,
    /// With every connection open, each after one request.
    pub open_kib: u64,
    /// The peak (VmHWM) over the whole workload.
    pub peak_kib: u64,
}

/// A restore measured as a whole: items per second. Per-item latency is not observable from
/// outside a page, so there are no percentiles.
pub fn whole(result: Result<u64, String>, started: Instant) -> Measured {
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
