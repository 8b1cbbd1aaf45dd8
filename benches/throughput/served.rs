//! Memory under many connections: the real `chronos serve` binary as a child process, so its
//! resident set is measured alone (the load generator's share stays in this process).

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::args::Budget;
use crate::errors::{err, text};
use crate::measure::{Bench, Delta, Measured, ServedMemory};
use crate::records::{pool_id, record};
use crate::workloads::{Via, Workload};

/// A `chronos serve` child; killed (by its own pid) when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub _dir: tempfile::TempDir,
}

impl Served {
    /// Start the binary with `config` (JSON; `None`: embedded in a temporary directory) and wait
    /// for the address it listens on.
    pub fn start(config: Option<Value>) -> Result<Served, String> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().map_err(err("temporary directory"))?;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chronos"));
        cmd.args(["--log", "warn", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"));
        if let Some(config) = config {
            let path = dir.path().join("chronos.json");
            std::fs::write(&path, config.to_string()).map_err(err("config file"))?;
            cmd.arg("--config").arg(path);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(err("spawn chronos serve"))?;
        let stderr = child.stderr.take().ok_or("chronos serve: no stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => match l.split_once("serving http://") {
                    Some((_, addr)) => break addr.trim().parse().map_err(err("chronos serve address"))?,
                    None => said.push(l),
                },
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("chronos serve exited before listening: {}", said.join(" / ")));
                }
            }
        };
        // Keep reading what it says, so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Served { child, addr, _dir: dir })
    }

    /// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection doing one request at a time, by hand: reqwest would add
/// a pool, and the point is exactly one server-side connection per client connection.
pub struct Conn {
    pub stream: tokio::io::BufReader<tokio::net::TcpStream>,
    pub buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: std::net::SocketAddr) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(err("connect"))?;
        stream.set_nodelay(true).map_err(text)?;
        Ok(Conn {
            stream: tokio::io::BufReader::new(stream),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send a request and read the whole response; returns its status.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<u16, String> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: bench\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(err("send"))?;
        let mut status = 0;
        let mut length = None;
        loop {
            self.buf.clear();
            let n = self
                .stream
                .read_until(b'\n', &mut self.buf)
                .await
                .map_err(err("receive"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            let line = std::str::from_utf8(&self.buf).map_err(text)?.trim_end();
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
            } else if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or("response without content-length")?;
        self.buf.resize(length, 0);
        self.stream.read_exact(&mut self.buf).await.map_err(err("body"))?;
        Ok(status)
    }
}

/// Open `conns` keep-alive connections to the child, then read pool items over all of them at
/// once until the budget is spent.
pub async fn many_connections(
    served: &Served,
    conns: usize,
    budget: Budget,
    collection: &str,
    pool: usize,
) -> Result<(Measured, ServedMemory), String> {
    let idle_kib = served.status_kib("VmRSS:").unwrap_or(0);
    served.reset_peak();
    let addr = served.addr;
    let mut opened: Vec<Conn> = futures::stream::iter(0..conns)
        .map(|_| Conn::open(addr))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    // One request on each, so the server has really taken every connection on.
    let path = |k: usize| format!("/v1/default/{collection}/items/{}", pool_id(k % pool));
    futures::stream::iter(opened.iter_mut().enumerate())
        .map(|(k, c)| {
            let path = path(k);
            async move {
                match c.request("GET", &path, None).await? {
                    200 => Ok(()),
                    s => Err(format!("GET {path}: status {s}")),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let open_kib = served.status_kib("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let per_conn = match budget {
        Budget::Ops(n) => n.div_ceil(conns as u64),
        Budget::Time(_) => u64::MAX,
    };
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let path = path(k * 7919);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut first_error = None;
                let mut errors = 0;
                for _ in 0..per_conn {
                    if let Budget::Time(d) = budget
                        && started.elapsed() >= d
                    {
                        break;
                    }
                    let t = Instant::now();
                    match c.request("GET", &path, None).await {
                        Ok(200) => latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Ok(s) => {
                            errors += 1;
                            first_error.get_or_insert(format!("GET {path}: status {s}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                            break;
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut m = Measured {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (l, e, f) = task.await.map_err(text)?;
        m.latencies.extend(l);
        m.errors += e;
        m.first_error = m.first_error.take().or(f);
    }
    m.elapsed = started.elapsed();
    m.latencies.sort_unstable();
    m.ops = m.latencies.len() as u64;
    let peak_kib = served.status_kib("VmHWM:").unwrap_or(0);
    Ok((
        m,
        ServedMemory {
            idle_kib,
            open_kib,
            peak_kib,
        },
    ))
}

/// The memory workload on one kind of storage: start the child, seed it if it is empty, hammer.
pub async fn served(
    bench: &mut Bench,
    via: Via,
    config: Option<Value>,
    conns: usize,
    collection: &str,
    pool: usize,
) -> Result<(), String> {
    let child = tokio::task::spawn_blocking(move || Served::start(config))
        .await
        .map_err(text)??;
    if via == Via::ServedEmbedded {
        // Its own empty data directory: the pool items first (setup, not measured).
        let mut c = Conn::open(child.addr).await?;
        for k in 0..pool {
            let body = serde_json::to_string(&record(k as u64, 0)).map_err(text)?;
            let path = format!("/v1/default/{collection}/items?id={}", pool_id(k));
            match c.request("POST", &path, Some(&body)).await? {
                200 | 201 => {}
                s => return Err(format!("POST {path}: status {s}")),
            }
        }
    }
    let (m, mem) = many_connections(&child, conns, bench.budget, collection, pool).await?;
    eprintln!(
        "  {} with {conns} connections: RSS idle {:.0} MiB, all open {:.0} MiB, peak {:.0} MiB",
        via.label(),
        mem.idle_kib as f64 / 1024.0,
        mem.open_kib as f64 / 1024.0,
        mem.peak_kib as f64 / 1024.0
    );
    let delta = Delta {
        rss_kib: mem.peak_kib,
        ..Default::default()
    };
    bench.push(Workload::Connections, via, m, delta);
    bench.served.push((via, conns, mem));
    Ok(())
}
