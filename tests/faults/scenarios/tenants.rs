//! (f) tenant isolation: tokens of one database never read, write or learn about another's items.

use super::*;

/// The scope a route needs, as the README's table states it (written out here, not taken from
/// the server, so the campaign can disagree with it).
fn needed_scope(method: &str, template: &str) -> &'static str {
    let admin = template.starts_with("/v1/admin/")
        || template.ends_with("/prune")
        || template.ends_with("/counters/reset")
        || template.ends_with("/{c}/process")
        || template.ends_with("/retry")
        || (template.contains("/_operations/") && method == "DELETE");
    match (admin, method) {
        (true, _) => "admin",
        (false, "GET") => "read",
        (false, _) => "write",
    }
}

fn scope_covers(held: &str, needed: &str) -> bool {
    held == "admin" || held == needed || (held == "write" && needed == "read")
}

/// Two tenants on ONE MongoDB backend and the SAME three buckets; a read, a write and an admin
/// token for each. Every route with every token on the other tenant → 403; on its own tenant →
/// refused exactly when the scope falls short; the cluster-wide routes → 403 for all six; and no
/// answer ever carries the other tenant's data, also after both prune the same item id (the
/// retention manifests live in the shared backups bucket).
pub(super) async fn scenario_f(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(f) tenant isolation", args, 'f');
    let svc = services()?;
    let dir = run_dir('f')?;
    let roles: Vec<(&str, &str, String)> = ["t1", "t2"]
        .into_iter()
        .flat_map(|db| {
            ["read", "write", "admin"].map(move |scope| (db, scope, format!("faults-{db}-{scope}-0123456789")))
        })
        .collect();
    let mut tokens = String::from("tokens:\n");
    for (db, scope, token) in &roles {
        let scopes = if *scope == "write" {
            "[read, write]"
        } else {
            &format!("[{scope}]")
        };
        tokens.push_str(&format!(
            "  - {{name: {db}-{scope}, token: {token}, databases: [{db}], scopes: {scopes}}}\n"
        ));
    }
    let (config, _) = write_config(&dir, &svc.mongo_uri, &svc.s3, &svc.s3.endpoint, &["t1", "t2"], &tokens).await?;
    let mut engine = EngineProc::start("engine", &config, &dir).await?;
    let addr = bad::addr_of(&engine.url)?;
    let token_of = |db: &str, scope: &str| format!("faults-{db}-{scope}-0123456789");
    let bearer = |t: &str| format!("Bearer {t}");
    let marker = |db: &str| format!("secret-of-{db}-only");
    let call = |method: &str, target: String, token: &str, body: &str| {
        let mut r = Raw::new(method, target).header("Authorization", bearer(token));
        if !body.is_empty() {
            r = r.json(body);
        }
        let addr = addr.clone();
        async move { bad::send(&addr, &r).await }
    };
    // Each tenant: `seed` (one version, never touched by the other) and `shared-id`, written
    // three times and pruned to its last version — the same (collection, id, ov range) in both,
    // in the same buckets.
    for db in ["t1", "t2"] {
        let (w, a) = (token_of(db, "write"), token_of(db, "admin"));
        let data = format!(r#"{{"secret":"{}"}}"#, marker(db));
        let seeded = call("POST", format!("/v1/{db}/iso/items?id=seed"), &w, &data).await?;
        if seeded.status != 201 {
            return Err(format!("seeding {db}: {} {}", seeded.status, seeded.body).into());
        }
        for ov in 0..3 {
            let (method, target) = match ov {
                0 => ("POST", format!("/v1/{db}/iso/items?id=shared-id")),
                _ => ("PUT", format!("/v1/{db}/iso/items/shared-id")),
            };
            let r = call(method, target, &w, &data).await?;
            if r.status >= 300 {
                return Err(format!("writing {db}/shared-id: {} {}", r.status, r.body).into());
            }
        }
        let pruned = call("POST", format!("/v1/{db}/iso/prune"), &a, r#"{"keepLast":1}"#).await?;
        if pruned.status != 200 {
            return Err(format!("pruning {db}: {} {}", pruned.status, pruned.body).into());
        }
    }
    let mut leaks = 0u64;
    let mut total = 0u64;
    let mut other_refused = 0u64;
    let mut own_as_expected = 0u64;
    let mut own_total = 0u64;
    let mut by_status: std::collections::BTreeMap<u16, u64> = Default::default();
    // Pruned history of the same id, read by each tenant: its own data, never the other's.
    for (db, other) in [("t1", "t2"), ("t2", "t1")] {
        for ov in 0..3 {
            let r = call(
                "GET",
                format!("/v1/{db}/iso/items/shared-id?ov={ov}"),
                &token_of(db, "read"),
                "",
            )
            .await?;
            total += 1;
            *by_status.entry(r.status).or_default() += 1;
            if r.body.contains(&marker(other)) {
                leaks += 1;
                o.problems
                    .push(format!("{db} read {other}'s data at shared-id?ov={ov}"));
            } else if r.status != 200 || !r.body.contains(&marker(db)) {
                o.problems.push(format!(
                    "{db} lost its own pruned shared-id?ov={ov}: {} {}",
                    r.status, r.body
                ));
            }
        }
    }
    // Every route, every role, both tenants.
    for (me, scope, token) in &roles {
        let other = if *me == "t1" { "t2" } else { "t1" };
        for (method, template, body) in bad::ROUTES {
            total += 1;
            let target = bad::fill(template, other.as_bytes(), b"iso", b"seed");
            match call(method, String::from_utf8_lossy(&target).into_owned(), token, body).await {
                Ok(a) => {
                    *by_status.entry(a.status).or_default() += 1;
                    if a.body.contains(&marker(other)) {
                        leaks += 1;
                    }
                    if a.status == 403 {
                        other_refused += 1;
                    } else {
                        o.problems.push(format!(
                            "{me}'s {scope} token: {method} {template} on {other}: {} {}",
                            a.status,
                            a.body.chars().take(160).collect::<String>()
                        ));
                    }
                }
                Err(e) => o.problems.push(format!("{method} {template}: no answer ({e})")),
            }
            // The same route on its own tenant, on an item of its own (`mine`).
            total += 1;
            own_total += 1;
            let target = bad::fill(template, me.as_bytes(), b"own", b"mine");
            let allowed = scope_covers(scope, needed_scope(method, template));
            match call(method, String::from_utf8_lossy(&target).into_owned(), token, body).await {
                Ok(a) => {
                    *by_status.entry(a.status).or_default() += 1;
                    if a.body.contains(&marker(other)) {
                        leaks += 1;
                    }
                    let refused = a.status == 401 || a.status == 403;
                    if refused != allowed && a.status < 500 {
                        own_as_expected += 1;
                    } else {
                        o.problems.push(format!(
                            "{me}'s {scope} token: {method} {template} on {me}: {} (expected {}) {}",
                            a.status,
                            if allowed { "allowed" } else { "403" },
                            a.body.chars().take(160).collect::<String>()
                        ));
                    }
                }
                Err(e) => o.problems.push(format!("{method} {template}: no answer ({e})")),
            }
        }
        // Routes that act on every database: no tenant's token, not even its admin's.
        for (method, target) in [("GET", "/v1/admin/health"), ("POST", "/v1/admin/shutdown")] {
            total += 1;
            match call(method, target.to_owned(), token, "").await {
                Ok(a) if a.status == 403 => other_refused += 1,
                Ok(a) => o
                    .problems
                    .push(format!("{me}'s {scope} token: {method} {target}: {}", a.status)),
                Err(e) => o.problems.push(format!("{method} {target}: no answer ({e})")),
            }
        }
    }
    let cross = roles.len() * (bad::ROUTES.len() + 2);
    // Path tricks aimed at t2 with t1's write token: never a success, never a server error.
    let tricks: &[&[u8]] = &[
        b"/v1/t1/../t2/iso/items/seed",
        b"/v1/t1/%2E%2E/t2/iso/items/seed",
        b"/v1/t1/iso/../../t2/iso/items/seed",
        b"//v1/t2/iso/items/seed",
        b"/v1//t2/iso/items/seed",
        b"/v1/./t2/iso/items/seed",
        b"/v1/t2%2F/iso/items/seed",
        b"/v1/%74%32/iso/items/seed",
        b"/v1/T2/iso/items/seed",
        b"/V1/t2/iso/items/seed",
        b"/v1/t2/iso/items/seed?db=t1",
        b"/v1/t2/iso/items/seed#/v1/t1",
        b"http://127.0.0.1/v1/t2/iso/items/seed",
        b"/v1/t1%00/../t2/iso/items/seed",
        b"/v1/t2;t1/iso/items/seed",
        b"/v1/admin/databases/t1/../t2/validate",
        b"/v1/admin/databases/t2%2F..%2Ft1/validate",
    ];
    let t1_write = token_of("t1", "write");
    let mut tricks_refused = 0u64;
    for t in tricks {
        for method in ["GET", "PUT", "DELETE"] {
            let mut r = Raw::new(method, t.to_vec()).header("Authorization", bearer(&t1_write));
            if method == "PUT" {
                r = r.json(r#"{"secret":"overwritten"}"#);
            }
            total += 1;
            match bad::send(&addr, &r).await {
                Ok(a) if (400..500).contains(&a.status) && !a.body.contains(&marker("t2")) => {
                    tricks_refused += 1;
                    *by_status.entry(a.status).or_default() += 1;
                }
                Ok(a) => o.problems.push(format!(
                    "{method} {}: {} {}",
                    String::from_utf8_lossy(t),
                    a.status,
                    a.body.chars().take(160).collect::<String>()
                )),
                Err(e) => o
                    .problems
                    .push(format!("{method} {}: no answer ({e})", String::from_utf8_lossy(t))),
            }
        }
    }
    // Nothing of either tenant's `seed` changed through the other's tokens.
    let mut foreign_versions = 0u64;
    for db in ["t1", "t2"] {
        let h = call(
            "GET",
            format!("/v1/{db}/iso/items/seed/versions"),
            &token_of(db, "read"),
            "",
        )
        .await?;
        let n = serde_json::from_str::<Value>(&h.body)
            .ok()
            .and_then(|v| v["versions"].as_array().map(Vec::len))
            .unwrap_or(0) as u64;
        foreign_versions += n.saturating_sub(1);
    }
    o.row(
        "load held",
        format!(
            "{total} requests: 2 tenants × 3 roles (read, write, admin) × {} routes on the own and the other tenant, \
             + 2 cluster-wide routes, + {} path tricks × 3 methods, + pruned history read back; both tenants on one \
             MongoDB and the same three buckets",
            bad::ROUTES.len(),
            tricks.len()
        ),
    );
    o.row(
        "faults injected",
        "valid tokens of the other tenant; the same item id pruned by both",
    );
    o.row(
        "403 on the other tenant's routes and on cluster-wide routes",
        format!("{other_refused} of {cross}"),
    );
    o.row(
        "own-tenant routes allowed or refused as the scope says",
        format!("{own_as_expected} of {own_total}"),
    );
    o.row(
        "path tricks refused (4xx)",
        format!("{tricks_refused} of {}", tricks.len() * 3),
    );
    o.row(
        "answers by status",
        by_status
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    o.must_be_zero("answers carrying the other tenant's data", leaks);
    o.must_be_zero("versions written through the other tenant's tokens", foreign_versions);
    if !engine.alive() {
        o.problems.push("the engine is not running".into());
    }
    finish(&dir, args, &o);
    engine.kill9().await;
    Ok(o)
}
