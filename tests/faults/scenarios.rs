//! The six scenarios, each bounded in time, and their result tables.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chronos::engine::PayloadStore;
use chronos::engine::backends::{S3Connection, S3PayloadStore};
use serde_json::Value;

use crate::bad::{self, Raw};
use crate::load::{self, Findings, Ledger, Target};
use crate::procs::{EngineProc, Mongod};
use crate::proxy::FaultProxy;
use crate::{Args, Fail};

/// One scenario's result: the rows of its table, and what went wrong.
pub struct Outcome {
    pub title: String,
    pub rows: Vec<(String, String)>,
    pub problems: Vec<String>,
    pub command: String,
}

impl Outcome {
    fn new(title: &str, args: &Args, letter: char) -> Self {
        let form = if args.full { " --full" } else { "" };
        let mut command = format!("cargo test --test faults -- --scenario {letter}{form}");
        if let Some(d) = args.duration {
            command.push_str(&format!(" --duration {}", d.as_secs()));
        }
        Outcome {
            title: title.to_owned(),
            rows: Vec::new(),
            problems: Vec::new(),
            command,
        }
    }

    fn row(&mut self, k: &str, v: impl ToString) {
        self.rows.push((k.to_owned(), v.to_string()));
    }

    fn must_be_zero(&mut self, k: &str, n: u64) {
        self.row(k, n);
        if n != 0 {
            self.problems.push(format!("{k}: {n} (must be 0)"));
        }
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n| | |\n|---|---|\n", self.title);
        for (k, v) in &self.rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push_str(&format!(
            "| result | {} |\n| command | `{}` |\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.command
        ));
        for p in &self.problems {
            s.push_str(&format!("\n- problem: {p}"));
        }
        if !self.problems.is_empty() {
            s.push('\n');
        }
        s
    }

    fn findings(&mut self, f: &Findings) {
        self.row("versions checked (every one read back)", f.versions);
        self.must_be_zero("writes lost", f.lost);
        self.must_be_zero("duplicates", f.duplicates);
        self.must_be_zero("ov gaps", f.gaps);
        self.must_be_zero("versions unreadable", f.unreadable);
        self.must_be_zero("data not matching its checksum", f.corrupt);
        self.must_be_zero("heads not at the last version", f.head_mismatch);
        self.must_be_zero("phantom versions (never sent)", f.phantoms);
        for e in &f.examples {
            self.problems.push(e.clone());
        }
    }

    fn ledger(&mut self, l: &Ledger, secs: f64, writers: usize, items: usize, engines: usize) {
        self.row(
            "load held",
            format!(
                "{writers} writers, {items} hot items, {engines} engine process(es), {secs:.0} s: {} attempts ({:.0}/s)",
                l.attempts,
                l.attempts as f64 / secs.max(0.001)
            ),
        );
        self.row("writes acknowledged (2xx)", l.acks.len());
        self.row(
            "writes refused (clean failures, never acknowledged)",
            format!("{} {}", l.refused_total(), paren(&l.refused_summary())),
        );
        self.row(
            "retries with the same Idempotency-Key (after no answer or 503)",
            format!(
                "{} ({} answered as replays of a write already made)",
                l.retries, l.replayed
            ),
        );
        self.row(
            "writes without an answer after all retries (outcome unknown)",
            l.unanswered,
        );
        if l.crashed_writers > 0 {
            self.problems.push(format!(
                "{} writer tasks crashed: the load was smaller than stated",
                l.crashed_writers
            ));
        }
        let unclean: u64 = l
            .refused
            .iter()
            .filter(|(s, _)| **s >= 500 && **s != 503)
            .map(|(_, n)| n)
            .sum();
        if unclean > 0 {
            self.problems
                .push(format!("{unclean} refusals were not clean (5xx other than 503)"));
        }
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!("({s})") }
}

/// The shared services, from `scripts/test-env.sh`.
struct Services {
    mongo_uri: String,
    s3: S3Connection,
}

fn services() -> Result<Services, Fail> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            format!(
                "{name} is not set: the fault campaign needs the real services. Run `scripts/test.sh`, or \
                 `scripts/services.sh start` and `source scripts/test-env.sh`"
            )
        })
    };
    Ok(Services {
        mongo_uri: var("CHRONOS_TEST_MONGO_URI")?,
        s3: S3Connection {
            endpoint: var("CHRONOS_TEST_S3_ENDPOINT")?,
            region: var("CHRONOS_TEST_S3_REGION")?,
            access_key: var("CHRONOS_TEST_S3_ACCESS_KEY")?,
            secret_key: var("CHRONOS_TEST_S3_SECRET_KEY")?,
            force_path_style: true,
        },
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// A run directory (config, tokens, logs) under the target directory.
fn run_dir(scenario: char) -> Result<PathBuf, Fail> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("faults")
        .join(unique(&scenario.to_string()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const ADMIN_TOKEN: &str = "faults-admin-token-0123456789";

/// Write config + tokens; create the buckets. Returns (config path, json bucket).
async fn write_config(
    dir: &Path,
    mongo_uri: &str,
    s3: &S3Connection,
    s3_endpoint: &str,
    tenants: &[&str],
    tokens: &str,
) -> Result<(PathBuf, String), Fail> {
    let name = unique("faults");
    let bucket = |role: &str| format!("{name}-{role}");
    for role in ["json", "content", "backups"] {
        S3PayloadStore::new(s3.client(), bucket(role))
            .ensure_bucket()
            .await
            .map_err(|e| format!("S3 server ({}): {e}", s3.endpoint))?;
    }
    let tokens_path = dir.join("tokens.yaml");
    std::fs::write(&tokens_path, tokens)?;
    let mut yaml = format!(
        "mongoUris: [\"{mongo_uri}\"]\ndbName: {db}\nspacesConns:\n  - endpoint: {s3_endpoint}\n    region: {region}\n    \
         accessKey: {ak}\n    secretKey: {sk}\n    jsonBucket: {j}\n    contentBucket: {c}\n    backupsBucket: {b}\n\
         auth:\n  tokensFile: {t}\n",
        db = name.replace('-', "_"),
        region = s3.region,
        ak = s3.access_key,
        sk = s3.secret_key,
        j = bucket("json"),
        c = bucket("content"),
        b = bucket("backups"),
        t = tokens_path.display(),
    );
    if !tenants.is_empty() {
        yaml.push_str("databaseTypes:\n  metadata:\n    tenants:\n");
        for t in tenants {
            yaml.push_str(&format!(
                "      - {{key: {t}, extIdentifier: {t}, mongo: 0, spaces: 0, dbName: {}_{t}}}\n",
                name.replace('-', "_")
            ));
        }
    }
    let path = dir.join("chronos.yaml");
    std::fs::write(&path, yaml)?;
    Ok((path, bucket("json")))
}

fn admin_tokens() -> String {
    format!("tokens:\n  - {{name: faults, token: {ADMIN_TOKEN}, databases: ['*'], scopes: [admin]}}\n")
}

fn durations(args: &Args, full: u64, short: u64) -> Duration {
    args.duration
        .unwrap_or(Duration::from_secs(if args.full { full } else { short }))
}

pub async fn run_all(args: &Args) -> Vec<Outcome> {
    let mut out = Vec::new();
    for &s in &args.scenarios {
        let started = Instant::now();
        eprintln!("[faults] scenario ({s}) starting");
        let (title, result) = match s {
            'a' => ("(a) two engines under concurrent writes", scenario_a(args).await),
            'b' => ("(b) kill -9 of an engine every 5 s", scenario_b(args).await),
            'c' => ("(c) S3 unreachable under load", scenario_c(args).await),
            'd' => ("(d) mongod restarted under load", scenario_d(args).await),
            'e' => ("(e) bad input on every route", scenario_e(args).await),
            _ => ("(f) tenant isolation", scenario_f(args).await),
        };
        let outcome = result.unwrap_or_else(|e| {
            let mut o = Outcome::new(title, args, s);
            o.problems.push(format!("the scenario could not run: {e}"));
            o
        });
        eprintln!(
            "[faults] scenario ({s}) {} in {:.0?}",
            if outcome.passed() { "passed" } else { "FAILED" },
            started.elapsed()
        );
        out.push(outcome);
    }
    out
}

/// Engines + target for the load scenarios.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    engines: Vec<EngineProc>,
    target: Target,
}

async fn setup(scenario: char, args: &Args, mongo_uri: &str, s3_endpoint: Option<&str>) -> Result<Setup, Fail> {
    let svc = services()?;
    let dir = run_dir(scenario)?;
    let endpoint = s3_endpoint.unwrap_or(&svc.s3.endpoint).to_owned();
    let (config, _) = write_config(&dir, mongo_uri, &svc.s3, &endpoint, &[], &admin_tokens()).await?;
    let mut engines = Vec::new();
    for name in ["engine-1", "engine-2"] {
        engines.push(EngineProc::start(name, &config, &dir).await?);
    }
    let target = Target {
        urls: engines.iter().map(|e| e.url.clone()).collect(),
        db: "default".into(),
        collection: "hot".into(),
        token: Some(ADMIN_TOKEN.into()),
        items: args.items,
    };
    Ok(Setup {
        dir,
        config,
        engines,
        target,
    })
}

fn all_alive(o: &mut Outcome, engines: &mut [EngineProc]) {
    for e in engines {
        if !e.alive() {
            o.problems
                .push(format!("{} is not running (see {})", e.name, e.log_path().display()));
        }
    }
}

async fn scenario_a(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(a) two engines under concurrent writes", args, 'a');
    let svc = services()?;
    let mut s = setup('a', args, &svc.mongo_uri, None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 5);
    let started = Instant::now();
    let ledger = load::run_writers(&http, &s.target, args.writers, started + d, 20).await;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row("faults injected", "none");
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

async fn scenario_b(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(b) kill -9 of an engine every 5 s", args, 'b');
    let svc = services()?;
    let mut s = setup('b', args, &svc.mongo_uri, None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 12);
    let every = if args.full {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let until = started + d;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let engines = &mut s.engines;
    let killer = async move {
        let mut kills = 0u32;
        let mut next = started + every;
        while next + Duration::from_secs(1) < until {
            tokio::time::sleep_until(next.into()).await;
            let n = engines.len();
            let e = &mut engines[kills as usize % n];
            e.kill9_and_restart().await?;
            kills += 1;
            next += every;
        }
        Ok::<u32, Fail>(kills)
    };
    let (ledger, kills) = tokio::join!(writers, killer);
    let kills = kills?;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!("{kills} × kill -9 of an engine process (every {every:?}, alternating, restarted each time)"),
    );
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    // Orphans: payloads of writes killed between their PUT and their commit. After the load no
    // write is in flight, so no grace period is needed.
    let found = scrub(&s.config, false).await?;
    o.row(
        "orphaned payloads reported by `chronos scrub`",
        format!(
            "{} (of {} payloads scanned; {} committed)",
            found["orphans"], found["scanned"], found["committed"]
        ),
    );
    if found["committed"].as_u64() != Some(f.versions) {
        o.problems.push(format!(
            "scrub counted {} committed payloads, the histories hold {} versions",
            found["committed"], f.versions
        ));
    }
    let deleted = scrub(&s.config, true).await?;
    o.row("orphans deleted by `chronos scrub --delete`", &deleted["deleted"]);
    // Deleting orphans must not touch anything committed: check everything again.
    let again = load::check(&http, &s.target, &s.target.urls[1], &ledger).await;
    if !again.clean() || again.versions != f.versions {
        o.problems
            .push(format!("after scrub --delete the histories changed: {again:?}"));
    }
    o.row(
        "re-check after scrub --delete",
        if again.clean() { "clean" } else { "NOT clean" },
    );
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

/// Run `chronos scrub` on a configuration; its JSON report.
async fn scrub(config: &Path, delete: bool) -> Result<Value, Fail> {
    let mut cmd = tokio::process::Command::new(crate::procs::chronos_bin());
    cmd.args(["scrub", "--config"])
        .arg(config)
        .args(["--grace-secs", "0", "--output", "json", "--max-listed", "20"])
        .env("CHRONOS_LOG", "warn")
        .kill_on_drop(true);
    if delete {
        cmd.arg("--delete");
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .map_err(|_| "chronos scrub took more than 300 s")??;
    if !out.status.success() {
        return Err(format!("chronos scrub failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn scenario_c(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(c) S3 unreachable under load", args, 'c');
    let svc = services()?;
    let upstream: std::net::SocketAddr = svc
        .s3
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("CHRONOS_TEST_S3_ENDPOINT is not http://host:port: {e}"))?;
    let proxy = FaultProxy::start(upstream).await?;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut s = setup('c', args, &svc.mongo_uri, Some(&endpoint)).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 9);
    let outage = if args.full {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let until = started + d.max(outage + Duration::from_secs(4));
    let down_at = started + (until - started - outage) / 2;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let fault = async {
        tokio::time::sleep_until(down_at.into()).await;
        proxy.set_down(true);
        tokio::time::sleep(outage).await;
        proxy.set_down(false);
    };
    let (mut ledger, ()) = tokio::join!(writers, fault);
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!(
            "S3 unreachable for {outage:?} (fault proxy: listener closed, connections dropped) from t={:.0?}",
            down_at - started
        ),
    );
    let queued = ledger.queued.len() as u64;
    let (landed, failed, pending) = load::settle_queued(&http, &s.target, &mut ledger, Duration::from_secs(180)).await;
    o.row("writes queued (202)", queued);
    o.row("queued writes landed after S3 returned", landed);
    o.must_be_zero("queued writes dead or cancelled", failed);
    o.must_be_zero("queued writes still pending after 180 s", pending);
    if queued == 0 {
        o.row("note", "no write was queued: every write during the outage was refused");
    }
    if let Ok(q) = http
        .get(format!("{}/v1/default/_queue", s.target.urls[0]))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        && q.status().is_success()
    {
        o.row("queue after settling", q.text().await.unwrap_or_default());
    }
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    // Writes work again without restarting anything.
    let after = load::run_writers(&http, &s.target, 4, Instant::now() + Duration::from_secs(2), 0).await;
    o.row("acknowledged in 2 s after S3 returned", after.acks.len());
    if after.acks.is_empty() {
        o.problems.push("no write succeeded after S3 came back".into());
    }
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

async fn scenario_d(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(d) mongod restarted under load", args, 'd');
    let dir = run_dir('d')?;
    let mut mongod = Mongod::start(&dir).await?;
    let mut s = setup('d', args, &mongod.uri(), None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 10);
    let started = Instant::now();
    let until = started + d;
    let restart_at = started + d / 3;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let fault = async {
        tokio::time::sleep_until(restart_at.into()).await;
        let took = mongod.kill9_and_restart().await;
        (took, Instant::now())
    };
    let (ledger, (took, back_at)) = tokio::join!(writers, fault);
    let took = took?;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!(
            "mongod (private one-node replica set) kill -9 at t={:.0?}, restarted: primary again after {took:.1?}",
            restart_at - started
        ),
    );
    let first_after = ledger.acks.iter().filter(|a| a.at > back_at).map(|a| a.at).min();
    let after = ledger.acks.iter().filter(|a| a.at > back_at).count();
    o.row("writes acknowledged after mongod was back", after);
    match first_after {
        Some(t) => o.row(
            "engine recovery (mongod primary → first acknowledged write)",
            format!("{:.1?}, no engine restart", t - back_at),
        ),
        None => o
            .problems
            .push("no write was acknowledged after mongod came back: the engines did not recover".into()),
    }
    for e in &s.engines {
        if e.restarts > 0 {
            o.problems.push(format!("{} was restarted", e.name));
        }
    }
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    drop(s);
    drop(mongod);
    // The private mongod's data is large and of no use once it is gone.
    let _ = std::fs::remove_dir_all(dir.join("mongod-data"));
    if o.passed() && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(o)
}

/// Count the keys of a bucket (paged).
async fn count_keys(store: &S3PayloadStore) -> Result<u64, Fail> {
    let mut n = 0u64;
    let mut after: Option<String> = None;
    loop {
        let keys = store.list("", after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else { break };
        n += keys.len() as u64;
        after = Some(last);
    }
    Ok(n)
}

async fn scenario_e(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(e) bad input on every route", args, 'e');
    let svc = services()?;
    let dir = run_dir('e')?;
    let (config, json_bucket) =
        write_config(&dir, &svc.mongo_uri, &svc.s3, &svc.s3.endpoint, &[], &admin_tokens()).await?;
    let mut engine = EngineProc::start("engine", &config, &dir).await?;
    let addr = bad::addr_of(&engine.url)?;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let seeded = bad::send(
        &addr,
        &Raw::new("POST", "/v1/default/bad/items?id=seed")
            .header("Authorization", auth.clone())
            .json(r#"{"a":1}"#),
    )
    .await?;
    if seeded.status != 201 {
        return Err(format!("seeding failed: {} {}", seeded.status, seeded.body).into());
    }
    let store = S3PayloadStore::new(svc.s3.client(), json_bucket);
    let keys_before = count_keys(&store).await?;
    let (_, hwm_before) = engine.memory_kib().unwrap_or((0, 0));

    // Memory is sampled throughout.
    let pid = engine.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rss) = pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    })
                {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };

    let mut cases: Vec<(String, Raw)> = Vec::new();
    let valid = |p: &str| -> Vec<u8> { p.as_bytes().to_vec() };
    // 1. Every route, each path parameter in turn replaced by each bad value.
    for (method, template, body) in bad::ROUTES {
        for (what, seg) in bad::bad_segments() {
            for place in ["{db}", "{c}", "{id}"] {
                // `system…` is reserved for collections only; ids may start with it.
                if !template.contains(place) || (what == "reserved" && place != "{c}") {
                    continue;
                }
                let (db, c, id) = match place {
                    "{db}" => (seg.clone(), valid("bad"), valid("seed")),
                    "{c}" => (valid("default"), seg.clone(), valid("seed")),
                    _ => (valid("default"), valid("bad"), seg.clone()),
                };
                // For {db}, a valid-looking key that is not served must be a 404 as well.
                let db = if place == "{db}" { db } else { valid("default") };
                let mut r = Raw::new(method, bad::fill(template, &db, &c, &id)).header("Authorization", auth.clone());
                if !body.is_empty() {
                    r = r.json(*body);
                }
                cases.push((format!("{method} {template} with {place} = {what}"), r));
            }
        }
    }
    // 2. Bodies: malformed, nested 10 000 deep, huge, of the wrong type, with unknown fields.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8 body", b"{\"a\":\"\xff\xfe\"}".to_vec()),
        ("arrays nested 10 000 deep", bad::nested(10_000, false)),
        ("objects nested 10 000 deep", bad::nested(10_000, true)),
        ("9 MB array (over the body limit)", bad::huge_array(9 << 20, false)),
        ("7 MB top-level array", bad::huge_array(7 << 20, true)),
        ("a string", b"\"x\"".to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("an empty array", b"[]".to_vec()),
        ("truncated JSON", b"{\"a\":".to_vec()),
        ("empty body", Vec::new()),
        ("trailing garbage", b"{\"a\":1} x".to_vec()),
    ];
    let body_routes: &[(&str, &str)] = &[
        ("POST", "/v1/default/bad/items?id=new1"),
        ("PUT", "/v1/default/bad/items/seed"),
        ("PATCH", "/v1/default/bad/items/seed"),
        ("POST", "/v1/default/bad/items/seed/restore"),
        ("POST", "/v1/default/bad/restore"),
        ("POST", "/v1/default/bad/prune"),
        ("POST", "/v1/admin/databases/default/buckets"),
    ];
    for (method, path) in body_routes {
        for (what, body) in &bodies {
            cases.push((
                format!("{method} {path} with {what}"),
                Raw::new(method, *path)
                    .header("Authorization", auth.clone())
                    .json(body.clone()),
            ));
        }
        cases.push((
            format!("{method} {path} as text/plain"),
            Raw::new(method, *path)
                .header("Authorization", auth.clone())
                .header("Content-Type", "text/plain")
                .json(r#"{"a":1}"#)
                .header("Content-Type", "text/plain"),
        ));
    }
    // Typed bodies with fields of the wrong type or unknown fields.
    let typed: &[(&str, &str)] = &[
        ("/v1/default/bad/items/seed/restore", r#"{"ov":"0"}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":-1}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":1.5}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":99999999999999999999}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"at":5}"#),
        (
            "/v1/default/bad/items/seed/restore",
            r#"{"ov":0,"at":"2020-01-01T00:00:00Z"}"#,
        ),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":0,"bogus":1}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":7}"#),
        // An array is not an object, even when serde could read a struct from it.
        ("/v1/default/bad/items/seed/restore", r#"[0]"#),
        ("/v1/default/bad/restore", r#"[1,null,true]"#),
        ("/v1/default/bad/prune", r#"[1]"#),
        ("/v1/default/bad/restore", r#"{"cv":"x"}"#),
        ("/v1/default/bad/restore", r#"{"cv":1,"limit":0}"#),
        ("/v1/default/bad/restore", r#"{"cv":1,"afterId":"../x"}"#),
        ("/v1/default/bad/prune", r#"{"keepLast":"x"}"#),
        ("/v1/default/bad/prune", r#"{"keepLast":0}"#),
        ("/v1/default/bad/prune", r#"{"maxAgeDays":-1}"#),
        ("/v1/default/bad/prune", r#"{}"#),
    ];
    for (path, body) in typed {
        cases.push((
            format!("POST {path} with {body}"),
            Raw::new("POST", *path)
                .header("Authorization", auth.clone())
                .json(*body),
        ));
    }
    // 3. Query parameters of the wrong type, out of range, 1 MB long, with control characters.
    let mb = "x".repeat(1 << 20);
    let deep_filter = String::from_utf8(bad::encode(&bad::nested(10_000, true))).unwrap_or_default();
    let queries: Vec<(&str, String)> = vec![
        ("GET", "/v1/default/bad/items/seed?ov=abc".into()),
        ("GET", "/v1/default/bad/items/seed?ov=-1".into()),
        ("GET", "/v1/default/bad/items/seed?ov=99999999999999999999".into()),
        ("GET", "/v1/default/bad/items/seed?ov=1&at=2020-01-01T00:00:00Z".into()),
        ("GET", "/v1/default/bad/items/seed?at=yesterday".into()),
        ("GET", "/v1/default/bad/items/seed?includeDeleted=maybe".into()),
        ("GET", "/v1/default/bad/items/seed?ttlSeconds=0&presign=true".into()),
        ("GET", "/v1/default/bad/items/seed?content=zzz".into()),
        ("GET", "/v1/default/bad/items/seed?bogus=1".into()),
        ("GET", "/v1/default/bad/items/seed?ov=%FF".into()),
        ("GET", "/v1/default/bad/items/seed/versions?limit=0".into()),
        ("GET", "/v1/default/bad/items/seed/versions?limit=100000".into()),
        ("GET", "/v1/default/bad/items/seed/versions?afterOv=x".into()),
        ("GET", "/v1/default/bad/items?limit=-1".into()),
        ("GET", "/v1/default/bad/items?sort=name".into()),
        ("GET", "/v1/default/bad/items?filter=%7Bbad".into()),
        (
            "GET",
            "/v1/default/bad/items?filter=%7B%22%24where%22%3A%221%22%7D".into(),
        ),
        (
            "GET",
            "/v1/default/bad/items?filter=%7B%22a%22%3A%7B%22%24regex%22%3A%22.*%22%7D%7D".into(),
        ),
        ("GET", "/v1/default/bad/items?filter=%5B1%5D".into()),
        ("GET", format!("/v1/default/bad/items?filter={deep_filter}")),
        ("GET", "/v1/default/bad/items?afterId=..%2F..".into()),
        ("GET", format!("/v1/default/bad/items?afterId={mb}")),
        ("GET", format!("/v1/default/bad/items?fields={}", "a,".repeat(100_000))),
        ("POST", format!("/v1/default/bad/items?id={mb}")),
        ("POST", "/v1/default/bad/items?id=a%00b".into()),
        ("POST", "/v1/default/bad/items?id=..".into()),
        ("POST", format!("/v1/default/bad/items?id=ok1&actor={mb}")),
        ("POST", "/v1/default/bad/items?id=ok2&actor=a%0Ab".into()),
        ("POST", "/v1/default/bad/items?id=ok3&reason=%00".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=x".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=-1".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=5".into()),
        ("DELETE", "/v1/default/bad/items/seed?expectedOv=9".into()),
        ("PATCH", format!("/v1/default/bad/items/seed?functionId={mb}")),
        ("PATCH", "/v1/default/bad/items/seed?functionId=".into()),
    ];
    for (method, target) in queries {
        let mut r = Raw::new(method, target.clone()).header("Authorization", auth.clone());
        if method != "GET" && method != "DELETE" {
            r = r.json(r#"{"a":2}"#);
        }
        let label: String = target.chars().take(90).collect();
        cases.push((format!("{method} {label}"), r));
    }
    // 4. Headers: bad If-Match and Idempotency-Key, huge and binary values, a 1 MB bearer token.
    let header_cases: Vec<(&str, Vec<u8>)> = vec![
        ("Idempotency-Key", b"has space".to_vec()),
        ("Idempotency-Key", b"tab\there".to_vec()),
        ("Idempotency-Key", b"\xff\xfe".to_vec()),
        ("Idempotency-Key", vec![b'k'; 256]),
        ("Idempotency-Key", vec![b'k'; 1_000_000]),
        ("If-Match", b"\"abc\"".to_vec()),
        ("If-Match", b"\"-1\"".to_vec()),
        ("If-Match", b"\"99999999999999999999\"".to_vec()),
        ("If-Match", b"\"7\"".to_vec()),
        ("If-Match", b"\"\xff\"".to_vec()),
        ("If-Match", vec![b'1'; 100_000]),
    ];
    for (name, value) in header_cases {
        cases.push((
            format!("PUT item with {name}: {} bytes", value.len()),
            Raw::new("PUT", "/v1/default/bad/items/seed")
                .header("Authorization", auth.clone())
                .header(name, value)
                .json(r#"{"a":3}"#),
        ));
    }
    cases.push((
        "1 MB bearer token".into(),
        Raw::new("GET", "/v1/default/bad/items/seed").header("Authorization", format!("Bearer {mb}")),
    ));
    cases.push((
        "no token".into(),
        Raw::new("PUT", "/v1/default/bad/items/seed").json(r#"{"a":4}"#),
    ));

    let total = cases.len();
    let mut answered_4xx = 0u64;
    let mut by_status: std::collections::BTreeMap<u16, u64> = Default::default();
    for (what, req) in &cases {
        match bad::send(&addr, req).await {
            Ok(a) => {
                *by_status.entry(a.status).or_default() += 1;
                if (400..500).contains(&a.status) {
                    answered_4xx += 1;
                } else {
                    o.problems.push(format!(
                        "{what}: {} {}",
                        a.status,
                        a.body.chars().take(200).collect::<String>()
                    ));
                }
            }
            Err(e) => o.problems.push(format!("{what}: no answer ({e})")),
        }
        if !engine.alive() {
            o.problems.push(format!("the engine died on: {what}"));
            break;
        }
    }
    // 5. Big bad bodies in parallel: memory must stay bounded.
    let parallel = 16;
    let big: Vec<_> = (0..parallel)
        .map(|i| {
            let addr = addr.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let body = if i % 4 == 3 {
                    bad::nested(10_000, false)
                } else {
                    bad::huge_array(7 << 20, true)
                };
                let r = Raw::new("PUT", "/v1/default/bad/items/seed")
                    .header("Authorization", auth)
                    .json(body);
                bad::send(&addr, &r).await.map(|a| a.status)
            })
        })
        .collect();
    for t in big {
        match t.await {
            Ok(Ok(s)) if (400..500).contains(&s) => answered_4xx += 1,
            other => o.problems.push(format!("parallel big body: {other:?}")),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_sampled = sampler.await.unwrap_or(0);
    let (rss_after, hwm) = engine.memory_kib().unwrap_or((0, 0));

    o.row(
        "load held",
        format!(
            "{} bad requests ({} routes × 3 path parameters × {} bad values, bodies, queries, headers) + {parallel} parallel 7 MB bodies",
            total + parallel,
            bad::ROUTES.len(),
            bad::bad_segments().len()
        ),
    );
    o.row("faults injected", "malformed input only");
    o.row("answered 4xx", format!("{answered_4xx} of {}", total + parallel));
    o.row(
        "answers by status",
        by_status
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let keys_after = count_keys(&store).await?;
    o.must_be_zero("payloads written", keys_after.saturating_sub(keys_before));
    let history = bad::send(
        &addr,
        &Raw::new("GET", "/v1/default/bad/items/seed/versions").header("Authorization", auth.clone()),
    )
    .await?;
    let versions = serde_json::from_str::<Value>(&history.body)
        .ok()
        .and_then(|v| v["versions"].as_array().map(Vec::len))
        .unwrap_or(0) as u64;
    o.must_be_zero("versions written to the seeded item", versions.saturating_sub(1));
    let list = bad::send(
        &addr,
        &Raw::new("GET", "/v1/default/bad/items?includeDeleted=true").header("Authorization", auth.clone()),
    )
    .await?;
    let items = serde_json::from_str::<Value>(&list.body)
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len))
        .unwrap_or(0) as u64;
    o.must_be_zero("items created", items.saturating_sub(1));
    o.row(
        "engine memory (RSS)",
        format!(
            "peak {} MiB (before: {} MiB peak), after: {} MiB",
            hwm.max(peak_sampled) / 1024,
            hwm_before / 1024,
            rss_after / 1024
        ),
    );
    // A parsed 7 MB array of small numbers takes about 140 MiB; large bodies are parsed 4 at a time.
    const PEAK_LIMIT_MIB: u64 = 768;
    if hwm.max(peak_sampled) / 1024 > PEAK_LIMIT_MIB {
        o.problems.push(format!("peak memory above {PEAK_LIMIT_MIB} MiB"));
    }
    if !engine.alive() {
        o.problems.push("the engine is not running".into());
    }
    finish(&dir, args, &o);
    engine.kill9().await;
    Ok(o)
}

/// The scope a route needs, as the README's table states it (written out here, not taken from
/// the server, so the campaign can disagree with it).
fn needed_scope(method: &str, template: &str) -> &'static str {
    let admin = template.starts_with("/v1/admin/")
        || template.ends_with("/prune")
        || template.ends_with("/counters/reset")
        || template.ends_with("/{c}/process")
        || template.ends_with("/retry")
        || (template.contains("/_operations/") && method == "DELETE");
    match (admin, method) {
        (true, _) => "admin",
        (false, "GET") => "read",
        (false, _) => "write",
    }
}

fn scope_covers(held: &str, needed: &str) -> bool {
    held == "admin" || held == needed || (held == "write" && needed == "read")
}

/// Two tenants on ONE MongoDB backend and the SAME three buckets; a read, a write and an admin
/// token for each. Every route with every token on the other tenant → 403; on its own tenant →
/// refused exactly when the scope falls short; the cluster-wide routes → 403 for all six; and no
/// answer ever carries the other tenant's data, also after both prune the same item id (the
/// retention manifests live in the shared backups bucket).
async fn scenario_f(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(f) tenant isolation", args, 'f');
    let svc = services()?;
    let dir = run_dir('f')?;
    let roles: Vec<(&str, &str, String)> = ["t1", "t2"]
        .into_iter()
        .flat_map(|db| {
            ["read", "write", "admin"].map(move |scope| (db, scope, format!("faults-{db}-{scope}-0123456789")))
        })
        .collect();
    let mut tokens = String::from("tokens:\n");
    for (db, scope, token) in &roles {
        let scopes = if *scope == "write" {
            "[read, write]"
        } else {
            &format!("[{scope}]")
        };
        tokens.push_str(&format!(
            "  - {{name: {db}-{scope}, token: {token}, databases: [{db}], scopes: {scopes}}}\n"
        ));
    }
    let (config, _) = write_config(&dir, &svc.mongo_uri, &svc.s3, &svc.s3.endpoint, &["t1", "t2"], &tokens).await?;
    let mut engine = EngineProc::start("engine", &config, &dir).await?;
    let addr = bad::addr_of(&engine.url)?;
    let token_of = |db: &str, scope: &str| format!("faults-{db}-{scope}-0123456789");
    let bearer = |t: &str| format!("Bearer {t}");
    let marker = |db: &str| format!("secret-of-{db}-only");
    let call = |method: &str, target: String, token: &str, body: &str| {
        let mut r = Raw::new(method, target).header("Authorization", bearer(token));
        if !body.is_empty() {
            r = r.json(body);
        }
        let addr = addr.clone();
        async move { bad::send(&addr, &r).await }
    };
    // Each tenant: `seed` (one version, never touched by the other) and `shared-id`, written
    // three times and pruned to its last version — the same (collection, id, ov range) in both,
    // in the same buckets.
    for db in ["t1", "t2"] {
        let (w, a) = (token_of(db, "write"), token_of(db, "admin"));
        let data = format!(r#"{{"secret":"{}"}}"#, marker(db));
        let seeded = call("POST", format!("/v1/{db}/iso/items?id=seed"), &w, &data).await?;
        if seeded.status != 201 {
            return Err(format!("seeding {db}: {} {}", seeded.status, seeded.body).into());
        }
        for ov in 0..3 {
            let (method, target) = match ov {
                0 => ("POST", format!("/v1/{db}/iso/items?id=shared-id")),
                _ => ("PUT", format!("/v1/{db}/iso/items/shared-id")),
            };
            let r = call(method, target, &w, &data).await?;
            if r.status >= 300 {
                return Err(format!("writing {db}/shared-id: {} {}", r.status, r.body).into());
            }
        }
        let pruned = call("POST", format!("/v1/{db}/iso/prune"), &a, r#"{"keepLast":1}"#).await?;
        if pruned.status != 200 {
            return Err(format!("pruning {db}: {} {}", pruned.status, pruned.body).into());
        }
    }
    let mut leaks = 0u64;
    let mut total = 0u64;
    let mut other_refused = 0u64;
    let mut own_as_expected = 0u64;
    let mut own_total = 0u64;
    let mut by_status: std::collections::BTreeMap<u16, u64> = Default::default();
    // Pruned history of the same id, read by each tenant: its own data, never the other's.
    for (db, other) in [("t1", "t2"), ("t2", "t1")] {
        for ov in 0..3 {
            let r = call(
                "GET",
                format!("/v1/{db}/iso/items/shared-id?ov={ov}"),
                &token_of(db, "read"),
                "",
            )
            .await?;
            total += 1;
            *by_status.entry(r.status).or_default() += 1;
            if r.body.contains(&marker(other)) {
                leaks += 1;
                o.problems
                    .push(format!("{db} read {other}'s data at shared-id?ov={ov}"));
            } else if r.status != 200 || !r.body.contains(&marker(db)) {
                o.problems.push(format!(
                    "{db} lost its own pruned shared-id?ov={ov}: {} {}",
                    r.status, r.body
                ));
            }
        }
    }
    // Every route, every role, both tenants.
    for (me, scope, token) in &roles {
        let other = if *me == "t1" { "t2" } else { "t1" };
        for (method, template, body) in bad::ROUTES {
            total += 1;
            let target = bad::fill(template, other.as_bytes(), b"iso", b"seed");
            match call(method, String::from_utf8_lossy(&target).into_owned(), token, body).await {
                Ok(a) => {
                    *by_status.entry(a.status).or_default() += 1;
                    if a.body.contains(&marker(other)) {
                        leaks += 1;
                    }
                    if a.status == 403 {
                        other_refused += 1;
                    } else {
                        o.problems.push(format!(
                            "{me}'s {scope} token: {method} {template} on {other}: {} {}",
                            a.status,
                            a.body.chars().take(160).collect::<String>()
                        ));
                    }
                }
                Err(e) => o.problems.push(format!("{method} {template}: no answer ({e})")),
            }
            // The same route on its own tenant, on an item of its own (`mine`).
            total += 1;
            own_total += 1;
            let target = bad::fill(template, me.as_bytes(), b"own", b"mine");
            let allowed = scope_covers(scope, needed_scope(method, template));
            match call(method, String::from_utf8_lossy(&target).into_owned(), token, body).await {
                Ok(a) => {
                    *by_status.entry(a.status).or_default() += 1;
                    if a.body.contains(&marker(other)) {
                        leaks += 1;
                    }
                    let refused = a.status == 401 || a.status == 403;
                    if refused != allowed && a.status < 500 {
                        own_as_expected += 1;
                    } else {
                        o.problems.push(format!(
                            "{me}'s {scope} token: {method} {template} on {me}: {} (expected {}) {}",
                            a.status,
                            if allowed { "allowed" } else { "403" },
                            a.body.chars().take(160).collect::<String>()
                        ));
                    }
                }
                Err(e) => o.problems.push(format!("{method} {template}: no answer ({e})")),
            }
        }
        // Routes that act on every database: no tenant's token, not even its admin's.
        for (method, target) in [("GET", "/v1/admin/health"), ("POST", "/v1/admin/shutdown")] {
            total += 1;
            match call(method, target.to_owned(), token, "").await {
                Ok(a) if a.status == 403 => other_refused += 1,
                Ok(a) => o
                    .problems
                    .push(format!("{me}'s {scope} token: {method} {target}: {}", a.status)),
                Err(e) => o.problems.push(format!("{method} {target}: no answer ({e})")),
            }
        }
    }
    let cross = roles.len() * (bad::ROUTES.len() + 2);
    // Path tricks aimed at t2 with t1's write token: never a success, never a server error.
    let tricks: &[&[u8]] = &[
        b"/v1/t1/../t2/iso/items/seed",
        b"/v1/t1/%2E%2E/t2/iso/items/seed",
        b"/v1/t1/iso/../../t2/iso/items/seed",
        b"//v1/t2/iso/items/seed",
        b"/v1//t2/iso/items/seed",
        b"/v1/./t2/iso/items/seed",
        b"/v1/t2%2F/iso/items/seed",
        b"/v1/%74%32/iso/items/seed",
        b"/v1/T2/iso/items/seed",
        b"/V1/t2/iso/items/seed",
        b"/v1/t2/iso/items/seed?db=t1",
        b"/v1/t2/iso/items/seed#/v1/t1",
        b"http://127.0.0.1/v1/t2/iso/items/seed",
        b"/v1/t1%00/../t2/iso/items/seed",
        b"/v1/t2;t1/iso/items/seed",
        b"/v1/admin/databases/t1/../t2/validate",
        b"/v1/admin/databases/t2%2F..%2Ft1/validate",
    ];
    let t1_write = token_of("t1", "write");
    let mut tricks_refused = 0u64;
    for t in tricks {
        for method in ["GET", "PUT", "DELETE"] {
            let mut r = Raw::new(method, t.to_vec()).header("Authorization", bearer(&t1_write));
            if method == "PUT" {
                r = r.json(r#"{"secret":"overwritten"}"#);
            }
            total += 1;
            match bad::send(&addr, &r).await {
                Ok(a) if (400..500).contains(&a.status) && !a.body.contains(&marker("t2")) => {
                    tricks_refused += 1;
                    *by_status.entry(a.status).or_default() += 1;
                }
                Ok(a) => o.problems.push(format!(
                    "{method} {}: {} {}",
                    String::from_utf8_lossy(t),
                    a.status,
                    a.body.chars().take(160).collect::<String>()
                )),
                Err(e) => o
                    .problems
                    .push(format!("{method} {}: no answer ({e})", String::from_utf8_lossy(t))),
            }
        }
    }
    // Nothing of either tenant's `seed` changed through the other's tokens.
    let mut foreign_versions = 0u64;
    for db in ["t1", "t2"] {
        let h = call(
            "GET",
            format!("/v1/{db}/iso/items/seed/versions"),
            &token_of(db, "read"),
            "",
        )
        .await?;
        let n = serde_json::from_str::<Value>(&h.body)
            .ok()
            .and_then(|v| v["versions"].as_array().map(Vec::len))
            .unwrap_or(0) as u64;
        foreign_versions += n.saturating_sub(1);
    }
    o.row(
        "load held",
        format!(
            "{total} requests: 2 tenants × 3 roles (read, write, admin) × {} routes on the own and the other tenant, \
             + 2 cluster-wide routes, + {} path tricks × 3 methods, + pruned history read back; both tenants on one \
             MongoDB and the same three buckets",
            bad::ROUTES.len(),
            tricks.len()
        ),
    );
    o.row(
        "faults injected",
        "valid tokens of the other tenant; the same item id pruned by both",
    );
    o.row(
        "403 on the other tenant's routes and on cluster-wide routes",
        format!("{other_refused} of {cross}"),
    );
    o.row(
        "own-tenant routes allowed or refused as the scope says",
        format!("{own_as_expected} of {own_total}"),
    );
    o.row(
        "path tricks refused (4xx)",
        format!("{tricks_refused} of {}", tricks.len() * 3),
    );
    o.row(
        "answers by status",
        by_status
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    o.must_be_zero("answers carrying the other tenant's data", leaks);
    o.must_be_zero("versions written through the other tenant's tokens", foreign_versions);
    if !engine.alive() {
        o.problems.push("the engine is not running".into());
    }
    finish(&dir, args, &o);
    engine.kill9().await;
    Ok(o)
}

/// Keep the run directory (logs) when asked or when the scenario failed.
fn finish(dir: &Path, args: &Args, o: &Outcome) {
    if o.passed() && !args.keep_logs {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("[faults] logs of {}: {}", o.title, dir.display());
    }
}
