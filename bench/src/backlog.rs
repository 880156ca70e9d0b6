//! `backlog`: a standalone Nexus starting on a store that holds N BUFFERED runs orphaned by a
//! scheduler that died (issue #24 item 6). Measured, against the same standalone started on an
//! empty store in the same run (the baseline):
//! * start → first submission answered 202, and start → `/health/readyz` 200 (goal: within 5 s);
//! * accept latency (p50, p99) of a trickle of submissions while the backlog is recovered;
//! * how many orphans were handed over (launched) in the window, i.e. the recovery pace
//!   (`supervisor.recovery_rate`, default 1,000 runs/s: the bound on the store's load);
//! * shutdown → stopped, against the drain grace (goal: the first shutdown stops it within it).
//!
//! The server runs in-process with the instant algorithm ([`crate::instant::InstantExecutor`]:
//! each launch uploads a result and completes at once), counted, and the default configuration
//! (the shard's dispatch budget of 200 runs/s included: recovered runs go to the cluster no faster
//! than new ones): the figures are the scheduler's, supervisor's and store's, not process
//! spawning. Shutdown is the same token the SIGTERM
//! handler cancels.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use nexus_executor::{Executor, ExecutorError, LaunchSpec};
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_store::{RunBatch, RunStore};

use crate::instant::InstantExecutor;

/// Counts launches.
#[derive(Debug)]
struct Counting {
    inner: InstantExecutor,
    launched: Arc<AtomicUsize>,
}

#[async_trait]
impl Executor for Counting {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        self.launched.fetch_add(1, Ordering::Relaxed);
        self.inner.launch(spec).await
    }
    async fn cancel(&self, id: RunId, p: CancellationPolicy) -> Result<(), ExecutorError> {
        self.inner.cancel(id, p).await
    }
    async fn active(&self) -> Vec<RunId> {
        self.inner.active().await
    }
}

/// One start.
#[derive(Debug, Clone)]
pub struct Start {
    /// Orphaned runs in the store at start.
    pub orphans: usize,
    /// Writing them (not part of the measurement).
    pub setup: Duration,
    /// Start → the first submission answered 202.
    pub first_accept: Duration,
    /// Start → `/health/readyz` answered 200.
    pub ready: Duration,
    /// Submissions during the window, and their latency.
    pub accepted: usize,
    /// Median accept latency during the window.
    pub p50: Duration,
    /// 99th percentile accept latency during the window.
    pub p99: Duration,
    /// Runs launched during the window (orphans and the window's own submissions).
    pub launched: usize,
    /// The window.
    pub window: Duration,
    /// Shutdown → stopped.
    pub stop: Duration,
    /// The drain grace the server was given.
    pub drain_grace: Duration,
}

/// The measurement: with the backlog, and the baseline on an empty store.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// Store kind (`embedded` or the Cassandra URL).
    pub store: String,
    /// With the orphans.
    pub loaded: Start,
    /// On an empty store.
    pub baseline: Start,
}

const DEAD: &str = "scheduler-dead-before-this-start";
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Submissions per second during the window.
const TRICKLE_PER_SECOND: u64 = 20;

/// Writes `n` BUFFERED runs owned by a scheduler without a lease into `store`.
async fn orphan(store: &dyn RunStore, n: usize) -> anyhow::Result<()> {
    let templates = std::env::temp_dir().join(format!("nexus-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&templates)?;
    std::fs::write(templates.join("workgroup.yaml"), crate::WORKGROUP)?;
    std::fs::write(templates.join("knapsack.yaml"), crate::TEMPLATE)?;
    let snapshot =
        nexus_model::catalog::load_dir(&templates).map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(&templates);
    let spec = snapshot
        .templates
        .get("knapsack")
        .context("the bench template")?
        .spec
        .clone();
    let mut written = 0;
    while written < n {
        let k = (n - written).min(1_000);
        let runs = (0..k)
            .map(|_| {
                let mut r = nexus_store::test_suite::sample_run("knapsack");
                r.workgroup = "local".into();
                r.shard = "local".into();
                r.owner = Some(DEAD.into());
                r.applied_configuration = spec.clone();
                r.received_at -= 60_000;
                r
            })
            .collect();
        store
            .insert_batch(RunBatch::new("knapsack", None, runs))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        written += k;
        if written % 50_000 == 0 || written == n {
            eprintln!("backlog: {written}/{n} orphaned runs written …");
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One start on a store holding `orphans` runs (an embedded store in a fresh directory, or a
/// scratch keyspace of `cassandra`).
async fn start(orphans: usize, cassandra: Option<&str>, window: Duration) -> anyhow::Result<Start> {
    let data = tempfile::tempdir()?;
    let t = Instant::now();
    let scratch = match cassandra {
        Some(url) => {
            let s = crate::cassandra::Scratch::new(url).await?;
            orphan(s.store.as_ref(), orphans).await?;
            Some(s)
        }
        None => {
            let db = data.path().join("runs.db");
            let store =
                tokio::task::spawn_blocking(move || nexus_embedded::SqliteRunStore::open(&db))
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            orphan(&store, orphans).await?;
            None
        }
    };
    let setup = t.elapsed();
    let launched = Arc::new(AtomicUsize::new(0));
    let counter = launched.clone();
    let store_url = scratch.as_ref().map(|s| s.url.clone());
    let data_dir = data.path().to_path_buf();
    let exec_http = crate::load_client(64)?;
    let started = Instant::now();
    let nexus = crate::start_nexus(
        move |c| {
            match store_url {
                Some(u) => c.store = u,
                None => c.data_dir = data_dir,
            }
            c.scheduler.drain_grace = DRAIN_GRACE;
        },
        move |tx, _| {
            Arc::new(Counting {
                inner: InstantExecutor::new(tx, exec_http),
                launched: counter,
            })
        },
    )
    .await?;
    let base = nexus.handle.url.clone();
    let http = crate::load_client(8)?;
    let body = crate::accept_body();
    let submit = format!("{base}/algorithm/v1/run/knapsack");
    let first_accept = loop {
        let r = http
            .post(&submit)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 202) {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "no submission accepted within 120 s of the start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ready = loop {
        let r = http.get(format!("{base}/health/readyz")).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not ready within 600 s of the start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A trickle of submissions while the backlog is recovered, bounded by the window.
    let from = launched.load(Ordering::Relaxed);
    let w0 = Instant::now();
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / TRICKLE_PER_SECOND));
    while w0.elapsed() < window {
        tick.tick().await;
        let t = Instant::now();
        let r = http
            .post(&submit)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .context("a submission during recovery")?;
        anyhow::ensure!(
            r.status().as_u16() == 202,
            "a submission during recovery answered {}",
            r.status()
        );
        latencies.push(t.elapsed());
    }
    let window = w0.elapsed();
    let launched_in_window = launched.load(Ordering::Relaxed).saturating_sub(from);
    latencies.sort();
    let s0 = Instant::now();
    nexus.handle.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(120), nexus.handle.wait())
        .await
        .context("the standalone did not stop within 120 s of its shutdown")?;
    let stop = s0.elapsed();
    if let Some(s) = scratch {
        s.drop().await;
    }
    Ok(Start {
        orphans,
        setup,
        first_accept,
        ready,
        accepted: latencies.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        launched: launched_in_window,
        window,
        stop,
        drain_grace: DRAIN_GRACE,
    })
}

/// Runs the scenario: the baseline (empty store), then the same with `runs` orphans.
///
/// # Errors
/// Setup failures, a start that never accepts, a stop past 120 s.
pub async fn run(
    runs: usize,
    cassandra: Option<&str>,
    window: Duration,
) -> anyhow::Result<Backlog> {
    anyhow::ensure!(
        (1..=2_000_000).contains(&runs),
        "--runs must be from 1 to 2000000"
    );
    eprintln!("backlog: baseline, a standalone on an empty store …");
    let baseline = start(0, cassandra, window).await?;
    eprintln!("backlog: a standalone on a store holding {runs} orphaned BUFFERED runs …");
    let loaded = start(runs, cassandra, window).await?;
    Ok(Backlog {
        store: cassandra.unwrap_or("embedded").to_owned(),
        loaded,
        baseline,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints the figures and the ratios to the baseline.
pub fn print(b: &Backlog) {
    println!("backlog (store {}):", b.store);
    for (name, s) in [("empty store", &b.baseline), ("with backlog", &b.loaded)] {
        #[allow(clippy::cast_precision_loss)]
        let pace = s.launched as f64 / s.window.as_secs_f64().max(1e-9);
        println!(
            "  {name:>12}: {:>7} orphans (written in {:.1} s) | first 202 after {:.0} ms, ready after {:.0} ms | {} accepts in {:.1} s: p50 {:.1} ms, p99 {:.1} ms | launched {} ({pace:.0}/s) | stopped {:.0} ms after shutdown (drain grace {:.0} ms)",
            s.orphans,
            s.setup.as_secs_f64(),
            ms(s.first_accept),
            ms(s.ready),
            s.accepted,
            s.window.as_secs_f64(),
            ms(s.p50),
            ms(s.p99),
            s.launched,
            ms(s.stop),
            ms(s.drain_grace),
        );
    }
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  ratios backlog/empty: first 202 {:.2}×, ready {:.2}×, accept p99 {:.2}×, stop {:.2}×",
        r(b.loaded.first_accept, b.baseline.first_accept),
        r(b.loaded.ready, b.baseline.ready),
        r(b.loaded.p99, b.baseline.p99),
        r(b.loaded.stop, b.baseline.stop),
    );
}
