//! The tokens file and the check of a presented token: who a token is, which databases it reaches
//! and with which scopes. Kept apart from the middleware so the service state can hold the
//! tokens without depending on the request path.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::config::TokenScope as Scope;
use crate::config::{self, TokensFile};

/// Which databases a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach<'a> {
    Database(&'a str),
    /// Every database at once: only tokens for `"*"` reach it.
    All,
}

pub(super) struct Entry {
    pub(super) name: String,
    digest: [u8; 32],
    databases: Vec<String>,
    scopes: Vec<Scope>,
}

impl Entry {
    pub(super) fn allows(&self, reach: Reach<'_>, scope: Scope) -> bool {
        let scope_ok = self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin);
        let reach_ok = match reach {
            Reach::All => self.databases.iter().any(|d| d == "*"),
            Reach::Database(db) => self.databases.iter().any(|d| d == "*" || d == db),
        };
        scope_ok && reach_ok
    }
}

pub struct Tokens {
    entries: Vec<Entry>,
}

/// Why a tokens file cannot be used. Each variant keeps the error it wraps; the messages are
/// the ones the server has always printed.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The file at `path` is not a usable tokens file; `source` says why.
    #[error("{}: {source}", .path.display())]
    InFile { path: PathBuf, source: Box<TokensError> },
    /// Boxed: the YAML parser's error is large.
    #[error("not valid YAML: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    /// A value of the wrong shape at `field`.
    #[error("{field}: {source}")]
    Field { field: String, source: serde_json::Error },
    #[error("tokens[{index}].token: {source}")]
    Secret { index: usize, source: config::Error },
    #[error("tokens[{0}].token: must be at least 16 characters")]
    TooShort(usize),
    #[error("tokens[{0}]: `databases` and `scopes` must not be empty")]
    Unscoped(usize),
}

impl Tokens {
    /// Load a tokens file (YAML or JSON): `tokens: [{name, token, databases, scopes}]`.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| TokensError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| TokensError::Yaml(Box::new(e)))?;
        let file: TokensFile = serde_path_to_error::deserialize(value).map_err(|e| TokensError::Field {
            field: e.path().to_string(),
            source: e.into_inner(),
        })?;
        let mut entries = Vec::new();
        for (i, spec) in file.tokens.into_iter().enumerate() {
            let token = spec
                .token
                .reveal()
                .map_err(|source| TokensError::Secret { index: i, source })?;
            if token.len() < 16 {
                return Err(TokensError::TooShort(i));
            }
            if spec.databases.is_empty() || spec.scopes.is_empty() {
                return Err(TokensError::Unscoped(i));
            }
            entries.push(Entry {
                name: spec.name,
                digest: Sha256::digest(token.as_bytes()).into(),
                databases: spec.databases,
                scopes: spec.scopes,
            });
        }
        Ok(Tokens { entries })
    }

    /// A digest of everything that decides who gets in (names, token digests, databases,
    /// scopes): a reload swaps the tokens only when it changes.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(format!("{}\0{:?}\0{:?}\0", e.name, e.databases, e.scopes));
            h.update(e.digest);
        }
        h.finalize().into()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn authenticate(&self, presented: &str) -> Option<&Entry> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare against every entry, without stopping early, so timing says nothing.
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_scope_databases_and_verbs() {
        let t = Tokens::parse(
            "tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, databases: [t1], scopes: [read]}\n  - {name: b, token: bbbbbbbbbbbbbbbb, databases: ['*'], scopes: [admin]}\n",
        )
        .unwrap();
        let a = t.authenticate("aaaaaaaaaaaaaaaa").unwrap();
        assert!(a.allows(Reach::Database("t1"), Scope::Read));
        assert!(!a.allows(Reach::Database("t1"), Scope::Write));
        assert!(!a.allows(Reach::Database("t2"), Scope::Read));
        assert!(!a.allows(Reach::All, Scope::Read));
        let b = t.authenticate("bbbbbbbbbbbbbbbb").unwrap();
        assert!(b.allows(Reach::Database("any"), Scope::Write) && b.allows(Reach::All, Scope::Admin));
        assert!(t.authenticate("aaaaaaaaaaaaaaab").is_none());
        assert!(Tokens::parse("tokens: [{name: x, token: short, databases: ['*'], scopes: [read]}]").is_err());
    }

    #[test]
    fn errors_read_as_before_and_keep_their_cause() {
        let short = Tokens::parse("tokens: [{name: x, token: short, databases: ['*'], scopes: [read]}]");
        let short = short.err().map(|e| e.to_string());
        assert_eq!(
            short.as_deref(),
            Some("tokens[0].token: must be at least 16 characters")
        );
        let env = "tokens: [{name: x, token: {env: CHRONOS_TOKENS_TEST_UNSET}, databases: ['*'], scopes: [read]}]";
        let env = Tokens::parse(env).err().map(|e| e.to_string());
        assert_eq!(
            env.as_deref(),
            Some("tokens[0].token: environment variable CHRONOS_TOKENS_TEST_UNSET is not set")
        );
        let dir = tempfile::tempdir().unwrap();
        let Err(missing) = Tokens::load(&dir.path().join("nope")) else {
            panic!("a missing file loads")
        };
        assert!(missing.to_string().starts_with("cannot read ") && missing.to_string().contains("nope"));
        let io = std::error::Error::source(&missing).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound));
    }
}
