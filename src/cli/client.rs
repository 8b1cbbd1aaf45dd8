//! The client subcommands over [`chronos::client`]: `put`, `get`, `delete`, `list`, `enrich`,
//! `restore`, `queue`, `history` — one function each (`watch` is in `watch.rs`, `hold` in `hold.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::print::{self, Output};
use chronos::client::{Client, RestoreCounts, RestorePoint, Version, WriteOptions};
use chronos::error::{Error, Result};

#[derive(Args)]
pub struct Server {
    /// The Chronos server.
    #[arg(long, global = true, env = "CHRONOS_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "CHRONOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(super) output: Output,
}

impl Server {
    pub(super) fn client(&self) -> Result<Client> {
        Ok(Client::new(&self.server, self.token.clone())?)
    }

    pub(super) fn output(&self) -> Output {
        self.output
    }
}

/// Where an item lives.
#[derive(Args)]
pub struct Target {
    /// Database (tenant) key.
    pub(super) db: String,
    pub(super) collection: String,
}

impl Target {
    pub(super) fn db(&self) -> &str {
        &self.db
    }

    pub(super) fn collection(&self) -> &str {
        &self.collection
    }
}

/// Who writes, why, and under which conditions (`put` and `delete`).
#[derive(Args)]
pub struct WriteArgs {
    /// Only write if the item is at this ov.
    #[arg(long)]
    expected_ov: Option<u64>,
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    /// Retrying with the same key returns the first outcome and never writes twice.
    #[arg(long)]
    idempotency_key: Option<String>,
}

impl From<WriteArgs> for WriteOptions {
    fn from(w: WriteArgs) -> Self {
        WriteOptions {
            expected_ov: w.expected_ov,
            actor: w.actor,
            reason: w.reason,
            idempotency_key: w.idempotency_key,
        }
    }
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create an item (no --id or --create with --id), or replace an existing item's data (--id).
    Put(PutArgs),
    /// Read an item: latest, --ov N or --at TIME.
    Get(GetArgs),
    /// Logically delete an item.
    Delete(DeleteArgs),
    /// List items, optionally filtered on indexed properties (all pages unless --limit).
    List(ListArgs),
    /// Enrich an item: deep-merge one patch (or an array of patches) into its data.
    Enrich(EnrichArgs),
    /// Restore one item (--id with --ov or --at) or a whole collection (--cv or --at), append-only.
    Restore(RestoreArgs),
    /// The retry queue of a database: writes accepted (202) while a backend was failing.
    Queue(QueueArgs),
    /// An item's versions, oldest first (all pages).
    History(HistoryArgs),
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    target: Target,
    /// Item id: updates that item (or creates it with --create).
    #[arg(long)]
    id: Option<String>,
    /// Create with the given --id instead of updating.
    #[arg(long)]
    create: bool,
    /// The data: inline JSON, or @FILE, or @- for stdin.
    data: String,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    target: Target,
    id: String,
    #[arg(long, conflicts_with = "at")]
    ov: Option<u64>,
    /// RFC 3339 time.
    #[arg(long)]
    at: Option<String>,
    #[arg(long)]
    include_deleted: bool,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    target: Target,
    id: String,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// JSON filter, e.g. '{"status": "open", "n": {"$gte": 10}}'.
    #[arg(long)]
    filter: Option<String>,
    /// Stop after this many items.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    include_deleted: bool,
    /// List as of this time (RFC 3339).
    #[arg(long)]
    at: Option<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct EnrichArgs {
    #[command(flatten)]
    target: Target,
    id: String,
    /// The patch: a JSON object or array of objects; inline, @FILE or @- for stdin.
    patch: String,
    /// Recorded in _system.functionIds.
    #[arg(long)]
    function_id: Option<String>,
    #[arg(long)]
    expected_ov: Option<u64>,
    /// Retrying with the same key returns the first outcome and never writes twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    /// Restore only this item.
    #[arg(long)]
    id: Option<String>,
    /// The item version to bring back (with --id).
    #[arg(long, requires = "id", conflicts_with_all = ["at", "cv"])]
    ov: Option<u64>,
    /// The collection version to go back to (without --id).
    #[arg(long, conflicts_with_all = ["at", "id"])]
    cv: Option<u64>,
    /// The time to go back to (RFC 3339).
    #[arg(long)]
    at: Option<String>,
    /// Only count what would change.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted collection restore after this item id.
    #[arg(long, conflicts_with = "id")]
    resume_after: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct QueueArgs {
    /// Database (tenant) key.
    db: String,
    #[command(subcommand)]
    action: QueueAction,
    #[command(flatten)]
    server: Server,
}

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    target: Target,
    id: String,
    #[command(flatten)]
    server: Server,
}

#[derive(Subcommand)]
pub enum QueueAction {
    /// How many queued writes are pending, running, or dead letters.
    Stats,
    /// List queued writes in one state, oldest first.
    List {
        #[arg(long, default_value = "pending", value_parser = ["pending", "running", "succeeded", "dead", "cancelled"])]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One queued write: status, attempts, last error, result.
    Show { operation_id: String },
    /// Put a dead letter back in the queue.
    Retry { operation_id: String },
    /// Cancel a pending queued write or a dead letter.
    Cancel { operation_id: String },
}

/// Run one client subcommand.
pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Put(args) => put(args).await,
        ClientCommand::Get(args) => get(args).await,
        ClientCommand::Delete(args) => delete(args).await,
        ClientCommand::List(args) => list(args).await,
        ClientCommand::Enrich(args) => enrich(args).await,
        ClientCommand::Restore(args) => restore(args).await,
        ClientCommand::Queue(args) => queue(args).await,
        ClientCommand::History(args) => history(args).await,
    }
}

async fn put(args: PutArgs) -> Result<()> {
    let PutArgs {
        target,
        id,
        create,
        data,
        write,
        server,
    } = args;
    let client = server.client()?;
    let data = read_data(&data)?;
    let opts = WriteOptions::from(write);
    let result = match (&id, create) {
        (Some(id), false) => client.update(&target.db, &target.collection, id, &data, &opts).await,
        (id, _) => {
            client
                .create(&target.db, &target.collection, id.as_deref(), &data, &opts)
                .await
        }
    };
    print::write_result(server.output, &result?);
    Ok(())
}

async fn get(args: GetArgs) -> Result<()> {
    let GetArgs {
        target,
        id,
        ov,
        at,
        include_deleted,
        server,
    } = args;
    let version = match (ov, at) {
        (Some(ov), _) => Version::Ov(ov),
        (None, Some(at)) => Version::At(at),
        (None, None) => Version::Latest,
    };
    let record = server
        .client()?
        .get(&target.db, &target.collection, &id, &version, include_deleted)
        .await?;
    print::record(server.output, record);
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<()> {
    let DeleteArgs {
        target,
        id,
        write,
        server,
    } = args;
    let result = server
        .client()?
        .delete(&target.db, &target.collection, &id, &write.into())
        .await?;
    print::write_result(server.output, &result);
    Ok(())
}

async fn list(args: ListArgs) -> Result<()> {
    let ListArgs {
        target,
        filter,
        limit,
        include_deleted,
        at,
        server,
    } = args;
    let filter = filter
        .map(|f| serde_json::from_str::<Value>(&f))
        .transpose()
        .map_err(|e| Error::Usage(format!("--filter is not valid JSON: {e}")))?;
    let client = server.client()?;
    let mut params = chronos::client::ListParams {
        filter,
        include_deleted,
        at,
        ..Default::default()
    };
    let mut items = Vec::new();
    loop {
        let want = limit.map_or(1000, |l| (l - items.len()).min(1000));
        params.limit = Some(want);
        let page = client.list(&target.db, &target.collection, &params).await?;
        items.extend(page.items);
        match page.next_after_id {
            Some(next) if limit.is_none_or(|l| items.len() < l) => params.after_id = Some(next),
            _ => break,
        }
    }
    print::records(server.output, items);
    Ok(())
}

async fn enrich(args: EnrichArgs) -> Result<()> {
    let EnrichArgs {
        target,
        id,
        patch,
        function_id,
        expected_ov,
        idempotency_key,
        server,
    } = args;
    let patches = match read_json(&patch)? {
        Value::Object(m) => vec![m],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => Ok(m),
                _ => Err(Error::Usage("every patch must be a JSON object".to_owned())),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(Error::Usage(
                "the patch must be a JSON object or an array of objects".into(),
            ));
        }
    };
    let opts = WriteOptions {
        expected_ov,
        idempotency_key,
        ..Default::default()
    };
    let result = server
        .client()?
        .enrich(
            &target.db,
            &target.collection,
            &id,
            &patches,
            function_id.as_deref(),
            &opts,
        )
        .await?;
    print::write_result(server.output, &result);
    Ok(())
}

async fn restore(args: RestoreArgs) -> Result<()> {
    let RestoreArgs {
        target,
        id,
        ov,
        cv,
        at,
        dry_run,
        resume_after,
        reason,
        server,
    } = args;
    let client = server.client()?;
    let opts = WriteOptions {
        reason,
        ..Default::default()
    };
    if let Some(id) = id {
        if dry_run {
            return Err(Error::Usage("--dry-run applies to collection restores".into()));
        }
        let version = match (ov, at) {
            (Some(ov), None) => Version::Ov(ov),
            (None, Some(at)) => Version::At(at),
            _ => return Err(Error::Usage("restoring an item needs --ov or --at".into())),
        };
        let result = client
            .restore_item(&target.db, &target.collection, &id, &version, &opts)
            .await?;
        print::write_result(server.output, &result);
        return Ok(());
    }
    let point = match (cv, at) {
        (Some(cv), None) => RestorePoint::Cv(cv),
        (None, Some(at)) => RestorePoint::At(at),
        _ => return Err(Error::Usage("restoring a collection needs --cv or --at".into())),
    };
    let counts = restore_collection(&client, &target, &point, dry_run, resume_after, &opts).await?;
    print::counts(server.output, &counts, dry_run);
    Ok(())
}

async fn queue(args: QueueArgs) -> Result<()> {
    let QueueArgs { db, action, server } = args;
    let client = server.client()?;
    match action {
        QueueAction::Stats => {
            let st = client.queue_stats(&db).await?;
            print::queue_stats(server.output, &st);
        }
        QueueAction::List { status, limit } => {
            let mut ops = Vec::new();
            let mut after: Option<String> = None;
            while ops.len() < limit {
                let page = client
                    .list_operations(&db, &status, after.as_deref(), (limit - ops.len()).min(1000))
                    .await?;
                ops.extend(page.operations);
                match page.next_after_id {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            print::operations(server.output, &ops);
        }
        QueueAction::Show { operation_id } => {
            let op = client.operation(&db, &operation_id).await?;
            print::operations(server.output, &[op]);
        }
        QueueAction::Retry { operation_id } => {
            let op = client.retry_operation(&db, &operation_id).await?;
            print::operations(server.output, &[op]);
        }
        QueueAction::Cancel { operation_id } => {
            let op = client.cancel_operation(&db, &operation_id).await?;
            print::operations(server.output, &[op]);
        }
    }
    Ok(())
}

async fn history(args: HistoryArgs) -> Result<()> {
    let HistoryArgs { target, id, server } = args;
    let client = server.client()?;
    let mut versions = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .history(&target.db, &target.collection, &id, after, Some(1000))
            .await?;
        versions.extend(page.versions);
        match page.next_after_ov {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    print::history(server.output, versions);
    Ok(())
}

/// Page through a collection restore with a progress bar; if a page fails, the error says how
/// to continue with --resume-after.
async fn restore_collection(
    client: &Client,
    target: &Target,
    point: &RestorePoint,
    dry_run: bool,
    mut after: Option<String>,
    opts: &WriteOptions,
) -> Result<RestoreCounts> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} items ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(if dry_run { "planning" } else { "restoring" });
    let mut sums = RestoreCounts::default();
    loop {
        let page = client
            .restore_collection_page(&target.db, &target.collection, point, dry_run, after.as_deref(), opts)
            .await
            .map_err(|source| match &after {
                Some(a) => Error::Resume {
                    after: a.clone(),
                    source: Box::new(source),
                },
                None => Error::from(source),
            })?;
        sums.examined += page.counts.examined;
        sums.restored += page.counts.restored;
        sums.deleted += page.counts.deleted;
        sums.unchanged += page.counts.unchanged;
        bar.set_length(page.total.max(sums.examined));
        bar.set_position(sums.examined);
        match page.next_after_id {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(sums)
}

fn read_json(arg: &str) -> Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some("-") => {
            std::io::read_to_string(std::io::stdin()).map_err(|e| Error::Usage(format!("cannot read stdin: {e}")))?
        }
        Some(path) => std::fs::read_to_string(PathBuf::from(path))
            .map_err(|e| Error::Usage(format!("cannot read {path}: {e}")))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| Error::Usage(format!("not valid JSON: {e}")))
}

fn read_data(arg: &str) -> Result<Map<String, Value>> {
    match read_json(arg)? {
        Value::Object(map) => Ok(map),
        _ => Err(Error::Usage("the data must be a JSON object".to_owned())),
    }
}
