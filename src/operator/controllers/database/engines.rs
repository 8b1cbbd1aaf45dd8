//! The engines in the cluster: apply what the rendering returns (server-side apply under the
//! operator's field manager), re-render a namespace's shared engine from its current members,
//! delete an engine no database needs — only objects the operator made — and stop serving a
//! database before its data is dropped.

use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};

use super::membership::membership;
use super::names::{config_name, dedicated_name, engine_name};
use super::objects::{
    EngineObjects, SharedEngine, controlled_by, deployment_ready, shared_engine_part, shared_objects,
};
use crate::operator::context::{Context, FIELD_MANAGER};
use crate::operator::crd::collection::ChronosCollection;
use crate::operator::crd::database::{ChronosDatabase, SHARED_ENGINE};
use crate::operator::error::{Error, Result};

/// The namespace's shared engine as just rendered.
pub(super) struct SharedState {
    /// Its Deployment as stored and its configuration hash; `None` when it has no members
    /// (and so was removed).
    pub(super) applied: Option<(Deployment, String)>,
    /// Databases that asked for it but conflict with a member (name → why).
    pub(super) conflicts: BTreeMap<String, String>,
}

/// Render namespace `ns`'s shared engine from a fresh list of its databases and apply it, or
/// remove it when no database needs it any more. `fresh` is the reconciling database's own
/// backend check. Call with the namespace's lock held.
pub(super) async fn sync_shared(ctx: &Context, ns: &str, fresh: Option<(&str, bool)>) -> Result<SharedState> {
    let databases: Api<ChronosDatabase> = Api::namespaced(ctx.client.clone(), ns);
    let mut dbs = databases.list(&ListParams::default()).await?.items;
    dbs.sort_by_key(|db| db.name_any());
    let membership = membership(&dbs, fresh);
    if membership.members.is_empty() {
        remove_shared(ctx, ns).await?;
        return Ok(SharedState {
            applied: None,
            conflicts: membership.conflicts,
        });
    }
    let collections: Api<ChronosCollection> = Api::namespaced(ctx.client.clone(), ns);
    let collections = collections.list(&ListParams::default()).await?.items;
    let settings = SharedEngine {
        image: ctx.engine_image.clone(),
        replicas: ctx.shared_engine_replicas,
    };
    let objects = shared_objects(ns, &membership.members, &collections, &settings)?;
    let deployment = apply_objects(ctx, ns, &objects).await?;
    Ok(SharedState {
        applied: Some((deployment, objects.config_hash)),
        conflicts: membership.conflicts,
    })
}

/// Delete a namespace's shared engine once no database needs it. Removed rather than scaled to
/// zero: nothing is left to clutter the namespace, and the next shared database renders it
/// again in one reconcile. The configuration Secret is applied first and deleted last, so it
/// marks an engine that may still have objects to delete. Only objects that are the operator's
/// shared engine go: a namespace's own `chronos-engine` (another app's) is left alone.
async fn remove_shared(ctx: &Context, ns: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let config = config_name(SHARED_ENGINE);
    if secrets.get_opt(&config).await?.is_none() {
        return Ok(());
    }
    delete_engine(ctx, ns, SHARED_ENGINE, &shared_engine_part).await?;
    tracing::info!(namespace = %ns, "removed the shared engine: no database needs it");
    Ok(())
}

/// Delete a dedicated engine the database no longer asks for (it moved to the shared engine),
/// if it is the database's own (its controller owner is this database).
pub(super) async fn remove_dedicated(ctx: &Context, db: &ChronosDatabase) -> Result<()> {
    let ns = db.namespace().unwrap_or_default();
    let name = dedicated_name(db);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(deployment) = deployments.get_opt(&name).await? else {
        return Ok(());
    };
    if controlled_by(deployment.meta(), db) {
        delete_engine(ctx, &ns, &name, &|meta| controlled_by(meta, db)).await?;
        tracing::info!(database = %db.name_any(), "removed its dedicated engine: the shared engine serves it now");
    }
    Ok(())
}

/// Delete an engine's Deployment, Service, NetworkPolicy and configuration Secret (in that
/// order), each if present and `ours`.
async fn delete_engine(ctx: &Context, ns: &str, name: &str, ours: &(dyn Fn(&ObjectMeta) -> bool + Sync)) -> Result<()> {
    delete_if_ours::<Deployment>(ctx, ns, name, ours).await?;
    delete_if_ours::<Service>(ctx, ns, name, ours).await?;
    delete_if_ours::<NetworkPolicy>(ctx, ns, name, ours).await?;
    delete_if_ours::<Secret>(ctx, ns, &config_name(name), ours).await
}

/// Delete object `name` if it is there and `ours`; the uid precondition makes sure the object
/// deleted is the one checked, not one re-created under its name meanwhile.
async fn delete_if_ours<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    ours: &(dyn Fn(&ObjectMeta) -> bool + Sync),
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !ours(obj.meta()) {
        tracing::warn!(namespace = %ns, kind = %K::kind(&()), %name, "not deleting: not made by the operator");
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        other => other.map(drop).map_err(Error::from),
    }
}

/// Apply an engine's Secret, Service, NetworkPolicy and Deployment (the policy before the pods
/// it guards); returns the Deployment as stored.
pub(super) async fn apply_objects(ctx: &Context, ns: &str, objects: &EngineObjects) -> Result<Deployment> {
    apply_one(ctx, ns, &objects.config).await?;
    apply_one(ctx, ns, &objects.service).await?;
    apply_one(ctx, ns, &objects.network_policy).await?;
    apply_one(ctx, ns, &objects.deployment).await
}

/// Server-side apply of one object under the operator's field manager.
async fn apply_one<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&obj.name_any(), &pp, &Patch::Apply(typed(obj)?)).await?)
}

/// An object with its apiVersion and kind, as server-side apply needs them.
fn typed<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(obj)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    Ok(value)
}

/// Make sure no engine serves `db` any more before its data is dropped: its dedicated engine is
/// scaled to zero and must have no pods left; on the shared engine, the rollout of the
/// configuration without it (`shared`, just applied) must be complete. Until then a transient
/// error: the finalizer stays, and the Deployment's next status change reconciles again.
pub(super) async fn stop_serving(
    db: &ChronosDatabase,
    ctx: &Context,
    ns: &str,
    shared: Option<&Deployment>,
) -> Result<()> {
    if db.spec.engine.is_none() {
        return match shared {
            Some(d) if !deployment_ready(d).0 => Err(Error::Waiting(format!(
                "the shared engine to roll out without database `{}` before its data is dropped \
                 (deletionPolicy: Retain deletes it without dropping anything)",
                db.name_any()
            ))),
            _ => Ok(()),
        };
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = engine_name(db);
    let Some(deployment) = deployments.get_opt(&name).await? else {
        return Ok(());
    };
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas);
    if wanted != Some(0) {
        let zero = serde_json::json!({"spec": {"replicas": 0}});
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Merge(&zero))
            .await?;
        return Err(Error::Waiting(format!(
            "engine {name} to scale to zero before the data is dropped"
        )));
    }
    let status = deployment.status.unwrap_or_default();
    let observed = status.observed_generation >= deployment.metadata.generation;
    if !observed || status.replicas.unwrap_or(0) > 0 {
        return Err(Error::Waiting(format!(
            "engine {name} to have no pods before the data is dropped (deletionPolicy: Retain deletes it \
             without dropping anything)"
        )));
    }
    Ok(())
}
