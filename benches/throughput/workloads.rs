//! The workloads (create, update, get, list, enrich, …) and the paths they run along (floor,
//! engine, HTTP, embedded): `Ctx::op` is one operation of a workload on one path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chronos::client::{self, Client as HttpClient};
use chronos::engine::{
    Attribution, CollectionName, Engine, Enrichment, ItemId, ListOptions, ReadOptions, VersionTarget,
};
use serde_json::json;

use crate::errors::{name, text};
use crate::floor::Floor;
use crate::records::{LIST_LIMIT, STATUSES, patch, pool_id, record};
use crate::served::Conn;

/// Items each client owns in the update / read pools (no two clients write the same item, so the
/// figures measure the write path, not contention).
pub const POOL_PER_CLIENT: usize = 8;

/// Every drive gets its own number, so ids created in one run never collide with another's.
pub static RUNS: AtomicU64 = AtomicU64::new(0);

/// One operation's place in a drive: which client, its own iteration, a drive-wide ticket, and
/// the drive's number.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub client: usize,
    pub i: u64,
    pub n: u64,
    pub run: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Floor,
    Engine,
    /// The engine with `packWrites: together` (same database and buckets).
    Packed,
    Http,
    /// The same service through a raw HTTP/1.1 keep-alive connection per client (as a load
    /// generator such as wrk drives a server), the body parsed into a JSON value: the service's
    /// own cost without reqwest's.
    HttpLean,
    Embedded,
    /// The real `chronos serve` binary as a child process on Mongo+S3 (its memory alone).
    Served,
    /// The same on its embedded default (SQLite + files).
    ServedEmbedded,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Floor => "raw floor",
            Via::Engine => "engine (Mongo+S3)",
            Via::Packed => "engine, packed writes (Mongo+S3)",
            Via::Http => "HTTP (Mongo+S3)",
            Via::HttpLean => "HTTP, lean client (Mongo+S3)",
            Via::Embedded => "engine (embedded)",
            Via::Served => "`chronos serve` (Mongo+S3)",
            Via::ServedEmbedded => "`chronos serve` (embedded)",
        }
    }

    /// Whether this process's counters see the path's Mongo and S3 requests.
    pub fn counted(self) -> bool {
        matches!(self, Via::Floor | Via::Engine | Via::Packed | Via::Http | Via::HttpLean)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Create,
    Update,
    PutOnly,
    GetLatest,
    GetVersion,
    List,
    Enrich,
    Restore,
    /// The floor of a restore that batches each page's Mongo writes into one transaction.
    RestoreBatched,
    /// The floor of a restore by reference: batched pages and no payload requests.
    RestoreByRef,
    /// getLatest over many concurrent keep-alive connections to a `chronos serve` child.
    Connections,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Update => "update",
            Workload::PutOnly => "S3 PUT alone",
            Workload::GetLatest => "getLatest",
            Workload::GetVersion => "getVersion",
            Workload::List => "list",
            Workload::Enrich => "enrich",
            Workload::Restore => "restoreCollection",
            Workload::RestoreBatched => "restoreCollection, batched copy",
            Workload::RestoreByRef => "restoreCollection, by reference",
            Workload::Connections => "getLatest over N keep-alive connections",
        }
    }

    /// The floor a Chronos figure is a ratio to. Enrich's floor is the update floor (a merge
    /// needs no more calls than a write: the previous data comes with the head one read
    /// fetches), measured around the enrich paths as its own row.
    pub fn floor(self) -> Workload {
        match self {
            Workload::Restore => Workload::RestoreByRef,
            w => w,
        }
    }

    pub fn what(self, via: Via) -> &'static str {
        use {Via::*, Workload::*};
        match (self, via) {
            (Create, Floor) => "S3 PUT + txn{insert version, upsert head}",
            (Update, Floor) => "S3 PUT + txn{insert version, update head at ov}",
            (Enrich, Floor) => "the update floor: S3 PUT + txn{insert version, update head at ov}",
            (PutOnly, _) => "one PutObject of the record",
            (GetLatest, Floor) => "findOne head by _id",
            (GetVersion, Floor) => "findOne version + S3 GET",
            (List, Floor) => "find by status, sort _id, limit 20",
            (Restore, Floor) => "per item: S3 GET + S3 PUT + txn, 16 in flight (copying)",
            (RestoreBatched, _) => "per 500-item page: S3 GET + PUT each (64 in flight), one txn of 3 commands",
            (RestoreByRef, _) => {
                "per 500-item page: find heads, find targets, one txn{insert versions, update heads}; no S3"
            }
            (Connections, _) => "GET …/items/{id} on each of N keep-alive connections, one request at a time",
            (GetLatest, HttpLean) => "GET …/items/{id} on a raw keep-alive connection, body parsed",
            (List, HttpLean) => "GET …/items?filter={status}&limit=20 on a raw keep-alive connection, body parsed",
            (Create, Http) => "POST …/items?id=",
            (Update, Http) => "PUT …/items/{id} with If-Match",
            (GetLatest, Http) => "GET …/items/{id}",
            (GetVersion, Http) => "GET …/items/{id}?ov=0",
            (List, Http) => "GET …/items?filter={status}&limit=20",
            (Enrich, Http) => "PATCH …/items/{id}",
            (Restore, Http) => "POST …/restore page by page (forward again)",
            (Create, _) => "Engine::create",
            (Update, _) => "Engine::update with expected ov",
            (GetLatest, _) => "Engine::get_latest (data inline)",
            (GetVersion, _) => "Engine::get_at(ov 0)",
            (List, _) => "Engine::list {status}, limit 20",
            (Enrich, _) => "Engine::enrich, one patch",
            (Restore, _) => "Engine::restore_collection to before the updates (by reference)",
        }
    }
}

/// The pool item a client writes on its i-th operation (each client owns its own items).
pub fn own_item(t: Tick) -> usize {
    t.client * POOL_PER_CLIENT + (t.i as usize % POOL_PER_CLIENT)
}

/// A pseudo-random pool item to read (spreads reads over the pool without an RNG).
pub fn any_item(t: Tick, pool: usize) -> usize {
    (t.n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % pool
}

/// What the workloads share.
pub struct Ctx {
    pub engine: Arc<Engine>,
    /// The same stores with write packing on.
    pub packed: Arc<Engine>,
    pub embedded: Arc<Engine>,
    pub http: HttpClient,
    /// Where the in-process service listens, and each client's raw connection to it
    /// ([`Via::HttpLean`]; opened on first use).
    pub addr: std::net::SocketAddr,
    pub lean: Vec<tokio::sync::Mutex<Option<Conn>>>,
    pub floor: Floor,
    pub who: Attribution,
    pub pool: usize,
    pub list_pool: u64,
    pub items: CollectionName,
    pub created: CollectionName,
    pub listed: CollectionName,
    /// The ov of each pool item: engine and HTTP share a pool; the floor and the embedded
    /// engine have their own. Only the owning client writes an item, so plain loads and stores do.
    pub ovs: [Vec<AtomicU64>; 3],
}

impl Ctx {
    pub fn engine(&self, via: Via) -> &Engine {
        match via {
            Via::Embedded => &self.embedded,
            Via::Packed => &self.packed,
            _ => &self.engine,
        }
    }

    pub fn ovs(&self, via: Via) -> &[AtomicU64] {
        match via {
            Via::Engine | Via::Packed | Via::Http | Via::HttpLean | Via::Served => &self.ovs[0],
            Via::Floor => &self.ovs[1],
            Via::Embedded | Via::ServedEmbedded => &self.ovs[2],
        }
    }

    /// GET `path` on client `client`'s raw connection to the service; the body, parsed.
    async fn lean_get(&self, client: usize, path: &str) -> Result<serde_json::Value, String> {
        let slot = self.lean.get(client).ok_or("no connection slot for this client")?;
        let mut slot = slot.lock().await;
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(Conn::open(self.addr).await?),
        };
        let status = match conn.request("GET", path, None).await {
            Ok(status) => status,
            Err(e) => {
                // Half a response may be left on it: the next request opens a new one.
                *slot = None;
                return Err(e);
            }
        };
        match status {
            200 => serde_json::from_slice(&conn.buf).map_err(text),
            status => Err(format!("GET {path}: status {status}")),
        }
    }

    /// Create pool item `n` (setup).
    pub async fn seed(&self, via: Via, collection: &CollectionName, id: String, n: u64) -> Result<(), String> {
        match via {
            Via::Floor => self.floor.write("fp", &id, 0, n, 0).await,
            _ => {
                let id = name(&id)?;
                let engine = self.engine(via);
                engine
                    .create(collection, Some(id), record(n, 0), &self.who)
                    .await
                    .map(drop)
                    .map_err(text)
            }
        }
    }

    /// One operation of a workload along one path.
    pub async fn op(&self, w: Workload, via: Via, t: Tick) -> Result<(), String> {
        use {Via::*, Workload::*};
        let engine = self.engine(via);
        let any = pool_id(any_item(t, self.pool));
        match (w, via) {
            (Create, Floor) => {
                let id = format!("c{}-{}-{}", t.run, t.client, t.i);
                self.floor.write("fc", &id, 0, t.n, t.client).await
            }
            (Create, Http) => {
                let id = format!("h{}-{}-{}", t.run, t.client, t.i);
                let data = record(t.n, t.client);
                let opts = Default::default();
                self.http
                    .create("default", self.created.as_str(), Some(&id), &data, &opts)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (Create, _) => {
                let id = name(&format!("e{}-{}-{}", t.run, t.client, t.i))?;
                let data = record(t.n, t.client);
                engine
                    .create(&self.created, Some(id), data, &self.who)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (Update | Enrich, _) => {
                let k = own_item(t);
                let ovs = self.ovs(via);
                let expected = ovs[k].load(Ordering::Relaxed);
                let id = pool_id(k);
                let opts = client::WriteOptions {
                    expected_ov: Some(expected),
                    ..Default::default()
                };
                let ov = match (w, via) {
                    // A merge has no raw counterpart: the enrich floor is the update floor.
                    (_, Floor) => self
                        .floor
                        .write("fp", &id, expected + 1, t.n, t.client)
                        .await
                        .map(|_| expected + 1),
                    (Update, Http) => {
                        let data = record(t.n, t.client);
                        self.http
                            .update("default", self.items.as_str(), &id, &data, &opts)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    (Update, _) => {
                        let data = record(t.n, t.client);
                        let id = name(&id)?;
                        engine
                            .update(&self.items, &id, data, Some(expected), &self.who)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    (_, Http) => {
                        let patches = [patch(t.n)];
                        let fid = Some("bench");
                        self.http
                            .enrich("default", self.items.as_str(), &id, &patches, fid, &opts)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                    _ => {
                        let how = Enrichment {
                            function_id: Some("bench".into()),
                            expected_ov: Some(expected),
                        };
                        let id = name(&id)?;
                        engine
                            .enrich(&self.items, &id, &[patch(t.n)], &how, &self.who)
                            .await
                            .map(|o| o.ov)
                            .map_err(text)
                    }
                }?;
                ovs[k].store(ov, Ordering::Relaxed);
                Ok(())
            }
            (PutOnly, _) => {
                let body = serde_json::to_vec(&record(t.n, t.client)).map_err(text)?;
                self.floor
                    .put(&format!("put/{}/{}/{}", t.run, t.client, t.i), Bytes::from(body))
                    .await
            }
            (GetLatest, Floor) => self.floor.find_head("fp", &any).await,
            (GetLatest, Http) => {
                let latest = client::Version::Latest;
                self.http
                    .get("default", self.items.as_str(), &any, &latest, false)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetLatest, HttpLean) => {
                let path = format!("/v1/default/{}/items/{any}", self.items);
                self.lean_get(t.client, &path).await.map(drop)
            }
            (GetLatest, _) => {
                let id: ItemId = name(&any)?;
                engine
                    .get_latest(&self.items, &id, ReadOptions::default())
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetVersion, Floor) => self.floor.get_version("fp", &any, 0).await,
            (GetVersion, Http) => {
                let v0 = client::Version::Ov(0);
                self.http
                    .get("default", self.items.as_str(), &any, &v0, false)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (GetVersion, _) => {
                let id: ItemId = name(&any)?;
                engine
                    .get_at(&self.items, &id, VersionTarget::Ov(0), ReadOptions::default())
                    .await
                    .map(drop)
                    .map_err(text)
            }
            (List, _) => {
                let status = format!("s{}", t.n % STATUSES);
                let len = match via {
                    Floor => self.floor.list(&status).await?,
                    Http => {
                        let p = client::ListParams {
                            filter: Some(json!({"status": status})),
                            limit: Some(LIST_LIMIT),
                            ..Default::default()
                        };
                        self.http
                            .list("default", self.listed.as_str(), &p)
                            .await
                            .map_err(text)?
                            .items
                            .len()
                    }
                    HttpLean => {
                        // `{"status":"s<n>"}`, percent-encoded.
                        let path = format!(
                            "/v1/default/{}/items?filter=%7B%22status%22%3A%22{status}%22%7D&limit={LIST_LIMIT}",
                            self.listed
                        );
                        let page = self.lean_get(t.client, &path).await?;
                        page["items"].as_array().map_or(0, Vec::len)
                    }
                    _ => {
                        let opts = ListOptions {
                            filter: json!({"status": status}),
                            limit: LIST_LIMIT,
                            ..Default::default()
                        };
                        engine.list(&self.listed, &opts).await.map_err(text)?.records.len()
                    }
                };
                // A short page would be a cheap, wrong measurement.
                let want = LIST_LIMIT.min((self.list_pool / STATUSES) as usize);
                if len == want {
                    Ok(())
                } else {
                    Err(format!("list page had {len} records, expected {want}"))
                }
            }
            (Restore | RestoreBatched | RestoreByRef, _) => {
                Err("a restore is measured as a whole, not per operation".into())
            }
            (Connections, _) => Err("the memory workload drives its own connections".into()),
        }
    }
}
