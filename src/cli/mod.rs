//! The `chronos` command line: its flags and subcommands, one module per kind of work — the data
//! service (`serve`, `check-config`), the client subcommands over the HTTP API, and the
//! maintenance of one database straight from its configuration (`scrub`, `rebuild`, `verify`,
//! `erase`).

pub mod client;
pub mod erase;
pub mod history;
pub mod hold;
mod open;
mod print;
pub mod scrub;
pub mod serve;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "chronos",
    version,
    about = "Versioned, cost-first persistence for JSON records"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing syntax, e.g. `info` or `chronos=debug`).
    #[arg(long, global = true, env = "CHRONOS_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, env = "CHRONOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP/JSON data service. Without --config: embedded storage in --data-dir.
    Serve(serve::ServeArgs),
    /// Check a configuration file; with --connect also reach its backends.
    CheckConfig {
        path: PathBuf,
        #[arg(long)]
        connect: bool,
    },
    /// Run the Kubernetes operator (the controllers of the chronos.dev resources).
    Operator(chronos::operator::OperatorArgs),
    /// Print the operator's CustomResourceDefinitions as YAML.
    Crds,
    /// Report orphaned payloads (payloads without a version); --delete removes them.
    Scrub(scrub::ScrubArgs),
    /// Rebuild a database's metadata (heads, versions, sequences, counters) from its buckets.
    Rebuild(history::RebuildArgs),
    /// Check a database's history against its buckets: missing, altered, orphaned, dangling.
    Verify(history::VerifyArgs),
    /// An item's legal hold: set (with a reason), release, or show (admin token).
    Hold(hold::HoldArgs),
    /// Erase an item, or every item a filter finds, across all its versions (GDPR erasure);
    /// --resume finishes erasures a process left started.
    Erase(erase::EraseArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Follow a collection's changes live, one line per change (resumes by itself on disconnect).
    Watch(watch::WatchArgs),
}

/// Log to stderr, as text or JSON lines, filtered by `--log`.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
