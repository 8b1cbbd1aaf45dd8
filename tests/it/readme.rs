//! The README's examples, run as written against `chronos serve` (the README's first command)
//! started from the built binary on an ephemeral port.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `chronos serve` in embedded mode, and the URL it printed.
pub(crate) struct Served {
    pub(crate) url: String,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path()).await;
    served._dir = Some(dir);
    served
}

/// `chronos serve` with its data in `data_dir`.
pub(crate) async fn serve_in(data_dir: &std::path::Path) -> Served {
    serve_config(std::path::Path::new("examples/chronos.yaml"), data_dir).await
}

/// `chronos serve --config config`, with embedded data (if the configuration says so) in
/// `data_dir`.
pub(crate) async fn serve_config(config: &std::path::Path, data_dir: &std::path::Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronos"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chronos binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The banner is printed once the listener is bound: wait for it, not for a fixed time.
    let url = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("chronos serve printed no banner within 30 s")
            .unwrap()
            .expect("chronos serve exited before serving");
        if let Some(rest) = line.split("serving ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served { url, child, _dir: None }
}

impl Served {
    /// Kill it as a crash would (SIGKILL): nothing of it runs after this returns.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Stop it as an orchestrator would (SIGTERM) and wait until it has exited.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("chronos serve did not stop within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "chronos serve exited with {status}");
    }
}

/// The shell blocks of the README's "Use it" and "Features" sections.
fn examples() -> Vec<String> {
    blocks(&["## Use it", "## Features"])
}

/// The shell blocks of these sections of the README.
fn blocks(headings: &[&str]) -> Vec<String> {
    let readme = include_str!("../../README.md");
    headings
        .iter()
        .flat_map(|heading| {
            let section = readme.split(heading).nth(1).unwrap().split("\n## ").next().unwrap();
            section
                .split("```sh\n")
                .skip(1)
                .map(|b| b.split("```").next().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn readme_examples_work_as_written() {
    let served = serve().await;
    let blocks = examples();
    assert_eq!(blocks.len(), 3, "the curl block, the CLI block and the features block");
    // Commands stay verbatim: `curl` fails on HTTP errors, `cargo run --` is the built binary,
    // and the documented address points at this server.
    let prelude = format!(
        "set -euo pipefail\n\
         curl() {{ command curl --fail-with-body \"${{@//http:\\/\\/127.0.0.1:8080/{url}}}\"; echo; }}\n\
         cargo() {{ [ \"$1\" = run ] && [ \"$2\" = -- ] && shift 2; \"$CHRONOS_BIN\" \"$@\"; }}\n",
        url = served.url.replace('/', "\\/"),
    );
    for block in blocks {
        run_block(&prelude, &block, &served.url, None).await;
    }
}

/// Run a README shell block after `prelude` (in `dir`, if given); it must succeed without an
/// error body on stdout.
async fn run_block(prelude: &str, block: &str, url: &str, dir: Option<&std::path::Path>) -> String {
    {
        let mut command = Command::new("bash");
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let output = command
            .arg("-c")
            .arg(format!("{prelude}{block}"))
            .env("CHRONOS_BIN", env!("CARGO_BIN_EXE_chronos"))
            .env("CHRONOS_URL", url)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "README block failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(!stdout.contains("\"code\""), "an example returned an error:\n{stdout}");
        stdout.into_owned()
    }
}

async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Every item of `collection` as the server reads it, latest and each version, without
/// `_system.state` (a cost tier: a rebuilt head is `processed`, see docs/design.md).
async fn snapshot(url: &str, collection: &str, ids: &[String]) -> Vec<serde_json::Value> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for id in ids {
        let history: serde_json::Value = get_json(
            &http,
            format!("{url}/v1/default/{collection}/items/{id}/versions?includeDeleted=true"),
        )
        .await;
        out.push(history.clone());
        for v in history["versions"].as_array().unwrap() {
            let ov = v["ov"].as_u64().unwrap();
            let mut r: serde_json::Value = get_json(
                &http,
                format!("{url}/v1/default/{collection}/items/{id}?ov={ov}&includeDeleted=true"),
            )
            .await;
            r["_system"].as_object_mut().unwrap().remove("state");
            out.push(r);
        }
    }
    let totals: serde_json::Value = get_json(&http, format!("{url}/v1/default/{collection}/counters")).await;
    out.push(totals);
    out
}

#[tokio::test]
async fn disaster_recovery_commands_work_as_written() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let served = serve_in(&data).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let w: serde_json::Value = http
            .post(format!("{}/v1/default/orders/items", served.url))
            .json(&serde_json::json!({"status": "new", "customer": format!("c{n}"), "total": 50 * n}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    let put = http
        .put(format!("{}/v1/default/orders/items/{}", served.url, ids[0]))
        .json(&serde_json::json!({"status": "paid", "customer": "c0", "total": 150}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");
    let del = http
        .delete(format!("{}/v1/default/orders/items/{}", served.url, ids[1]))
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success(), "{del:?}");
    let before = snapshot(&served.url, "orders", &ids).await;
    served.stop().await;

    let blocks = blocks(&["## Disaster recovery"]);
    assert_eq!(blocks.len(), 1, "one block of commands");
    let prelude =
        "set -euo pipefail\ncargo() { [ \"$1\" = run ] && [ \"$2\" = -- ] && shift 2; \"$CHRONOS_BIN\" \"$@\"; }\n";
    let out = run_block(prelude, &blocks[0], "", Some(home.path())).await;
    assert!(
        out.contains("VERSIONS") && out.contains("MISSING"),
        "rebuild and verify reported:\n{out}"
    );

    let served = serve_in(&data).await;
    let after = snapshot(&served.url, "orders", &ids).await;
    assert_eq!(after, before, "the rebuilt store answers every read as before");
    served.stop().await;
}
