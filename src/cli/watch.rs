//! `chronos watch DB COLLECTION`: follow a collection's change feed, one line per change, until
//! interrupted. A dropped connection is resumed from the last cv printed, so nothing is printed
//! twice and nothing is missed; `--after` starts after a cv you already processed.

use std::io::Write;

use clap::Args;

use super::client::{Server, Target};
use super::print::Output;
use chronos::client::changes::{Change, ChangesParams};
use chronos::error::Result;

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    target: Target,
    /// Start after this cv (default: from the beginning of what retention keeps).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// JSON filter on indexed properties, as for `list`.
    #[arg(long)]
    filter: Option<String>,
    /// Comma-separated operations to keep (CREATE,UPDATE,DELETE,RESTORE).
    #[arg(long)]
    ops: Option<String>,
    /// Include each version's data.
    #[arg(long)]
    data: bool,
    #[command(flatten)]
    server: Server,
}

pub async fn watch(args: WatchArgs) -> Result<()> {
    let WatchArgs {
        target,
        after,
        filter,
        ops,
        data,
        server,
    } = args;
    let client = server.client()?;
    let params = ChangesParams {
        after,
        filter,
        ops,
        include_data: data,
        ..Default::default()
    };
    let mut feed = client.watch(target.db(), target.collection(), params);
    let output = server.output();
    loop {
        let change = feed.next().await?;
        let line = line(output, &change);
        // A closed pipe (`| head`) ends the watch quietly.
        if writeln!(std::io::stdout(), "{line}").is_err() {
            return Ok(());
        }
    }
}

/// One change as a line: JSON for scripts, `cv op id ov at` for people.
fn line(output: Output, c: &Change) -> String {
    if output == Output::Json {
        let mut v = serde_json::json!({
            "cv": c.cv, "id": c.id, "ov": c.ov, "op": c.op, "at": c.at,
            "actor": c.actor, "reason": c.reason, "deleted": c.deleted, "meta": c.meta,
        });
        if let Some(data) = &c.data {
            v["data"] = data.clone();
        }
        return v.to_string();
    }
    format!("{}\t{}\t{}\tov {}\t{}", c.cv, c.op, c.id, c.ov, c.at)
}
