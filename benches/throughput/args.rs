//! The command line: what to run (`--only`), for how long (`--seconds`/`--ops`), how wide
//! (`--clients`, `--connections`, `--items`), and the `--smoke` mode CI runs to keep the bench
//! building and working.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Chronos throughput against the raw cost of MongoDB + S3")]
pub struct Args {
    /// Concurrent clients per workload.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds per workload (default 10; 0.3 with --smoke).
    #[arg(long, conflicts_with = "ops")]
    pub seconds: Option<f64>,
    /// Operations per workload instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Items in the restoreCollection workload (default 100000; 100 with --smoke).
    #[arg(long)]
    pub items: Option<usize>,
    /// Concurrent keep-alive connections to the `chronos serve` child in the memory workload
    /// (default 1000; 50 with --smoke).
    #[arg(long)]
    pub connections: Option<usize>,
    /// A few seconds in total, for CI: small pools, no warm-up, targets not judged; fails only
    /// when an operation fails.
    #[arg(long)]
    pub smoke: bool,
    /// Run only these workloads (comma-separated labels as in the table's first column, plus
    /// `memory`), e.g. `--only create,update,"S3 PUT alone"` while working on the write path.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Leave the driver's command monitoring off. It turns every command and reply into a
    /// `Document` for its event, which costs this process CPU on every Mongo path (about a fifth
    /// of it on reads) and so narrows the gap between the floor and the slower paths; without it
    /// the Mongo commands per operation and their round trips are not counted.
    #[arg(long)]
    pub no_command_monitor: bool,
    /// Write the results as Markdown here (e.g. docs/benchmarks.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Time(Duration),
    Ops(u64),
}

impl Budget {
    /// A tenth of the budget, to warm connection pools and caches before measuring.
    pub fn warmup(self) -> Budget {
        match self {
            Budget::Time(d) => Budget::Time(d / 10),
            Budget::Ops(n) => Budget::Ops(n / 10),
        }
    }

    pub fn half(self) -> Budget {
        match self {
            Budget::Time(d) => Budget::Time(d / 2),
            Budget::Ops(n) => Budget::Ops(n.div_ceil(2)),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Budget::Time(d) => format!("{:.1} s per workload", d.as_secs_f64()),
            Budget::Ops(n) => format!("{n} operations per workload"),
        }
    }
}
