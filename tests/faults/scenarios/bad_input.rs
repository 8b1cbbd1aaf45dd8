//! (e) bad input on every route: each answer must be a 4xx in the one error shape, never a 5xx or a hang.

use super::*;

pub(super) async fn scenario_e(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(e) bad input on every route", args, 'e');
    let svc = services()?;
    let dir = run_dir('e')?;
    let (config, json_bucket) =
        write_config(&dir, &svc.mongo_uri, &svc.s3, &svc.s3.endpoint, &[], &admin_tokens()).await?;
    let mut engine = EngineProc::start("engine", &config, &dir).await?;
    let addr = bad::addr_of(&engine.url)?;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let seeded = bad::send(
        &addr,
        &Raw::new("POST", "/v1/default/bad/items?id=seed")
            .header("Authorization", auth.clone())
            .json(r#"{"a":1}"#),
    )
    .await?;
    if seeded.status != 201 {
        return Err(format!("seeding failed: {} {}", seeded.status, seeded.body).into());
    }
    let store = S3PayloadStore::new(svc.s3.client(), json_bucket);
    let keys_before = count_keys(&store).await?;
    let (_, hwm_before) = engine.memory_kib().unwrap_or((0, 0));

    // Memory is sampled throughout.
    let pid = engine.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rss) = pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    })
                {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };

    let mut cases: Vec<(String, Raw)> = Vec::new();
    let valid = |p: &str| -> Vec<u8> { p.as_bytes().to_vec() };
    // 1. Every route, each path parameter in turn replaced by each bad value.
    for (method, template, body) in bad::ROUTES {
        for (what, seg) in bad::bad_segments() {
            for place in ["{db}", "{c}", "{id}"] {
                // `system…` is reserved for collections only; ids may start with it.
                if !template.contains(place) || (what == "reserved" && place != "{c}") {
                    continue;
                }
                let (db, c, id) = match place {
                    "{db}" => (seg.clone(), valid("bad"), valid("seed")),
                    "{c}" => (valid("default"), seg.clone(), valid("seed")),
                    _ => (valid("default"), valid("bad"), seg.clone()),
                };
                // For {db}, a valid-looking key that is not served must be a 404 as well.
                let db = if place == "{db}" { db } else { valid("default") };
                let mut r = Raw::new(method, bad::fill(template, &db, &c, &id)).header("Authorization", auth.clone());
                if !body.is_empty() {
                    r = r.json(*body);
                }
                cases.push((format!("{method} {template} with {place} = {what}"), r));
            }
        }
    }
    // 2. Bodies: malformed, nested 10 000 deep, huge, of the wrong type, with unknown fields.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8 body", b"{\"a\":\"\xff\xfe\"}".to_vec()),
        ("arrays nested 10 000 deep", bad::nested(10_000, false)),
        ("objects nested 10 000 deep", bad::nested(10_000, true)),
        ("9 MB array (over the body limit)", bad::huge_array(9 << 20, false)),
        ("7 MB top-level array", bad::huge_array(7 << 20, true)),
        ("a string", b"\"x\"".to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("an empty array", b"[]".to_vec()),
        ("truncated JSON", b"{\"a\":".to_vec()),
        ("empty body", Vec::new()),
        ("trailing garbage", b"{\"a\":1} x".to_vec()),
    ];
    let body_routes: &[(&str, &str)] = &[
        ("POST", "/v1/default/bad/items?id=new1"),
        ("PUT", "/v1/default/bad/items/seed"),
        ("PATCH", "/v1/default/bad/items/seed"),
        ("POST", "/v1/default/bad/items/seed/restore"),
        ("POST", "/v1/default/bad/restore"),
        ("POST", "/v1/default/bad/prune"),
        ("POST", "/v1/admin/databases/default/buckets"),
    ];
    for (method, path) in body_routes {
        for (what, body) in &bodies {
            cases.push((
                format!("{method} {path} with {what}"),
                Raw::new(method, *path)
                    .header("Authorization", auth.clone())
                    .json(body.clone()),
            ));
        }
        cases.push((
            format!("{method} {path} as text/plain"),
            Raw::new(method, *path)
                .header("Authorization", auth.clone())
                .header("Content-Type", "text/plain")
                .json(r#"{"a":1}"#)
                .header("Content-Type", "text/plain"),
        ));
    }
    // Typed bodies with fields of the wrong type or unknown fields.
    let typed: &[(&str, &str)] = &[
        ("/v1/default/bad/items/seed/restore", r#"{"ov":"0"}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":-1}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":1.5}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":99999999999999999999}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"at":5}"#),
        (
            "/v1/default/bad/items/seed/restore",
            r#"{"ov":0,"at":"2020-01-01T00:00:00Z"}"#,
        ),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":0,"bogus":1}"#),
        ("/v1/default/bad/items/seed/restore", r#"{"ov":7}"#),
        // An array is not an object, even when serde could read a struct from it.
        ("/v1/default/bad/items/seed/restore", r#"[0]"#),
        ("/v1/default/bad/restore", r#"[1,null,true]"#),
        ("/v1/default/bad/prune", r#"[1]"#),
        ("/v1/default/bad/restore", r#"{"cv":"x"}"#),
        ("/v1/default/bad/restore", r#"{"cv":1,"limit":0}"#),
        ("/v1/default/bad/restore", r#"{"cv":1,"afterId":"../x"}"#),
        ("/v1/default/bad/prune", r#"{"keepLast":"x"}"#),
        ("/v1/default/bad/prune", r#"{"keepLast":0}"#),
        ("/v1/default/bad/prune", r#"{"maxAgeDays":-1}"#),
        ("/v1/default/bad/prune", r#"{}"#),
    ];
    for (path, body) in typed {
        cases.push((
            format!("POST {path} with {body}"),
            Raw::new("POST", *path)
                .header("Authorization", auth.clone())
                .json(*body),
        ));
    }
    // 3. Query parameters of the wrong type, out of range, 1 MB long, with control characters.
    let mb = "x".repeat(1 << 20);
    let deep_filter = String::from_utf8(bad::encode(&bad::nested(10_000, true))).unwrap_or_default();
    let queries: Vec<(&str, String)> = vec![
        ("GET", "/v1/default/bad/items/seed?ov=abc".into()),
        ("GET", "/v1/default/bad/items/seed?ov=-1".into()),
        ("GET", "/v1/default/bad/items/seed?ov=99999999999999999999".into()),
        ("GET", "/v1/default/bad/items/seed?ov=1&at=2020-01-01T00:00:00Z".into()),
        ("GET", "/v1/default/bad/items/seed?at=yesterday".into()),
        ("GET", "/v1/default/bad/items/seed?includeDeleted=maybe".into()),
        ("GET", "/v1/default/bad/items/seed?ttlSeconds=0&presign=true".into()),
        ("GET", "/v1/default/bad/items/seed?content=zzz".into()),
        ("GET", "/v1/default/bad/items/seed?bogus=1".into()),
        ("GET", "/v1/default/bad/items/seed?ov=%FF".into()),
        ("GET", "/v1/default/bad/items/seed/versions?limit=0".into()),
        ("GET", "/v1/default/bad/items/seed/versions?limit=100000".into()),
        ("GET", "/v1/default/bad/items/seed/versions?afterOv=x".into()),
        ("GET", "/v1/default/bad/items?limit=-1".into()),
        ("GET", "/v1/default/bad/items?sort=name".into()),
        ("GET", "/v1/default/bad/items?filter=%7Bbad".into()),
        (
            "GET",
            "/v1/default/bad/items?filter=%7B%22%24where%22%3A%221%22%7D".into(),
        ),
        (
            "GET",
            "/v1/default/bad/items?filter=%7B%22a%22%3A%7B%22%24regex%22%3A%22.*%22%7D%7D".into(),
        ),
        ("GET", "/v1/default/bad/items?filter=%5B1%5D".into()),
        ("GET", format!("/v1/default/bad/items?filter={deep_filter}")),
        ("GET", "/v1/default/bad/items?afterId=..%2F..".into()),
        ("GET", format!("/v1/default/bad/items?afterId={mb}")),
        ("GET", format!("/v1/default/bad/items?fields={}", "a,".repeat(100_000))),
        ("POST", format!("/v1/default/bad/items?id={mb}")),
        ("POST", "/v1/default/bad/items?id=a%00b".into()),
        ("POST", "/v1/default/bad/items?id=..".into()),
        ("POST", format!("/v1/default/bad/items?id=ok1&actor={mb}")),
        ("POST", "/v1/default/bad/items?id=ok2&actor=a%0Ab".into()),
        ("POST", "/v1/default/bad/items?id=ok3&reason=%00".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=x".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=-1".into()),
        ("PUT", "/v1/default/bad/items/seed?expectedOv=5".into()),
        ("DELETE", "/v1/default/bad/items/seed?expectedOv=9".into()),
        ("PATCH", format!("/v1/default/bad/items/seed?functionId={mb}")),
        ("PATCH", "/v1/default/bad/items/seed?functionId=".into()),
    ];
    for (method, target) in queries {
        let mut r = Raw::new(method, target.clone()).header("Authorization", auth.clone());
        if method != "GET" && method != "DELETE" {
            r = r.json(r#"{"a":2}"#);
        }
        let label: String = target.chars().take(90).collect();
        cases.push((format!("{method} {label}"), r));
    }
    // 4. Headers: bad If-Match and Idempotency-Key, huge and binary values, a 1 MB bearer token.
    let header_cases: Vec<(&str, Vec<u8>)> = vec![
        ("Idempotency-Key", b"has space".to_vec()),
        ("Idempotency-Key", b"tab\there".to_vec()),
        ("Idempotency-Key", b"\xff\xfe".to_vec()),
        ("Idempotency-Key", vec![b'k'; 256]),
        ("Idempotency-Key", vec![b'k'; 1_000_000]),
        ("If-Match", b"\"abc\"".to_vec()),
        ("If-Match", b"\"-1\"".to_vec()),
        ("If-Match", b"\"99999999999999999999\"".to_vec()),
        ("If-Match", b"\"7\"".to_vec()),
        ("If-Match", b"\"\xff\"".to_vec()),
        ("If-Match", vec![b'1'; 100_000]),
    ];
    for (name, value) in header_cases {
        cases.push((
            format!("PUT item with {name}: {} bytes", value.len()),
            Raw::new("PUT", "/v1/default/bad/items/seed")
                .header("Authorization", auth.clone())
                .header(name, value)
                .json(r#"{"a":3}"#),
        ));
    }
    cases.push((
        "1 MB bearer token".into(),
        Raw::new("GET", "/v1/default/bad/items/seed").header("Authorization", format!("Bearer {mb}")),
    ));
    cases.push((
        "no token".into(),
        Raw::new("PUT", "/v1/default/bad/items/seed").json(r#"{"a":4}"#),
    ));

    let total = cases.len();
    let mut answered_4xx = 0u64;
    let mut by_status: std::collections::BTreeMap<u16, u64> = Default::default();
    for (what, req) in &cases {
        match bad::send(&addr, req).await {
            Ok(a) => {
                *by_status.entry(a.status).or_default() += 1;
                if (400..500).contains(&a.status) {
                    answered_4xx += 1;
                } else {
                    o.problems.push(format!(
                        "{what}: {} {}",
                        a.status,
                        a.body.chars().take(200).collect::<String>()
                    ));
                }
            }
            Err(e) => o.problems.push(format!("{what}: no answer ({e})")),
        }
        if !engine.alive() {
            o.problems.push(format!("the engine died on: {what}"));
            break;
        }
    }
    // 5. Big bad bodies in parallel: memory must stay bounded.
    let parallel = 16;
    let big: Vec<_> = (0..parallel)
        .map(|i| {
            let addr = addr.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let body = if i % 4 == 3 {
                    bad::nested(10_000, false)
                } else {
                    bad::huge_array(7 << 20, true)
                };
                let r = Raw::new("PUT", "/v1/default/bad/items/seed")
                    .header("Authorization", auth)
                    .json(body);
                bad::send(&addr, &r).await.map(|a| a.status)
            })
        })
        .collect();
    for t in big {
        match t.await {
            Ok(Ok(s)) if (400..500).contains(&s) => answered_4xx += 1,
            other => o.problems.push(format!("parallel big body: {other:?}")),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_sampled = sampler.await.unwrap_or(0);
    let (rss_after, hwm) = engine.memory_kib().unwrap_or((0, 0));

    o.row(
        "load held",
        format!(
            "{} bad requests ({} routes × 3 path parameters × {} bad values, bodies, queries, headers) + {parallel} parallel 7 MB bodies",
            total + parallel,
            bad::ROUTES.len(),
            bad::bad_segments().len()
        ),
    );
    o.row("faults injected", "malformed input only");
    o.row("answered 4xx", format!("{answered_4xx} of {}", total + parallel));
    o.row(
        "answers by status",
        by_status
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let keys_after = count_keys(&store).await?;
    o.must_be_zero("payloads written", keys_after.saturating_sub(keys_before));
    let history = bad::send(
        &addr,
        &Raw::new("GET", "/v1/default/bad/items/seed/versions").header("Authorization", auth.clone()),
    )
    .await?;
    let versions = serde_json::from_str::<Value>(&history.body)
        .ok()
        .and_then(|v| v["versions"].as_array().map(Vec::len))
        .unwrap_or(0) as u64;
    o.must_be_zero("versions written to the seeded item", versions.saturating_sub(1));
    let list = bad::send(
        &addr,
        &Raw::new("GET", "/v1/default/bad/items?includeDeleted=true").header("Authorization", auth.clone()),
    )
    .await?;
    let items = serde_json::from_str::<Value>(&list.body)
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len))
        .unwrap_or(0) as u64;
    o.must_be_zero("items created", items.saturating_sub(1));
    o.row(
        "engine memory (RSS)",
        format!(
            "peak {} MiB (before: {} MiB peak), after: {} MiB",
            hwm.max(peak_sampled) / 1024,
            hwm_before / 1024,
            rss_after / 1024
        ),
    );
    // A parsed 7 MB array of small numbers takes about 140 MiB; large bodies are parsed 4 at a time.
    const PEAK_LIMIT_MIB: u64 = 768;
    if hwm.max(peak_sampled) / 1024 > PEAK_LIMIT_MIB {
        o.problems.push(format!("peak memory above {PEAK_LIMIT_MIB} MiB"));
    }
    if !engine.alive() {
        o.problems.push("the engine is not running".into());
    }
    finish(&dir, args, &o);
    engine.kill9().await;
    Ok(o)
}
