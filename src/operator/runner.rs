//! `chronos operator`: the process that runs the four controllers behind the lease, with its
//! health and metrics endpoints — each controller through the one [`run_controller`], so every
//! reconcile is measured and retried the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};

use super::context::{Context, requeue};
use super::controllers::{changes, collection, database, erasure, restore, retention};
use super::crd::{ChronosCollection, ChronosDatabase, ChronosRetention};
use super::error::{Error, Result};
use super::health;
use super::leader::{self, LeaseSettings};

#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// The engine image: of every namespace's shared engine, and of dedicated engines whose
    /// ChronosDatabase names none.
    #[arg(long, env = "CHRONOS_ENGINE_IMAGE", default_value = concat!("ghcr.io/chronos-dev/chronos:", env!("CARGO_PKG_VERSION")))]
    pub engine_image: String,
    /// Image repositories a ChronosDatabase's spec.engine.image may name, comma-separated
    /// (default: the repository of --engine-image). Any other image is refused.
    #[arg(long, env = "CHRONOS_ALLOWED_ENGINE_IMAGES", value_delimiter = ',')]
    pub allowed_engine_images: Vec<String>,
    /// Hosts a ChronosDatabase's S3 endpoint and MongoDB URI may name, comma-separated:
    /// `host[:port]` or `*.domain[:port]` (default: any host but link-local and cloud metadata
    /// addresses). The operator connects to them from its own namespace.
    #[arg(long, env = "CHRONOS_ALLOWED_BACKEND_HOSTS", value_delimiter = ',')]
    pub allowed_backend_hosts: Vec<String>,
    /// Replicas of each namespace's shared engine (the one serving databases without
    /// spec.engine).
    #[arg(long, env = "CHRONOS_SHARED_ENGINE_REPLICAS", default_value_t = 1)]
    pub shared_engine_replicas: i32,
    /// Health and metrics endpoints.
    #[arg(long, env = "CHRONOS_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease (usually the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "chronos-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only these namespaces, comma-separated or repeated (default: all). With a list,
    /// the operator needs rights on Secrets, Deployments and Services in those namespaces only
    /// (the chart's `watchNamespaces` makes a Role in each).
    #[arg(long = "namespace", env = "CHRONOS_WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
}

/// What the controllers watch beyond the context's namespaces
/// ([`Context::watched_namespaces`]): optionally only the (cluster-scoped) retentions with these
/// labels. Tests use it, with a namespace each, to run side by side on one API server.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub retention_labels: Option<String>,
}

impl Scope {
    /// One namespace's API, or every namespace's.
    fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }

    fn config(&self) -> watcher::Config {
        watcher::Config::default().any_semantic()
    }

    fn retention_config(&self) -> watcher::Config {
        match &self.retention_labels {
            Some(l) => self.config().labels(l),
            None => self.config(),
        }
    }
}

/// Run the four controllers until they stop (they run until the process ends): the three
/// namespaced ones once per watched namespace (or once for all), the retention one once.
pub async fn run_controllers(ctx: Arc<Context>, scope: Scope) {
    let namespaces: Vec<Option<&str>> = match ctx.watched_namespaces.as_slice() {
        [] => vec![None],
        some => some.iter().map(|ns| Some(ns.as_str())).collect(),
    };
    let retentions = Controller::new(
        Api::<ChronosRetention>::all(ctx.client.clone()),
        scope.retention_config(),
    );
    futures::join!(
        futures::future::join_all(
            namespaces
                .into_iter()
                .map(|ns| namespaced_controllers(&ctx, &scope, ns))
        ),
        run_controller("retention", retentions, ctx.clone(), retention::reconcile),
    );
}

/// The database, collection, restore and erasure controllers of one namespace (or of all), and
/// the watch that stops the change-feed followers of deleted collections.
async fn namespaced_controllers(ctx: &Arc<Context>, scope: &Scope, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default()
        .any_semantic()
        .labels("app.kubernetes.io/managed-by=chronos-operator");
    // A database watches the Deployments it owns (readiness) and its collections (whose maps go
    // into the engine's configuration).
    let databases = Controller::new(Scope::api::<ChronosDatabase>(&client, namespace), scope.config())
        .owns(Scope::api::<Deployment>(&client, namespace), owned)
        .watches(
            Scope::api::<ChronosCollection>(&client, namespace),
            watcher::Config::default().any_semantic(),
            |c| {
                c.namespace()
                    .map(|ns| ObjectRef::<ChronosDatabase>::new(&c.spec.database).within(&ns))
            },
        );
    let collections = Controller::new(Scope::api(&client, namespace), scope.config());
    let restores = Controller::new(Scope::api(&client, namespace), scope.config());
    let erasures = Controller::new(Scope::api(&client, namespace), scope.config());
    let followed = changes::forget_deleted(
        ctx.clone(),
        Scope::api(&client, namespace),
        namespace.map(str::to_owned),
    );
    futures::join!(
        followed,
        run_controller("database", databases, ctx.clone(), database::reconcile),
        run_controller("collection", collections, ctx.clone(), collection::reconcile),
        run_controller("restore", restores, ctx.clone(), restore::reconcile),
        run_controller("erasure", erasures, ctx.clone(), erasure::reconcile),
    );
}

/// Run one controller until its watch ends: each reconcile is measured under `name`
/// ([`health::measured`]) and its failures go through [`error_policy`].
pub async fn run_controller<K, Fut>(
    name: &'static str,
    controller: Controller<K>,
    ctx: Arc<Context>,
    reconcile: fn(Arc<K>, Arc<Context>) -> Fut,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    controller
        .run(
            move |obj, ctx| health::measured(name, reconcile(obj, ctx)),
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, controller = name, "reconcile");
            }
        })
        .await;
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

/// `chronos operator`: serve health and metrics, wait for the lease, then run the controllers
/// until the lease is lost or the process is asked to stop.
pub async fn run(args: OperatorArgs) -> Result<()> {
    crate::install_crypto_provider();
    // A bad list stops the operator before it leads, not at its first reconcile.
    let backend_hosts = super::backend_hosts::BackendHosts::parse(&args.allowed_backend_hosts)
        .map_err(|e| Error::Invalid(format!("--allowed-backend-hosts: {e}")))?;
    if !backend_hosts.is_restricted() {
        tracing::warn!(
            "no --allowed-backend-hosts: ChronosDatabase authors may point the operator at any host but \
             link-local and cloud metadata addresses"
        );
    }
    let client = kube::Client::try_default().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "operator health and metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, health::router()).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    let identity = match args.identity {
        Some(id) => id,
        None => format!("chronos-operator-{}", uuid::Uuid::now_v7().simple()),
    };
    let lease = LeaseSettings::new(&args.lease_namespace, identity);
    tracing::info!(identity = %lease.identity, "waiting for the lease");
    leader::acquire(&client, &lease).await?;
    health::set_leading(true);
    tracing::info!("leading: controllers start");
    let mut ctx = Context::with_identity(client.clone(), args.engine_image, Some(lease.identity.clone()));
    ctx.shared_engine_replicas = args.shared_engine_replicas;
    ctx.backend_hosts = backend_hosts;
    ctx.watched_namespaces = args.namespaces;
    if !args.allowed_engine_images.is_empty() {
        ctx.allowed_engine_images = args.allowed_engine_images;
    }
    let ctx = Arc::new(ctx);
    let scope = Scope { retention_labels: None };
    let outcome = tokio::select! {
        () = run_controllers(ctx.clone(), scope) => Ok(()),
        e = leader::hold(&client, &lease) => Err(e),
        () = crate::shutdown_signal() => {
            // The change-feed followers write what they saw since their last status write, so
            // the next leader resumes exactly there — while this one still holds the lease (after
            // losing it, a late write could move another leader's `lastCv` back).
            ctx.followers.stop_all().await;
            tracing::info!("stopping: releasing the lease");
            leader::release(&client, &lease).await
        }
    };
    health::set_leading(false);
    outcome
}
