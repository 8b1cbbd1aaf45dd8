//! Bearer-token authentication and authorisation.
//!
//! Tokens live in a file (a Kubernetes Secret mounted as a file), each scoped to databases and to
//! `read` / `write` / `admin` / `metrics`. Presented tokens are hashed and compared in constant
//! time; tokens are never logged. Without a tokens file, auth is off.
//!
//! What a route needs is decided here, from its method and path, in one place ([`requirement`]):
//! reads need `read`, writes `write`; what destroys or rewrites history (prune, counter resets,
//! bulk tiering) or settles other callers' queued writes needs `admin` on that database; what acts
//! on every database at once (`/v1/admin/health`, `/v1/admin/shutdown`) needs an `admin` token
//! for `"*"`; `/metrics` names every database, so once tokens exist it needs `metrics` (or
//! `admin`) for `"*"`.

use std::path::Path;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
    /// Only `/metrics`, for a scraper.
    Metrics,
}

/// Which databases a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach<'a> {
    Database(&'a str),
    /// Every database at once: only tokens for `"*"` reach it.
    All,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenSpec {
    name: String,
    token: Secret,
    /// Database keys, or `"*"` for all.
    databases: Vec<String>,
    scopes: Vec<Scope>,
}

struct Entry {
    name: String,
    digest: [u8; 32],
    databases: Vec<String>,
    scopes: Vec<Scope>,
}

impl Entry {
    fn allows(&self, reach: Reach<'_>, scope: Scope) -> bool {
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

impl Tokens {
    /// Load a tokens file (YAML or JSON): `tokens: [{name, token, databases, scopes}]`.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let file: TokensFile =
            serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        let mut entries = Vec::new();
        for (i, spec) in file.tokens.into_iter().enumerate() {
            let token = spec.token.reveal().map_err(|e| format!("tokens[{i}].token: {e}"))?;
            if token.len() < 16 {
                return Err(format!("tokens[{i}].token: must be at least 16 characters"));
            }
            if spec.databases.is_empty() || spec.scopes.is_empty() {
                return Err(format!("tokens[{i}]: `databases` and `scopes` must not be empty"));
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

    fn authenticate(&self, presented: &str) -> Option<&Entry> {
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

/// Who is calling: set by the auth middleware.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off (no tokens file).
    Anonymous,
    Token {
        name: String,
    },
}

impl Caller {
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Token { name } => Some(name),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Anonymous))
    }
}

/// The databases and scope a request needs, from its method and path. `None` = public route.
fn requirement<'a>(method: &Method, path: &'a str) -> Option<(Reach<'a>, Scope)> {
    if path == "/metrics" {
        return Some((Reach::All, Scope::Metrics));
    }
    let rest = path.strip_prefix("/v1/")?;
    if rest == "admin" || rest.starts_with("admin/") {
        // `/v1/admin/databases/{db}/…` acts on one database; every other admin route on all.
        return Some(match rest.strip_prefix("admin/databases/") {
            Some(tail) => (
                Reach::Database(tail.split('/').next().unwrap_or_default()),
                Scope::Admin,
            ),
            None => (Reach::All, Scope::Admin),
        });
    }
    let mut segments = rest.split('/');
    let db = segments.next().unwrap_or_default();
    let tail: Vec<&str> = segments.collect();
    // /{c}/prune, /{c}/counters/reset, /{c}/process, /_operations/{id}/retry, DELETE /_operations/{id}
    let destructive = match tail.as_slice() {
        [_, "prune"] | [_, "counters", "reset"] | [_, "process"] => method != Method::GET,
        ["_operations", _, "retry"] => true,
        ["_operations", _] => method == Method::DELETE,
        _ => false,
    };
    let scope = if destructive {
        Scope::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    };
    Some((Reach::Database(db), scope))
}

pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(tokens) = state.tokens() else {
        return next.run(req).await;
    };
    let Some((reach, scope)) = requirement(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(entry) = presented.and_then(|t| tokens.authenticate(t.trim())) else {
        let mut response = ApiError::unauthorized("a valid bearer token is required").into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"chronos\""),
        );
        return response;
    };
    if !entry.allows(reach, scope) {
        let what = match reach {
            Reach::Database(db) => format!("{scope:?} access to database `{db}`"),
            Reach::All => format!("{scope:?} access to every database"),
        };
        return ApiError::forbidden(format!("token `{}` has no {}", entry.name, what.to_lowercase())).into_response();
    }
    req.extensions_mut().insert(Caller::Token {
        name: entry.name.clone(),
    });
    next.run(req).await
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
    fn requirements_follow_method_and_path() {
        assert_eq!(requirement(&Method::GET, "/healthz"), None);
        let db = |d| Some((Reach::Database(d), Scope::Read));
        assert_eq!(requirement(&Method::GET, "/v1/t1/c/items"), db("t1"));
        assert_eq!(
            requirement(&Method::DELETE, "/v1/t1/c/items/x"),
            Some((Reach::Database("t1"), Scope::Write))
        );
        assert_eq!(
            requirement(&Method::POST, "/v1/t1/c/items/x/process"),
            Some((Reach::Database("t1"), Scope::Write)),
            "tiering one item is part of a writer's workflow"
        );
        for (method, path) in [
            (Method::POST, "/v1/t1/c/prune"),
            (Method::POST, "/v1/t1/c/counters/reset"),
            (Method::POST, "/v1/t1/c/process"),
            (Method::POST, "/v1/t1/_operations/o/retry"),
            (Method::DELETE, "/v1/t1/_operations/o"),
            (Method::GET, "/v1/admin/databases/t1/validate"),
        ] {
            assert_eq!(
                requirement(&method, path),
                Some((Reach::Database("t1"), Scope::Admin)),
                "{path}"
            );
        }
        assert_eq!(requirement(&Method::GET, "/v1/t1/_operations/o"), db("t1"));
        assert_eq!(
            requirement(&Method::GET, "/v1/admin/health"),
            Some((Reach::All, Scope::Admin))
        );
        assert_eq!(
            requirement(&Method::POST, "/v1/admin/shutdown"),
            Some((Reach::All, Scope::Admin))
        );
        assert_eq!(
            requirement(&Method::GET, "/metrics"),
            Some((Reach::All, Scope::Metrics))
        );
    }
}
