//! Turns a validated configuration into live engines. Clients are created once and shared: one
//! MongoDB client per distinct URI, one S3 client per endpoint and key — never one per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::{RemoteStorage, S3Access, Storage};
use crate::engine::backends::{
    LocalPayloadStore, MongoMetaStore, MongoQueue, S3Connection, S3PayloadStore, SqliteMetaStore, SqliteQueue,
};
use crate::engine::{DEFAULT_DATABASE, Engine, EngineSettings, Error, Failure, MetaWrite, Result, Stores};

#[derive(Default)]
pub struct Connections {
    mongo: Mutex<HashMap<String, mongodb::Client>>,
    s3: Mutex<HashMap<(String, String), aws_sdk_s3::Client>>,
}

impl Connections {
    pub async fn mongo(&self, uri: &str) -> Result<mongodb::Client> {
        if let Some(c) = self.lock_mongo().get(uri) {
            return Ok(c.clone());
        }
        let mut options = mongodb::options::ClientOptions::parse(uri).await.map_err(|e| {
            Error::validation(
                "mongoUri",
                format!("not a usable MongoDB URI: {}", redact(&e.to_string(), uri)),
            )
        })?;
        options.command_event_handler = Some(mongodb::event::EventHandler::callback(record_mongo_command));
        let client = mongodb::Client::with_options(options).map_err(Error::metadata)?;
        Ok(self.lock_mongo().entry(uri.to_owned()).or_insert(client).clone())
    }

    pub fn s3(&self, access: &S3Access) -> aws_sdk_s3::Client {
        let key = (access.endpoint.clone(), access.access_key.clone());
        let mut map = self.s3.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_insert_with(|| s3_connection(access).client()).clone()
    }

    fn lock_mongo(&self) -> std::sync::MutexGuard<'_, HashMap<String, mongodb::Client>> {
        self.mongo.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The S3 store's connection for an endpoint the configuration names (configuration knows no
/// backend type; this is where the two meet).
pub fn s3_connection(access: &S3Access) -> S3Connection {
    let S3Access {
        endpoint,
        region,
        access_key,
        secret_key,
        force_path_style,
    } = access.clone();
    S3Connection {
        endpoint,
        region,
        access_key,
        secret_key,
        force_path_style,
    }
}

/// Backend call latency for /metrics, from the driver's command monitoring (it times each
/// command on the wire, so nothing in the write path has to).
fn record_mongo_command(event: mongodb::event::command::CommandEvent) {
    use mongodb::event::command::CommandEvent;
    let (command, duration, outcome) = match event {
        CommandEvent::Succeeded(e) => (e.command_name, e.duration, "ok"),
        CommandEvent::Failed(e) => (e.command_name, e.duration, "error"),
        _ => return,
    };
    metrics::histogram!(
        "chronos_backend_call_duration_seconds",
        "backend" => "mongodb", "call" => command, "outcome" => outcome
    )
    .record(duration.as_secs_f64());
}

/// Never let a password inside a URI reach a log line or an error message.
fn redact(message: &str, uri: &str) -> String {
    message.replace(uri, "<mongo uri>")
}

/// Open the engine of database `key` (as the API addresses it) where `storage` says, and check
/// its backends answer. Its objects are kept under `<key>/` in each bucket
/// ([`Engine::for_database`]), so databases may share buckets.
pub async fn open(key: &str, storage: &Storage, settings: EngineSettings, conns: &Connections) -> Result<Arc<Engine>> {
    let on_s3 = matches!(storage, Storage::Remote(_));
    let settings = EngineSettings {
        pack_writes: settings.pack_writes.resolve(on_s3),
        ..settings
    };
    match storage {
        Storage::Embedded { dir } => Ok(Arc::new(embedded(dir, key, settings)?)),
        Storage::Remote(RemoteStorage {
            mongo_uri,
            db_name,
            s3,
            json_bucket,
            content_bucket,
            backups_bucket,
            object_lock,
        }) => {
            let mongo = conns.mongo(mongo_uri).await?;
            let meta = MongoMetaStore::new(mongo.clone(), db_name);
            meta.ping().await?;
            let client = conns.s3(s3);
            let bucket = |name: &String| {
                Arc::new(S3PayloadStore::new(client.clone(), name.clone()).with_object_lock(*object_lock))
            };
            let stores = Stores {
                meta: Arc::new(meta),
                payloads: bucket(json_bucket),
                backups: bucket(backups_bucket),
                content: bucket(content_bucket),
                queue: Arc::new(MongoQueue::new(mongo, db_name)),
            };
            let engine = Engine::for_database(key, stores, settings)?;
            engine.ping().await?;
            Ok(Arc::new(engine))
        }
    }
}

/// The engine of database `database` on the embedded backends: `dir/chronos.db` and
/// `dir/payloads/` (with `backups/` and `content/`), created if needed.
pub fn embedded(dir: &Path, database: &str, settings: EngineSettings) -> Result<Engine> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::metadata(Failure::new(
            format!("cannot create data directory {}: {e}", dir.display()),
            e,
        ))
    })?;
    // The metadata store takes the directory's lock, so it opens first.
    let meta = SqliteMetaStore::open(&dir.join("chronos.db"))?;
    let payloads = LocalPayloadStore::open(&dir.join("payloads"))?;
    let backups = LocalPayloadStore::open(&dir.join("backups"))?;
    let content = LocalPayloadStore::open(&dir.join("content"))?;
    let queue = SqliteQueue::new(meta.clone());
    let stores = Stores {
        meta: Arc::new(meta),
        payloads: Arc::new(payloads),
        backups: Arc::new(backups),
        content: Arc::new(content),
        queue: Arc::new(queue),
    };
    Engine::for_database(database, stores, settings)
}

/// Where every logical database a configuration names lives, and with which settings, keyed as
/// the API addresses them: the routed databases (`databaseTypes`, `databases`), or else one
/// database, `default`.
pub fn storages(
    config: &crate::config::Config,
    default_dir: &Path,
) -> crate::error::Result<std::collections::BTreeMap<String, (Storage, EngineSettings)>> {
    match crate::config::routing::Routes::from_config(config)? {
        Some(routes) => Ok(routes
            .all()
            .map(|r| (r.key.clone(), (r.storage.clone(), r.settings.clone())))
            .collect()),
        None => Ok([(
            DEFAULT_DATABASE.to_owned(),
            (
                config.storage(default_dir).map_err(crate::error::Error::Secret)?,
                config.engine_settings(),
            ),
        )]
        .into()),
    }
}

/// Open every logical database a configuration names (see [`storages`]). Clients are shared
/// between databases on the same backends.
pub async fn open_all(
    config: &crate::config::Config,
    default_dir: &Path,
    conns: &Connections,
) -> crate::error::Result<std::collections::BTreeMap<String, Arc<Engine>>> {
    let mut out = std::collections::BTreeMap::new();
    for (key, (storage, settings)) in storages(config, default_dir)? {
        let engine = open(&key, &storage, settings, conns)
            .await
            .map_err(|source| crate::error::Error::Open {
                key: key.clone(),
                place: Some(describe(&storage)),
                source,
            })?;
        out.insert(key, engine);
    }
    Ok(out)
}

/// Describe where data lives, for the start-up banner (no secrets).
pub fn describe(storage: &Storage) -> String {
    match storage {
        Storage::Embedded { dir } => format!("embedded: SQLite + files in {}", display_dir(dir)),
        Storage::Remote(RemoteStorage {
            db_name,
            s3,
            json_bucket,
            ..
        }) => format!(
            "MongoDB database `{db_name}`, S3 bucket `{json_bucket}` at {}",
            s3.endpoint
        ),
    }
}

fn display_dir(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .display()
        .to_string()
}
