//! The README's examples, run as written against `chronos serve` (the README's first command)
//! started from the built binary on an ephemeral port.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `chronos serve` in embedded mode, and the URL it printed.
struct Served {
    url: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronos"))
        .args([
            "serve",
            "--config",
            "examples/chronos.yaml",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
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
    Served {
        url,
        _child: child,
        _dir: dir,
    }
}

/// The shell blocks of the README's "Use it" and "Features" sections.
fn examples() -> Vec<String> {
    let readme = include_str!("../../README.md");
    ["## Use it", "## Features"]
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
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{block}"))
            .env("CHRONOS_BIN", env!("CARGO_BIN_EXE_chronos"))
            .env("CHRONOS_URL", &served.url)
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
    }
}
