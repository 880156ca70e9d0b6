//! `nexus-bench`: load generator and benchmark scenarios for Nexus.
//!
//! * `store`    — the embedded run store in-process: concurrent inserts (group commit), the same
//!   inserts one at a time (one fsync each), and BUFFERED→RUNNING compare-and-sets.
//! * `baseline` — a bare axum handler answering `202 {"requestId":"x"}`: the physical limit of
//!   HTTP on this machine with this load generator.
//! * `accept`   — closed-loop `POST /algorithm/v1/run/knapsack` against standalone Nexus
//!   (started in-process unless `--url` is given).
//! * `all`      — the three in sequence and a summary.
//!
//! Every loop is bounded in time and in count; the HTTP scenarios only target loopback unless a
//! URL is given explicitly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use nexus_core::run::{RunId, RunPatch, Stage};
use nexus_core::store::test_suite::sample_run;
use nexus_core::store::{RunStore, SqliteRunStore};

/// Hard upper bound on any single phase, whatever the arguments.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// The one-at-a-time insert baseline stops after this long (it is reported as ops/s either way).
const SERIAL_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound on requests per HTTP scenario (a safety net on top of the duration).
const MAX_REQUESTS: usize = 50_000_000;

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
    /// Bare axum handler (POST → 202): the reference for `accept`.
    Baseline {
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration, e.g. `10s`, `500ms`, `1m`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Closed-loop submissions to `/algorithm/v1/run/knapsack` with a 1 KiB payload.
    Accept {
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Duration, e.g. `10s`, `500ms`, `1m`.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Nexus to target (e.g. `http://127.0.0.1:8090`); default: a standalone started in-process.
        #[arg(long)]
        url: Option<String>,
    },
    /// store, baseline and accept (concurrency 64) in sequence, then a summary.
    All {
        /// Duration of each HTTP scenario.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Runs inserted by the store scenario.
        #[arg(long, default_value_t = 20_000)]
        runs: usize,
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

// ---------------------------------------------------------------- output

fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
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
    println!("\n{cmd} / {date} / machine: nproc={nproc}, {cpu}");
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
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
}

impl Load {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let n = self.latencies.len();
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i]
    }
}

/// The submission body: valid knapsack parameters padded with a `note` field so that
/// `algorithmParameters` serializes to exactly 1 KiB.
fn accept_body() -> String {
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let body = Arc::new(accept_body());
    let url = Arc::new(url.to_owned());
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration.min(PHASE_LIMIT);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, url, sent) = (client.clone(), body.clone(), url.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut non_202, mut errors) = (Vec::with_capacity(1 << 14), 0usize, 0usize);
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let t0 = Instant::now();
                let r = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_bytes().to_vec())
                    .send()
                    .await;
                match r {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.bytes().await;
                        if status.as_u16() == 202 {
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
    latencies.sort_unstable();
    Ok(Load {
        name: name.to_owned(),
        concurrency,
        ok: latencies.len(),
        non_202,
        errors,
        elapsed,
        latencies,
    })
}

fn print_loads(title: &str, loads: &[&Load]) {
    let rows: Vec<Vec<String>> = loads
        .iter()
        .map(|l| {
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
            ]
        })
        .collect();
    print_table(
        title,
        &[
            "scenario", "conc", "seconds", "202s", "req/s", "p50 ms", "p99 ms", "p99.9 ms",
            "non-202", "errors",
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

const WORKGROUP: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmWorkgroup
metadata:
  name: local
spec:
  description: bench workgroup
  cluster: local
  # One run executes at a time, the rest wait BUFFERED: accept is measured without
  # process spawning competing for the two cores (that is the e2e scenario's business).
  maxConcurrentRuns: 1
";

const TEMPLATE: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: knapsack
spec:
  workgroupRef:
    name: local
    group: science.sneaksanddata.com
    kind: NexusAlgorithmWorkgroup
  command: sleep
  args: [\"30\"]
";

async fn bench_accept(
    concurrency: usize,
    duration: Duration,
    url: Option<String>,
) -> anyhow::Result<Load> {
    if let Some(u) = url {
        let target = format!("{}/algorithm/v1/run/knapsack", u.trim_end_matches('/'));
        eprintln!("accept: {target}, concurrency {concurrency}, {duration:?} …");
        return drive("accept (external nexus)", &target, concurrency, duration).await;
    }
    let dir = tempfile::tempdir()?;
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates)?;
    std::fs::write(templates.join("workgroup.yaml"), WORKGROUP)?;
    std::fs::write(templates.join("knapsack.yaml"), TEMPLATE)?;
    let config = nexus_cli::config::StandaloneConfig {
        data_dir: dir.path().join("data"),
        templates_dir: templates,
        ..nexus_cli::config::StandaloneConfig::default()
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let handle = nexus_cli::standalone::start(config, listener)
        .await
        .context("cannot start standalone nexus")?;
    eprintln!(
        "accept: standalone nexus on {}, concurrency {concurrency}, {duration:?} …",
        handle.url
    );
    let r = drive(
        "accept (standalone nexus)",
        &format!("{}/algorithm/v1/run/knapsack", handle.url),
        concurrency,
        duration,
    )
    .await;
    // Bounded shutdown: the queue may still hold accepted runs; do not wait for all of them.
    handle.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), handle.wait()).await;
    r
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Store { runs, concurrency } => {
            let r = bench_store(runs, concurrency).await?;
            print_store(&r);
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
        } => {
            let a = bench_accept(concurrency, duration, url).await?;
            print_loads("accept", &[&a]);
        }
        Cmd::All { duration, runs } => {
            let s = bench_store(runs, 64).await?;
            print_store(&s);
            let b = bench_baseline(64, duration).await?;
            print_loads("HTTP baseline", &[&b]);
            let a = bench_accept(64, duration, None).await?;
            print_loads("accept", &[&a]);
            let ratio = a.throughput() / b.throughput().max(1e-9);
            print_table(
                "summary",
                &["metric", "value"],
                &[
                    vec![
                        "store insert, concurrency 1 (ops/s)".into(),
                        f0(s.insert_serial.rate()),
                    ],
                    vec![
                        "store insert, concurrency 64 (ops/s)".into(),
                        f0(s.insert.rate()),
                    ],
                    vec![
                        "group-commit gain".into(),
                        format!("{:.1}×", s.insert.rate() / s.insert_serial.rate().max(1e-9)),
                    ],
                    vec![
                        "store BUFFERED→RUNNING, concurrency 64 (ops/s)".into(),
                        f0(s.transition.rate()),
                    ],
                    vec!["baseline HTTP 202 (req/s)".into(), f0(b.throughput())],
                    vec!["accept (runs/s)".into(), f0(a.throughput())],
                    vec![
                        "accept p50 / p99 / p99.9 (ms)".into(),
                        format!(
                            "{} / {} / {}",
                            ms(a.pct(0.5)),
                            ms(a.pct(0.99)),
                            ms(a.pct(0.999))
                        ),
                    ],
                    vec![
                        "accept non-202 / errors".into(),
                        format!("{} / {}", a.non_202, a.errors),
                    ],
                    vec!["accept/baseline".into(), format!("{ratio:.2}×")],
                ],
            );
            println!("accept/baseline: {ratio:.2}");
        }
    }
    footer();
    Ok(())
}
