//! The configuration's one error type, a leaf so that every part of `config/` (the file's shape,
//! its checks, routing) can name it without importing back from `mod.rs`. Each variant keeps what
//! it wraps (the io error, the parser's error) as its source; the messages are word for word the
//! ones the CLI and the tests have always shown.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file at `path` does not parse; `source` says where and why.
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<Error> },
    #[error("{path}: invalid configuration:\n{}", .issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Boxed: the YAML parser's error is large, and every `Result` of the configuration carries it.
    #[error("not valid YAML: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    /// A value of the wrong shape; `field` is where (`None` for the document as a whole).
    #[error("{}{source}", .field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Field {
        field: Option<String>,
        source: serde_json::Error,
    },
    #[error("cannot read secret file {}: {source}", .file.display())]
    SecretFile { file: PathBuf, source: std::io::Error },
    #[error("environment variable {env} is not set")]
    SecretEnv { env: String, source: std::env::VarError },
}

/// One problem found in a configuration: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A YAML document that does not parse.
    pub(super) fn yaml(e: serde_saphyr::Error) -> Self {
        Error::Yaml(Box::new(e))
    }

    /// A document that parsed but whose value at `e.path()` has the wrong shape.
    pub(super) fn field(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let field = e.path().to_string();
        Error::Field {
            field: (field != ".").then_some(field),
            source: e.into_inner(),
        }
    }
}
