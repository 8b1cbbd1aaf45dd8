//! How the client subcommands print what the server returned: a table for people (the default)
//! or one JSON document for scripts (`-o json`).

use clap::ValueEnum;
use comfy_table::Table;
use serde_json::{Map, Value};

use chronos::client::{OperationInfo, QueueStats, RestoreCounts, VersionInfo, WriteResult};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn write_result(output: Output, w: &WriteResult) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"id": w.id, "ov": w.ov, "cv": w.cv, "at": w.at})
        );
    } else {
        let mut table = Table::new();
        table.set_header(["ID", "OV", "CV", "AT"]);
        table.add_row([w.id.clone(), w.ov.to_string(), w.cv.to_string(), w.at.clone()]);
        println!("{table}");
    }
}

pub fn record(output: Output, mut record: Map<String, Value>) {
    if output == Output::Json {
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

pub fn operations(output: Output, ops: &[OperationInfo]) {
    if output == Output::Json {
        let rows: Vec<Value> = ops
            .iter()
            .map(|o| {
                serde_json::json!({"operationId": o.operation_id, "status": o.status, "collection": o.collection,
                    "id": o.id, "op": o.op, "attempts": o.attempts, "dueAt": o.due_at, "lastError": o.last_error,
                    "result": o.result})
            })
            .collect();
        println!("{}", Value::Array(rows));
        return;
    }
    let mut table = Table::new();
    table.set_header(["OPERATION", "STATUS", "OP", "ITEM", "ATTEMPTS", "LAST ERROR"]);
    for o in ops {
        table.add_row([
            o.operation_id.clone(),
            o.status.clone(),
            o.op.clone(),
            format!("{}/{}", o.collection, o.id),
            o.attempts.to_string(),
            o.last_error.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

pub fn counts(output: Output, c: &RestoreCounts, dry_run: bool) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"dryRun": dry_run, "examined": c.examined, "restored": c.restored,
                "deleted": c.deleted, "unchanged": c.unchanged})
        );
        return;
    }
    let mut table = Table::new();
    let verb = if dry_run { "WOULD " } else { "" };
    table.set_header([
        "EXAMINED",
        &format!("{verb}RESTORE"),
        &format!("{verb}DELETE"),
        "UNCHANGED",
    ]);
    table.add_row([c.examined, c.restored, c.deleted, c.unchanged].map(|n| n.to_string()));
    println!("{table}");
}

pub fn records(output: Output, items: Vec<Map<String, Value>>) {
    if output == Output::Json {
        println!("{}", Value::Array(items.into_iter().map(Value::Object).collect()));
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

pub fn queue_stats(output: Output, st: &QueueStats) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"pending": st.pending, "running": st.running, "dead": st.dead})
        );
    } else {
        let mut table = Table::new();
        table.set_header(["PENDING", "RUNNING", "DEAD"]);
        table.add_row([st.pending.to_string(), st.running.to_string(), st.dead.to_string()]);
        println!("{table}");
    }
}

pub fn history(output: Output, versions: Vec<VersionInfo>) {
    if output == Output::Json {
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

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
