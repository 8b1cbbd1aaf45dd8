//! The Kubernetes operator: four custom resources and their controllers.
//!
//! - [`database`]: `ChronosDatabase` — backends, buckets, and the engine that serves it
//!   (Deployment, Service, configuration Secret): its own, or its namespace's shared engine.
//! - [`collection`]: `ChronosCollection` — indexes of one collection.
//! - [`restore`]: `ChronosRestore` — a one-shot, resumable restore of an item or a collection.
//! - [`retention`]: `ChronosRetention` — scheduled cost tiering across databases.
//!
//! Every reconciler is the same pipeline: read → validate → build the desired objects (pure, no
//! client) → apply them by server-side apply under [`FIELD_MANAGER`] → write status with
//! [`conditions`], publishing [`events`] for what changed. [`leader`] makes sure only one
//! replica acts; [`run`] wires it all together.

pub mod backends;
pub mod collection;
pub mod conditions;
pub mod data_gate;
pub mod database;
pub mod events;
pub mod health;
pub mod leader;
pub mod restore;
pub mod retention;
mod runner;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use std::collections::HashMap;
use std::sync::Arc;

use crate::connect::Connections;

pub use runner::{OperatorArgs, Scope, crds, crds_yaml, run, run_controllers};

/// The API group of every Chronos resource.
pub const GROUP: &str = "chronos.dev";
/// The one field manager of every server-side apply, so our fields are owned by one manager.
pub const FIELD_MANAGER: &str = "chronos-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    /// The spec cannot work as written; the user must change it.
    #[error("invalid spec: {0}")]
    Invalid(String),
    /// Something the spec refers to is not there (yet): a Secret, a database.
    #[error("{0}")]
    Missing(String),
    /// Something the spec refers to is there but not for Chronos to use (an unlabelled Secret).
    #[error("{0}")]
    NotPermitted(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A step must wait for the cluster to catch up (pods to stop); retried, not a failure.
    #[error("waiting for {0}")]
    Waiting(String),
    #[error("cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("leader election: {0}")]
    Leader(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying later, unchanged, may help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::Invalid(_))
    }
}

/// What every reconciler shares.
pub struct Context {
    pub client: kube::Client,
    /// MongoDB and S3 clients, one per backend, shared by every reconcile.
    pub conns: Connections,
    /// The engine image a dedicated engine gets when its spec names none, and the image of
    /// every namespace's shared engine.
    pub engine_image: String,
    /// The image repositories a dedicated engine's `spec.engine.image` may name (by default
    /// [`engine_image`](Self::engine_image)'s): an engine pod mounts the database's Secrets, so
    /// a ChronosDatabase author must not choose what runs there.
    pub allowed_engine_images: Vec<String>,
    /// Replicas of each namespace's shared engine.
    pub shared_engine_replicas: i32,
    /// Items per page of a collection restore (status is written after each page).
    pub restore_page: usize,
    /// Publishes Kubernetes Events ([`events`]).
    pub recorder: Recorder,
    /// One lock per namespace, held while its engines are rendered and applied (see
    /// [`Context::namespace_lock`]).
    namespace_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Keeps a database's data from being dropped while a collection or restore reconcile
    /// writes to it.
    pub data_gates: data_gate::DataGates,
}

impl Context {
    pub fn new(client: kube::Client, engine_image: impl Into<String>) -> Arc<Context> {
        Arc::new(Context::with_identity(client, engine_image, None))
    }

    /// A context whose Events name `identity` (the pod) as the reporting instance.
    pub fn with_identity(client: kube::Client, engine_image: impl Into<String>, identity: Option<String>) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: identity,
        };
        let engine_image: String = engine_image.into();
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            conns: Connections::default(),
            allowed_engine_images: vec![database::build::image_repository(&engine_image).to_owned()],
            engine_image,
            shared_engine_replicas: 1,
            restore_page: crate::engine::settings::RESTORE_PAGE,
            namespace_locks: std::sync::Mutex::default(),
            data_gates: data_gate::DataGates::default(),
        }
    }

    /// The lock of namespace `ns`. The shared engine's configuration is rendered from a fresh
    /// list of the namespace's databases by whichever database reconciles; holding this lock
    /// from that list to the apply means the last apply always rendered the latest list (only
    /// the lease holder reconciles, so a process-local lock suffices).
    pub fn namespace_lock(&self, ns: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.namespace_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(ns.to_owned()).or_default().clone()
    }
}

/// Requeue delays: short for transient trouble, long for periodic drift checks.
pub mod requeue {
    use std::time::Duration;

    /// A backend or the API server failed: try again soon.
    pub const TRANSIENT: Duration = Duration::from_secs(15);
    /// Waiting for the cluster (pods to stop); the watched objects' changes usually come first.
    pub const WAITING: Duration = Duration::from_secs(5);
    /// Something referenced is missing; it may be created any moment.
    pub const MISSING: Duration = Duration::from_secs(30);
    /// All is well: look again now and then (an index dropped by hand, a backend gone).
    pub const DRIFT: Duration = Duration::from_secs(300);
}

/// Write a resource's status by server-side apply under the operator's field manager (the same
/// for every kind).
pub async fn apply_status<K>(api: &kube::Api<K>, name: &str, status: &impl serde::Serialize) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::api::{Patch, PatchParams};
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
        .await?;
    Ok(())
}

/// The error policy of every controller: transient trouble is retried soon; an invalid spec
/// waits for the user (its condition already says what is wrong).
pub fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::Waiting(_) = error {
        tracing::info!(%error, "not done yet");
        Action::requeue(requeue::WAITING)
    } else if error.is_transient() {
        tracing::warn!(%error, "reconcile failed; retrying");
        Action::requeue(requeue::TRANSIENT)
    } else {
        Action::await_change()
    }
}
