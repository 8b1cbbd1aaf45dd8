//! The processes a scenario runs: `chronos serve` engines and a private mongod, each started
//! with bounded readiness waits and killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Fail;

/// The `chronos` binary Cargo built for this test target (or `CHRONOS_BIN`).
pub fn chronos_bin() -> PathBuf {
    std::env::var_os("CHRONOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chronos")))
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16, Fail> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn log_file(path: &Path) -> Result<std::fs::File, Fail> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()).into())
}

/// One `chronos serve` process on a fixed loopback port (kept across restarts).
pub struct EngineProc {
    pub name: String,
    pub url: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub restarts: u32,
}

impl EngineProc {
    pub async fn start(name: &str, config: &Path, dir: &Path) -> Result<Self, Fail> {
        let port = free_port()?;
        let mut e = EngineProc {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            config: config.to_owned(),
            log: dir.join(format!("{name}.log")),
            child: None,
            restarts: 0,
        };
        e.spawn().await?;
        Ok(e)
    }

    async fn spawn(&mut self) -> Result<(), Fail> {
        let child = Command::new(chronos_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .env(
                "CHRONOS_LOG",
                std::env::var("CHRONOS_FAULTS_ENGINE_LOG").unwrap_or("warn".into()),
            )
            .env_remove("CHRONOS_TOKENS_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", chronos_bin().display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Poll /healthz until it answers, the process exits, or the deadline passes.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), Fail> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{} exited during start-up ({status}):\n{}", self.name, tail(&self.log)).into());
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within {within:?}:\n{}", self.name, tail(&self.log)).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, then start again on the same port and wait until it serves.
    pub async fn kill9_and_restart(&mut self) -> Result<(), Fail> {
        self.kill9().await;
        self.restarts += 1;
        self.spawn().await
    }

    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Resident and peak resident memory (VmRSS, VmHWM) in KiB, from /proc.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The mongod binary `scripts/services.sh install` put in the cache (or `CHRONOS_TEST_MONGOD`).
fn mongod_bin() -> Result<PathBuf, Fail> {
    if let Some(p) = std::env::var_os("CHRONOS_TEST_MONGOD") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("CHRONOS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/chronos-test"));
    let bin = cache.join("venv/bin/mongod");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "no mongod at {}: run `scripts/services.sh install` (or set CHRONOS_TEST_MONGOD)",
            bin.display()
        )
        .into())
    }
}

const REPLSET: &str = "rsfaults";

/// A private one-node replica set, for scenarios that restart MongoDB (the shared one is never
/// touched).
pub struct Mongod {
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mongod {
    pub async fn start(dir: &Path) -> Result<Self, Fail> {
        let data = dir.join("mongod-data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let mut m = Mongod {
            port: free_port()?,
            dir: data,
            log: dir.join("mongod.log"),
            child: None,
        };
        m.spawn().await?;
        Ok(m)
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet={REPLSET}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), Fail> {
        let child = Command::new(mongod_bin()?)
            .args(["--replSet", REPLSET, "--bind_ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dbpath")
            .arg(&self.dir)
            .args(["--nounixsocket", "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "64"])
            .args(["--setParameter", "diagnosticDataCollectionEnabled=false"])
            .stdin(Stdio::null())
            .stdout(log_file(&self.log)?)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start mongod: {e}"))?;
        self.child = Some(child);
        self.wait_primary(Duration::from_secs(60)).await
    }

    /// Initiate the replica set (once; "already initialized" is fine) and wait until this node
    /// is a writable primary.
    async fn wait_primary(&mut self, within: Duration) -> Result<(), Fail> {
        use mongodb::bson::doc;
        let mut options =
            mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port))
                .await
                .map_err(|e| e.to_string())?;
        options.server_selection_timeout = Some(Duration::from_secs(1));
        options.connect_timeout = Some(Duration::from_secs(1));
        let client = mongodb::Client::with_options(options).map_err(|e| e.to_string())?;
        let admin = client.database("admin");
        let deadline = Instant::now() + within;
        let mut last = String::from("no answer");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("mongod exited ({status}); see {}", self.log.display()).into());
            }
            let members = vec![doc! {"_id": 0, "host": format!("127.0.0.1:{}", self.port)}];
            match admin
                .run_command(doc! {"replSetInitiate": {"_id": REPLSET, "members": members}})
                .await
            {
                Ok(_) => {}
                // AlreadyInitialized (23), or not yet answering: look at `hello` either way.
                Err(e) => last = e.to_string(),
            }
            if let Ok(hello) = admin.run_command(doc! {"hello": 1}).await {
                if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                    return Ok(());
                }
                last = format!("not yet primary: {hello}");
            }
            if Instant::now() > deadline {
                return Err(format!("mongod not a writable primary within {within:?}: {last}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` mongod, start it again on the same data, wait until it is primary.
    pub async fn kill9_and_restart(&mut self) -> Result<Duration, Fail> {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let started = Instant::now();
        self.spawn().await?;
        Ok(started.elapsed())
    }
}
