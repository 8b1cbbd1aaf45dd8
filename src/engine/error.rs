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

    /// The item (or the version of it) was erased (`engine::erase`: its versions are tombstones,
    /// or its data key was destroyed): it existed, and what it held is gone for good.
    #[error("{0} was erased")]
    Erased(String),

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
    /// `source` is the driver's own error (or a [`Failure`] that says what was being done), kept
    /// so callers can walk `std::error::Error::source()` to the cause; the message is its `Display`.
    #[error("{backend} unavailable: {source}")]
    Unavailable { backend: Backend, source: BoxError },

    /// An idempotency key came back with a different request than the one it was first used
    /// for: answering with the first outcome would be wrong, and writing would break the key.
    #[error("idempotency key {0}")]
    IdempotencyKeyReused(String),

    /// A write's commit was sent but its outcome could not be learned: it may or may not have
    /// been made. Retrying with the same idempotency key is safe.
    #[error("the outcome of the write is unknown ({0}); retry with the same idempotency key")]
    OutcomeUnknown(String),

    /// A change feed was asked to resume after a cv retention has cut into: some versions after
    /// it are no longer in the index, so resuming there would miss them silently. Resuming after
    /// `pruned_through` (or later) is complete; `oldest_cv` is the oldest version still indexed.
    #[error(
        "versions after cv {after} were pruned by retention; the feed is complete after cv {pruned_through} (oldest cv still indexed: {})",
        oldest_cv.map_or_else(|| "none".to_owned(), |c| c.to_string())
    )]
    HistoryPruned {
        after: u64,
        oldest_cv: Option<u64>,
        pruned_through: u64,
    },

    /// The backend is reachable but cannot give the guarantees Chronos needs (e.g. no transactions).
    #[error("unsupported deployment: {0}")]
    Unsupported(String),

    /// The item is under a legal hold (or its collection's retention hold): it can't be erased
    /// or pruned until the hold is released.
    #[error("{0} is held: {1}")]
    Held(String, String),

    /// Stored data contradicts itself (checksum mismatch, payload of another item…). Never expected;
    /// reported rather than served so a read can never return the wrong item's data.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error a backend driver can produce, as [`Error::Unavailable`] keeps it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A driver error together with what was being done when it happened ("put {key}: …"). Its
/// `Display` is the whole sentence a person reads, as the engine has always worded it, and its
/// `source()` is the driver error, so the cause is not lost to a string.
#[derive(Debug)]
pub struct Failure {
    message: String,
    source: BoxError,
}

impl Failure {
    /// `message` is the complete text to show (it usually already quotes `source`).
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Failure {
            message: message.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Error {
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The metadata store failed: pass the driver's error itself (it becomes the source), a
    /// [`Failure`] to say what was being done, or a plain message when there is no cause to keep.
    pub fn metadata(cause: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            backend: Backend::Metadata,
            source: cause.into(),
        }
    }

    /// The payload store failed; takes the same causes as [`Error::metadata`].
    pub fn payload(cause: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            backend: Backend::Payload,
            source: cause.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::io;

    #[test]
    fn unavailable_keeps_the_driver_error_as_its_source_and_reads_as_before() {
        let e = Error::payload(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(e.to_string(), "payload store unavailable: connection refused");
        let source = e.source().expect("the io error is kept");
        let io = source.downcast_ref::<io::Error>().expect("as itself");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_failure_reads_as_its_message_and_keeps_its_cause_below() {
        let cause = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let e = Error::metadata(Failure::new(format!("cannot open /x: {cause}"), cause));
        assert_eq!(
            e.to_string(),
            "metadata store unavailable: cannot open /x: no such file"
        );
        let failure = e.source().expect("the failure");
        assert_eq!(failure.to_string(), "cannot open /x: no such file");
        let io = failure.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn a_plain_message_still_works() {
        assert_eq!(Error::metadata("down").to_string(), "metadata store unavailable: down");
    }
}
