//! The auth matrix: every route × every token role of its own database, of another and of the
//! cluster; actors bound to their token; revoked and rotated tokens on reload.

use chronos::api::auth::Tokens;
use reqwest::Method;
use serde_json::Value;

use crate::api::start;
use crate::api_ops::{TOKENS, engines, operations, status_of};

/// What a route needs, written out here rather than taken from the server's own rule, so the
/// test can disagree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Needs {
    Public,
    Read,
    Write,
    /// Destroys or rewrites history, or settles other callers' queued writes.
    DatabaseAdmin,
    /// Acts on every database at once (health of all, shutdown).
    ClusterAdmin,
}

fn needs(method: &Method, path: &str) -> Needs {
    if !path.starts_with("/v1/") {
        return Needs::Public;
    }
    if path.starts_with("/v1/admin/databases/") {
        return Needs::DatabaseAdmin;
    }
    if path.starts_with("/v1/admin/") {
        return Needs::ClusterAdmin;
    }
    let destructive = path.ends_with("/prune")
        || path.ends_with("/counters/reset")
        || path.ends_with("/notes/process")
        || path.ends_with("/retry")
        || (path.ends_with("/hold") && *method != Method::GET)
        || path.ends_with("/erase")
        || path.ends_with("/erasures")
        || (path.contains("/_operations/") && *method == Method::DELETE);
    if destructive {
        Needs::DatabaseAdmin
    } else if *method == Method::GET {
        Needs::Read
    } else {
        Needs::Write
    }
}

/// Every token role against every route of its own database and of the other one: read, write
/// and admin tokens scoped to t1 or t2, and cluster-wide tokens. A 401/403 is a refusal; anything
/// else (200, 404, 422, …) means the request got past authorisation.
#[tokio::test]
async fn auth_matrix_covers_every_route() {
    let server = start(engines(), Some(Tokens::parse(TOKENS).unwrap()), 1 << 20).await;
    let http = &server.http;
    // (token, the database it is scoped to — None for all —, the highest need it meets)
    let roles = [
        ("reader-t1-0123456789", Some("t1"), Needs::Read),
        ("writer-t1-0123456789", Some("t1"), Needs::Write),
        ("writer-t2-0123456789", Some("t2"), Needs::Write),
        ("admin-t1-00123456789", Some("t1"), Needs::DatabaseAdmin),
        ("admin-t2-00123456789", Some("t2"), Needs::DatabaseAdmin),
        ("metrics-0-0123456789", None, Needs::Public),
        ("admin-000-0123456789", None, Needs::ClusterAdmin),
    ];
    let mut checked = 0;
    for (method, path) in operations() {
        let url = format!("{}{path}", server.url);
        let need = needs(&method, &path);
        let (s, body) = status_of(http, &method, &url, None).await;
        if need == Needs::Public {
            // /metrics alone needs a token once tokens exist (it names every database).
            if path == "/metrics" {
                assert_eq!(s, 401, "{method} {path} without a token");
            } else {
                assert_ne!(s, 401, "{method} {path} is public");
            }
            continue;
        }
        assert_eq!(
            (s, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path} without a token"
        );
        let (s, _) = status_of(http, &method, &url, Some("not-a-token-0123456789")).await;
        assert_eq!(s, 401, "{method} {path} with an unknown token");
        for (token, scoped_to, level) in roles {
            // The route's database is always t1 (see `operations`).
            let reach = match (need, scoped_to) {
                (Needs::ClusterAdmin, Some(_)) => false,
                (_, Some(db)) => db == "t1",
                (_, None) => true,
            };
            let allowed = reach && level >= need;
            if path == "/v1/admin/shutdown" && allowed {
                continue; // the last route: shutting down is tested below, once
            }
            let (s, body) = status_of(http, &method, &url, Some(token)).await;
            if allowed {
                assert!(
                    s != 401 && s != 403,
                    "{method} {path}: {token} is allowed, got {s} {body}"
                );
            } else {
                assert_eq!(
                    (s, body["code"].as_str()),
                    (403, Some("forbidden")),
                    "{method} {path}: {token} must be refused ({need:?})"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "checked {checked} (route, token) pairs");
    let at = |path: &str| format!("{}{path}", server.url);
    for (method, path, token, expected, why) in [
        (
            Method::POST,
            "/v1/admin/shutdown",
            "admin-t1-00123456789",
            403,
            "a database's admin may not stop every tenant's engine",
        ),
        (
            Method::GET,
            "/metrics",
            "metrics-0-0123456789",
            200,
            "the metrics token reads /metrics",
        ),
        (
            Method::GET,
            "/metrics",
            "writer-t1-0123456789",
            403,
            "a tenant's token does not see every tenant's metrics",
        ),
    ] {
        let (s, _) = status_of(http, &method, &at(path), Some(token)).await;
        assert_eq!(s, expected, "{why}");
    }
}

/// The audit trail names the token that wrote: `?actor=` can add whom it acts for, never replace
/// the token's name (a writer could otherwise sign its writes as the admin).
#[tokio::test]
async fn actor_cannot_impersonate_another_token() {
    let server = start(engines(), Some(Tokens::parse(TOKENS).unwrap()), 1 << 20).await;
    let writer = "writer-t1-0123456789";
    for (query, expected) in [("?id=a1&actor=admin", "writer-t1/admin"), ("?id=a2", "writer-t1")] {
        let resp = server
            .http
            .post(format!("{}/v1/t1/notes/items{query}", server.url))
            .bearer_auth(writer)
            .json(&serde_json::json!({"k": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let id = &query[4..6];
        let history: Value = server
            .http
            .get(format!("{}/v1/t1/notes/items/{id}/versions", server.url))
            .bearer_auth(writer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history["versions"][0]["actor"], expected, "{history}");
    }
}

/// A revoked token stops working, and a rotated one starts, without a restart — also when the
/// token lives in a `{file: …}` secret and the tokens file itself never changes (review L8).
#[tokio::test]
async fn revoked_and_rotated_tokens_take_effect_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("writer-token");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&secret, "first-secret-0123456789").unwrap();
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: w, token: {{file: {}}}, databases: [t1], scopes: [read]}}\n  - {{name: gone, token: gone-token-0123456789, databases: [t1], scopes: [read]}}\n",
            secret.display()
        ),
    )
    .unwrap();
    let loaded = Tokens::load(&tokens).unwrap();
    let mut reloader = chronos::reload::Reloader::without_config().with_tokens(&tokens, &loaded);
    let server = start(engines(), Some(loaded), 1 << 20).await;
    let url = format!("{}/v1/t1/notes/items", server.url);
    let status = |token: &'static str| {
        let req = server.http.get(&url).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("first-secret-0123456789").await, 200);
    assert_eq!(status("gone-token-0123456789").await, 200);
    assert!(!reloader.check(&server.state).await.unwrap(), "nothing changed");

    // Rotate the secret file only.
    std::fs::write(&secret, "second-secret-0123456789").unwrap();
    assert!(reloader.check(&server.state).await.unwrap());
    assert_eq!(status("first-secret-0123456789").await, 401, "the rotated-out token");
    assert_eq!(status("second-secret-0123456789").await, 200);

    // Revoke a token in the file.
    let text = std::fs::read_to_string(&tokens).unwrap();
    std::fs::write(&tokens, text.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    assert!(reloader.check(&server.state).await.unwrap());
    assert_eq!(status("gone-token-0123456789").await, 401, "the revoked token");

    // A broken file keeps the tokens in force.
    std::fs::write(&tokens, "tokens: [{name: x}]").unwrap();
    assert!(reloader.check(&server.state).await.is_err());
    assert_eq!(status("second-secret-0123456789").await, 200);
}
