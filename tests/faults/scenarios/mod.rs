//! The seven scenarios, each bounded in time, and their result tables.

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

mod bad_input;
mod erasure;
mod outages;
mod tenants;
mod writers;

use bad_input::scenario_e;
use erasure::scenario_g;
use outages::{scenario_c, scenario_d};
use tenants::scenario_f;
use writers::{scenario_a, scenario_b};

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
    if let Some(mode) = crate::PACK_WRITES.get() {
        yaml.push_str(&format!("engine:\n  packWrites: {mode}\n"));
    }
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
            'g' => ("(g) kill -9 during an erasure", scenario_g(args).await),
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

/// Keep the run directory (logs) when asked or when the scenario failed.
fn finish(dir: &Path, args: &Args, o: &Outcome) {
    if o.passed() && !args.keep_logs {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("[faults] logs of {}: {}", o.title, dir.display());
    }
}

/// Count the payload keys of a bucket (paged): `<db>/<collection>/…`, not the ledger, counter
/// resets and erasure records beside them (`<db>/chronos-…/`), which an engine writes on its own
/// schedule — the ledger's segment of a write lands up to a second after it.
async fn count_keys(store: &S3PayloadStore) -> Result<u64, Fail> {
    let mut n = 0u64;
    let mut after: Option<String> = None;
    loop {
        let keys = store.list("", after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else { break };
        n += keys
            .iter()
            .filter(|k| !k.split('/').nth(1).is_some_and(|part| part.starts_with("chronos-")))
            .count() as u64;
        after = Some(last);
    }
    Ok(n)
}
