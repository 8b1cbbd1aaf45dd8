//! (g) kill -9 during an erasure: `chronos erase` by filter over many items is killed once it has
//! erased the first of them; an engine restarted afterwards finishes the started erasure on its
//! own. Then no byte of the erased items is left in any bucket or MongoDB collection, every one
//! of them answers 410, the others are untouched, and there is one erasure record, done.

use futures::{StreamExt, TryStreamExt};

use super::*;

pub(super) async fn scenario_g(args: &Args) -> Result<Outcome, Fail> {
    let mut o = Outcome::new("(g) kill -9 during an erasure", args, 'g');
    let svc = services()?;
    let dir = run_dir('g')?;
    let (config, bucket) = write_config(&dir, &svc.mongo_uri, &svc.s3, &svc.s3.endpoint, &[], &admin_tokens()).await?;
    let mut engines = vec![
        EngineProc::start("engine-1", &config, &dir).await?,
        EngineProc::start("engine-2", &config, &dir).await?,
    ];
    let http = load::http()?;
    let n = if args.full { 2000 } else { 200 };
    let marker = unique("ERASEME");
    let items = format!("{}/v1/default/people/items", engines[1].url);
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(ADMIN_TOKEN);
    // n subjects (two versions each, the marker in data and indexed metadata), 10 others.
    futures::stream::iter(0..n + 10)
        .map(|i| {
            let (http, items, marker) = (&http, &items, &marker);
            async move {
                let subject = if i < n { marker.as_str() } else { "keep" };
                let id = format!("p{i:05}");
                let made = auth(http.post(format!("{items}?id={id}")))
                    .json(&serde_json::json!({"subject": subject, "note": format!("about {subject}")}))
                    .send()
                    .await?;
                let changed = auth(http.put(format!("{items}/{id}")))
                    .json(&serde_json::json!({"subject": subject, "n": 2}))
                    .send()
                    .await?;
                match (made.status().as_u16(), changed.status().as_u16()) {
                    (201, 200) => Ok(()),
                    other => Err(format!("seeding {id}: {other:?}").into()),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e: Fail| e)?;

    let json = S3PayloadStore::new(svc.s3.client(), bucket.clone());
    let mut erase = tokio::process::Command::new(crate::procs::chronos_bin())
        .args(["erase", "--config"])
        .arg(&config)
        .args([
            "--collection",
            "people",
            "--reason",
            "fault campaign (g)",
            "--output",
            "json",
        ])
        .args(["--filter", &format!(r#"{{"subject": "{marker}"}}"#)])
        .env("CHRONOS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // Kill it as soon as the first item reads as erased (items go in id order).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let first = auth(http.get(format!("{items}/p00000")))
            .send()
            .await?
            .status()
            .as_u16();
        if first == 410 {
            break;
        }
        if Instant::now() > deadline || erase.try_wait()?.is_some() {
            o.problems
                .push("the erasure never reached its first item before the kill".into());
            break;
        }
        tokio::task::yield_now().await;
    }
    erase.start_kill()?;
    erase.wait().await?;
    let status_then = record_status(&json).await?;
    let erased_then = count_status(&http, &items, 0..n, 410).await?;
    o.row(
        "load",
        format!("{n} items of one subject (2 versions each) and 10 others, on 2 engine processes"),
    );
    o.row(
        "faults injected",
        format!("kill -9 of `chronos erase` after it erased its first item ({erased_then} of {n} read as erased then; record {status_then})"),
    );
    if status_then != "started" {
        o.problems.push(format!(
            "the erasure was {status_then} when killed: raise the item count"
        ));
    }

    // A restarted engine finishes it.
    engines[0].kill9_and_restart().await?;
    let started = Instant::now();
    while record_status(&json).await? != "done" {
        if started.elapsed() > Duration::from_secs(300) {
            o.problems
                .push("the restarted engine did not finish the erasure within 300 s".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    o.row(
        "erasure finished by the restarted engine after",
        format!("{:.1?}", started.elapsed()),
    );
    o.must_be_zero(
        "erased items not answering 410",
        n as u64 - count_status(&http, &items, 0..n, 410).await?,
    );
    o.must_be_zero(
        "other items not answering 200",
        10 - count_status(&http, &items, n..n + 10, 200).await?,
    );
    let mut traces = 0;
    for role in ["json", "content", "backups"] {
        let name = format!("{}-{role}", bucket.trim_end_matches("-json"));
        traces += objects_with(&S3PayloadStore::new(svc.s3.client(), name), &marker).await?;
    }
    o.must_be_zero("objects holding the subject (every bucket)", traces);
    let db = bucket.trim_end_matches("-json").replace('-', "_");
    o.must_be_zero(
        "MongoDB documents holding the subject",
        documents_with(&svc.mongo_uri, &db, &marker).await?,
    );
    let records = json.list("default/chronos-erasures/people/", None, 10).await?;
    o.must_be_zero("erasure records beyond the one", records.len().saturating_sub(1) as u64);
    all_alive(&mut o, &mut engines);
    finish(&dir, args, &o);
    Ok(o)
}

/// The status of the collection's one erasure record (`none` before it is written).
async fn record_status(json: &S3PayloadStore) -> Result<String, Fail> {
    let keys = json.list("default/chronos-erasures/people/", None, 10).await?;
    let Some(key) = keys.first() else {
        return Ok("none".into());
    };
    let Some(body) = json.get(key).await? else {
        return Ok("none".into());
    };
    let record: Value = serde_json::from_slice(&body)?;
    Ok(record["status"].as_str().unwrap_or("unknown").to_owned())
}

/// How many of the items `range` answer `status`.
async fn count_status(
    http: &reqwest::Client,
    items: &str,
    range: std::ops::Range<usize>,
    status: u16,
) -> Result<u64, Fail> {
    let answers: Vec<u16> = futures::stream::iter(range)
        .map(|i| async move {
            let r = http
                .get(format!("{items}/p{i:05}"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?;
            Ok::<u16, Fail>(r.status().as_u16())
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(answers.into_iter().filter(|s| *s == status).count() as u64)
}

/// How many objects of a bucket hold `marker` in their key or bytes.
async fn objects_with(store: &S3PayloadStore, marker: &str) -> Result<u64, Fail> {
    let mut hits = 0;
    let mut after: Option<String> = None;
    loop {
        let keys = store.list("", after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else { break };
        for k in &keys {
            let body = store.get(k).await?.unwrap_or_default();
            if k.contains(marker) || String::from_utf8_lossy(&body).contains(marker) {
                hits += 1;
            }
        }
        after = Some(last);
    }
    Ok(hits)
}

/// How many documents of any collection of MongoDB database `db` hold `marker`.
async fn documents_with(uri: &str, db: &str, marker: &str) -> Result<u64, Fail> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let db = client.database(db);
    let mut hits = 0;
    for name in db.list_collection_names().await? {
        let docs: Vec<mongodb::bson::Document> = db
            .collection(&name)
            .find(mongodb::bson::doc! {})
            .await?
            .try_collect()
            .await?;
        hits += docs.iter().filter(|d| d.to_string().contains(marker)).count() as u64;
    }
    Ok(hits)
}
