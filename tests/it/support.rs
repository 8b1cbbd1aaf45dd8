//! Test harness: builds engines over each backend pair. Real services come from
//! `scripts/services.sh start`; a test that needs one fails loudly when it is missing.

use std::sync::{Arc, Mutex};

use chronos::engine::backends::LocalPayloadStore;
use chronos::engine::backends::MemoryQueue;
use chronos::engine::backends::MongoMetaStore;
use chronos::engine::backends::MongoQueue;
use chronos::engine::backends::SqliteMetaStore;
use chronos::engine::backends::SqliteQueue;
use chronos::engine::backends::{MemoryMetaStore, MemoryPayloadStore};
use chronos::engine::backends::{S3Connection, S3PayloadStore};
use chronos::engine::store::decorators::{Counting, Faults, Faulty, RequestCounter};
use chronos::engine::store::queue::QueueStore;
use chronos::engine::{Engine, EngineSettings, MetaStore, MetaWrite, PayloadStore};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;

/// An engine plus direct handles on its stores, so tests can look underneath.
pub struct Harness {
    pub engine: Arc<Engine>,
    /// The payload store the engine writes to (behind the fault switch).
    pub payloads: Arc<dyn PayloadStore>,
    pub meta: Arc<dyn MetaStore>,
    pub queue: Arc<dyn QueueStore>,
    /// Makes payload writes fail, like an S3 outage, while switched on.
    pub faults: Arc<Faults>,
    aux: Arc<dyn PayloadStore>,
    settings: EngineSettings,
    /// The MongoDB commands sent so far, name and body (empty for other backends).
    pub commands: Commands,
    /// Keeps an embedded backend's data directory alive as long as the engine.
    pub _dir: Option<tempfile::TempDir>,
    /// The metadata store and queue underneath, read raw by [`Harness::metadata_text`].
    pub raw: Option<RawMeta>,
}

/// Where a harness's metadata and queue live, for tests that read every byte of them.
#[derive(Clone)]
pub enum RawMeta {
    Memory(MemoryMetaStore, Arc<MemoryQueue>),
    Sqlite(std::path::PathBuf),
    Mongo(mongodb::Client, String),
}

impl Harness {
    fn assemble(
        meta: Arc<dyn MetaStore>,
        payloads: Arc<dyn PayloadStore>,
        aux: Arc<dyn PayloadStore>,
        queue: Arc<dyn QueueStore>,
        settings: EngineSettings,
    ) -> Harness {
        let faults = Arc::new(Faults::default());
        let payloads: Arc<dyn PayloadStore> = Arc::new(Faulty::new(payloads, faults.clone()));
        let mut h = Harness {
            engine: Arc::new(Engine::new(meta.clone(), payloads.clone(), EngineSettings::default())),
            payloads,
            meta,
            queue,
            faults,
            aux,
            settings,
            commands: Default::default(),
            _dir: None,
            raw: None,
        };
        h.engine = h.replica();
        h
    }

    /// Another engine over the same stores: a second replica of the same database.
    pub fn replica(&self) -> Arc<Engine> {
        self.replica_with(self.settings.clone())
    }

    /// A replica with other settings (say, before a collection map changed).
    pub fn replica_with(&self, settings: EngineSettings) -> Arc<Engine> {
        self.replica_over(self.payloads.clone(), settings)
    }

    /// A replica whose requests to the JSON bucket `counter` counts.
    pub fn counted_replica(&self, counter: Arc<RequestCounter>) -> Arc<Engine> {
        let payloads = Arc::new(Counting::new(self.payloads.clone(), counter));
        self.replica_over(payloads, self.settings.clone())
    }

    fn replica_over(&self, payloads: Arc<dyn PayloadStore>, settings: EngineSettings) -> Arc<Engine> {
        Arc::new(
            Engine::new(self.meta.clone(), payloads, settings)
                .with_backups(self.aux.clone())
                .with_content(self.aux.clone())
                .with_queue(self.queue.clone()),
        )
    }

    /// An engine over this harness's buckets and another metadata store: what serves the
    /// database once its metadata is rebuilt from the buckets into `meta`.
    pub fn over(&self, meta: Arc<dyn MetaStore>) -> Arc<Engine> {
        Arc::new(
            Engine::new(meta, self.payloads.clone(), self.settings.clone())
                .with_backups(self.aux.clone())
                .with_content(self.aux.clone())
                .with_queue(self.queue.clone()),
        )
    }

    /// Point the versions (and head) of `id` whose data is version `ov`'s payload at `to`, from
    /// wherever they name it now, as compaction or a hold would after moving the bytes; returns
    /// how many changed.
    pub async fn move_payload(
        &self,
        c: &chronos::engine::CollectionName,
        id: &chronos::engine::ItemId,
        ov: u64,
        to: Option<&chronos::engine::PackSlot>,
    ) -> u64 {
        let v = self.meta.version(c, id, ov).await.unwrap().expect("an indexed version");
        let loc = v.payload();
        let moving = chronos::engine::store::Repoint {
            payload: (loc.ov, loc.write_id),
            from: loc.pack.map(|p| p.key.as_str()),
            to,
        };
        self.meta.repoint_payload(c, id, moving).await.unwrap()
    }

    /// Every document of the MongoDB database, every row of every SQLite table, or everything
    /// the in-memory stores hold, as text: the metadata store and the queue, read raw.
    pub async fn metadata_text(&self) -> String {
        match self.raw.clone().expect("this harness records where its metadata lives") {
            RawMeta::Memory(meta, queue) => format!("{}\n{}", meta.dump(), queue.dump()),
            RawMeta::Sqlite(path) => tokio::task::spawn_blocking(move || sqlite_text(&path)).await.unwrap(),
            RawMeta::Mongo(client, db) => {
                use futures::TryStreamExt;
                let db = client.database(&db);
                let mut out = String::new();
                for name in db.list_collection_names().await.unwrap() {
                    let docs: Vec<mongodb::bson::Document> = db
                        .collection(&name)
                        .find(mongodb::bson::doc! {})
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .unwrap();
                    for d in docs {
                        out.push_str(&format!("{name}: {d}\n"));
                    }
                }
                out
            }
        }
    }

    /// The store the engine keeps manifests (backups) and content in.
    pub fn aux(&self) -> &Arc<dyn PayloadStore> {
        &self.aux
    }

    pub fn take_commands(&self) -> Vec<String> {
        self.take_command_bodies().into_iter().map(|(name, _)| name).collect()
    }

    /// The commands sent since the last take, with their bodies (write and read concerns…).
    pub fn take_command_bodies(&self) -> Vec<(String, mongodb::bson::Document)> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }
}

pub fn memory(settings: EngineSettings) -> Harness {
    let (meta, queue) = (MemoryMetaStore::new(), Arc::new(MemoryQueue::new()));
    let mut h = Harness::assemble(
        Arc::new(meta.clone()),
        Arc::new(MemoryPayloadStore::new()),
        Arc::new(MemoryPayloadStore::new()),
        queue.clone(),
        settings,
    );
    h.raw = Some(RawMeta::Memory(meta, queue));
    h
}

/// Every row of every table of the SQLite database at `path`, as text.
fn sqlite_text(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut tables = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap();
    let names: Vec<String> = tables
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for name in names {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            out.push_str(&name);
            for i in 0..columns {
                let v = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                out.push_str(&format!(" | {v}"));
            }
            out.push('\n');
        }
    }
    out
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the real services. Run `scripts/test.sh`, or `scripts/services.sh start` and `source scripts/test-env.sh`")
    })
}

pub fn s3_connection() -> S3Connection {
    S3Connection {
        endpoint: env("CHRONOS_TEST_S3_ENDPOINT"),
        region: env("CHRONOS_TEST_S3_REGION"),
        access_key: env("CHRONOS_TEST_S3_ACCESS_KEY"),
        secret_key: env("CHRONOS_TEST_S3_SECRET_KEY"),
        force_path_style: true,
    }
}

/// A unique name for a database or bucket, so tests run in parallel without sharing state.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// MongoDB commands as the driver's command monitoring saw them start: name and body.
pub type Commands = Arc<Mutex<Vec<(String, mongodb::bson::Document)>>>;

pub async fn mongo_client(commands: Commands) -> mongodb::Client {
    mongo_client_at(&env("CHRONOS_TEST_MONGO_URI"), commands).await
}

/// A client of the MongoDB server at `uri` that records the commands it sends.
pub async fn mongo_client_at(uri: &str, commands: Commands) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(uri)
        .await
        .expect("a valid MongoDB URI");
    options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        if let CommandEvent::Started(s) = e {
            commands.lock().unwrap().push((s.command_name, s.command));
        }
    }));
    mongodb::Client::with_options(options).expect("MongoDB client")
}

/// An engine on the real mongod + S3 server, in a fresh database and a fresh bucket.
pub async fn mongo_s3(settings: EngineSettings) -> Harness {
    mongo_s3_at(&env("CHRONOS_TEST_MONGO_URI"), settings).await
}

/// [`mongo_s3`] with MongoDB reached at `uri` (e.g. through a fault-injecting proxy).
pub async fn mongo_s3_at(uri: &str, settings: EngineSettings) -> Harness {
    let commands: Commands = Default::default();
    let client = mongo_client_at(uri, commands.clone()).await;
    let db_name = unique("t").replace('-', "_");
    let meta = MongoMetaStore::new(client.clone(), &db_name);
    meta.ping().await.expect("mongod reachable and a replica set");
    let client_for_raw = client.clone();
    let queue = MongoQueue::new(client, &db_name);
    let store = S3PayloadStore::new(s3_connection().client(), unique("chronos-test"));
    assert!(
        store.ensure_bucket().await.expect("S3 server reachable"),
        "bucket was new"
    );
    let payloads: Arc<dyn PayloadStore> = Arc::new(store);
    // Manifests and content have distinct key prefixes, so tests keep both in one more bucket.
    let aux = S3PayloadStore::new(s3_connection().client(), unique("chronos-aux"));
    aux.ensure_bucket().await.expect("S3 server reachable");
    let mut harness = Harness::assemble(Arc::new(meta), payloads, Arc::new(aux), Arc::new(queue), settings);
    harness.raw = Some(RawMeta::Mongo(client_for_raw, db_name));
    harness.commands = commands;
    harness.take_commands();
    harness
}

/// An engine on the embedded backends (SQLite + local directory) in a fresh temporary directory.
pub fn embedded(settings: EngineSettings) -> Harness {
    let dir = tempfile::tempdir().expect("temporary directory");
    let meta = SqliteMetaStore::open(&dir.path().join("chronos.db")).expect("open SQLite");
    let payloads: Arc<dyn PayloadStore> =
        Arc::new(LocalPayloadStore::open(&dir.path().join("payloads")).expect("payload dir"));
    let aux = Arc::new(LocalPayloadStore::open(&dir.path().join("aux")).expect("aux dir"));
    let queue = Arc::new(SqliteQueue::new(meta.clone()));
    let mut harness = Harness::assemble(Arc::new(meta), payloads, aux, queue, settings);
    harness.raw = Some(RawMeta::Sqlite(dir.path().join("chronos.db")));
    harness._dir = Some(dir);
    harness
}

/// A client of the test Kubernetes API server (`scripts/kube-apiserver.sh start`), with the
/// Chronos CRDs applied and established (once per test binary).
pub async fn kube_client() -> kube::Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    chronos::install_crypto_provider();
    let path = std::env::var("CHRONOS_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!("CHRONOS_TEST_KUBECONFIG is not set: the operator tests need the test API server. Run `scripts/test.sh`, or `scripts/kube-apiserver.sh start` and `source ~/.cache/chronos-test/run/kube/env`")
    });
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    let client = kube::Client::try_from(config).expect("Kubernetes client");
    static CRDS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CRDS.get_or_init(|| apply_crds(client.clone())).await;
    client
}

async fn apply_crds(client: kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    use kube::runtime::{conditions, wait::await_condition};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in chronos::operator::crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        crds.patch(&name, &PatchParams::apply("chronos-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("the API server accepts the CRD");
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watching the CRD");
    }
    // Right after a CRD is established its first LIST can still fail briefly: wait for one.
    let databases: Api<chronos::operator::crd::ChronosDatabase> = Api::all(client);
    for attempt in 0.. {
        match databases.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(_) if attempt < 100 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => panic!("chronos CRDs not served: {e}"),
        }
    }
}
