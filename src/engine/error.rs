//! The engine's one error type. Every store backend maps its failures onto these variants so the
//! layers above (HTTP, operator, CLI) can react to *what* went wrong without knowing *where*.

use std::fmt;

/// Which backend failed; carried by [`Error::Unavailable`] so operators know where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Metadata,
    Payload,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Metadata => "metadata store",
            Backend::Payload => "payload store",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The item (or the requested version of it) does not exist, or is hidden because it is deleted.
    #[error("{0} not found")]
    NotFound(String),

    /// Optimistic locking failed: the caller's expected object version is not the current one.
    #[error("version conflict on {item}: expected ov {expected}, current ov {current}")]
    VersionConflict { item: String, expected: u64, current: u64 },

    /// A create named an id that is already taken (deleted items keep their id).
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The write's idempotency key is already recorded, by an earlier attempt of (usually) the
    /// same request whose outcome this attempt could not read: a majority had not acknowledged it
    /// yet. The engine waits for it to become readable and answers with it (M3); shown to a
    /// client only as [`Error::OutcomeUnknown`] or, from the queue, like `AlreadyExists`.
    #[error("{0} already exists")]
    RequestKeyTaken(String),

    /// Other writers kept the item busy for longer than the engine is willing to wait.
    #[error("{0} is being written by another writer; retry later")]
    Contended(String),

    /// The input is not acceptable; `field` names what is wrong.
    #[error("invalid {field}: {reason}")]
    Validation { field: String, reason: String },

    /// The payload is larger than the configured limit.
    #[error("payload of {actual} bytes exceeds the limit of {limit} bytes")]
    TooLarge { actual: usize, limit: usize },

    /// A backend could not be reached or refused to work. Transient by nature: retrying may help.
    #[error("{backend} unavailable: {message}")]
    Unavailable { backend: Backend, message: String },

    /// An idempotency key came back with a different request than the one it was first used
    /// for: answering with the first outcome would be wrong, and writing would break the key.
    #[error("idempotency key {0}")]
    IdempotencyKeyReused(String),

    /// A write's commit was sent but its outcome could not be learned: it may or may not have
    /// been made. Retrying with the same idempotency key is safe.
    #[error("the outcome of the write is unknown ({0}); retry with the same idempotency key")]
    OutcomeUnknown(String),

    /// The backend is reachable but cannot give the guarantees Chronos needs (e.g. no transactions).
    #[error("unsupported deployment: {0}")]
    Unsupported(String),

    /// Stored data contradicts itself (checksum mismatch, payload of another item…). Never expected;
    /// reported rather than served so a read can never return the wrong item's data.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn metadata(err: impl fmt::Display) -> Self {
        Error::Unavailable {
            backend: Backend::Metadata,
            message: err.to_string(),
        }
    }

    pub fn payload(err: impl fmt::Display) -> Self {
        Error::Unavailable {
            backend: Backend::Payload,
            message: err.to_string(),
        }
    }
}
