//! `queue-memory`: resident memory per queued run.
//!
//! * **Virtual queue alone**: a child process of this binary (`queue-memory-probe`, so every size
//!   starts from a fresh heap that no earlier measurement has grown or fragmented) reads `VmRSS`
//!   from `/proc/self/status`, pushes N runs (ids and routing only, as admission does) into a
//!   `VirtualQueue`, and reads `VmRSS` again.
//! * **Standalone, accepted and queued** (optional): the RSS growth of this process while an
//!   in-process standalone Nexus with a tiny shard budget (nothing dispatched after the first run)
//!   accepts N runs over HTTP. That includes the SQLite page cache, the HTTP buffers and the load
//!   generator: an upper bound, not the queue's cost.

use std::time::Duration;

use nexus_model::run::RunId;
use nexus_scheduler::{Queued, VirtualQueue};

use crate::print_table;

/// Resident set size of this process, in bytes.
///
/// # Errors
/// `/proc/self/status` is unreadable or has no `VmRSS` line (not Linux).
pub fn rss_bytes() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// The child's side: pushes `runs` runs and prints `before after` RSS in bytes on one line.
///
/// # Errors
/// As [`rss_bytes`].
pub fn probe(runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(runs <= 20_000_000, "--runs must be at most 20000000");
    let q = VirtualQueue::new(usize::MAX);
    // The lane exists before the first measurement: its fixed cost is not per run.
    drop(q.lane("local"));
    let before = rss_bytes()?;
    for _ in 0..runs {
        q.push(Queued {
            id: RunId::new(),
            shard: "local".into(),
            attempt: 0,
        });
    }
    let after = rss_bytes()?;
    anyhow::ensure!(q.len() == runs, "queue lost runs");
    println!("{before} {after}");
    Ok(())
}

/// One measured size.
#[derive(Debug)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Runs queued.
    pub runs: usize,
    /// RSS growth in bytes.
    pub growth: u64,
}

impl Row {
    /// Bytes per queued run.
    #[must_use]
    pub fn per_run(&self) -> f64 {
        self.growth as f64 / self.runs.max(1) as f64
    }
}

/// Measures the virtual queue at `runs` in a child process.
///
/// # Errors
/// The child cannot be started or fails.
pub fn queue_in_child(runs: usize) -> anyhow::Result<Row> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["queue-memory-probe", "--runs", &runs.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "queue-memory-probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(before)), Some(Ok(after))) = (it.next(), it.next()) else {
        anyhow::bail!("queue-memory-probe printed '{}'", text.trim());
    };
    Ok(Row {
        name: "VirtualQueue (ids + routing)".into(),
        runs,
        growth: after.saturating_sub(before),
    })
}

/// Measures the RSS growth of an in-process standalone accepting `runs` runs.
///
/// # Errors
/// The standalone cannot start.
pub async fn standalone(runs: usize) -> anyhow::Result<Row> {
    anyhow::ensure!(
        (1..=2_000_000).contains(&runs),
        "--standalone-runs must be between 1 and 2000000"
    );
    let nexus = crate::start_nexus(
        |c| {
            // Nothing is dispatched after the first run: every accepted run stays queued.
            c.scheduler.shard_budget = nexus_scheduler::BudgetConfig {
                rate: 0.001,
                burst: 1,
            };
        },
        |tx, _| std::sync::Arc::new(crate::instant::ParkedExecutor::new(tx)),
    )
    .await?;
    let url = format!("{}/algorithm/v1/run/knapsack", nexus.handle.url);
    let before = rss_bytes()?;
    eprintln!("queue-memory: standalone nexus accepting {runs} runs …");
    let accepted = crate::submit_count(&url, runs, 64).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes()?;
    nexus.stop().await;
    Ok(Row {
        name: "standalone: accepted + queued (incl. SQLite page cache, HTTP, load generator)"
            .into(),
        runs: accepted,
        growth: after.saturating_sub(before),
    })
}

/// Prints the rows.
pub fn print(rows: &[Row]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.runs.to_string(),
                format!("{:.1}", r.growth as f64 / (1024.0 * 1024.0)),
                format!("{:.1}", r.per_run()),
            ]
        })
        .collect();
    print_table(
        "queue memory (VmRSS growth)",
        &["what", "runs", "RSS growth MiB", "bytes/run"],
        &table,
    );
    println!(
        "(queue entry: {} bytes in a VecDeque that doubles its capacity, so 1–2× that per run)",
        std::mem::size_of::<nexus_scheduler::queue::Entry>()
    );
}
