//! What every reconciler shares: the clients and settings in [`Context`], the requeue delays,
//! and the one way a status is written (server-side apply under [`FIELD_MANAGER`]).

use kube::runtime::events::{Recorder, Reporter};
use std::collections::HashMap;
use std::sync::Arc;

use super::controllers::changes::registry::Followers;
use super::controllers::database::names::image_repository;
use super::error::Result;
use super::{backend_hosts, data_gate};
use crate::connect::Connections;

/// The one field manager of every server-side apply, so our fields are owned by one manager.
pub const FIELD_MANAGER: &str = "chronos-operator";
/// The field manager of the change-feed followers' status writes (`status.changes` and the
/// `ChangesFollowed` condition). Server-side apply removes the fields a manager owned and left
/// out of its next apply, so two writers of one status at their own pace (the reconcile, the
/// follower) need a manager each, each applying exactly its own fields.
pub const FEED_FIELD_MANAGER: &str = "chronos-operator-feed";

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
    /// The hosts a ChronosDatabase's backends may be on (`--allowed-backend-hosts`): the
    /// operator connects there from its own namespace, so their author must not choose freely.
    pub backend_hosts: backend_hosts::BackendHosts,
    /// The namespaces the operator watches (`--namespace`); empty: all. A cluster-scoped
    /// ChronosRetention acts only within them, where the operator's Roles give it rights.
    pub watched_namespaces: Vec<String>,
    /// Replicas of each namespace's shared engine.
    pub shared_engine_replicas: i32,
    /// Items per page of a collection restore (status is written after each page).
    pub restore_page: usize,
    /// Publishes Kubernetes Events ([`events`](super::events)).
    pub recorder: Recorder,
    /// One lock per namespace, held while its engines are rendered and applied (see
    /// [`Context::namespace_lock`]).
    namespace_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Keeps a database's data from being dropped while a collection or restore reconcile
    /// writes to it.
    pub data_gates: data_gate::DataGates,
    /// The change-feed follower of each collection (`controllers::changes`).
    pub followers: Followers,
}

impl Context {
    /// Whether the operator watches (and may act in) `namespace`.
    pub fn watches(&self, namespace: &str) -> bool {
        self.watched_namespaces.is_empty() || self.watched_namespaces.iter().any(|ns| ns == namespace)
    }

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
            allowed_engine_images: vec![image_repository(&engine_image).to_owned()],
            backend_hosts: backend_hosts::BackendHosts::default(),
            watched_namespaces: Vec::new(),
            engine_image,
            shared_engine_replicas: 1,
            restore_page: crate::engine::settings::RESTORE_PAGE,
            namespace_locks: std::sync::Mutex::default(),
            data_gates: data_gate::DataGates::default(),
            followers: Followers::default(),
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

/// [`apply_status`] of a namespaced object, in its own namespace.
pub async fn apply_own_status<K>(ctx: &Context, obj: &K, status: &impl serde::Serialize) -> Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use kube::ResourceExt;
    let api = kube::Api::<K>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    apply_status(&api, &obj.name_any(), status).await
}
