//! The change feed (issue 16): N Server-Sent-Events subscribers on a `chronos serve` child, one
//! writer; how long a version takes from its write's acknowledgement to each subscriber, and the
//! child's resident set and CPU with every subscriber connected.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::errors::{err, text};
use crate::measure::Bench;
use crate::records::record;
use crate::served::{Conn, Served};
use crate::workloads::Via;

/// What one run of the feed workload measured.
#[derive(Debug, Clone)]
pub struct FeedReading {
    pub via: Via,
    pub subscribers: usize,
    pub writes: usize,
    /// Write acknowledged → received by a subscriber, over every (subscriber, version), sorted (µs).
    pub latencies_us: Vec<u64>,
    /// The child's RSS before any subscriber, with all subscribed, and its peak over the run.
    pub idle_kib: u64,
    pub open_kib: u64,
    pub peak_kib: u64,
    /// The child's CPU time (user + system) while the versions were written and delivered.
    pub cpu: Duration,
    pub took: Duration,
}

impl FeedReading {
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        self.latencies_us[i] as f64 / 1000.0
    }
}

const COLLECTION: &str = "bfeed";

/// CPU time of a process so far (`/proc/<pid>/stat`: utime + stime, in clock ticks of 1/100 s).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 of `rest` (state is not a number).
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Open one SSE subscription after `after` over a raw connection (no client pool in between).
async fn subscribe(addr: std::net::SocketAddr, after: u64) -> Result<Conn, String> {
    let mut c = Conn::open(addr).await?;
    let req = format!(
        "GET /v1/default/{COLLECTION}/changes?after={after} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
    );
    c.stream
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(err("subscribe"))?;
    // The status line and headers: the subscription is open once they are here.
    let mut status = 0;
    loop {
        c.buf.clear();
        let n = c.stream.read_until(b'\n', &mut c.buf).await.map_err(err("subscribe"))?;
        let line = std::str::from_utf8(&c.buf).map_err(text)?.trim_end();
        if n == 0 {
            return Err("the server closed a subscription".into());
        }
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    if status != 200 {
        return Err(format!("subscribe: status {status}"));
    }
    Ok(c)
}

/// Read change events until `count` versions after `after` arrived: their cvs and arrival times.
async fn receive(mut c: Conn, after: u64, count: usize) -> Result<Vec<(u64, Instant)>, String> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        c.buf.clear();
        let n = c.stream.read_until(b'\n', &mut c.buf).await.map_err(err("receive"))?;
        if n == 0 {
            return Err("the server closed a subscription".into());
        }
        let line = std::str::from_utf8(&c.buf).map_err(text)?;
        if let Some(cv) = line.strip_prefix("id:").and_then(|v| v.trim().parse::<u64>().ok())
            && cv > after
        {
            got.push((cv, Instant::now()));
        }
    }
    Ok(got)
}

/// POST one item; its cv and when the write was acknowledged.
async fn write(c: &mut Conn, n: u64) -> Result<(u64, Instant), String> {
    let body = serde_json::to_string(&record(n, 0)).map_err(text)?;
    let path = format!("/v1/default/{COLLECTION}/items?id=f{n:06}");
    let status = c.request("POST", &path, Some(&body)).await?;
    let acked = Instant::now();
    if status != 201 {
        return Err(format!("POST {path}: status {status}"));
    }
    let v: Value = serde_json::from_slice(&c.buf).map_err(err("write result"))?;
    let cv = v["cv"].as_u64().ok_or("a write result without cv")?;
    Ok((cv, acked))
}

/// The feed workload on one kind of storage: `subscribers` SSE streams from the current cv,
/// then `writes` versions written one after another (a pause between them, so each is delivered
/// alone) and received by every subscriber.
pub async fn feed(
    bench: &mut Bench,
    via: Via,
    config: Option<Value>,
    subscribers: usize,
    writes: usize,
) -> Result<(), String> {
    let child = tokio::task::spawn_blocking(move || Served::start(config))
        .await
        .map_err(text)??;
    let pid = child.child.id();
    let started = Instant::now();
    let mut writer = Conn::open(child.addr).await?;
    // The collection exists and its indexes are made before anyone measures.
    let (seed, _) = write(&mut writer, u64::MAX >> 20).await?;
    let idle_kib = child.status_kib("VmRSS:").unwrap_or(0);
    child.reset_peak();
    let addr = child.addr;
    let conns: Vec<Conn> = futures::stream::iter(0..subscribers)
        .map(|_| subscribe(addr, seed))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let open_kib = child.status_kib("VmRSS:").unwrap_or(0);
    let cpu_before = cpu_of(pid);
    // Only this writer writes the collection: the `writes` versions after the seed are its own.
    let receivers: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(receive(c, seed, writes)))
        .collect();
    let mut acks = Vec::with_capacity(writes);
    for n in 0..writes as u64 {
        acks.push(write(&mut writer, n).await?);
        // A pause, so each version is delivered alone rather than in a batch with the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Duration::from_secs(120);
    let acked: std::collections::HashMap<u64, Instant> = acks.into_iter().collect();
    let mut latencies_us = Vec::with_capacity(subscribers * writes);
    for r in receivers {
        let got = tokio::time::timeout(deadline, r)
            .await
            .map_err(|_| format!("a subscriber did not receive every version within {deadline:?}"))?
            .map_err(text)??;
        for (cv, at) in got {
            let since = acked
                .get(&cv)
                .map_or(Duration::ZERO, |a| at.saturating_duration_since(*a));
            latencies_us.push(since.as_micros() as u64);
        }
    }
    latencies_us.sort_unstable();
    let reading = FeedReading {
        via,
        subscribers,
        writes,
        latencies_us,
        idle_kib,
        open_kib,
        peak_kib: child.status_kib("VmHWM:").unwrap_or(0),
        cpu: cpu_of(pid).saturating_sub(cpu_before),
        took: started.elapsed(),
    };
    eprintln!(
        "  feed via {} with {subscribers} subscribers, {writes} versions: p50 {:.1} ms, p99 {:.1} ms; RSS idle {:.0} MiB, \
         subscribed {:.0} MiB, peak {:.0} MiB; child CPU {:.1} s",
        via.label(),
        reading.percentile_ms(0.5),
        reading.percentile_ms(0.99),
        idle_kib as f64 / 1024.0,
        open_kib as f64 / 1024.0,
        reading.peak_kib as f64 / 1024.0,
        reading.cpu.as_secs_f64()
    );
    bench.feeds.push(reading);
    Ok(())
}
