//! A `ChronosDatabase`'s backends as the operator reaches them: the Secret values it references,
//! its buckets, an engine over them, and — only under `deletionPolicy: Delete` — dropping them.
//! Clients come from the shared [`Connections`](crate::connect::Connections), one per backend.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::context::Context;
use super::controllers::database::claims;
use super::crd::collection::ChronosCollection;
use super::crd::database::{ChronosDatabase, database_key};
use super::error::{Error, Result};
use crate::config::{RemoteStorage, S3Access, Storage};
use crate::engine::backends::S3PayloadStore;
use crate::engine::store::ObjectLockStatus;
use crate::engine::{Engine, EngineSettings, PayloadStore};

/// The label a Secret must carry (value `"true"`) for the operator to use it: whoever may create
/// a ChronosDatabase must not be able to point the operator (and an engine pod) at any Secret of
/// the namespace, so its owner opts each one in.
pub const CREDENTIALS_LABEL: &str = "chronos.dev/credentials";

/// One key of a Secret in `namespace`, as text; only from a Secret labelled
/// [`CREDENTIALS_LABEL`], checked before its data is looked at.
async fn secret_value(client: &kube::Client, namespace: &str, name: &str, key: &str) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Missing(format!("Secret {namespace}/{name} not found")))?;
    if secret.labels().get(CREDENTIALS_LABEL).map(String::as_str) != Some("true") {
        return Err(Error::NotPermitted(format!(
            "Secret {namespace}/{name} is not labelled {CREDENTIALS_LABEL}=true; label it to let Chronos use it \
             (kubectl -n {namespace} label secret {name} {CREDENTIALS_LABEL}=true)"
        )));
    }
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| Error::Missing(format!("Secret {namespace}/{name} has no key `{key}`")))?;
    String::from_utf8(bytes.0)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|_| Error::Invalid(format!("Secret {namespace}/{name} key `{key}` is not UTF-8")))
}

/// Where the database's data lives, with the secret values read from its Secrets.
pub async fn storage(client: &kube::Client, db: &ChronosDatabase) -> Result<Storage> {
    let ns = db.namespace().unwrap_or_default();
    let spec = &db.spec;
    let uri_ref = &spec.mongodb.uri_secret_ref;
    let creds = &spec.s3.credentials_secret_ref;
    Ok(Storage::Remote(RemoteStorage {
        mongo_uri: secret_value(client, &ns, &uri_ref.name, &uri_ref.key).await?,
        db_name: spec.mongodb.db_name.clone(),
        s3: S3Access {
            endpoint: spec.s3.endpoint.clone(),
            region: spec.s3.region.clone(),
            access_key: secret_value(client, &ns, &creds.name, &creds.access_key_key).await?,
            secret_key: secret_value(client, &ns, &creds.name, &creds.secret_key_key).await?,
            force_path_style: spec.s3.force_path_style,
        },
        json_bucket: spec.s3.buckets.json.clone(),
        content_bucket: spec.s3.buckets.content.clone(),
        backups_bucket: spec.s3.buckets.backups.clone(),
        object_lock: spec.s3.object_lock,
    }))
}

fn remote(storage: &Storage) -> Result<(&str, &str, &S3Access, [&str; 3])> {
    match storage {
        Storage::Remote(RemoteStorage {
            mongo_uri,
            db_name,
            s3,
            json_bucket,
            content_bucket,
            backups_bucket,
            ..
        }) => Ok((mongo_uri, db_name, s3, [json_bucket, content_bucket, backups_bucket])),
        Storage::Embedded { .. } => Err(Error::Invalid("a ChronosDatabase needs MongoDB and S3".to_owned())),
    }
}

/// A digest of the MongoDB deployment the database's data is on
/// ([`claims::mongo_backend`]).
pub fn mongo_backend(storage: &Storage) -> Result<String> {
    let (uri, ..) = remote(storage)?;
    Ok(claims::mongo_backend(uri))
}

/// Ping MongoDB (it must be a replica set: writes are transactions).
pub async fn ping_mongo(ctx: &Context, storage: &Storage) -> Result<()> {
    let (uri, db_name, ..) = remote(storage)?;
    let meta = crate::engine::backends::MongoMetaStore::new(ctx.conns.mongo(uri).await?, db_name);
    crate::engine::MetaWrite::ping(&meta).await?;
    Ok(())
}

/// Create the three buckets where missing; returns the ones created.
pub async fn ensure_buckets(ctx: &Context, storage: &Storage) -> Result<Vec<String>> {
    let (_, _, s3, buckets) = remote(storage)?;
    let object_lock = matches!(storage, Storage::Remote(r) if r.object_lock);
    let client = ctx.conns.s3(s3);
    let mut created = Vec::new();
    for bucket in buckets {
        let store = S3PayloadStore::new(client.clone(), bucket).with_object_lock(object_lock);
        if store.ensure_bucket().await? {
            created.push(bucket.to_owned());
        }
    }
    Ok(created)
}

/// What the JSON bucket does with Object Lock (`None` when the database did not ask for it):
/// a probe that locks a scratch object and tries to delete it (`engine::backends::s3_lock`).
pub async fn object_lock_status(ctx: &Context, storage: &Storage) -> Result<Option<ObjectLockStatus>> {
    let (_, _, s3, [json, ..]) = remote(storage)?;
    if !matches!(storage, Storage::Remote(r) if r.object_lock) {
        return Ok(None);
    }
    let store = S3PayloadStore::new(ctx.conns.s3(s3), json).with_object_lock(true);
    Ok(Some(PayloadStore::object_lock_status(&store).await?))
}

/// An engine over the database's backends with `settings` (collection maps, counters).
pub async fn engine(ctx: &Context, db: &ChronosDatabase, settings: EngineSettings) -> Result<Arc<Engine>> {
    let storage = storage(&ctx.client, db).await?;
    let key = database_key(db);
    Ok(crate::connect::open(&key, &storage, settings, &ctx.conns).await?)
}

/// Drop the MongoDB database, delete the database's objects (under its key) from the three
/// buckets and remove the buckets left empty. Irreversible: called only for
/// `deletionPolicy: Delete`.
pub async fn drop_data(ctx: &Context, storage: &Storage, key: &str) -> Result<()> {
    let (uri, db_name, s3, buckets) = remote(storage)?;
    let mongo = ctx.conns.mongo(uri).await?;
    mongo
        .database(db_name)
        .drop()
        .await
        .map_err(crate::engine::Error::metadata)?;
    let client = ctx.conns.s3(s3);
    // Every object of this database is under `<key>/` (engine::namespace): delete those, and the
    // bucket only if nothing else is left in it — what another application or database keeps
    // there is not ours to empty.
    let prefix = crate::engine::namespace::database_prefix(key)?;
    for bucket in buckets {
        if S3PayloadStore::new(client.clone(), bucket).drop_prefix(&prefix).await? {
            tracing::info!(%bucket, "bucket kept: it holds objects of others");
        }
    }
    Ok(())
}

/// The engine settings of a database: its defaults plus the map and counters of each of its valid
/// `ChronosCollection`s — what its own engine is configured with, so the operator's writes
/// (restores) index exactly as the engine's do.
pub async fn settings(ctx: &Context, db: &ChronosDatabase) -> Result<EngineSettings> {
    let ns = db.namespace().unwrap_or_default();
    let api: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), &ns);
    let collections = api.list(&kube::api::ListParams::default()).await?.items;
    let mut settings = settings_of(db, &collections);
    // The operator's own writes (restores) to encrypted collections seal and open like the engine's.
    if let Some(r) = &db.spec.defaults.encryption_key_secret_ref {
        let key = secret_value(&ctx.client, &ns, &r.name, &r.key).await?;
        settings.encryption_key = Some(
            crate::engine::sealed::Kek::from_base64(&key)
                .map_err(|e| Error::Invalid(format!("Secret {}/{} key `{}`: {e}", ns, r.name, r.key)))?,
        );
    }
    Ok(settings)
}

/// [`settings`] without the client.
pub fn settings_of(db: &ChronosDatabase, collections: &[ChronosCollection]) -> EngineSettings {
    let mut settings = EngineSettings::default();
    if let Some(engine) = db.spec.defaults.engine_config() {
        settings.inline_max_bytes = engine.inline_max_bytes;
        settings.max_payload_bytes = engine.max_payload_bytes;
    }
    for c in collections.iter().filter(|c| c.spec.database == db.name_any()) {
        if let Ok((name, map)) = c.spec.map() {
            settings
                .counter_rules
                .insert(name.as_str().to_owned(), c.spec.counter_rules());
            settings.collection_maps.insert(name.as_str().to_owned(), map);
        }
    }
    settings
}
