//! What differs between a dedicated and the shared engine — name, owners, replicas, image,
//! who may reach it — so one renderer makes both.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::names::labels;

/// What differs between a dedicated and the shared engine.
pub(super) struct Shape {
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    /// The `app.kubernetes.io/instance` label (the selector): the database's name, or
    /// [`RESERVED_NAME`](crate::operator::crd::database::RESERVED_NAME) for the shared engine.
    pub(super) instance: String,
    pub(super) owners: Vec<OwnerReference>,
    pub(super) replicas: i32,
    pub(super) image: String,
    pub(super) resources: Option<ResourceRequirements>,
    /// The peers the NetworkPolicy admits to the API port.
    pub(super) ingress_from: Vec<NetworkPolicyPeer>,
}

impl Shape {
    pub(super) fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: self.namespace.clone(),
            labels: Some(labels(&self.instance)),
            owner_references: Some(self.owners.clone()),
            ..ObjectMeta::default()
        }
    }
}
