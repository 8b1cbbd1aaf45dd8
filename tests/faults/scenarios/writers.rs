//! (a) two engines under concurrent writes, (b) the same with `kill -9` of an engine every 5 s, then scrub.

use super::*;

pub(super) async fn scenario_a(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(a) two engines under concurrent writes", args, 'a');
    let svc = services()?;
    let mut s = setup('a', args, &svc.mongo_uri, None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 5);
    let started = Instant::now();
    let ledger = load::run_writers(&http, &s.target, args.writers, started + d, 20).await;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row("faults injected", "none");
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

pub(super) async fn scenario_b(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(b) kill -9 of an engine every 5 s", args, 'b');
    let svc = services()?;
    let mut s = setup('b', args, &svc.mongo_uri, None).await?;
    let http = load::http()?;
    load::seed(&http, &s.target).await?;
    let d = durations(args, 60, 12);
    let every = if args.full {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let until = started + d;
    let writers = load::run_writers(&http, &s.target, args.writers, until, 20);
    let engines = &mut s.engines;
    let killer = async move {
        let mut kills = 0u32;
        let mut next = started + every;
        while next + Duration::from_secs(1) < until {
            tokio::time::sleep_until(next.into()).await;
            let n = engines.len();
            let e = &mut engines[kills as usize % n];
            e.kill9_and_restart().await?;
            kills += 1;
            next += every;
        }
        Ok::<u32, Fail>(kills)
    };
    let (ledger, kills) = tokio::join!(writers, killer);
    let kills = kills?;
    let secs = started.elapsed().as_secs_f64();
    o.ledger(&ledger, secs, args.writers, args.items, 2);
    o.row(
        "faults injected",
        format!("{kills} × kill -9 of an engine process (every {every:?}, alternating, restarted each time)"),
    );
    let f = load::check(&http, &s.target, &s.target.urls[0], &ledger).await;
    o.findings(&f);
    // Orphans: payloads of writes killed between their PUT and their commit. After the load no
    // write is in flight, so no grace period is needed.
    let found = scrub(&s.config, false).await?;
    o.row(
        "orphaned payloads reported by `chronos scrub`",
        format!(
            "{} (of {} payloads scanned; {} committed; {} packed and in use)",
            found["orphans"], found["scanned"], found["committed"], found["packs"]["named"]
        ),
    );
    // With `--pack-writes`, versions' payloads are also members of packs that scrub finds named.
    let committed = found["committed"].as_u64().unwrap_or(0) + found["packs"]["named"].as_u64().unwrap_or(0);
    if committed != f.versions {
        o.problems.push(format!(
            "scrub counted {committed} committed payloads ({} in packs), the histories hold {} versions",
            found["packs"]["named"], f.versions
        ));
    }
    let deleted = scrub(&s.config, true).await?;
    o.row("orphans deleted by `chronos scrub --delete`", &deleted["deleted"]);
    // Deleting orphans must not touch anything committed: check everything again.
    let again = load::check(&http, &s.target, &s.target.urls[1], &ledger).await;
    if !again.clean() || again.versions != f.versions {
        o.problems
            .push(format!("after scrub --delete the histories changed: {again:?}"));
    }
    o.row(
        "re-check after scrub --delete",
        if again.clean() { "clean" } else { "NOT clean" },
    );
    all_alive(&mut o, &mut s.engines);
    finish(&s.dir, args, &o);
    Ok(o)
}

/// Run `chronos scrub` on a configuration; its JSON report.
async fn scrub(config: &Path, delete: bool) -> Result<Value, Fail> {
    let mut cmd = tokio::process::Command::new(crate::procs::chronos_bin());
    cmd.args(["scrub", "--config"])
        .arg(config)
        .args(["--grace-secs", "0", "--output", "json", "--max-listed", "20"])
        .env("CHRONOS_LOG", "warn")
        .kill_on_drop(true);
    if delete {
        cmd.arg("--delete");
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .map_err(|_| "chronos scrub took more than 300 s")??;
    if !out.status.success() {
        return Err(format!("chronos scrub failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
