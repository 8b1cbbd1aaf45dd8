//! Leader election with a `coordination.k8s.io` Lease, so two operator replicas never both act.
//!
//! A candidate takes the Lease when it is free or expired, by a replace that carries the
//! `resourceVersion` it read: if another replica wrote the Lease in between, the API server
//! refuses (409) and the candidate reads again. The leader renews well within the lease duration;
//! if it cannot renew in time it must stop acting ([`hold`] returns) — the process exits and
//! restarts as a candidate.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::{Error, Result};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the leader renews and a candidate retries.
    pub retry: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: "chronos-operator".to_owned(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (newly or renewed).
    Leading,
    /// Someone else holds it.
    Following { holder: String },
}

/// One attempt to take or renew the lease.
pub async fn try_acquire(client: &Client, s: &LeaseSettings) -> Result<Attempt> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    let now = MicroTime(jiff::Timestamp::now());
    let Some(current) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(s.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(s, now.clone(), now, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following {
                holder: "another candidate".to_owned(),
            }),
            Err(e) => Err(e.into()),
        };
    };
    let held = current.spec.clone().unwrap_or_default();
    let holder = held.holder_identity.clone().unwrap_or_default();
    let expired = match (&held.renew_time, held.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed.0 + jiff::SignedDuration::from_secs(i64::from(secs)) < now.0,
        _ => true,
    };
    let ours = holder == s.identity;
    if !ours && !holder.is_empty() && !expired {
        return Ok(Attempt::Following { holder });
    }
    let (acquired, transitions) = if ours {
        (
            held.acquire_time.clone().unwrap_or_else(|| now.clone()),
            held.lease_transitions.unwrap_or(0),
        )
    } else {
        (now.clone(), held.lease_transitions.unwrap_or(0) + 1)
    };
    let mut next = current;
    next.spec = Some(spec(s, acquired, now, transitions));
    // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&s.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Attempt::Leading),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following { holder }),
        Err(e) => Err(e.into()),
    }
}

fn spec(s: &LeaseSettings, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(s.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: Some(acquired),
        renew_time: Some(renewed),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Give the lease up (on shutdown), so a standby takes over without waiting for expiry.
pub async fn release(client: &Client, s: &LeaseSettings) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    if let Some(mut lease) = api.get_opt(&s.name).await?
        && lease.spec.as_ref().and_then(|l| l.holder_identity.as_deref()) == Some(s.identity.as_str())
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        api.replace(&s.name, &PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// Wait until this replica leads.
pub async fn acquire(client: &Client, s: &LeaseSettings) -> Result<()> {
    loop {
        match try_acquire(client, s).await {
            Ok(Attempt::Leading) => return Ok(()),
            Ok(Attempt::Following { holder }) => tracing::debug!(%holder, "standing by"),
            Err(e) => tracing::warn!(error = %e, "lease"),
        }
        tokio::time::sleep(s.retry).await;
    }
}

/// Keep renewing; returns (with an error) once the lease could not be renewed before it would
/// expire, or another replica holds it. The caller must stop acting then.
pub async fn hold(client: &Client, s: &LeaseSettings) -> Error {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(s.retry).await;
        match try_acquire(client, s).await {
            Ok(Attempt::Leading) => last_renewed = tokio::time::Instant::now(),
            Ok(Attempt::Following { holder }) => return Error::Leader(format!("lost the lease to {holder}")),
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        // Stop acting a margin before others may take over.
        if last_renewed.elapsed() + s.retry >= s.duration {
            return Error::Leader("could not renew the lease in time".to_owned());
        }
    }
}
