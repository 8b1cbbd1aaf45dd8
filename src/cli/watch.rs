//! `chronos watch DB COLLECTION`: follow a collection's change feed, one line per change, until
//! interrupted, `--limit` changes were printed, or whoever reads the output has gone. A dropped
//! connection is resumed from the last cv printed, so nothing is printed twice and nothing is
//! missed; `--after` starts after a cv you already processed.

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
    /// Stop after this many changes (default: follow until interrupted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
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
        limit,
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
    // A closed pipe (`| head`) ends the watch quietly: found when a line can't be written, or,
    // while no change comes, by looking at the pipe (as `tail -f` does), else the watch would
    // wait for the next change before it noticed.
    let gone = reader_gone();
    tokio::pin!(gone);
    for _ in 0..limit.unwrap_or(u64::MAX) {
        let change = tokio::select! {
            change = feed.next() => change?,
            () = &mut gone => return Ok(()),
        };
        let line = line(output, &change);
        if writeln!(std::io::stdout(), "{line}").is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Resolves once stdout is a pipe or terminal whose other end has closed; never otherwise.
#[cfg(unix)]
async fn reader_gone() {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        tick.tick().await;
        let out = std::io::stdout();
        // No events asked: poll reports only POLLERR (a pipe's reader closed it) or POLLHUP
        // (a terminal hung up), which it always reports.
        let mut fds = [PollFd::new(&out, PollFlags::empty())];
        if rustix::event::poll(&mut fds, Some(&now)).is_ok()
            && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
        {
            return;
        }
    }
}

#[cfg(not(unix))]
async fn reader_gone() {
    std::future::pending().await
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
