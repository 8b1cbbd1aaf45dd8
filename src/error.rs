//! The one error of the wiring (configuration → engines, hot reload) and of the binary's
//! commands. Each variant keeps the error it wraps, so a caller can tell a configuration problem
//! from a backend that does not answer; the messages are the ones the commands always printed.

use crate::api::auth::TokensError;
use crate::{client, config, engine};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file: unreadable, malformed or invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Routing could not be resolved (a secret unreadable, two keys in one MongoDB database, …).
    #[error(transparent)]
    Routing(#[from] config::routing::Error),
    /// A secret the configuration names could not be read.
    #[error("{0}")]
    Secret(#[source] config::Error),
    /// A tokens file: unreadable, malformed or invalid.
    #[error("{0}")]
    Tokens(#[source] TokensError),
    /// A database's engine could not be opened; `place` says where its data lives.
    #[error("database `{key}`{}: {source}", place.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Open {
        key: String,
        place: Option<String>,
        source: engine::Error,
    },
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A call to a Chronos server (the client subcommands); boxed, it is the largest.
    #[error(transparent)]
    Client(Box<client::Error>),
    /// A collection restore page failed; it continues after `after`.
    #[error("{source}\n(continue with --resume-after {after})")]
    Resume { after: String, source: Box<client::Error> },
    /// A command's own failure (the operator's), shown as it is; not a variant of its own so
    /// that the wiring does not depend on the operator, which depends on the wiring.
    #[error(transparent)]
    Command(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Input a command cannot use (a flag, a file, JSON).
    #[error("{0}")]
    Usage(String),
    /// Two failures at once (a reload's tokens and its configuration).
    #[error("{0}; {1}")]
    Both(Box<Error>, Box<Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<client::Error> for Error {
    fn from(e: client::Error) -> Self {
        Error::Client(Box::new(e))
    }
}
