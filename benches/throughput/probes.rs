//! What the bench reads besides its own clock: Mongo commands and pool waits (driver
//! monitoring), CPU time of mongod, the S3 server and this process (`/proc/<pid>/stat`), and
//! peak RSS (`/proc/self/status`). S3 requests are counted by `engine::store::decorators::Counting`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mongodb::event::cmap::CmapEvent;
use mongodb::event::command::CommandEvent;

/// Mongo commands by name: how many were started and how long they took (driver-measured round
/// trips, so their sum per operation is the time an operation spent waiting on mongod).
#[derive(Default)]
pub struct Monitor {
    pub commands: Mutex<BTreeMap<String, (u64, Duration)>>,
    /// Time spent waiting to check a connection out of the driver's pool (CMAP events).
    pub pool_wait_nanos: AtomicU64,
}

impl Monitor {
    pub fn record(&self, event: CommandEvent) {
        let (name, started, took) = match event {
            CommandEvent::Started(s) => (s.command_name, 1, Duration::ZERO),
            CommandEvent::Succeeded(s) => (s.command_name, 0, s.duration),
            CommandEvent::Failed(f) => (f.command_name, 0, f.duration),
            _ => return,
        };
        let mut map = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name).or_default();
        entry.0 += started;
        entry.1 += took;
    }

    pub fn record_pool(&self, event: CmapEvent) {
        if let CmapEvent::ConnectionCheckedOut(e) = event {
            self.pool_wait_nanos
                .fetch_add(e.duration.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> (BTreeMap<String, (u64, Duration)>, Duration) {
        let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (
            commands,
            Duration::from_nanos(self.pool_wait_nanos.load(Ordering::Relaxed)),
        )
    }
}

/// Peak resident set size since the last [`reset_peak_rss`], in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM). Best effort: where
/// it is refused, the peaks are simply cumulative.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Counter readings at one moment.
pub struct Counts {
    pub mongo: BTreeMap<String, (u64, Duration)>,
    pub pool_wait: Duration,
    pub s3: (u64, Duration),
    pub cpu: Cpu,
}

/// CPU time (user + system) used so far by mongod, by the S3 server (SeaweedFS: `weed`) and by
/// this process (clients, engine, in-process HTTP server), from `/proc/<pid>/stat`.
#[derive(Default, Clone, Copy)]
pub struct Cpu(pub [Duration; 3]);

impl Cpu {
    pub fn now() -> Cpu {
        let mut cpu = Cpu::default();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        let me = std::process::id().to_string();
        for entry in procs.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state …`: utime and stime are fields 14 and 15, in clock ticks (USER_HZ,
            // 100 on Linux).
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let slot = match comm {
                _ if pid == me => 2,
                "mongod" => 0,
                "weed" => 1,
                _ => continue,
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            cpu.0[slot] += Duration::from_millis(10 * (ticks(11) + ticks(12)));
        }
        cpu
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu([0, 1, 2].map(|i| self.0[i].saturating_sub(before.0[i])))
    }
}
