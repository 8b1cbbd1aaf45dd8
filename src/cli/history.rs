//! `chronos rebuild` and `chronos verify`: the metadata store rebuilt from the buckets, and the
//! history checked against them (see `engine::rebuild`).

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use comfy_table::Table;

use super::open::DatabaseArgs;
use super::print::Output;
use chronos::engine::rebuild::verify::VerifyReport;
use chronos::engine::rebuild::{RebuildOptions, RebuildProgress, RebuildReport};
use chronos::error::{Error, Result};

#[derive(Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Write into a metadata store that already holds data.
    #[arg(long)]
    force: bool,
    /// Also take objects above their item's last committed version that extend its history
    /// (writes of the last second before a crash — or writes that never committed).
    #[arg(long)]
    accept_unconfirmed: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Objects whose write began less than this many seconds ago are not called orphans.
    #[arg(long, default_value_t = chronos::engine::settings::ORPHAN_GRACE.as_secs())]
    grace_secs: u64,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn rebuild(args: RebuildArgs) -> Result<()> {
    let (engine, _) = args.database.open().await?;
    let options = RebuildOptions {
        force: args.force,
        accept_unconfirmed: args.accept_unconfirmed,
    };
    let bar = progress_bar();
    let report = engine.rebuild(&options, &|p: &RebuildProgress| show(&bar, p)).await?;
    bar.finish_and_clear();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_rebuild(&report),
    }
    Ok(())
}

pub async fn verify(args: VerifyArgs) -> Result<()> {
    let (engine, _) = args.database.open().await?;
    let bar = progress_bar();
    let report = engine
        .verify_reporting(Duration::from_secs(args.grace_secs), &|done, r| {
            show_verify(&bar, done, r)
        })
        .await?;
    bar.finish_and_clear();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_verify(&report),
    }
    if report.intact() {
        Ok(())
    } else {
        Err(Error::Usage(
            "the history does not match its buckets (see the findings above)".into(),
        ))
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} collections  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Progress on a terminal as a bar; elsewhere (logs, a test watching) one line per collection.
fn show(bar: &indicatif::ProgressBar, p: &RebuildProgress) {
    bar.set_length(p.total_collections);
    bar.set_position(p.done_collections);
    bar.set_message(format!("{} versions  {}", p.versions, p.collection));
    if bar.is_hidden() {
        eprintln!(
            "rebuild: {}/{} collections, {} versions{}",
            p.done_collections,
            p.total_collections,
            p.versions,
            if p.collection.is_empty() {
                String::new()
            } else {
                format!(", next: {}", p.collection)
            }
        );
    }
}

/// As [`show`], for a verify: one line per collection checked when not on a terminal.
fn show_verify(bar: &indicatif::ProgressBar, done: u64, r: &VerifyReport) {
    bar.set_length(r.collections);
    bar.set_position(done);
    let findings: usize = r.by_kind().iter().map(|(_, f)| f.len()).sum();
    bar.set_message(format!("{} versions, {findings} findings", r.versions));
    if bar.is_hidden() {
        eprintln!(
            "verify: {done}/{} collections, {} versions, {} objects, {findings} findings",
            r.collections, r.versions, r.objects
        );
    }
}

fn print_rebuild(r: &RebuildReport) {
    let mut table = Table::new();
    table.set_header([
        "COLLECTIONS",
        "VERSIONS",
        "HEADS",
        "PRUNED",
        "RECOVERED",
        "UNCONFIRMED",
        "VERSIONS/S",
    ]);
    table.add_row([
        r.collections.to_string(),
        r.versions.to_string(),
        r.heads.to_string(),
        r.pruned.to_string(),
        r.recovered_from_objects.to_string(),
        r.unconfirmed.to_string(),
        format!("{:.0}", r.versions_per_second),
    ]);
    println!("{table}");
    for key in &r.unconfirmed_keys {
        println!("unconfirmed (left out; --accept-unconfirmed takes it): {key}");
    }
    for key in &r.lost {
        println!("lost (a later version names it, but it is nowhere): {key}");
    }
}

fn print_verify(r: &VerifyReport) {
    let mut table = Table::new();
    table.set_header([
        "VERSIONS",
        "OBJECTS",
        "SEGMENTS",
        "MISSING",
        "ALTERED",
        "ORPHANED",
        "DANGLING",
        "UNCONFIRMED",
    ]);
    table.add_row(
        [
            r.versions,
            r.objects,
            r.segments,
            r.missing.len() as u64,
            r.altered.len() as u64,
            r.orphaned.len() as u64,
            r.dangling.len() as u64,
            r.unconfirmed.len() as u64,
        ]
        .map(|n| n.to_string()),
    );
    println!("{table}");
    for (kind, findings) in r.by_kind() {
        for f in findings {
            println!("{kind}: {} ({})", f.key, f.detail);
        }
    }
}
