//! Client subcommands over [`chronos::client`]: `put`, `get`, `delete`, `history`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use serde_json::{Map, Value};

use chronos::client::{Client, Version, WriteOptions, WriteResult};

#[derive(Args)]
pub struct Server {
    /// The Chronos server.
    #[arg(
        long,
        global = true,
        env = "CHRONOS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "CHRONOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Where an item lives.
#[derive(Args)]
pub struct Target {
    /// Database (tenant) key.
    db: String,
    collection: String,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create an item (no --id or --create with --id), or replace an existing item's data (--id).
    Put {
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
        /// Only write if the item is at this ov.
        #[arg(long)]
        expected_ov: Option<u64>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Read an item: latest, --ov N or --at TIME.
    Get {
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
    },
    /// Logically delete an item.
    Delete {
        #[command(flatten)]
        target: Target,
        id: String,
        #[arg(long)]
        expected_ov: Option<u64>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// List items, optionally filtered on indexed properties (all pages unless --limit).
    List {
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
    },
    /// An item's versions, oldest first (all pages).
    History {
        #[command(flatten)]
        target: Target,
        id: String,
        #[command(flatten)]
        server: Server,
    },
}

impl ClientCommand {
    pub async fn run(self) -> Result<(), String> {
        match self {
            ClientCommand::Put {
                target,
                id,
                create,
                data,
                expected_ov,
                actor,
                reason,
                server,
            } => {
                let client = server.client()?;
                let data = read_data(&data)?;
                let opts = WriteOptions {
                    expected_ov,
                    actor,
                    reason,
                };
                let result = match (&id, create) {
                    (Some(id), false) => {
                        client
                            .update(&target.db, &target.collection, id, &data, &opts)
                            .await
                    }
                    (id, _) => {
                        client
                            .create(&target.db, &target.collection, id.as_deref(), &data, &opts)
                            .await
                    }
                };
                server.print_write(&result.map_err(|e| e.to_string())?);
            }
            ClientCommand::Get {
                target,
                id,
                ov,
                at,
                include_deleted,
                server,
            } => {
                let version = match (ov, at) {
                    (Some(ov), _) => Version::Ov(ov),
                    (None, Some(at)) => Version::At(at),
                    (None, None) => Version::Latest,
                };
                let record = server
                    .client()?
                    .get(
                        &target.db,
                        &target.collection,
                        &id,
                        &version,
                        include_deleted,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                server.print_record(record);
            }
            ClientCommand::Delete {
                target,
                id,
                expected_ov,
                actor,
                reason,
                server,
            } => {
                let opts = WriteOptions {
                    expected_ov,
                    actor,
                    reason,
                };
                let result = server
                    .client()?
                    .delete(&target.db, &target.collection, &id, &opts)
                    .await
                    .map_err(|e| e.to_string())?;
                server.print_write(&result);
            }
            ClientCommand::List {
                target,
                filter,
                limit,
                include_deleted,
                at,
                server,
            } => {
                let filter = filter
                    .map(|f| serde_json::from_str::<Value>(&f))
                    .transpose()
                    .map_err(|e| format!("--filter is not valid JSON: {e}"))?;
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
                    let page = client
                        .list(&target.db, &target.collection, &params)
                        .await
                        .map_err(|e| e.to_string())?;
                    items.extend(page.items);
                    match page.next_after_id {
                        Some(next) if limit.is_none_or(|l| items.len() < l) => {
                            params.after_id = Some(next)
                        }
                        _ => break,
                    }
                }
                server.print_records(items);
            }
            ClientCommand::History { target, id, server } => {
                let client = server.client()?;
                let mut versions = Vec::new();
                let mut after = None;
                loop {
                    let page = client
                        .history(&target.db, &target.collection, &id, after, Some(1000))
                        .await
                        .map_err(|e| e.to_string())?;
                    versions.extend(page.versions);
                    match page.next_after_ov {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                if server.output == Output::Json {
                    let rows: Vec<Value> = versions
                        .iter()
                        .map(|v| {
                            serde_json::json!({"ov": v.ov, "cv": v.cv, "op": v.op, "at": v.at, "actor": v.actor,
                                "reason": v.reason, "size": v.size, "checksum": v.checksum, "deleted": v.deleted})
                        })
                        .collect();
                    println!("{}", Value::Array(rows));
                } else {
                    let mut table = Table::new();
                    table.set_header(["OV", "CV", "OP", "AT", "ACTOR", "REASON", "SIZE"]);
                    for v in versions {
                        table.add_row([
                            v.ov.to_string(),
                            v.cv.to_string(),
                            v.op,
                            v.at,
                            v.actor.unwrap_or_default(),
                            v.reason.unwrap_or_default(),
                            v.size.to_string(),
                        ]);
                    }
                    println!("{table}");
                }
            }
        }
        Ok(())
    }
}

impl Server {
    fn client(&self) -> Result<Client, String> {
        Client::new(&self.server, self.token.clone()).map_err(|e| e.to_string())
    }

    fn print_write(&self, w: &WriteResult) {
        if self.output == Output::Json {
            println!(
                "{}",
                serde_json::json!({"id": w.id, "ov": w.ov, "cv": w.cv, "at": w.at})
            );
        } else {
            let mut table = Table::new();
            table.set_header(["ID", "OV", "CV", "AT"]);
            table.add_row([
                w.id.clone(),
                w.ov.to_string(),
                w.cv.to_string(),
                w.at.clone(),
            ]);
            println!("{table}");
        }
    }

    fn print_record(&self, mut record: Map<String, Value>) {
        if self.output == Output::Json {
            println!("{}", Value::Object(record));
            return;
        }
        let system = record.remove("_system").unwrap_or(Value::Null);
        let mut table = Table::new();
        table.set_header(["FIELD", "VALUE"]);
        for key in ["id", "ov", "cv", "updatedAt", "deleted", "state"] {
            table.add_row([format!("_system.{key}"), plain(&system[key])]);
        }
        for (k, v) in record {
            table.add_row([k, plain(&v)]);
        }
        println!("{table}");
    }
}

impl Server {
    fn print_records(&self, items: Vec<Map<String, Value>>) {
        if self.output == Output::Json {
            println!(
                "{}",
                Value::Array(items.into_iter().map(Value::Object).collect())
            );
            return;
        }
        let mut table = Table::new();
        table.set_header(["ID", "OV", "UPDATED", "DATA"]);
        for mut item in items {
            let system = item.remove("_system").unwrap_or(Value::Null);
            let mut data = Value::Object(item).to_string();
            if data.len() > 80 {
                data.truncate(data.char_indices().nth(77).map_or(data.len(), |(i, _)| i));
                data.push_str("...");
            }
            table.add_row([
                plain(&system["id"]),
                plain(&system["ov"]),
                plain(&system["updatedAt"]),
                data,
            ]);
        }
        println!("{table}");
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_data(arg: &str) -> Result<Map<String, Value>, String> {
    let text = match arg.strip_prefix('@') {
        Some("-") => std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read stdin: {e}"))?,
        Some(path) => std::fs::read_to_string(PathBuf::from(path))
            .map_err(|e| format!("cannot read {path}: {e}"))?,
        None => arg.to_owned(),
    };
    match serde_json::from_str(&text).map_err(|e| format!("the data is not valid JSON: {e}"))? {
        Value::Object(map) => Ok(map),
        _ => Err("the data must be a JSON object".to_owned()),
    }
}
