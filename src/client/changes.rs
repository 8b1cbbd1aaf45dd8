//! The change feed for clients: pages ([`Client::changes`]) and a live stream ([`Client::watch`])
//! over Server-Sent Events that reconnects by itself, resuming after the last cv it delivered, and
//! drops what it already delivered (the server delivers at least once across reconnects): each
//! committed version comes out of one [`ChangeStream`] exactly once, in cv order.

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Client, Error, Result, api_error};

/// One version in the feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub id: String,
    pub ov: u64,
    pub cv: u64,
    pub op: String,
    pub at: String,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub deleted: bool,
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// The version's record, with [`ChangesParams::include_data`].
    pub data: Option<Value>,
}

/// A page of the feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// Resume after this cv.
    pub next: u64,
    /// More can be read at once.
    pub more: bool,
    pub held_back_ms: Option<u64>,
}

/// Which changes to read.
#[derive(Debug, Clone, Default)]
pub struct ChangesParams {
    /// Resume after this cv (0: from the beginning).
    pub after: u64,
    /// Versions read per page (JSON pages only).
    pub limit: Option<usize>,
    /// JSON filter on indexed properties.
    pub filter: Option<String>,
    /// Comma-separated ops to keep (`CREATE,UPDATE`).
    pub ops: Option<String>,
    pub include_data: bool,
}

impl ChangesParams {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("after", self.after.to_string())];
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(f) = &self.filter {
            q.push(("filter", f.clone()));
        }
        if let Some(o) = &self.ops {
            q.push(("ops", o.clone()));
        }
        if self.include_data {
            q.push(("include", "data".to_owned()));
        }
        q
    }
}

/// How long a [`ChangeStream`] keeps trying to reach the server before it gives up.
const GIVE_UP_AFTER: u32 = 30;

impl Client {
    /// One page of a collection's changes.
    pub async fn changes(&self, db: &str, collection: &str, p: &ChangesParams) -> Result<ChangesPage> {
        let url = self.url(&["v1", db, collection, "changes"]);
        self.send(Method::GET, url, &p.query(), HeaderMap::new(), None).await
    }

    /// Follow a collection's changes live from `p.after` (see [`ChangeStream`]).
    pub fn watch(&self, db: &str, collection: &str, p: ChangesParams) -> ChangeStream {
        ChangeStream {
            client: self.clone(),
            url: self.url(&["v1", db, collection, "changes"]),
            last: p.after,
            params: p,
            response: None,
            buffer: String::new(),
            pending: VecDeque::new(),
            failures: 0,
        }
    }
}

/// A live feed of changes; call [`ChangeStream::next`] for each.
pub struct ChangeStream {
    client: Client,
    url: String,
    params: ChangesParams,
    /// The last cv delivered: where a reconnect resumes.
    last: u64,
    response: Option<reqwest::Response>,
    /// Received text not yet a whole event.
    buffer: String,
    pending: VecDeque<Change>,
    /// Connection attempts that failed in a row.
    failures: u32,
}

impl ChangeStream {
    /// The cv of the last change delivered (or the resume point before the first).
    pub fn last_cv(&self) -> u64 {
        self.last
    }

    /// Drop the connection, as if the network had: the next call reconnects and resumes.
    pub fn disconnect(&mut self) {
        self.response = None;
        self.buffer.clear();
        self.pending.clear();
    }

    /// The next change. A dropped connection is reopened (after a short pause, resuming after
    /// the last cv delivered); an answer of the server (410 `history_pruned`, a bad filter…) or
    /// a server unreachable for about two minutes is an error.
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                self.last = change.cv;
                return Ok(change);
            }
            let Some(response) = self.response.as_mut() else {
                self.connect().await?;
                continue;
            };
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    self.buffer.push_str(&String::from_utf8_lossy(&bytes));
                    self.take_events()?;
                }
                // The server ended the stream (shutting down) or the connection broke.
                Ok(None) | Err(_) => self.disconnect(),
            }
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let mut query = self.params.query();
        query.retain(|(k, _)| *k != "after" && *k != "limit");
        let mut req = self
            .client
            .http
            .get(&self.url)
            .query(&query)
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .header("last-event-id", self.last.to_string());
        if let Some(token) = &self.client.token {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                self.failures = 0;
                self.response = Some(r);
                Ok(())
            }
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                Err(api_error(status, &body))
            }
            Err(e) => {
                self.failures += 1;
                if self.failures >= GIVE_UP_AFTER {
                    return Err(Error::Transport {
                        url: self.url.clone(),
                        message: e.to_string(),
                    });
                }
                let pause = Duration::from_millis(100 << self.failures.min(6));
                tokio::time::sleep(pause.min(Duration::from_secs(5))).await;
                Ok(())
            }
        }
    }

    /// Parse the whole events in the buffer: changes not delivered yet are queued, an `error`
    /// event ends the connection with its error.
    fn take_events(&mut self) -> Result<()> {
        if self.buffer.contains('\r') {
            self.buffer = self.buffer.replace("\r\n", "\n");
        }
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let (mut kind, mut data) = ("message", String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = match v.trim() {
                        "change" => "change",
                        "error" => "error",
                        _ => "other",
                    };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            match kind {
                "change" => {
                    let change: Change =
                        serde_json::from_str(&data).map_err(|e| Error::Protocol(format!("a change event: {e}")))?;
                    let newest = self.pending.back().map_or(self.last, |c| c.cv);
                    if change.cv > newest {
                        self.pending.push_back(change);
                    }
                }
                "error" => {
                    self.disconnect();
                    let status = serde_json::from_str::<Value>(&data)
                        .ok()
                        .and_then(|v| v["status"].as_u64())
                        .and_then(|s| StatusCode::from_u16(s as u16).ok())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Err(api_error(status, data.as_bytes()));
                }
                // Comments (heartbeats) and anything else.
                _ => {}
            }
        }
        Ok(())
    }
}
