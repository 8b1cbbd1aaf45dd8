//! (c) the S3 server unreachable under load (a fault proxy between engines and S3), (d) a private mongod
//! killed and restarted under load.

use super::*;

pub(super) async fn scenario_c(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(c) S3 unreachable under load", args, 'c');
    let svc = services()?;
    let upstream: std::net::SocketAddr = svc
        .s3
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("CHRONOS_TEST_S3_ENDPOINT is not http://host:port: {e}"))?;
    let proxy = FaultProxy::start(upstream).await?;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut s = setup('c', args, &svc.mongo_uri, Some(&endpoint)).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 9);
    let outage = if args.full {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let until = started + d.max(outage + Duration::from_secs(4));
    let down_at = started + (until - started - outage) / 2;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let fault = async {
        tokio::time::sleep_until(down_at.into()).await;
        proxy.set_down(true);
        tokio::time::sleep(outage).await;
        proxy.set_down(false);
    };
    let (mut ledger, ()) = tokio::join!(writers, fault);
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!(
            "S3 unreachable for {outage:?} (fault proxy: listener closed, connections dropped) from t={:.0?}",
            down_at - started
        ),
    );
    let queued = ledger.queued.len() as u64;
    let (landed, failed, pending) = load::settle_queued(&http, &s.target, &mut ledger, Duration::from_secs(180)).await;
    o.row("writes queued (202)", queued);
    o.row("queued writes landed after S3 returned", landed);
    o.must_be_zero("queued writes dead or cancelled", failed);
    o.must_be_zero("queued writes still pending after 180 s", pending);
    if queued == 0 {
        o.row("note", "no write was queued: every write during the outage was refused");
    }
    if let Ok(q) = http
        .get(format!("{}/v1/default/_queue", s.target.urls[0]))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        && q.status().is_success()
    {
        o.row("queue after settling", q.text().await.unwrap_or_default());
    }
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    // Writes work again without restarting anything.
    let after = load::run_writers(&http, &s.target, 4, Instant::now() + Duration::from_secs(2), 0).await;
    o.row("acknowledged in 2 s after S3 returned", after.acks.len());
    if after.acks.is_empty() {
        o.problems.push("no write succeeded after S3 came back".into());
    }
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

pub(super) async fn scenario_d(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(d) mongod restarted under load", args, 'd');
    let dir = run_dir('d')?;
    let mut mongod = Mongod::start(&dir).await?;
    let mut s = setup('d', args, &mongod.uri(), None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 10);
    let started = Instant::now();
    let until = started + d;
    let restart_at = started + d / 3;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let fault = async {
        tokio::time::sleep_until(restart_at.into()).await;
        let took = mongod.kill9_and_restart().await;
        (took, Instant::now())
    };
    let (ledger, (took, back_at)) = tokio::join!(writers, fault);
    let took = took?;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!(
            "mongod (private one-node replica set) kill -9 at t={:.0?}, restarted: primary again after {took:.1?}",
            restart_at - started
        ),
    );
    let first_after = ledger.acks.iter().filter(|a| a.at > back_at).map(|a| a.at).min();
    let after = ledger.acks.iter().filter(|a| a.at > back_at).count();
    o.row("writes acknowledged after mongod was back", after);
    match first_after {
        Some(t) => o.row(
            "engine recovery (mongod primary → first acknowledged write)",
            format!("{:.1?}, no engine restart", t - back_at),
        ),
        None => o
            .problems
            .push("no write was acknowledged after mongod came back: the engines did not recover".into()),
    }
    for e in &s.engines {
        if e.restarts > 0 {
            o.problems.push(format!("{} was restarted", e.name));
        }
    }
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    drop(s);
    drop(mongod);
    // The private mongod's data is large and of no use once it is gone.
    let _ = std::fs::remove_dir_all(dir.join("mongod-data"));
    if o.passed() && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(o)
}
