//! Bearer-token authentication and authorisation.
//!
//! Tokens live in a file (a Kubernetes Secret mounted as a file), each scoped to databases and to
//! `read` / `write` / `admin` (`admin` allows everything). Presented tokens are hashed and
//! compared in constant time; tokens are never logged. Without a tokens file, auth is off.

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
    fn allows(&self, db: Option<&str>, scope: Scope) -> bool {
        let scope_ok = self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin);
        let db_ok = match db {
            None => true,
            Some(db) => self.databases.iter().any(|d| d == "*" || d == db),
        };
        scope_ok && db_ok
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

/// The scope and database a request needs, from its method and path. `None` = public route.
fn requirement<'a>(method: &Method, path: &'a str) -> Option<(Option<&'a str>, Scope)> {
    let rest = path.strip_prefix("/v1/")?;
    if rest == "admin" || rest.starts_with("admin/") {
        return Some((None, Scope::Admin));
    }
    let db = rest.split('/').next();
    let scope = if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    };
    Some((db, scope))
}

pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(tokens) = state.tokens() else {
        return next.run(req).await;
    };
    let Some((db, scope)) = requirement(req.method(), req.uri().path()) else {
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
    if !entry.allows(db, scope) {
        let what = match db {
            Some(db) => format!("{scope:?} access to database `{db}`"),
            None => format!("{scope:?} access"),
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
        assert!(a.allows(Some("t1"), Scope::Read));
        assert!(!a.allows(Some("t1"), Scope::Write));
        assert!(!a.allows(Some("t2"), Scope::Read));
        let b = t.authenticate("bbbbbbbbbbbbbbbb").unwrap();
        assert!(b.allows(Some("any"), Scope::Write) && b.allows(None, Scope::Admin));
        assert!(t.authenticate("aaaaaaaaaaaaaaab").is_none());
        assert!(Tokens::parse("tokens: [{name: x, token: short, databases: ['*'], scopes: [read]}]").is_err());
    }

    #[test]
    fn requirements_follow_method_and_path() {
        assert_eq!(requirement(&Method::GET, "/healthz"), None);
        assert_eq!(
            requirement(&Method::GET, "/v1/t1/c/items"),
            Some((Some("t1"), Scope::Read))
        );
        assert_eq!(
            requirement(&Method::DELETE, "/v1/t1/c/items/x"),
            Some((Some("t1"), Scope::Write))
        );
        assert_eq!(requirement(&Method::GET, "/v1/admin/queue"), Some((None, Scope::Admin)));
    }
}
