//! `chronos scrub`: report (and with `--delete` remove) orphaned payloads of one database.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::Table;

use super::open::DatabaseArgs;
use super::print::Output;
use chronos::engine::{CollectionName, ScrubOptions, ScrubReport};
use chronos::error::Result;

#[derive(Args)]
pub struct ScrubArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Only this collection.
    #[arg(long)]
    collection: Option<String>,
    /// Payloads whose write began less than this many seconds ago are left alone (they may
    /// belong to writes in flight); at least the engines' orphan grace.
    #[arg(long, default_value_t = chronos::engine::settings::ORPHAN_GRACE.as_secs())]
    grace_secs: u64,
    /// Delete the orphans found.
    #[arg(long)]
    delete: bool,
    /// List at most this many orphans (all are counted).
    #[arg(long, default_value_t = 1000)]
    max_listed: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(args: ScrubArgs) -> Result<()> {
    let (engine, settings) = args.database.open().await?;
    // Writes commit within their engine's grace of their write id, not within scrub's: a
    // shorter grace is only safe while no engine writes (the fault campaign uses 0).
    if Duration::from_secs(args.grace_secs) < settings.orphan_grace {
        eprintln!(
            "warning: --grace-secs {} is below the engines' orphan grace ({} s): payloads of writes in flight may be taken for orphans; use it only while no engine writes",
            args.grace_secs,
            settings.orphan_grace.as_secs()
        );
    }
    let opts = ScrubOptions {
        collection: args
            .collection
            .as_deref()
            .map(str::parse::<CollectionName>)
            .transpose()?,
        grace: Duration::from_secs(args.grace_secs),
        delete: args.delete,
        max_listed: args.max_listed,
        ..ScrubOptions::default()
    };
    let shown = Progress::new();
    let report = engine.scrub_reporting(&opts, &|so_far| shown.show(so_far)).await?;
    shown.bar.finish_and_clear();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report, &opts),
    }
    Ok(())
}

/// How far the listing got: a spinner on a terminal; elsewhere (logs, a job's output) a line at
/// most every [`Progress::EVERY`], so a scrub of millions of keys shows it is alive without
/// flooding the log.
struct Progress {
    bar: indicatif::ProgressBar,
    last_line: Mutex<Instant>,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Progress {
            bar,
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, r: &ScrubReport) {
        let message = format!(
            "scrub: {} keys scanned: {} committed, {} pruned, {} young, {} orphans",
            r.scanned, r.committed, r.pruned, r.young, r.orphans
        );
        if !self.bar.is_hidden() {
            self.bar.set_message(message);
            self.bar.tick();
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= Self::EVERY {
            *last = Instant::now();
            eprintln!("{message}");
        }
    }
}

fn print_table(r: &ScrubReport, opts: &ScrubOptions) {
    let mut table = Table::new();
    table.set_header([
        "SCANNED",
        "COMMITTED",
        "PRUNED",
        "YOUNG",
        "ORPHANS",
        "DELETED",
        "UNRECOGNIZED",
    ]);
    table.add_row(
        [
            r.scanned,
            r.committed,
            r.pruned,
            r.young,
            r.orphans,
            r.deleted,
            r.unrecognized_count,
        ]
        .map(|n| n.to_string()),
    );
    println!("{table}");
    let p = &r.packs;
    if p.packs > 0 {
        println!(
            "packs: {} examined, {} young, {} named by no version, {} compacted, {} mostly dead but kept \
             for a retention manifest, {} deleted",
            p.packs, p.young, p.dead, p.compacted, p.pinned, p.deleted
        );
    }
    if !r.orphan_keys.is_empty() {
        let mut table = Table::new();
        table.set_header(["ORPHAN KEY", "AGE (S)", "DELETED"]);
        for o in &r.orphan_keys {
            table.add_row([o.key.clone(), o.age_secs.to_string(), o.deleted.to_string()]);
        }
        println!("{table}");
        if r.orphans > r.orphan_keys.len() as u64 {
            println!("({} more not listed)", r.orphans - r.orphan_keys.len() as u64);
        }
    }
    for key in &r.unrecognized {
        println!("not a payload key (left alone): {key}");
    }
    if r.orphans > 0 && !opts.delete {
        println!("run again with --delete to remove the orphans");
    }
}
