//! `chronos erase`: erase an item, or every item a filter finds in any of its versions, across
//! all versions — straight from the configuration, like `scrub` and `rebuild` (no server needed,
//! so an erasure can be run, and a cut-short one finished with `--resume`, during an outage of
//! the data service). The HTTP routes do the same through a running server.

use clap::Args;
use comfy_table::Table;

use super::open::DatabaseArgs;
use super::print::Output;
use chronos::engine::{CollectionName, EraseRequest, EraseTarget, Erasure, ItemId};
use chronos::error::Result;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "filter", "resume"])))]
pub struct EraseArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// The collection (not needed with --resume).
    #[arg(long, required_unless_present = "resume")]
    collection: Option<String>,
    /// Erase this item.
    #[arg(long)]
    id: Option<String>,
    /// Erase every item with a version whose indexed metadata matches this filter (JSON).
    #[arg(long)]
    filter: Option<String>,
    /// Why (recorded in the erasure record).
    #[arg(long, required_unless_present = "resume")]
    reason: Option<String>,
    /// Who asks (recorded; default: the user running the command).
    #[arg(long)]
    actor: Option<String>,
    /// Finish every erasure a process left started, instead of starting one.
    #[arg(long)]
    resume: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub async fn run(args: EraseArgs) -> Result<()> {
    let (engine, _) = args.database.open().await?;
    let done: Vec<Erasure> = if args.resume {
        engine.resume_erasures().await?
    } else {
        let collection: CollectionName = args.collection.as_deref().unwrap_or_default().parse()?;
        let target = match (&args.id, &args.filter) {
            (Some(id), _) => EraseTarget::Item(id.parse::<ItemId>()?),
            (None, Some(f)) => EraseTarget::Matching(
                serde_json::from_str(f)
                    .map_err(|e| chronos::engine::Error::validation("filter", format!("not JSON: {e}")))?,
            ),
            (None, None) => unreachable_target()?,
        };
        let request = EraseRequest {
            target,
            actor: args.actor.clone().or_else(|| std::env::var("USER").ok()),
            reason: args.reason.clone().unwrap_or_default(),
        };
        vec![engine.erase(&collection, &request).await?]
    };
    engine.flush_ledger().await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
        Output::Table => print_table(&done),
    }
    Ok(())
}

/// Clap's argument group makes one of --id, --filter and --resume required.
fn unreachable_target() -> Result<EraseTarget> {
    Err(chronos::engine::Error::validation("erase", "give --id, --filter or --resume").into())
}

fn print_table(done: &[Erasure]) {
    let mut table = Table::new();
    table.set_header([
        "ERASURE",
        "COLLECTION",
        "STATUS",
        "ITEMS",
        "VERSIONS",
        "OBJECTS",
        "SHA-256",
    ]);
    for e in done {
        table.add_row([
            e.id.clone(),
            e.collection.to_string(),
            format!("{:?}", e.status).to_lowercase(),
            e.items.len().to_string(),
            e.versions.to_string(),
            e.objects.to_string(),
            e.sha256.clone(),
        ]);
    }
    println!("{table}");
    if done.is_empty() {
        println!("no erasure was left started");
    }
}
