//! `chronos hold set|release|show DB COLLECTION ID`: an item's legal hold, over the HTTP API.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::{Server, Target};
use super::print::Output;
use chronos::error::Result;

#[derive(Args)]
pub struct HoldArgs {
    #[command(subcommand)]
    action: HoldAction,
}

#[derive(Subcommand)]
pub enum HoldAction {
    /// Put a legal hold on the item: retention skips it, erasing it is refused (409 `held`).
    Set {
        #[command(flatten)]
        target: Target,
        id: String,
        /// Why the item must be kept (a case number, a ticket).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Release the item's legal hold.
    Release {
        #[command(flatten)]
        target: Target,
        id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Whether the item is held, and why.
    Show {
        #[command(flatten)]
        target: Target,
        id: String,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn run(args: HoldArgs) -> Result<()> {
    let (state, output) = match args.action {
        HoldAction::Set {
            target,
            id,
            reason,
            server,
        } => (
            server
                .client()?
                .set_hold(&target.db, &target.collection, &id, &reason)
                .await?,
            server.output,
        ),
        HoldAction::Release { target, id, server } => (
            server
                .client()?
                .release_hold(&target.db, &target.collection, &id)
                .await?,
            server.output,
        ),
        HoldAction::Show { target, id, server } => (
            server.client()?.hold(&target.db, &target.collection, &id).await?,
            server.output,
        ),
    };
    print(output, &state);
    Ok(())
}

fn print(output: Output, state: &Value) {
    if output == Output::Json {
        println!("{state}");
        return;
    }
    let held = state.get("held").and_then(Value::as_bool).unwrap_or(false);
    match state.get("reason").and_then(Value::as_str) {
        Some(reason) if held => println!("held: {reason}"),
        _ => println!("not held"),
    }
}
