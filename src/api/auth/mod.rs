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

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use tokens::Reach;

pub(super) mod tokens;

pub use tokens::{Scope, Tokens, TokensError};

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
    // /{c}/prune, /{c}/counters/reset, /{c}/process, /{c}/items/{id}/hold,
    // /_operations/{id}/retry, DELETE /_operations/{id},
    // erasures: /{c}/erase, /{c}/items/{id}/erase, and their records /{c}/erasures
    let destructive = match tail.as_slice() {
        [_, "prune"]
        | [_, "counters", "reset"]
        | [_, "process"]
        | [_, "items", _, "hold"]
        | [_, "erase"]
        | [_, "items", _, "erase"] => method != Method::GET,
        [_, "erasures"] => true,
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
    fn requirements_follow_method_and_path() {
        assert_eq!(requirement(&Method::GET, "/healthz"), None);
        let admin = |d| Some((Reach::Database(d), Scope::Admin));
        assert_eq!(requirement(&Method::POST, "/v1/t1/c/items/x/erase"), admin("t1"));
        assert_eq!(requirement(&Method::POST, "/v1/t1/c/erase"), admin("t1"));
        assert_eq!(requirement(&Method::GET, "/v1/t1/c/erasures"), admin("t1"));
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
