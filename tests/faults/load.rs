//! The load (concurrent unconditional updates over hot items, spread over the engines) and the
//! history checker.
//!
//! Every write carries a unique marker (`w<writer>-<seq>`); the writer records each
//! acknowledgement as (item, ov, SHA-256 of the data it sent). The checker then reads every
//! item's whole history and every version, and counts what must be zero: acknowledged writes
//! missing or different, ov gaps, versions that can't be read or whose data doesn't match its
//! checksum, markers present more than once (duplicates) and markers never sent (phantoms).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::Fail;

/// Where the load goes.
#[derive(Clone)]
pub struct Target {
    /// Base URLs of the engines; writers rotate over them and move on when one is down.
    pub urls: Vec<String>,
    pub db: String,
    pub collection: String,
    pub token: Option<String>,
    pub items: usize,
}

impl Target {
    pub fn item_id(&self, i: usize) -> String {
        format!("hot-{i:03}")
    }

    fn item_url(&self, base: &str, i: usize) -> String {
        format!("{base}/v1/{}/{}/items/{}", self.db, self.collection, self.item_id(i))
    }

    pub fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

pub fn http() -> Result<reqwest::Client, Fail> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string().into())
}

pub fn digest(data: &Map<String, Value>) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_string(data).unwrap_or_default().as_bytes(),
    ))
}

#[derive(Debug, Clone)]
pub struct Ack {
    pub item: usize,
    pub ov: u64,
    pub marker: String,
    pub checksum: String,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct Queued {
    pub item: usize,
    pub marker: String,
    pub checksum: String,
    pub operation: String,
    pub base: String,
}

/// Everything the writers saw.
#[derive(Default)]
pub struct Ledger {
    pub acks: Vec<Ack>,
    pub queued: Vec<Queued>,
    /// Every marker sent (acknowledged or not).
    pub sent: HashSet<String>,
    /// Refusals by HTTP status (a clean failure: nothing was acknowledged).
    pub refused: HashMap<u16, u64>,
    /// Requests without an answer (connection refused or reset, timeout): outcome unknown.
    pub unanswered: u64,
    pub attempts: u64,
    /// Requests sent again with the same idempotency key after no answer or a 503.
    pub retries: u64,
    /// Answers marked `Idempotency-Replayed`: a retry whose first attempt had been written.
    pub replayed: u64,
    /// Writer tasks that panicked (a harness bug: the load was not what it claims).
    pub crashed_writers: u64,
}

impl Ledger {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    pub fn refused_summary(&self) -> String {
        let mut v: Vec<_> = self.refused.iter().collect();
        v.sort();
        v.iter().map(|(s, n)| format!("{n}×{s}")).collect::<Vec<_>>().join(", ")
    }
}

/// Create the hot items (ov 0), retrying refusals until the deadline.
pub async fn seed(http: &reqwest::Client, t: &Target) -> Result<(), Fail> {
    let base = &t.urls[0];
    futures::stream::iter(0..t.items)
        .map(|i| async move {
            let url = format!("{base}/v1/{}/{}/items?id={}", t.db, t.collection, t.item_id(i));
            let r = t
                .auth(http.post(url))
                .json(&json!({"marker": "seed"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().as_u16() == 201 {
                Ok(())
            } else {
                Err(format!("seeding {} failed: {}", t.item_id(i), r.status()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Result<(), String>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    Ok(())
}

/// Run `writers` writers until `until`; returns the ledger.
pub async fn run_writers(http: &reqwest::Client, t: &Target, writers: usize, until: Instant, big_every: u64) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (http, t, ledger) = (http.clone(), t.clone(), ledger.clone());
            tokio::spawn(async move { writer(http, t, w, until, big_every, ledger).await })
        })
        .collect();
    let mut crashed = 0;
    for task in tasks {
        if task.await.is_err() {
            crashed += 1;
        }
    }
    let mut guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
    guard.crashed_writers += crashed;
    std::mem::take(&mut *guard)
}

/// How often one write is sent again (same key) after no answer or a 503.
const RETRIES_PER_WRITE: u64 = 50;

async fn writer(
    http: reqwest::Client,
    t: Target,
    w: usize,
    until: Instant,
    big_every: u64,
    ledger: Arc<Mutex<Ledger>>,
) {
    // xorshift: a reproducible, dependency-free choice of items per writer.
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut seq: u64 = 0;
    let mut engine = w % t.urls.len();
    let mut silent = 0usize;
    while Instant::now() < until {
        seq += 1;
        let item = (next() % t.items as u64) as usize;
        let marker = format!("w{w}-{seq}");
        let mut data = Map::new();
        data.insert("marker".into(), json!(marker));
        data.insert("writer".into(), json!(w));
        data.insert("seq".into(), json!(seq));
        // Now and then a body too large to keep inline, so reads of the head go to S3.
        if big_every > 0 && seq.is_multiple_of(big_every) {
            data.insert("pad".into(), json!("p".repeat(70 * 1024)));
        }
        let checksum = digest(&data);
        enum Answer {
            Ack(u64),
            Queued(String),
            Refused(u16),
            Unanswered,
        }
        // A write without an answer (its engine was killed, say) or refused with 503 is sent
        // again with the same idempotency key, to the next engine, as a careful client would:
        // the server must make it at most once, and the checker finds any duplicate.
        let (mut retries, mut replayed) = (0u64, 0u64);
        let (answer, base) = loop {
            let base = t.urls[engine].clone();
            let request = t
                .auth(http.put(t.item_url(&base, item)))
                .header("Idempotency-Key", &marker)
                .json(&data);
            let answer = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    if r.headers().contains_key("idempotency-replayed") {
                        replayed += 1;
                    }
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    match (status, body["ov"].as_u64(), body["operationId"].as_str()) {
                        (200 | 201, Some(ov), _) => Answer::Ack(ov),
                        (202, _, Some(op)) => Answer::Queued(op.to_owned()),
                        (200..=299, _, _) => {
                            eprintln!("[faults] {status} without an ov or operationId: {body}");
                            Answer::Refused(status)
                        }
                        _ => Answer::Refused(status),
                    }
                }
                Err(_) => Answer::Unanswered,
            };
            let again = matches!(answer, Answer::Unanswered | Answer::Refused(503));
            if !again || retries >= RETRIES_PER_WRITE || Instant::now() >= until {
                break (answer, base);
            }
            retries += 1;
            // That engine may be down: try the next one; when every engine failed in a row,
            // pace the retries instead of spinning.
            engine = (engine + 1) % t.urls.len();
            if retries.is_multiple_of(t.urls.len() as u64) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let unanswered = matches!(answer, Answer::Unanswered);
        {
            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.attempts += 1;
            l.retries += retries;
            l.replayed += replayed;
            l.sent.insert(marker.clone());
            match answer {
                Answer::Ack(ov) => l.acks.push(Ack {
                    item,
                    ov,
                    marker,
                    checksum,
                    at: Instant::now(),
                }),
                Answer::Queued(operation) => l.queued.push(Queued {
                    item,
                    marker,
                    checksum,
                    operation,
                    base,
                }),
                Answer::Refused(status) => *l.refused.entry(status).or_default() += 1,
                Answer::Unanswered => l.unanswered += 1,
            }
        }
        if unanswered {
            // That engine may be down: the next write goes to the next one. When every engine
            // failed in a row, pace the retries instead of spinning.
            engine = (engine + 1) % t.urls.len();
            silent += 1;
            if silent >= t.urls.len() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            silent = 0;
        }
    }
}

/// Wait for every queued write to finish (the operations API); succeeded ones become acks.
/// Returns (landed, failed terminally, still pending at the deadline).
pub async fn settle_queued(
    http: &reqwest::Client,
    t: &Target,
    ledger: &mut Ledger,
    within: Duration,
) -> (u64, u64, u64) {
    let deadline = Instant::now() + within;
    let (mut landed, mut failed, mut pending) = (0, 0, 0);
    let queued = std::mem::take(&mut ledger.queued);
    for q in &queued {
        let url = format!("{}/v1/{}/_operations/{}", q.base, t.db, q.operation);
        loop {
            let status = match t.auth(http.get(&url)).send().await {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            match status["status"].as_str() {
                Some("succeeded") => {
                    match status["result"]["ov"].as_u64() {
                        Some(ov) => {
                            landed += 1;
                            ledger.acks.push(Ack {
                                item: q.item,
                                ov,
                                marker: q.marker.clone(),
                                checksum: q.checksum.clone(),
                                at: Instant::now(),
                            });
                        }
                        None => failed += 1,
                    }
                    break;
                }
                Some("dead" | "cancelled") => {
                    failed += 1;
                    eprintln!("[faults] queued write {} ended {status}", q.marker);
                    break;
                }
                _ if Instant::now() > deadline => {
                    pending += 1;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    ledger.queued = queued;
    (landed, failed, pending)
}

/// What the checker found. Everything but `versions` must be zero.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub versions: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub unreadable: u64,
    pub corrupt: u64,
    pub phantoms: u64,
    pub head_mismatch: u64,
    pub examples: Vec<String>,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.lost + self.duplicates + self.gaps + self.unreadable + self.corrupt + self.phantoms + self.head_mismatch
            == 0
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }
}

/// One version as read back.
struct Seen {
    marker: Option<String>,
    checksum: String,
}

struct ItemHistory {
    item: usize,
    versions: Vec<(u64, Option<Seen>)>,
    gaps: u64,
    head_mismatch: bool,
    corrupt: u64,
    problems: Vec<String>,
}

async fn get_json(http: &reqwest::Client, t: &Target, url: &str) -> Result<Value, String> {
    // Reads are retried a few times: the checker must not confuse a slow engine with damage.
    let mut last = String::new();
    for _ in 0..3 {
        match t.auth(http.get(url)).send().await {
            Ok(r) if r.status().is_success() => return r.json().await.map_err(|e| e.to_string()),
            Ok(r) => {
                let status = r.status();
                last = format!("{status}: {}", r.text().await.unwrap_or_default());
                if status.is_client_error() {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

async fn read_item(http: &reqwest::Client, t: &Target, base: &str, item: usize) -> ItemHistory {
    let mut h = ItemHistory {
        item,
        versions: Vec::new(),
        gaps: 0,
        head_mismatch: false,
        corrupt: 0,
        problems: Vec::new(),
    };
    let url = t.item_url(base, item);
    let mut index: Vec<(u64, String)> = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page_url = match after {
            Some(a) => format!("{url}/versions?limit=1000&afterOv={a}"),
            None => format!("{url}/versions?limit=1000"),
        };
        let page = match get_json(http, t, &page_url).await {
            Ok(p) => p,
            Err(e) => {
                h.problems.push(format!("{} history: {e}", t.item_id(item)));
                h.gaps += 1;
                return h;
            }
        };
        for v in page["versions"].as_array().into_iter().flatten() {
            index.push((
                v["ov"].as_u64().unwrap_or(u64::MAX),
                v["checksum"].as_str().unwrap_or("").to_owned(),
            ));
        }
        match page["nextAfterOv"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    for (expected, (ov, _)) in index.iter().enumerate() {
        if *ov != expected as u64 {
            h.gaps += 1;
            h.problems
                .push(format!("{}: ov {ov} at position {expected}", t.item_id(item)));
            break;
        }
    }
    let reads = futures::stream::iter(index.iter().cloned())
        .map(|(ov, checksum)| {
            let url = format!("{url}?ov={ov}");
            async move { (ov, checksum, get_json(http, t, &url).await) }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    for (ov, checksum, read) in reads {
        match read {
            Ok(mut record) => {
                let mut data = record.as_object_mut().cloned().unwrap_or_default();
                data.remove("_system");
                let got = digest(&data);
                if got != checksum {
                    h.corrupt += 1;
                    h.problems
                        .push(format!("{} v{ov}: data does not match its checksum", t.item_id(item)));
                }
                let marker = data.get("marker").and_then(Value::as_str).map(str::to_owned);
                h.versions.push((ov, Some(Seen { marker, checksum: got })));
            }
            Err(e) => {
                h.problems.push(format!("{} v{ov} unreadable: {e}", t.item_id(item)));
                h.versions.push((ov, None));
            }
        }
    }
    // The head: what a plain read returns is the last version of the history.
    match get_json(http, t, &url).await {
        Ok(head) => {
            let ov = head["_system"]["ov"].as_u64();
            if ov != index.last().map(|(ov, _)| *ov) {
                h.head_mismatch = true;
                h.problems.push(format!(
                    "{}: head at {ov:?}, history ends at {:?}",
                    t.item_id(item),
                    index.last()
                ));
            }
        }
        Err(e) => {
            h.head_mismatch = true;
            h.problems.push(format!("{} head unreadable: {e}", t.item_id(item)));
        }
    }
    h
}

/// Read every item's history and versions (through `base`) and compare with the ledger.
pub async fn check(http: &reqwest::Client, t: &Target, base: &str, ledger: &Ledger) -> Findings {
    let histories: Vec<ItemHistory> = futures::stream::iter(0..t.items)
        .map(|i| read_item(http, t, base, i))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut f = Findings::default();
    let mut at: HashMap<(usize, u64), (Option<String>, String)> = HashMap::new();
    let mut markers: HashMap<String, u64> = HashMap::new();
    for h in histories {
        f.gaps += h.gaps;
        f.corrupt += h.corrupt;
        f.head_mismatch += u64::from(h.head_mismatch);
        for p in h.problems {
            f.note(p);
        }
        for (ov, seen) in h.versions {
            f.versions += 1;
            match seen {
                None => f.unreadable += 1,
                Some(s) => {
                    if let Some(m) = &s.marker {
                        *markers.entry(m.clone()).or_default() += 1;
                        if m != "seed" && !ledger.sent.contains(m) {
                            f.phantoms += 1;
                            f.note(format!("hot-{:03} v{ov}: marker {m} was never sent", h.item));
                        }
                    }
                    at.insert((h.item, ov), (s.marker, s.checksum));
                }
            }
        }
    }
    for (m, n) in &markers {
        if *n > 1 && m != "seed" {
            f.duplicates += n - 1;
            f.note(format!("marker {m} appears {n} times"));
        }
    }
    for a in &ledger.acks {
        match at.get(&(a.item, a.ov)) {
            Some((Some(m), sum)) if *m == a.marker && *sum == a.checksum => {}
            other => {
                f.lost += 1;
                let found = other.map(|(m, _)| m.clone());
                f.note(format!(
                    "acknowledged {} at hot-{:03} v{} but found {found:?}",
                    a.marker, a.item, a.ov
                ));
            }
        }
    }
    f
}
