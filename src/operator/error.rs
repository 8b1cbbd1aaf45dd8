//! The operator's one error type. Its variants are what a reconcile can meet, sorted by what
//! to do about it: [`Error::is_transient`] drives the requeue policy, and
//! [`Error::metric_label`] names the kind in the failure metrics.

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
    /// The finalizer could not be added or removed (kube's own error, kept as the source).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
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

    /// The kind of failure, as the `error` label of the failure metrics: few and fixed values
    /// (never the message), so a dashboard can tell a backend outage from a bad spec.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Engine(_) => "engine",
            Error::Invalid(_) => "invalid",
            Error::Missing(_) => "missing",
            Error::NotPermitted(_) => "not_permitted",
            Error::Finalizer(_) => "finalizer",
            Error::Waiting(_) => "waiting",
            Error::Encode(_) => "encode",
            Error::Leader(_) => "leader",
            Error::Io(_) => "io",
        }
    }
}
