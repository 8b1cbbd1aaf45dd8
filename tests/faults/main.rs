//! The fault campaign (issue #6, item 4): real `chronos serve` processes on loopback, under load,
//! while faults are injected; then every item's full history is checked.
//!
//! ```text
//! cargo test --test faults                                  # short forms of every scenario (CI)
//! cargo test --test faults -- --full --scenario all         # the full forms (docs/reliability.md)
//! cargo test --test faults -- --scenario b --duration 30    # one scenario, custom length
//! ```
//!
//! Scenarios: (a) two engines, 32 writers over 100 hot items; (b) the same with `kill -9` of an
//! engine every 5 s, plus scrub; (c) the S3 server unreachable for 30 s (a fault proxy between
//! engines and S3); (d) a private mongod killed and restarted; (e) bad input on every route;
//! (f) tenant isolation; (g) `kill -9` of `chronos erase` midway, finished by a restarted engine.
//! `--pack-writes off|together|always` sets the engines' `engine.packWrites` (default `auto`:
//! packing on S3); scripts/test.sh runs the short forms once more with `off`.
//! Needs the services of `scripts/services.sh start` (the `CHRONOS_TEST_*` variables); fails
//! loudly without them. Options: `--writers N`, `--items N`,
//! `--report FILE` (append the result tables as Markdown), `--keep-logs`.

mod bad;
mod load;
mod procs;
mod proxy;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Errors in the harness itself (a service missing, a process that won't start).
pub type Fail = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Args {
    pub scenarios: Vec<char>,
    pub full: bool,
    pub duration: Option<Duration>,
    pub writers: usize,
    pub items: usize,
    pub report: Option<PathBuf>,
    pub keep_logs: bool,
    pub command: String,
}

/// `--pack-writes MODE`: the engines' `engine.packWrites` (default `auto`), for every scenario's
/// configuration file. Process-wide because every scenario writes its configuration the same way.
pub static PACK_WRITES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        scenarios: Vec::new(),
        full: false,
        duration: None,
        writers: 32,
        items: 100,
        report: None,
        keep_logs: false,
        command: String::new(),
    };
    let mut filters = Vec::new();
    let mut it = std::env::args().skip(1);
    let mut shown = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--scenario" | "-s" => {
                let v = value("--scenario")?;
                shown.push(format!("--scenario {v}"));
                for part in v.split(',') {
                    match part {
                        "all" => args.scenarios.extend(['a', 'b', 'c', 'd', 'e', 'f', 'g']),
                        s if s.len() == 1 && ('a'..='g').contains(&s.chars().next().unwrap_or(' ')) => {
                            args.scenarios.extend(s.chars())
                        }
                        other => return Err(format!("unknown scenario `{other}` (a-g or all)")),
                    }
                }
            }
            "--full" => {
                args.full = true;
                shown.push(a.clone());
            }
            "--short" => {
                args.full = false;
                shown.push(a.clone());
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs: u64 = v.parse().map_err(|_| format!("--duration: not seconds: {v}"))?;
                args.duration = Some(Duration::from_secs(secs));
                shown.push(format!("--duration {v}"));
            }
            "--writers" => {
                let v = value("--writers")?;
                args.writers = v.parse().map_err(|_| format!("--writers: {v}"))?;
                shown.push(format!("--writers {v}"));
            }
            "--items" => {
                let v = value("--items")?;
                args.items = v.parse().map_err(|_| format!("--items: {v}"))?;
                shown.push(format!("--items {v}"));
            }
            "--report" => args.report = Some(PathBuf::from(value("--report")?)),
            "--keep-logs" => args.keep_logs = true,
            "--pack-writes" => {
                let v = value("--pack-writes")?;
                if !matches!(v.as_str(), "off" | "together" | "always") {
                    return Err(format!("--pack-writes: off, together or always, not `{v}`"));
                }
                shown.push(format!("--pack-writes {v}"));
                let _ = PACK_WRITES.set(v);
            }
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("main.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return Ok(None);
            }
            // What `cargo test` passes to every test binary: libtest flags are ignored…
            flag if flag.starts_with('-') => {
                if matches!(flag, "--test-threads" | "--skip" | "--format" | "--color" | "-Z") {
                    it.next();
                }
            }
            // …and a name filter selects this binary only when it names it.
            filter => filters.push(filter.to_owned()),
        }
    }
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "faults".contains(f.as_str()) || f.starts_with("fault"))
    {
        return Ok(None);
    }
    if args.scenarios.is_empty() {
        args.scenarios = vec!['a', 'b', 'c', 'd', 'e', 'f', 'g'];
    }
    args.scenarios.dedup();
    args.command = format!("cargo test --test faults -- {}", shown.join(" "))
        .trim_end()
        .to_owned();
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    chronos::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(scenarios::run_all(&args));
    let mut markdown = String::new();
    let mut failed = false;
    for o in &outcomes {
        markdown.push_str(&o.markdown());
        markdown.push('\n');
        failed |= !o.passed();
    }
    println!("\n{markdown}");
    if let Some(path) = &args.report {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(markdown.as_bytes()));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            failed = true;
        }
    }
    if failed {
        eprintln!(
            "FAILED: {}",
            outcomes
                .iter()
                .filter(|o| !o.passed())
                .map(|o| o.title.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        ExitCode::FAILURE
    } else {
        println!("all scenarios passed");
        ExitCode::SUCCESS
    }
}
