//! A typed Rust client for the HTTP API (`chronos serve`), used by the CLI and the API tests.
//! The change feed's pages and live stream are in [`changes`].

pub mod changes;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An error body from the server, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// The server accepted the write for later (202): a backend failed transiently and the
    /// write waits in the retry queue. Poll [`Client::operation`] for its outcome.
    #[error(
        "accepted for retry: the write is queued as operation {operation_id} (`chronos queue show {operation_id}`)"
    )]
    Queued { operation_id: String, id: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The API error code (`not_found`, `version_conflict`, …), if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    pub id: String,
    pub ov: u64,
    pub cv: u64,
    pub at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub ov: u64,
    pub cv: u64,
    pub op: String,
    pub at: String,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub size: u64,
    pub checksum: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    pub versions: Vec<VersionInfo>,
    pub next_after_ov: Option<u64>,
}

/// A page of a listing.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage {
    pub items: Vec<Map<String, Value>>,
    pub next_after_id: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// A filter on indexed properties, e.g. `{"status": "open"}`.
    pub filter: Option<Value>,
    pub limit: Option<usize>,
    pub after_id: Option<String>,
    pub descending: bool,
    pub include_deleted: bool,
    /// RFC 3339.
    pub at: Option<String>,
    pub fields: Option<Vec<String>>,
}

/// Where a collection restore goes back to.
#[derive(Debug, Clone)]
pub enum RestorePoint {
    Cv(u64),
    /// RFC 3339.
    At(String),
}

/// Counts of one restore page (or of a whole restore, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreCounts {
    pub examined: u64,
    pub restored: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePageResult {
    pub counts: RestoreCounts,
    pub next_after_id: Option<String>,
    pub total: u64,
}

/// Which version a read asks for.
#[derive(Debug, Clone, Default)]
pub enum Version {
    #[default]
    Latest,
    Ov(u64),
    /// RFC 3339.
    At(String),
}

/// Who writes and why, plus the optimistic lock and the idempotency key.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub expected_ov: Option<u64>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// Sent as `Idempotency-Key`: a retry with the same key returns the first outcome.
    pub idempotency_key: Option<String>,
}

/// A queued write (see `GET /v1/{db}/_operations/{id}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationInfo {
    pub operation_id: String,
    pub status: String,
    pub collection: String,
    pub id: String,
    pub op: String,
    pub attempts: u32,
    pub due_at: String,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationPage {
    pub operations: Vec<OperationInfo>,
    pub next_after_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Connecting gives up after this long: an unreachable address would otherwise take the
/// kernel's minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request fails when the server sends nothing for this long. Long enough for any one request
/// of the API (a collection restore moves one page per request); the change feed's heartbeat
/// (every 15 s) keeps a live stream well inside it, and a stalled stream is resumed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    /// `base` is the server URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>, token: Option<String>) -> Result<Self> {
        Self::with_read_timeout(base, token, READ_TIMEOUT)
    }

    /// [`Client::new`], failing a request after `read_timeout` without a byte from the server
    /// instead of [`READ_TIMEOUT`].
    pub fn with_read_timeout(base: impl Into<String>, token: Option<String>, read_timeout: Duration) -> Result<Self> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("chronos-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for s in segments {
            url.push('/');
            url.push_str(&urlencode(s));
        }
        url
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: String,
        query: &[(&str, String)],
        headers: HeaderMap,
        body: Option<&Value>,
    ) -> Result<T> {
        let mut req = self.http.request(method, &url).query(query).headers(headers);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req.send().await.map_err(|e| Error::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Error::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if status == StatusCode::ACCEPTED {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Queued {
                operation_id: String,
                id: String,
            }
            let q: Queued = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{url}: {e}")))?;
            return Err(Error::Queued {
                operation_id: q.operation_id,
                id: q.id,
            });
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{url}: {e}")));
        }
        Err(api_error(status, &bytes))
    }

    pub async fn create(
        &self,
        db: &str,
        collection: &str,
        id: Option<&str>,
        data: &Map<String, Value>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let mut query = attribution(opts);
        if let Some(id) = id {
            query.push(("id", id.to_owned()));
        }
        let url = self.url(&["v1", db, collection, "items"]);
        self.send(
            Method::POST,
            url,
            &query,
            write_headers(opts),
            Some(&Value::Object(data.clone())),
        )
        .await
    }

    pub async fn get(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        version: &Version,
        include_deleted: bool,
    ) -> Result<Map<String, Value>> {
        let mut query = Vec::new();
        match version {
            Version::Latest => {}
            Version::Ov(ov) => query.push(("ov", ov.to_string())),
            Version::At(at) => query.push(("at", at.clone())),
        }
        if include_deleted {
            query.push(("includeDeleted", "true".to_owned()));
        }
        let url = self.url(&["v1", db, collection, "items", id]);
        self.send(Method::GET, url, &query, HeaderMap::new(), None).await
    }

    /// Replace the data; `opts.expected_ov` is sent as `If-Match`.
    pub async fn update(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        data: &Map<String, Value>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let url = self.url(&["v1", db, collection, "items", id]);
        self.send(
            Method::PUT,
            url,
            &attribution(opts),
            write_headers(opts),
            Some(&Value::Object(data.clone())),
        )
        .await
    }

    pub async fn delete(&self, db: &str, collection: &str, id: &str, opts: &WriteOptions) -> Result<WriteResult> {
        let url = self.url(&["v1", db, collection, "items", id]);
        self.send(Method::DELETE, url, &attribution(opts), write_headers(opts), None)
            .await
    }

    pub async fn history(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        after_ov: Option<u64>,
        limit: Option<usize>,
    ) -> Result<HistoryPage> {
        let mut query = Vec::new();
        if let Some(a) = after_ov {
            query.push(("afterOv", a.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        let url = self.url(&["v1", db, collection, "items", id, "versions"]);
        self.send(Method::GET, url, &query, HeaderMap::new(), None).await
    }

    pub async fn list(&self, db: &str, collection: &str, p: &ListParams) -> Result<ListPage> {
        let mut query = Vec::new();
        if let Some(f) = &p.filter {
            query.push(("filter", f.to_string()));
        }
        if let Some(l) = p.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(a) = &p.after_id {
            query.push(("afterId", a.clone()));
        }
        if p.descending {
            query.push(("sort", "-id".to_owned()));
        }
        if p.include_deleted {
            query.push(("includeDeleted", "true".to_owned()));
        }
        if let Some(at) = &p.at {
            query.push(("at", at.clone()));
        }
        if let Some(fields) = &p.fields {
            query.push(("fields", fields.join(",")));
        }
        let url = self.url(&["v1", db, collection, "items"]);
        self.send(Method::GET, url, &query, HeaderMap::new(), None).await
    }

    /// Enrich: merge each patch, in order, into the item's data as one new version.
    pub async fn enrich(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        patches: &[Map<String, Value>],
        function_id: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let mut query = attribution(opts);
        if let Some(f) = function_id {
            query.push(("functionId", f.to_owned()));
        }
        let url = self.url(&["v1", db, collection, "items", id]);
        let body = Value::Array(patches.iter().cloned().map(Value::Object).collect());
        self.send(Method::PATCH, url, &query, write_headers(opts), Some(&body))
            .await
    }

    /// Append a version equal to an earlier one (`Version::Ov` or `Version::At`).
    pub async fn restore_item(
        &self,
        db: &str,
        collection: &str,
        id: &str,
        target: &Version,
        opts: &WriteOptions,
    ) -> Result<WriteResult> {
        let body = match target {
            Version::Ov(ov) => serde_json::json!({"ov": ov}),
            Version::At(at) => serde_json::json!({"at": at}),
            Version::Latest => return Err(Error::Protocol("a restore needs an ov or a time".into())),
        };
        let url = self.url(&["v1", db, collection, "items", id, "restore"]);
        self.send(Method::POST, url, &attribution(opts), write_headers(opts), Some(&body))
            .await
    }

    /// One page of a collection restore; loop on `next_after_id` until it is `None`.
    pub async fn restore_collection_page(
        &self,
        db: &str,
        collection: &str,
        point: &RestorePoint,
        dry_run: bool,
        after_id: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<RestorePageResult> {
        let mut body = match point {
            RestorePoint::Cv(cv) => serde_json::json!({"cv": cv}),
            RestorePoint::At(at) => serde_json::json!({"at": at}),
        };
        body["dryRun"] = Value::Bool(dry_run);
        if let Some(a) = after_id {
            body["afterId"] = Value::String(a.to_owned());
        }
        let url = self.url(&["v1", db, collection, "restore"]);
        self.send(Method::POST, url, &attribution(opts), HeaderMap::new(), Some(&body))
            .await
    }

    /// A queued write: its status, attempts and, once written, where it landed.
    pub async fn operation(&self, db: &str, operation_id: &str) -> Result<OperationInfo> {
        let url = self.url(&["v1", db, "_operations", operation_id]);
        self.send(Method::GET, url, &[], HeaderMap::new(), None).await
    }

    /// Cancel a pending queued write or a dead letter.
    pub async fn cancel_operation(&self, db: &str, operation_id: &str) -> Result<OperationInfo> {
        let url = self.url(&["v1", db, "_operations", operation_id]);
        self.send(Method::DELETE, url, &[], HeaderMap::new(), None).await
    }

    /// Put a dead letter back in the queue.
    pub async fn retry_operation(&self, db: &str, operation_id: &str) -> Result<OperationInfo> {
        let url = self.url(&["v1", db, "_operations", operation_id, "retry"]);
        self.send(Method::POST, url, &[], HeaderMap::new(), None).await
    }

    pub async fn queue_stats(&self, db: &str) -> Result<QueueStats> {
        let url = self.url(&["v1", db, "_queue"]);
        self.send(Method::GET, url, &[], HeaderMap::new(), None).await
    }

    /// One page of operations in a state (`pending`, `running`, `succeeded`, `dead`, `cancelled`).
    pub async fn list_operations(
        &self,
        db: &str,
        status: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<OperationPage> {
        let mut query = vec![("status", status.to_owned()), ("limit", limit.to_string())];
        if let Some(a) = after_id {
            query.push(("afterId", a.to_owned()));
        }
        let url = self.url(&["v1", db, "_queue", "operations"]);
        self.send(Method::GET, url, &query, HeaderMap::new(), None).await
    }

    /// Put a legal hold on an item (admin); returns its hold state (`held`, `reason`, `legalHold`).
    pub async fn set_hold(&self, db: &str, collection: &str, id: &str, reason: &str) -> Result<Value> {
        let url = self.url(&["v1", db, collection, "items", id, "hold"]);
        let body = serde_json::json!({"reason": reason});
        self.send(Method::PUT, url, &[], HeaderMap::new(), Some(&body)).await
    }

    /// Release an item's legal hold (admin); returns its hold state.
    pub async fn release_hold(&self, db: &str, collection: &str, id: &str) -> Result<Value> {
        let url = self.url(&["v1", db, collection, "items", id, "hold"]);
        self.send(Method::DELETE, url, &[], HeaderMap::new(), None).await
    }

    /// Whether an item is held, and why.
    pub async fn hold(&self, db: &str, collection: &str, id: &str) -> Result<Value> {
        let url = self.url(&["v1", db, collection, "items", id, "hold"]);
        self.send(Method::GET, url, &[], HeaderMap::new(), None).await
    }

    /// Any GET returning JSON (e.g. `/readyz`, `/openapi.json`).
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(Method::GET, url, &[], HeaderMap::new(), None).await
    }
}

fn attribution(opts: &WriteOptions) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(a) = &opts.actor {
        q.push(("actor", a.clone()));
    }
    if let Some(r) = &opts.reason {
        q.push(("reason", r.clone()));
    }
    q
}

/// `If-Match` for the expected ov and `Idempotency-Key`.
fn write_headers(opts: &WriteOptions) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(key) = &opts.idempotency_key
        && let Ok(v) = HeaderValue::from_str(key)
    {
        h.insert("idempotency-key", v);
    }
    if let Some(ov) = opts.expected_ov
        && let Ok(v) = HeaderValue::from_str(&format!("\"{ov}\""))
    {
        h.insert(IF_MATCH, v);
    }
    h
}

fn api_error(status: StatusCode, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct Body {
        code: String,
        message: String,
        #[serde(default)]
        details: Value,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => Error::Api {
            status: status.as_u16(),
            code: b.code,
            message: b.message,
            details: b.details,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: "unknown".into(),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
            details: Value::Null,
        },
    }
}

/// Percent-encode one path segment: everything but RFC 3986's unreserved characters.
fn urlencode(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}
