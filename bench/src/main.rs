//! `nexus-bench`: load generator and benchmark scenarios for Nexus.
//!
//! * `store`    — the embedded run store in-process: concurrent inserts (group commit), the same
//!   inserts one at a time (one fsync each), and BUFFERED→RUNNING compare-and-sets.
//! * `baseline` — a bare axum handler answering `202 {"requestId":"x"}`: the physical limit of
//!   HTTP on this machine with this load generator.
//! * `accept`   — durable `POST /algorithm/v1/run/knapsack` (1 KiB payload) against standalone
//!   Nexus (started in-process unless `--url` is given): closed loop at a fixed concurrency, or
//!   open loop at fixed rates (`--rate`, `--rates`), latency from the scheduled send time.
//! * `e2e`      — submit → COMPLETED → result read, with an in-process algorithm
//!   ([`instant::InstantExecutor`]) that reports over HTTP: completions per second.
//! * `cassandra` — the run store on a real Cassandra node next to the raw insert rate of the
//!   same driver on the same node, then `accept` (and `e2e` with `--e2e`) on that store.
//! * `big-payload` — one large payload (200 MiB by default) through submit → algorithm →
//!   result on a `nexus standalone` child process, with its peak resident memory.
//! * `big-results` — concurrent large result uploads, then downloads, through the result URLs of
//!   a `nexus standalone` child process, with its peak resident memory.
//! * `limiter`  — a shard budget held by the dispatcher, alone and shared by 3 schedulers.
//! * `queue-memory` — resident bytes per queued run.
//! * `kube-scale` — runs through schedulers and receivers into Kubernetes Jobs (and, with the
//!   controllers and kwok's simulated nodes, Pods that complete) under API budgets: Jobs created
//!   per second, API-server 429s, the AIMD, time to drain, CPU (issue #20).
//! * `receiver-memory` — a `nexus receiver` process's resident memory with 10,000 Jobs in its
//!   namespace (issue #24 item 5).
//! * `all`      — everything in sequence and a summary against the issue #3 targets.
//!
//! Every loop is bounded in time and in count; the HTTP scenarios only target loopback unless a
//! URL is given explicitly. Micro-benchmarks (criterion) live in `benches/micro.rs`.

mod auth;
mod backlog;
mod big_payload;
mod big_results;
mod cassandra;
mod cpu;
mod distributed;
mod e2e;
mod instant;
mod kube_scale;
mod limiter;
mod memory;
mod open_loop;
mod orphans;
mod receiver_memory;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use nexus_cli::config::StandaloneConfig;
use nexus_embedded::SqliteRunStore;
use nexus_executor::{Executor, ExecutorEvent};
use nexus_model::run::{RunId, RunPatch, Stage};
use nexus_payload::PayloadStore;
use nexus_store::RunStore;
use nexus_store::test_suite::sample_run;
use tokio::sync::mpsc::UnboundedSender;

/// Hard upper bound on any single phase, whatever the arguments.
pub(crate) const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// The one-at-a-time insert baseline stops after this long (it is reported as ops/s either way).
const SERIAL_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound on requests per HTTP scenario (a safety net on top of the duration).
pub(crate) const MAX_REQUESTS: usize = 50_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "nexus-bench",
    about = "Nexus benchmark scenarios (loopback only by default)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Embedded run store: concurrent inserts vs one-at-a-time inserts, and CAS transitions.
    Store {
        /// Runs inserted in total.
        #[arg(long, default_value_t = 20_000)]
        runs: usize,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Accept without authentication, with OIDC tokens and with API keys, alternating in one
    /// process run; prints each phase and the ratios to the unauthenticated rate.
    AuthAccept {
        /// Concurrent closed-loop clients (each with its own OIDC token).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration of each phase, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Rounds of the three phases.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// A standalone starting on a store holding `--runs` runs orphaned by a dead scheduler:
    /// time to the first accept and to ready, accept latency while the backlog is recovered,
    /// the recovery pace, and the time to stop; against the same start on an empty store.
    Backlog {
        /// Orphaned BUFFERED runs written before the start.
        #[arg(long, default_value_t = 300_000)]
        runs: usize,
        /// How long to submit (20/s) and watch the recovery after the start, e.g. `20s`.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        window: Duration,
        /// Run store: a cassandra://host:9042/keyspace URL (a scratch keyspace is created and
        /// dropped). Default: embedded SQLite in a fresh directory.
        #[arg(long)]
        store: Option<String>,
    },
    /// Bare axum handler (POST → 202): the reference for `accept`.
    Baseline {
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration, e.g. `10s`, `500ms`, `1m`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Submissions to `/algorithm/v1/run/knapsack` with a 1 KiB payload: closed loop at
    /// `--concurrency`, or open loop at `--rate`/`--rates`.
    Accept {
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration of each phase, e.g. `10s`, `500ms`, `1m`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Nexus to target (e.g. `http://127.0.0.1:8090`); default: a standalone started in-process.
        #[arg(long)]
        url: Option<String>,
        /// Open loop at this many requests per second (instead of the closed loop).
        #[arg(long, conflicts_with = "rates")]
        rate: Option<f64>,
        /// Open loop at each of these rates in turn, e.g. `2000,5000,10000`.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// Open loop: most requests in flight; past it, due requests are dropped (and counted).
        #[arg(long, default_value_t = 1024)]
        max_outstanding: usize,
        /// In-process standalone's executor: `parked` (launches accepted, never run) or `local`
        /// (the real local-process executor: the template's `true` is spawned for every run).
        #[arg(long, default_value = "parked", value_parser = ["parked", "local"])]
        executor: String,
        /// Run store of the in-process Nexus: a cassandra://host:9042/keyspace URL (a scratch
        /// keyspace `<keyspace>_<random>` is created and dropped), or `memory` (an in-memory
        /// store that writes nothing: the no-write baseline). Default: embedded SQLite.
        #[arg(long)]
        store: Option<String>,
    },
    /// Submit → COMPLETED → result read with an instant in-process algorithm.
    E2e {
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Run store: a cassandra:// URL (scratch keyspace), default embedded SQLite.
        #[arg(long)]
        store: Option<String>,
    },
    /// The `e2e` scenario in distributed mode (2 schedulers, 2 receivers of one shard, a
    /// supervisor, gRPC on loopback) against standalone on the same Cassandra + S3 stores.
    Distributed {
        /// Run store URL, e.g. cassandra://127.0.0.1:9042/bench (scratch keyspaces are made and
        /// dropped).
        #[arg(long)]
        store: String,
        /// Payload store URL, e.g. s3://bucket/bench?endpoint=http://127.0.0.1:8333&region=us-east-1
        #[arg(long)]
        payloads: String,
        /// Concurrent closed-loop clients (split between the two schedulers).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration of each phase, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Orphan recovery: a scheduler holding N BUFFERED runs is killed (-9); time until a
    /// supervisor and two receivers (gRPC) have dispatched all of them (target: lease TTL + 10 s).
    Orphans {
        /// Run store: a cassandra:// URL (scratch keyspace), default in memory.
        #[arg(long)]
        store: Option<String>,
        /// BUFFERED runs the killed scheduler holds.
        #[arg(long, default_value_t = 10_000)]
        runs: usize,
        /// The killed scheduler's lease TTL (the default of `scheduler.lease_ttl`).
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        lease_ttl: Duration,
        /// Each receiver's launch limit, runs/s (the receiver default is 500, burst 1000: the
        /// cluster's safety net, which bounds recovery too).
        #[arg(long, default_value_t = 500.0)]
        launch_rate: f64,
        /// Each receiver's launch burst.
        #[arg(long, default_value_t = 1000)]
        launch_burst: u32,
    },
    /// Run store on a real Cassandra / ScyllaDB node: raw driver insert rate (the physical
    /// limit), LWT insert, store insert and compare-and-set, then accept (and e2e) on that store.
    Cassandra {
        /// Store URL of the node, e.g. cassandra://127.0.0.1:9042/bench (scratch keyspaces
        /// `bench_<random>` are created and dropped).
        #[arg(long)]
        store: String,
        /// Requests in flight in every phase.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Duration of each phase, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Also run the end-to-end scenario on the store.
        #[arg(long)]
        e2e: bool,
    },
    /// One large payload through submit → algorithm → result, with the server's peak memory
    /// (needs `cargo build --release -p nexus-cli -p nexus-examples`).
    BigPayload {
        /// Payload store of the server: an s3://… URL (keys from NEXUS_S3_ACCESS_KEY_ID /
        /// NEXUS_S3_SECRET_ACCESS_KEY) or `embedded`.
        #[arg(long, value_delimiter = ' ', num_args = 1..)]
        payloads: Vec<String>,
        /// Run store of the server (default embedded).
        #[arg(long)]
        store: Option<String>,
        /// Payload size in MiB.
        #[arg(long, default_value_t = 200)]
        mib: u64,
    },
    /// Large results uploaded at once through their result URLs, then downloaded at once, with
    /// the server's peak memory (needs `cargo build --release -p nexus-cli -p nexus-bench`).
    BigResults {
        /// Concurrent runs, each uploading one result.
        #[arg(long, default_value_t = 8)]
        runs: usize,
        /// Size of each result in MiB.
        #[arg(long, default_value_t = 500)]
        mib: u64,
    },
    /// (internal) The algorithm of `big-results`: uploads a generated result and completes.
    #[command(hide = true)]
    UploadResult {
        /// Size of the result in MiB.
        #[arg(long)]
        mib: u64,
    },
    /// Shard budget accuracy: dispatch rate alone and with 3 schedulers sharing the budget.
    Limiter {
        /// The shard budget, runs per second (all schedulers together).
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Its burst.
        #[arg(long, default_value_t = 400)]
        burst: u32,
        /// Duration of each phase (the first 3 s are warm-up).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Schedulers sharing the budget in the second phase.
        #[arg(long, default_value_t = 3)]
        schedulers: usize,
    },
    /// Resident memory per queued run.
    QueueMemory {
        /// Queue sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        runs: Vec<usize>,
        /// Also measure an in-process standalone accepting this many runs (0: skip).
        #[arg(long, default_value_t = 0)]
        standalone_runs: usize,
    },
    /// (internal) One `queue-memory` measurement in a fresh process.
    #[command(hide = true)]
    QueueMemoryProbe {
        /// Runs to queue.
        #[arg(long)]
        runs: usize,
    },
    /// Runs → Jobs (→ Pods on kwok nodes) under Kubernetes API budgets, against a real API server:
    /// Jobs created per second, API-server 429s, the AIMD, time to drain, CPU (issue #20).
    KubeScale {
        /// Kubeconfig of the cluster (scripts/kube-cluster.sh or scripts/kube-apiserver.sh
        /// prints it); its user creates a namespace, ServiceAccount and token per budget.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// API budgets, requests/s toward the cluster, one phase each.
        #[arg(long, value_delimiter = ',', default_value = "50,200,1000")]
        budgets: Vec<f64>,
        /// Runs per phase: one value for every budget, or one per budget (e.g. 2000,10000,10000).
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        runs: Vec<usize>,
        /// kwok nodes (label type=kwok) that must be Ready (0: do not check).
        #[arg(long, default_value_t = 0)]
        nodes: usize,
        /// Schedulers sharing the shard budget.
        #[arg(long, default_value_t = 2)]
        schedulers: usize,
        /// Receivers of the shard, each with budget ÷ receivers requests/s.
        #[arg(long, default_value_t = 2)]
        receivers: usize,
        /// Closed-loop HTTP clients submitting the runs.
        #[arg(long, default_value_t = 32)]
        submit_concurrency: usize,
        /// Burst of the shard and API budgets, in seconds of their rate.
        #[arg(long, default_value_t = 0.1)]
        burst_secs: f64,
        /// Also wait until every Job completed (needs the Job controller, kube-scheduler, kwok).
        #[arg(long)]
        complete: bool,
        /// Assert correctness (every run a Job; with --complete every Job Complete and every run
        /// ended); exits non-zero otherwise. Nothing about time is asserted.
        #[arg(long)]
        check: bool,
        /// Bound on each phase, e.g. `300s`.
        #[arg(long, default_value = "300s", value_parser = parse_long_duration)]
        timeout: Duration,
        /// The receivers' identity toward the API server.
        #[arg(long, value_enum, default_value = "service-account")]
        identity: kube_scale::Identity,
        /// Dispatches in flight per scheduler (scheduler.dispatch_concurrency; 0: the product's
        /// default): one value, or one per budget (e.g. 64,512 compares).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        dispatch_concurrency: Vec<usize>,
        /// After each phase, this many of the same Jobs created directly, as fast as the API
        /// server takes them (the baseline of the ratio); 0: none.
        #[arg(long, default_value_t = 2000)]
        baseline_jobs: usize,
        /// Requests in flight of the baseline.
        #[arg(long, default_value_t = 256)]
        baseline_concurrency: usize,
    },
    /// A `nexus receiver` process's VmRSS with 10,000 Jobs in its runs' namespace, against its
    /// VmRSS with the namespace empty (issue #24 item 5; Cassandra, S3, a cluster with kwok).
    ReceiverMemory {
        /// Kubeconfig of the cluster (its user creates the namespace and is the receiver's).
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// Run store URL; a scratch keyspace is derived from it and dropped at the end.
        #[arg(long)]
        store: String,
        /// Payload store URL (`s3://bucket/prefix?endpoint=…`; keys from NEXUS_S3_* env).
        #[arg(long)]
        payloads: String,
        /// `nexus` binaries, one phase each (default: `nexus` next to this binary).
        #[arg(long, value_delimiter = ',')]
        nexus: Vec<std::path::PathBuf>,
        /// Jobs in the namespace in all.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Of them, launched by the receiver for runs.
        #[arg(long, default_value_t = 1_000)]
        runs: usize,
        /// Of them, without Nexus labels.
        #[arg(long, default_value_t = 1_000)]
        foreign: usize,
        /// kwok nodes that must be Ready (0: do not check).
        #[arg(long, default_value_t = 0)]
        nodes: usize,
        /// Idle time before the baseline.
        #[arg(long, default_value = "15s", value_parser = parse_long_duration)]
        settle: Duration,
        /// Time held with every Job in place (≥ 2 GC passes: 150s).
        #[arg(long, default_value = "150s", value_parser = parse_long_duration)]
        hold: Duration,
        /// Sampling period of /proc/<pid>/status.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        sample_every: Duration,
        /// Bound on each phase.
        #[arg(long, default_value = "900s", value_parser = parse_long_duration)]
        timeout: Duration,
    },
    /// Every scenario in sequence, then a summary against the issue #3 targets.
    All {
        /// Duration of each HTTP phase.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Runs inserted by the store scenario.
        #[arg(long, default_value_t = 20_000)]
        runs: usize,
        /// Duration of each limiter phase.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        limiter_duration: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("'{s}': unit must be ms, s or m")),
    };
    if !(secs > 0.0 && secs <= PHASE_LIMIT.as_secs_f64()) {
        return Err(format!(
            "'{s}': must be above 0 and at most {}s",
            PHASE_LIMIT.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration up to an hour (a whole scale phase), same syntax as [`parse_duration`].
fn parse_long_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 300s, 10m)"))?;
    let secs = match unit {
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("'{s}': unit must be s or m")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("'{s}': must be above 0 and at most 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------- output

pub(crate) fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    println!("\n{title}");
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect();
        println!("| {} |", s.join(" | "));
    };
    line(header.iter().map(|s| (*s).to_owned()).collect());
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
}

fn footer() {
    let cmd: Vec<String> = std::env::args().collect();
    let cmd = std::iter::once("nexus-bench".to_owned())
        .chain(cmd.into_iter().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("\n{cmd} / {date} / machine: nproc={nproc}, {cpu} / load average {load}");
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn f0(x: f64) -> String {
    format!("{x:.0}")
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The `p` quantile (0..=1) of sorted latencies (zero when there are none).
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // p in 0..=1
    let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i]
}

// ---------------------------------------------------------------- store

#[derive(Debug)]
struct Phase {
    ops: usize,
    errors: usize,
    elapsed: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug)]
struct StoreResult {
    concurrency: usize,
    insert: Phase,
    insert_serial: Phase,
    transition: Phase,
}

async fn insert_phase(
    store: &Arc<SqliteRunStore>,
    n: usize,
    concurrency: usize,
    limit: Duration,
) -> (Phase, Vec<RunId>) {
    let template = sample_run("knapsack");
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit.min(PHASE_LIMIT);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (store, next, template) = (store.clone(), next.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ids, mut errors) = (Vec::new(), 0usize);
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                let mut run = template.clone();
                run.id = RunId::new();
                run.root = run.id;
                let id = run.id;
                match store.insert(run).await {
                    Ok(_) => ids.push(id),
                    Err(_) => errors += 1,
                }
            }
            (ids, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::with_capacity(n), 0);
    for t in tasks {
        let (ids, e) = t.await.expect("insert task panicked");
        all.extend(ids);
        errors += e;
    }
    (
        Phase {
            ops: all.len(),
            errors,
            elapsed: start.elapsed(),
        },
        all,
    )
}

async fn transition_phase(
    store: &Arc<SqliteRunStore>,
    ids: Arc<Vec<RunId>>,
    concurrency: usize,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + PHASE_LIMIT;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (store, next, ids) = (store.clone(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids.len() || Instant::now() >= deadline {
                    break;
                }
                let patch = RunPatch {
                    owner: Some(Some("bench".into())),
                    attempts: Some(1),
                    ..RunPatch::default()
                };
                match store
                    .transition(ids[i], Stage::Buffered, Stage::Running, patch)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.expect("transition task panicked");
        ops += o;
        errors += e;
    }
    Phase {
        ops,
        errors,
        elapsed: start.elapsed(),
    }
}

async fn open_store(dir: &std::path::Path) -> anyhow::Result<Arc<SqliteRunStore>> {
    let db = dir.join("runs.db");
    let s = tokio::task::spawn_blocking(move || SqliteRunStore::open(&db))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(s))
}

async fn bench_store(runs: usize, concurrency: usize) -> anyhow::Result<StoreResult> {
    anyhow::ensure!(
        runs > 0 && runs <= 10_000_000,
        "--runs must be between 1 and 10000000"
    );
    anyhow::ensure!(
        concurrency > 0 && concurrency <= 4096,
        "--concurrency must be between 1 and 4096"
    );
    // Serial baseline first, in its own database, so it does not run against a bigger table.
    let dir = tempfile::tempdir()?;
    let serial_store = open_store(&dir.path().join("serial")).await?;
    eprintln!(
        "store: up to {runs} inserts in at most {}s, concurrency 1 (one commit per insert) …",
        SERIAL_LIMIT.as_secs()
    );
    let (insert_serial, _) = insert_phase(&serial_store, runs, 1, SERIAL_LIMIT).await;
    drop(serial_store);
    let store = open_store(&dir.path().join("concurrent")).await?;
    eprintln!("store: {runs} inserts, concurrency {concurrency} …");
    let (insert, ids) = insert_phase(&store, runs, concurrency, PHASE_LIMIT).await;
    eprintln!(
        "store: {} BUFFERED→RUNNING transitions, concurrency {concurrency} …",
        ids.len()
    );
    let transition = transition_phase(&store, Arc::new(ids), concurrency).await;
    Ok(StoreResult {
        concurrency,
        insert,
        insert_serial,
        transition,
    })
}

fn print_store(r: &StoreResult) {
    let row = |name: &str, c: usize, p: &Phase| {
        vec![
            name.to_owned(),
            c.to_string(),
            p.ops.to_string(),
            p.errors.to_string(),
            format!("{:.2}", p.elapsed.as_secs_f64()),
            f0(p.rate()),
        ]
    };
    print_table(
        "run store (SQLite, in-process)",
        &[
            "operation",
            "concurrency",
            "ops",
            "errors",
            "seconds",
            "ops/s",
        ],
        &[
            row("insert (one at a time)", 1, &r.insert_serial),
            row("insert (group commit)", r.concurrency, &r.insert),
            row("transition BUFFERED→RUNNING", r.concurrency, &r.transition),
        ],
    );
    println!(
        "group-commit gain: {:.1}× (insert at concurrency {} / concurrency 1)",
        r.insert.rate() / r.insert_serial.rate().max(1e-9),
        r.concurrency
    );
}

// ---------------------------------------------------------------- HTTP load

#[derive(Debug)]
struct Load {
    name: String,
    concurrency: usize,
    ok: usize,
    non_202: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU the phase used (Nexus in-process, the load generator, a local Cassandra node).
    cpu: cpu::Used,
}

impl Load {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn pct(&self, p: f64) -> Duration {
        pct(&self.latencies, p)
    }
}

/// The submission body: valid knapsack parameters padded with a `note` field so that
/// `algorithmParameters` serializes to exactly 1 KiB.
pub(crate) fn accept_body() -> String {
    let mut params = serde_json::json!({
        "capacity": 10,
        "items": [
            { "name": "a", "weight": 5, "value": 10 },
            { "name": "b", "weight": 4, "value": 40 },
            { "name": "c", "weight": 6, "value": 30 },
            { "name": "d", "weight": 3, "value": 50 }
        ],
        "note": ""
    });
    let base = serde_json::to_string(&params).expect("json").len();
    params["note"] = serde_json::Value::String("x".repeat(1024usize.saturating_sub(base)));
    debug_assert_eq!(serde_json::to_string(&params).expect("json").len(), 1024);
    serde_json::to_string(&serde_json::json!({ "algorithmParameters": params })).expect("json")
}

/// A keep-alive HTTP client for up to `idle` pooled loopback connections.
pub(crate) fn load_client(idle: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Posts `body` as JSON and reads the whole answer (so the connection goes back to the pool);
/// returns the status code.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> reqwest::Result<u16> {
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await?;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    Ok(status)
}

/// Closed loop: `concurrency` tasks, each sending the next request when the previous one answered.
async fn drive(
    name: &str,
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Load> {
    anyhow::ensure!(
        concurrency > 0 && concurrency <= 4096,
        "--concurrency must be between 1 and 4096"
    );
    let client = load_client(concurrency)?;
    let body = Arc::new(accept_body());
    let url = Arc::new(url.to_owned());
    let sent = Arc::new(AtomicUsize::new(0));
    let meter = cpu::Meter::start(true);
    let start = Instant::now();
    let deadline = start + duration.min(PHASE_LIMIT);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, url, sent) = (client.clone(), body.clone(), url.clone(), sent.clone());
        // On the load generator's own threads, so that its CPU is told apart from Nexus's.
        tasks.push(cpu::load_runtime().spawn(async move {
            let (mut lat, mut non_202, mut errors) = (Vec::with_capacity(1 << 14), 0usize, 0usize);
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let t0 = Instant::now();
                match post_json(&client, &url, &body).await {
                    Ok(status) => {
                        if status == 202 {
                            lat.push(t0.elapsed());
                        } else {
                            non_202 += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, non_202, errors)
        }));
    }
    let (mut latencies, mut non_202, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, n, e) = t.await.expect("load task panicked");
        latencies.extend(l);
        non_202 += n;
        errors += e;
    }
    let elapsed = start.elapsed();
    let cpu = meter.stop();
    latencies.sort_unstable();
    Ok(Load {
        name: name.to_owned(),
        concurrency,
        ok: latencies.len(),
        non_202,
        errors,
        elapsed,
        latencies,
        cpu,
    })
}

fn print_loads(title: &str, loads: &[&Load]) {
    let rows: Vec<Vec<String>> = loads
        .iter()
        .map(|l| {
            let (nexus, load, cassandra) = l.cpu.per_op_us(l.ok + l.non_202);
            vec![
                l.name.clone(),
                l.concurrency.to_string(),
                format!("{:.1}", l.elapsed.as_secs_f64()),
                l.ok.to_string(),
                f0(l.throughput()),
                ms(l.pct(0.50)),
                ms(l.pct(0.99)),
                ms(l.pct(0.999)),
                l.non_202.to_string(),
                l.errors.to_string(),
                f0(nexus),
                f0(load),
                cassandra.map_or_else(|| "-".to_owned(), f0),
            ]
        })
        .collect();
    print_table(
        title,
        &[
            "scenario",
            "conc",
            "seconds",
            "202s",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "non-202",
            "errors",
            "server CPU µs/req",
            "load gen µs/req",
            "Cassandra µs/req",
        ],
        &rows,
    );
}

async fn bench_baseline(concurrency: usize, duration: Duration) -> anyhow::Result<Load> {
    use axum::routing::post;
    async fn handler(
        _body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
        (
            axum::http::StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "requestId": "x" })),
        )
    }
    let app = axum::Router::new().route("/algorithm/v1/run/{alg}", post(handler));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    eprintln!("baseline: bare axum on {addr}, concurrency {concurrency}, {duration:?} …");
    let r = drive(
        "baseline (bare axum 202)",
        &format!("http://{addr}/algorithm/v1/run/knapsack"),
        concurrency,
        duration,
    )
    .await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    r
}

// ---------------------------------------------------------------- standalone under test

pub(crate) const WORKGROUP: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmWorkgroup
metadata:
  name: local
spec:
  description: bench workgroup
  cluster: local
";

// The command is never run: the bench executors play the algorithm in-process.
pub(crate) const TEMPLATE: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: knapsack
spec:
  workgroupRef:
    name: local
    group: science.sneaksanddata.com
    kind: NexusAlgorithmWorkgroup
  command: \"true\"
";

/// A standalone Nexus started in-process, in a temporary directory.
#[derive(Debug)]
pub(crate) struct Nexus {
    pub(crate) handle: nexus_cli::standalone::Handle,
    _dir: tempfile::TempDir,
    _work: Option<tempfile::TempDir>,
}

impl Nexus {
    /// Shuts down, bounded: the queue may still hold accepted runs, do not wait for them.
    pub(crate) async fn stop(self) {
        self.handle.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle.wait()).await;
    }
}

/// Starts a standalone Nexus on a loopback port with the bench templates, the queue bound raised
/// to 2,000,000 (a long run never meets 429), `tune` applied to the config and the executor `make`
/// builds.
pub(crate) async fn start_nexus(
    tune: impl FnOnce(&mut StandaloneConfig),
    make: impl FnOnce(UnboundedSender<ExecutorEvent>, Arc<dyn PayloadStore>) -> Arc<dyn Executor>,
) -> anyhow::Result<Nexus> {
    start_nexus_on(None, tune, make).await
}

/// [`start_nexus`] on `store` when given (the no-write baseline's in-memory store).
async fn start_nexus_on(
    store: Option<Arc<dyn RunStore>>,
    tune: impl FnOnce(&mut StandaloneConfig),
    make: impl FnOnce(UnboundedSender<ExecutorEvent>, Arc<dyn PayloadStore>) -> Arc<dyn Executor>,
) -> anyhow::Result<Nexus> {
    let dir = tempfile::tempdir()?;
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates)?;
    std::fs::write(templates.join("workgroup.yaml"), WORKGROUP)?;
    std::fs::write(templates.join("knapsack.yaml"), TEMPLATE)?;
    let mut config = StandaloneConfig {
        data_dir: dir.path().join("data"),
        templates_dir: templates,
        ..StandaloneConfig::default()
    };
    config.scheduler.queue_bound = 2_000_000;
    // Shutdown does not wait for the (huge) queue to drain.
    config.scheduler.drain_grace = Duration::from_millis(100);
    tune(&mut config);
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let handle = nexus_cli::standalone::start_with_parts(config, listener, store, make)
        .await
        .context("cannot start standalone nexus")?;
    Ok(Nexus {
        handle,
        _dir: dir,
        _work: None,
    })
}

/// Submits `n` runs to `url` with `concurrency` closed-loop clients; returns how many got 202.
pub(crate) async fn submit_count(url: &str, n: usize, concurrency: usize) -> anyhow::Result<usize> {
    let client = load_client(concurrency)?;
    let body = Arc::new(accept_body());
    let url = Arc::new(url.to_owned());
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, body, url, next, ok) = (
            client.clone(),
            body.clone(),
            url.clone(),
            next.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                match post_json(&client, &url, &body).await {
                    Ok(202) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("submit task panicked")?;
    }
    Ok(ok.load(Ordering::Relaxed))
}

/// The standalone `accept` measures: default shard budget (200 runs/s), so dispatch does its
/// real work at that rate, and by default an executor that parks launches, so no process is
/// spawned; `local` uses the real local-process executor instead (for comparison).
/// Points `c` at `store` when given (a scratch keyspace is made by the caller).
fn use_store(c: &mut StandaloneConfig, store: Option<&str>) {
    if let Some(url) = store.filter(|s| *s != MEMORY) {
        c.store = url.to_owned();
    }
}

/// `--store memory`: the accept path on an in-memory store, which writes nothing (the baseline
/// of the durable accepts: everything but the write).
pub(crate) const MEMORY: &str = "memory";

async fn accept_nexus(local: bool, store: Option<&str>) -> anyhow::Result<Nexus> {
    if !local {
        let memory: Option<Arc<dyn RunStore>> = (store == Some(MEMORY))
            .then(|| Arc::new(nexus_store::InMemoryRunStore::default()) as Arc<dyn RunStore>);
        return start_nexus_on(
            memory,
            |c| use_store(c, store),
            |tx, _| Arc::new(instant::ParkedExecutor::new(tx)),
        )
        .await;
    }
    let work = tempfile::tempdir()?;
    let work_dir = work.path().to_path_buf();
    let mut nexus = start_nexus(
        |c| use_store(c, store),
        move |tx, payloads| {
            Arc::new(nexus_executor::LocalProcessExecutor::new(
                nexus_executor::LocalExecutorConfig {
                    work_root: work_dir,
                    default_max_concurrent: 8,
                    max_log_bytes: 64 * 1024,
                    ..nexus_executor::LocalExecutorConfig::default()
                },
                payloads,
                tx,
            ))
        },
    )
    .await?;
    nexus._work = Some(work);
    Ok(nexus)
}

async fn bench_accept(
    concurrency: usize,
    duration: Duration,
    url: Option<String>,
    local: bool,
    store: Option<&str>,
) -> anyhow::Result<Load> {
    if let Some(u) = url {
        let target = format!("{}/algorithm/v1/run/knapsack", u.trim_end_matches('/'));
        eprintln!("accept: {target}, concurrency {concurrency}, {duration:?} …");
        return drive("accept (external nexus)", &target, concurrency, duration).await;
    }
    let nexus = accept_nexus(local, store).await?;
    eprintln!(
        "accept: standalone nexus on {}, closed loop, concurrency {concurrency}, {duration:?} …",
        nexus.handle.url
    );
    let name = match (local, store) {
        (true, _) => "accept (standalone, local executor)",
        (false, Some(MEMORY)) => "accept (standalone, in-memory store: no writes)",
        (false, Some(_)) => "accept (standalone, cassandra store)",
        (false, None) => "accept (standalone nexus)",
    };
    let r = drive(
        name,
        &format!("{}/algorithm/v1/run/knapsack", nexus.handle.url),
        concurrency,
        duration,
    )
    .await;
    nexus.stop().await;
    r
}

/// Open loop at each rate, each against a fresh standalone (or `url`).
async fn bench_accept_open(
    rates: &[f64],
    duration: Duration,
    max_outstanding: usize,
    url: Option<&str>,
    local: bool,
    store: Option<&str>,
) -> anyhow::Result<Vec<open_loop::OpenLoad>> {
    let body = Arc::new(accept_body());
    let mut out = Vec::new();
    for &rate in rates {
        let (nexus, target, name) = match url {
            Some(u) => (
                None,
                format!("{}/algorithm/v1/run/knapsack", u.trim_end_matches('/')),
                "accept open loop (external)",
            ),
            None => {
                let n = accept_nexus(local, store).await?;
                let t = format!("{}/algorithm/v1/run/knapsack", n.handle.url);
                (Some(n), t, "accept open loop (standalone)")
            }
        };
        eprintln!("accept: {target}, open loop at {rate}/s, {duration:?} …");
        // The whole generator (its pacing loop too) on its own threads: a late send is the
        // server's doing, not the load generator's competing for the server's runtime.
        let r = cpu::load_runtime()
            .spawn(open_loop::drive(
                name,
                target.clone(),
                body.clone(),
                rate,
                duration,
                max_outstanding,
            ))
            .await
            .context("open-loop generator panicked")?;
        if let Some(n) = nexus {
            n.stop().await;
        }
        out.push(r?);
    }
    Ok(out)
}

/// The `e2e` standalone: the instant algorithm, and a shard budget (100,000 runs/s) high enough
/// that the limiter is not what is measured.
async fn bench_e2e(
    concurrency: usize,
    duration: Duration,
    store: Option<&str>,
    how: e2e::Wait,
) -> anyhow::Result<e2e::E2e> {
    let http = load_client(256)?;
    let nexus = start_nexus(
        |c| {
            use_store(c, store);
            c.scheduler.shard_budget = nexus_scheduler::BudgetConfig {
                rate: 100_000.0,
                burst: 1_000,
            };
        },
        move |tx, _| Arc::new(instant::InstantExecutor::new(tx, http)),
    )
    .await?;
    eprintln!(
        "e2e: standalone nexus on {} (instant algorithm, shard budget 100000/s), concurrency {concurrency}, {duration:?}, {} …",
        nexus.handle.url,
        how.label()
    );
    let r = e2e::drive(&nexus.handle.url, "knapsack", concurrency, duration, how).await;
    nexus.stop().await;
    r
}

async fn bench_limiter(
    rate: f64,
    burst: u32,
    duration: Duration,
    schedulers: usize,
) -> anyhow::Result<Vec<limiter::Phase>> {
    let warmup = limiter::LEASE_TTL;
    let alone = limiter::phase(rate, burst, 1, duration, warmup).await?;
    let shared = limiter::phase(rate, burst, schedulers, duration, warmup).await?;
    Ok(vec![alone, shared])
}

async fn bench_queue_memory(
    sizes: &[usize],
    standalone_runs: usize,
) -> anyhow::Result<Vec<memory::Row>> {
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("queue-memory: {n} runs into a VirtualQueue (child process) …");
        rows.push(tokio::task::spawn_blocking(move || memory::queue_in_child(n)).await??);
    }
    if standalone_runs > 0 {
        rows.push(memory::standalone(standalone_runs).await?);
    }
    Ok(rows)
}

// ---------------------------------------------------------------- main

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "NOT met" }.to_owned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Store { runs, concurrency } => {
            let r = bench_store(runs, concurrency).await?;
            print_store(&r);
        }
        Cmd::AuthAccept {
            concurrency,
            duration,
            rounds,
        } => {
            let loads = auth::bench_auth_accept(concurrency, duration, rounds).await?;
            print_loads(
                "accept with authentication",
                &loads.iter().collect::<Vec<_>>(),
            );
            let none = auth::rate_of(&loads, "accept, auth none");
            for name in ["accept, OIDC token", "accept, API key"] {
                println!(
                    "{name}: {:.0} runs/s = {:.3} × auth none ({none:.0} runs/s)",
                    auth::rate_of(&loads, name),
                    auth::rate_of(&loads, name) / none.max(1e-9)
                );
            }
        }
        Cmd::Baseline {
            concurrency,
            duration,
        } => {
            let b = bench_baseline(concurrency, duration).await?;
            print_loads("HTTP baseline", &[&b]);
        }
        Cmd::Accept {
            concurrency,
            duration,
            url,
            rate,
            rates,
            max_outstanding,
            executor,
            store,
        } => {
            let local = executor == "local";
            let rates: Vec<f64> = rate.into_iter().chain(rates).collect();
            let scratch = match &store {
                Some(u) if u != MEMORY => Some(cassandra::Scratch::new(u).await?),
                _ => None,
            };
            let store = match &scratch {
                Some(s) => Some(s.url.as_str()),
                None => store.as_deref(),
            };
            if rates.is_empty() {
                let a = bench_accept(concurrency, duration, url, local, store).await?;
                print_loads("accept (closed loop)", &[&a]);
            } else {
                let o = bench_accept_open(
                    &rates,
                    duration,
                    max_outstanding,
                    url.as_deref(),
                    local,
                    store,
                )
                .await?;
                open_loop::print("accept (open loop)", &o);
            }
            if let Some(s) = scratch {
                s.drop().await;
            }
        }
        Cmd::Orphans {
            store,
            runs,
            lease_ttl,
            launch_rate,
            launch_burst,
        } => {
            let limit = nexus_model::limiter::BudgetConfig {
                rate: launch_rate,
                burst: launch_burst,
            };
            let (run_store, scratch): (Arc<dyn nexus_store::RunStore>, _) = match &store {
                Some(u) => {
                    let s = cassandra::Scratch::new(u).await?;
                    (s.store.clone(), Some(s))
                }
                None => (Arc::new(nexus_store::InMemoryRunStore::default()), None),
            };
            let r = orphans::run(run_store, runs, lease_ttl, limit).await;
            if let Some(s) = scratch {
                s.drop().await;
            }
            orphans::print(&r?);
        }
        Cmd::Distributed {
            store,
            payloads,
            concurrency,
            duration,
        } => {
            let d = distributed::run(&store, &payloads, concurrency, duration).await?;
            distributed::print(&d);
        }
        Cmd::E2e {
            concurrency,
            duration,
            store,
        } => {
            let scratch = match &store {
                Some(u) => Some(cassandra::Scratch::new(u).await?),
                None => None,
            };
            // Both ways of waiting, in one run: polling (what Go-API clients do) first.
            let mut results = Vec::new();
            for how in [e2e::Wait::Poll, e2e::Wait::LongPoll] {
                let r = bench_e2e(
                    concurrency,
                    duration,
                    scratch.as_ref().map(|s| s.url.as_str()),
                    how,
                )
                .await?;
                results.push((how, r));
            }
            for (how, r) in &results {
                e2e::print_labeled(r, &format!("e2e (standalone, {})", how.label()));
            }
            if let Some(s) = scratch {
                s.drop().await;
            }
        }
        Cmd::Cassandra {
            store,
            concurrency,
            duration,
            e2e: with_e2e,
        } => {
            let scratch = cassandra::Scratch::new(&store).await?;
            let url = scratch.url.clone();
            // Right after the raw inserts: the durable accept, then the same accept on a store
            // that writes nothing (its ratio to the latter is the target, as is its ratio to
            // raw inserts).
            let accept = async move {
                let a = bench_accept(concurrency, duration, None, false, Some(&url)).await?;
                let m = bench_accept(concurrency, duration, None, false, Some(MEMORY)).await?;
                Ok(vec![cassandra::from_load(&a), cassandra::from_load(&m)])
            };
            let phases = cassandra::store_phases(&scratch, concurrency, duration, accept).await?;
            scratch.drop().await;
            // A keyspace of its own: the accept phase left its runs BUFFERED in the first one,
            // and a new Nexus on it would recover them all ahead of the e2e runs.
            let e = if with_e2e {
                let fresh = cassandra::Scratch::new(&store).await?;
                let e =
                    bench_e2e(concurrency, duration, Some(&fresh.url), e2e::Wait::LongPoll).await;
                fresh.drop().await;
                Some(e?)
            } else {
                None
            };
            cassandra::print(&phases);
            if let Some(e) = &e {
                e2e::print(e);
            }
            let raw = phases[0].rate().max(1e-9);
            println!(
                "accept/raw insert: {:.2} (target ≥ 0.50); accept/no-write accept: {:.2} (target ≥ 0.80)",
                phases[1].rate() / raw,
                phases[1].rate() / phases[2].rate().max(1e-9),
            );
        }
        Cmd::BigPayload {
            payloads,
            store,
            mib,
        } => {
            let mut runs = Vec::new();
            for p in &payloads {
                runs.push(big_payload::run(p, store.as_deref(), mib).await?);
            }
            big_payload::print(&runs);
        }
        Cmd::Backlog {
            runs,
            window,
            store,
        } => {
            let b = backlog::run(runs, store.as_deref(), window).await?;
            backlog::print(&b);
        }
        Cmd::BigResults { runs, mib } => {
            let m = big_results::run(runs, mib).await?;
            big_results::print(&m);
        }
        Cmd::UploadResult { mib } => big_results::upload_result(mib).await?,
        Cmd::Limiter {
            rate,
            burst,
            duration,
            schedulers,
        } => {
            let p = bench_limiter(rate, burst, duration, schedulers).await?;
            limiter::print(&p);
        }
        Cmd::QueueMemory {
            runs,
            standalone_runs,
        } => {
            let rows = bench_queue_memory(&runs, standalone_runs).await?;
            memory::print(&rows);
        }
        Cmd::QueueMemoryProbe { runs } => {
            return memory::probe(runs);
        }
        Cmd::KubeScale {
            kubeconfig,
            budgets,
            runs,
            nodes,
            schedulers,
            receivers,
            submit_concurrency,
            burst_secs,
            complete,
            check,
            timeout,
            identity,
            dispatch_concurrency,
            baseline_jobs,
            baseline_concurrency,
        } => {
            let o = kube_scale::Options {
                kubeconfig,
                budgets,
                runs,
                nodes,
                schedulers,
                receivers,
                submit_concurrency,
                burst_secs,
                complete,
                check,
                timeout,
                identity,
                dispatch_concurrency,
                baseline_jobs,
                baseline_concurrency,
            };
            let phases = kube_scale::run(&o).await?;
            kube_scale::print(&o, &phases);
        }
        Cmd::ReceiverMemory {
            kubeconfig,
            store,
            payloads,
            nexus,
            jobs,
            runs,
            foreign,
            nodes,
            settle,
            hold,
            sample_every,
            timeout,
        } => {
            let nexus = if nexus.is_empty() {
                let exe = std::env::current_exe()?;
                vec![exe.with_file_name("nexus")]
            } else {
                nexus
            };
            let o = receiver_memory::Options {
                kubeconfig,
                store,
                payloads,
                nexus,
                jobs,
                runs,
                foreign,
                nodes,
                settle,
                hold,
                sample_every,
                timeout,
            };
            let phases = receiver_memory::run(&o).await?;
            receiver_memory::print(&o, &phases);
        }
        Cmd::All {
            duration,
            runs,
            limiter_duration,
        } => all(duration, runs, limiter_duration).await?,
    }
    footer();
    Ok(())
}

async fn all(duration: Duration, runs: usize, limiter_duration: Duration) -> anyhow::Result<()> {
    let s = bench_store(runs, 64).await?;
    print_store(&s);
    let b = bench_baseline(64, duration).await?;
    print_loads("HTTP baseline", &[&b]);
    let a = bench_accept(64, duration, None, false, None).await?;
    print_loads("accept (closed loop)", &[&a]);
    // Open loop at a quarter, half and three quarters of the closed-loop maximum just measured.
    let max = a.throughput();
    let rates: Vec<f64> = [0.25, 0.5, 0.75]
        .iter()
        .map(|f| ((max * f / 100.0).round() * 100.0).max(100.0))
        .collect();
    let o = bench_accept_open(&rates, duration, 1024, None, false, None).await?;
    open_loop::print("accept (open loop)", &o);
    let e = bench_e2e(64, duration, None, e2e::Wait::LongPoll).await?;
    e2e::print(&e);
    let l = bench_limiter(500.0, 400, limiter_duration, 3).await?;
    limiter::print(&l);
    let m = bench_queue_memory(&[100_000, 1_000_000], 100_000).await?;
    memory::print(&m);

    let ratio = a.throughput() / b.throughput().max(1e-9);
    let half = &o[1];
    let p99_half = pct(&half.latencies, 0.99);
    let worst_queue = m
        .iter()
        .filter(|r| !r.name.starts_with("standalone"))
        .map(memory::Row::per_run)
        .fold(0.0, f64::max);
    let rows = vec![
        vec![
            "store insert, concurrency 1 / 64 (ops/s)".into(),
            format!("{} / {}", f0(s.insert_serial.rate()), f0(s.insert.rate())),
            String::new(),
            String::new(),
        ],
        vec![
            "baseline HTTP 202 (req/s)".into(),
            f0(b.throughput()),
            String::new(),
            String::new(),
        ],
        vec![
            "accept, closed loop 64 (runs/s)".into(),
            f0(a.throughput()),
            "≥ 20000".into(),
            verdict(a.throughput() >= 20_000.0),
        ],
        vec![
            "accept/baseline".into(),
            format!("{ratio:.2}×"),
            "≥ 0.40×".into(),
            verdict(ratio >= 0.4),
        ],
        vec![
            "accept closed loop p50 / p99 / p99.9 (ms)".into(),
            format!(
                "{} / {} / {}",
                ms(a.pct(0.5)),
                ms(a.pct(0.99)),
                ms(a.pct(0.999))
            ),
            String::new(),
            String::new(),
        ],
        vec![
            format!("accept open loop at {}/s (½ max): p99 (ms)", f0(half.rate)),
            ms(p99_half),
            "≤ 10".into(),
            verdict(p99_half <= Duration::from_millis(10) && half.dropped == 0),
        ],
        vec![
            "e2e completions/s (p50 / p99 ms)".into(),
            format!(
                "{} ({} / {})",
                f0(e.throughput()),
                ms(pct(&e.latencies, 0.5)),
                ms(pct(&e.latencies, 0.99))
            ),
            "≥ 5000".into(),
            verdict(e.throughput() >= 5_000.0),
        ],
        vec![
            format!("limiter error alone ({}/s)", f0(l[0].rate)),
            format!("{:.2} %", l[0].error() * 100.0),
            "≤ 2 %".into(),
            verdict(l[0].error() <= 0.02),
        ],
        vec![
            format!("limiter error, {} schedulers sharing", l[1].schedulers),
            format!("{:.2} %", l[1].error() * 100.0),
            "≤ 5 %".into(),
            verdict(l[1].error() <= 0.05),
        ],
        vec![
            "queue memory (bytes/run, worst of 10^5, 10^6)".into(),
            format!("{worst_queue:.1}"),
            "≤ 512".into(),
            verdict(worst_queue <= 512.0),
        ],
    ];
    print_table(
        "summary (issue #3 targets)",
        &["metric", "value", "target", ""],
        &rows,
    );
    println!("accept/baseline: {ratio:.2}");
    Ok(())
}
