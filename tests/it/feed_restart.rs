//! The change feed across a crash: `chronos serve` killed with SIGKILL while a subscriber reads
//! its feed; the subscriber resumes from the last cv it saw on the restarted engine and, after
//! dedupe by cv, has seen every committed version exactly once, in cv order, and nothing else.
//! The same test on each backend a restart keeps data on: embedded, and MongoDB + S3 (whose
//! feed is woken by a change stream, opened again by the new process).

use std::path::PathBuf;
use std::time::Duration;

use chronos::client::Client;
use chronos::client::changes::ChangesParams;
use chronos::engine::backends::S3PayloadStore;
use serde_json::{Value, json};

use crate::readme::{Served, serve_config};
use crate::support::{env, s3_connection, unique};

/// Where `chronos serve` keeps its data, so a restarted process finds what the killed one wrote.
struct Deployment {
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Embedded: SQLite and files in a directory (the README's configuration).
    fn embedded() -> Deployment {
        Deployment {
            config: PathBuf::from("examples/chronos.yaml"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// MongoDB + S3: a fresh MongoDB database and fresh buckets, credentials from the
    /// environment (never written to the file).
    async fn mongo_s3() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let run = unique("feedkill");
        for role in ["json", "content", "backups"] {
            S3PayloadStore::new(s3_connection().client(), format!("{run}-{role}"))
                .ensure_bucket()
                .await
                .expect("S3 server reachable");
        }
        let yaml = format!(
            "mongoUris: [{{env: CHRONOS_TEST_MONGO_URI}}]\ndbName: {db}\nspacesConns:\n  - {{endpoint: '{endpoint}', \
             region: '{region}', accessKey: {{env: CHRONOS_TEST_S3_ACCESS_KEY}}, secretKey: {{env: \
             CHRONOS_TEST_S3_SECRET_KEY}}, jsonBucket: {run}-json, contentBucket: {run}-content, backupsBucket: \
             {run}-backups}}\n",
            db = run.replace('-', "_"),
            endpoint = env("CHRONOS_TEST_S3_ENDPOINT"),
            region = env("CHRONOS_TEST_S3_REGION"),
        );
        // Fails loudly here, not in the child, when the services' variables are missing.
        env("CHRONOS_TEST_MONGO_URI");
        let config = dir.path().join("chronos.yaml");
        std::fs::write(&config, yaml).unwrap();
        Deployment { config, dir }
    }

    async fn serve(&self) -> Served {
        serve_config(&self.config, &self.dir.path().join("data")).await
    }
}

async fn write(http: &reqwest::Client, url: &str, n: u64) {
    let r = http
        .post(format!("{url}/v1/default/notes/items"))
        .json(&json!({"n": n}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

#[tokio::test]
async fn a_subscriber_resumes_after_its_embedded_engine_is_killed_mid_stream() {
    resumes_after_a_kill(Deployment::embedded()).await;
}

#[tokio::test]
async fn a_subscriber_resumes_after_its_mongo_s3_engine_is_killed_mid_stream() {
    resumes_after_a_kill(Deployment::mongo_s3().await).await;
}

async fn resumes_after_a_kill(deployment: Deployment) {
    // reqwest's TLS needs the process's crypto provider, whichever test runs first.
    chronos::install_crypto_provider();
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(30);

    let served = deployment.serve().await;
    for n in 0..20 {
        write(&http, &served.url, n).await;
    }
    let client = Client::new(served.url.clone(), None).unwrap();
    let mut stream = client.watch("default", "notes", ChangesParams::default());
    let mut seen = Vec::new();
    for _ in 0..10 {
        let change = tokio::time::timeout(deadline, stream.next()).await.unwrap().unwrap();
        seen.push(change.cv);
    }
    served.kill().await;

    // The same data, a new process (and port); ten more writes after the restart.
    let served = deployment.serve().await;
    for n in 20..30 {
        write(&http, &served.url, n).await;
    }
    let client = Client::new(served.url.clone(), None).unwrap();
    let resume = ChangesParams {
        after: *seen.last().unwrap(),
        ..Default::default()
    };
    let mut stream = client.watch("default", "notes", resume);
    while seen.len() < 30 {
        let change = tokio::time::timeout(deadline, stream.next()).await.unwrap().unwrap();
        seen.push(change.cv);
    }
    // The index, read as pages from the start: exactly what the subscriber saw.
    let page: Value = http
        .get(format!("{}/v1/default/notes/changes?after=0&limit=1000", served.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<u64> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cv"].as_u64().unwrap())
        .collect();
    assert_eq!(all.len(), 30, "every acknowledged write survived the kill: {page}");
    assert_eq!(seen, all, "once each, in cv order, across the crash");
    served.stop().await;
}
