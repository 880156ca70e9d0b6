//! `limiter`: how closely the dispatcher holds a shard budget of `rate` runs/s, with one scheduler
//! and with several sharing the budget.
//!
//! In-process: real [`nexus_scheduler::Scheduler`]s (dispatcher, lease heartbeat and budgets as in
//! production) share one `InMemoryRunStore`, which holds their leases: each heartbeat counts the
//! live leases and takes that share of the budget. Every scheduler dispatches to its own counting
//! [`Shard`] that records when each run arrived. Queues are pre-filled with more runs than the
//! budget lets through, so the limiter, not the supply, decides the rate.
//!
//! The rate is measured over a steady-state window that starts `warm-up` after the start: by then
//! the initial burst (the full bucket, `burst` runs at once) is spent and every scheduler has seen
//! every lease at least twice, so the window holds only the sustained rate. The whole run is also
//! compared with the limiter's promise over any window: at most `burst + rate × t` dispatches.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_http::Readiness;
use nexus_link::shard::{Dispatch, Shard, ShardError};
use nexus_model::catalog::{Catalog, Snapshot};
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_model::sign::Signer;
use nexus_model::spec::Workgroup;
use nexus_payload::InMemoryPayloadStore;
use nexus_scheduler::{BudgetConfig, Deps, Queued, Scheduler, SchedulerConfig, ShardMap};
use nexus_store::test_suite::sample_run;
use nexus_store::{InMemoryRunStore, RunStore};
use tokio_util::sync::CancellationToken;

use crate::{PHASE_LIMIT, print_table};

/// Leases expire after this long; heartbeats every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// A [`Shard`] that accepts every run and records when it arrived.
#[derive(Debug, Default)]
struct CountingShard {
    at: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Shard for CountingShard {
    async fn submit(&self, _dispatch: Dispatch) -> Result<(), ShardError> {
        self.at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Instant::now());
        Ok(())
    }

    async fn cancel(&self, _run_id: RunId, _policy: CancellationPolicy) -> Result<(), ShardError> {
        Ok(())
    }
}

/// One scheduler's part of a phase.
#[derive(Debug)]
pub struct Share {
    /// Dispatches in the whole run.
    pub total: usize,
    /// Dispatches in the steady-state window.
    pub in_window: usize,
}

/// What one phase measured.
#[derive(Debug)]
pub struct Phase {
    /// The shard budget (all schedulers together).
    pub rate: f64,
    /// Its burst.
    pub burst: u32,
    /// Schedulers sharing it.
    pub schedulers: usize,
    /// Whole run.
    pub duration: Duration,
    /// Start of the steady-state window after the start.
    pub warmup: Duration,
    /// When the initial burst was spent (the `burst`-th dispatch of the first scheduler), after
    /// the start.
    pub burst_spent: Option<Duration>,
    /// Per scheduler.
    pub shares: Vec<Share>,
}

impl Phase {
    fn window(&self) -> f64 {
        (self.duration - self.warmup).as_secs_f64().max(1e-9)
    }

    /// Dispatches per second in the steady-state window, all schedulers together.
    #[must_use]
    pub fn measured(&self) -> f64 {
        self.shares.iter().map(|s| s.in_window).sum::<usize>() as f64 / self.window()
    }

    /// |measured − rate| / rate.
    #[must_use]
    pub fn error(&self) -> f64 {
        (self.measured() - self.rate).abs() / self.rate
    }

    fn total(&self) -> usize {
        self.shares.iter().map(|s| s.total).sum()
    }

    /// The limiter's bound over the whole run: `burst + rate × duration`.
    fn bound(&self) -> f64 {
        f64::from(self.burst) + self.rate * self.duration.as_secs_f64()
    }
}

fn catalog() -> Catalog {
    let mut snap = Snapshot::default();
    snap.workgroups
        .insert("wg".into(), Workgroup::on_cluster("wg", "local"));
    Catalog::new(snap)
}

/// Runs one phase: `schedulers` schedulers sharing a budget of `rate`/s (burst `burst`) for
/// `duration`, measured after `warmup`.
///
/// # Errors
/// Arguments out of range; the in-memory store refusing a run.
pub async fn phase(
    rate: f64,
    burst: u32,
    schedulers: usize,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<Phase> {
    let budget = BudgetConfig { rate, burst };
    budget
        .validate("--rate/--burst")
        .map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(
        (1..=16).contains(&schedulers),
        "schedulers must be between 1 and 16"
    );
    anyhow::ensure!(
        duration <= PHASE_LIMIT && duration > warmup,
        "--duration must exceed the {}s warm-up and be at most {}s",
        warmup.as_secs(),
        PHASE_LIMIT.as_secs()
    );
    // Enough for any one scheduler to run at the full rate the whole time (before its first
    // heartbeat it may be alone), plus the burst: the queues never run dry.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // validated above
    let per_scheduler = (rate * duration.as_secs_f64() * 1.1) as usize + burst as usize + 100;
    anyhow::ensure!(
        per_scheduler * schedulers <= 5_000_000,
        "rate × duration too large for an in-memory pre-fill"
    );
    let store = Arc::new(InMemoryRunStore::default());
    let catalog = catalog();
    let mut running = Vec::new();
    for i in 0..schedulers {
        let shard = Arc::new(CountingShard::default());
        let config = SchedulerConfig {
            shard_budget: budget,
            lease_ttl: LEASE_TTL,
            drain_grace: Duration::ZERO,
            queue_bound: per_scheduler + 1,
            ..SchedulerConfig::default()
        };
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        let s = Scheduler::new(
            config,
            Deps {
                store: store.clone(),
                payloads: Arc::new(InMemoryPayloadStore::default()),
                catalog: catalog.clone(),
                shards: ShardMap {
                    fallback: Some(shard.clone()),
                    ..ShardMap::default()
                },
                signer: Signer::random(),
                instance_id: format!("bench-scheduler-{i}"),
                readiness: Readiness::default(),
            },
        );
        for _ in 0..per_scheduler {
            let mut run = sample_run("knapsack");
            run.workgroup = "wg".into();
            run.shard = "local".into();
            let id = run.id;
            store
                .insert(run)
                .await
                .map_err(|e| anyhow::anyhow!("in-memory store: {e}"))?;
            s.queue.push(Queued {
                id,
                shard: "local".into(),
                attempt: 0,
            });
        }
        running.push((s, shard));
    }
    eprintln!(
        "limiter: {schedulers} scheduler(s) sharing {rate}/s (burst {burst}) for {duration:?}, {per_scheduler} runs queued each …"
    );
    // All start together, none has a lease yet: each first heartbeat sees the leases taken so
    // far, and the next ones (every third of the TTL) converge on the full count.
    let stop = CancellationToken::new();
    let start = Instant::now();
    let tasks: Vec<_> = running
        .iter()
        .map(|(s, _)| tokio::spawn(nexus_scheduler::run(s.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(duration).await;
    let end = start + duration;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let from = start + warmup;
    let mut shares = Vec::new();
    let mut burst_spent = None;
    for (i, (_, shard)) in running.iter().enumerate() {
        let at = shard.at.lock().unwrap_or_else(PoisonError::into_inner);
        let mut at: Vec<Instant> = at.iter().copied().filter(|t| *t <= end).collect();
        at.sort_unstable();
        if i == 0 && schedulers == 1 {
            burst_spent = at
                .get((burst as usize).saturating_sub(1))
                .map(|t| t.duration_since(start));
        }
        shares.push(Share {
            total: at.len(),
            in_window: at.iter().filter(|t| **t >= from).count(),
        });
    }
    Ok(Phase {
        rate,
        burst,
        schedulers,
        duration,
        warmup,
        burst_spent,
        shares,
    })
}

/// Prints the phases: one row per phase, then each scheduler's share.
pub fn print(phases: &[Phase]) {
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                if p.schedulers == 1 {
                    "alone".to_owned()
                } else {
                    format!("{} schedulers sharing", p.schedulers)
                },
                format!("{:.0}", p.rate),
                p.burst.to_string(),
                format!(
                    "{:.0}–{:.0}",
                    p.warmup.as_secs_f64(),
                    p.duration.as_secs_f64()
                ),
                p.shares
                    .iter()
                    .map(|s| s.in_window)
                    .sum::<usize>()
                    .to_string(),
                format!("{:.1}", p.measured()),
                format!("{:.2} %", p.error() * 100.0),
                format!("{} / {:.0}", p.total(), p.bound()),
                p.burst_spent.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
                ),
            ]
        })
        .collect();
    print_table(
        "limiter (shard budget held by the dispatcher, in-process)",
        &[
            "phase",
            "budget/s",
            "burst",
            "window s",
            "dispatched in window",
            "measured/s",
            "error",
            "whole run / bound",
            "burst spent ms",
        ],
        &rows,
    );
    let mut share_rows = Vec::new();
    for p in phases.iter().filter(|p| p.schedulers > 1) {
        let sum: usize = p.shares.iter().map(|s| s.in_window).sum();
        for (i, s) in p.shares.iter().enumerate() {
            share_rows.push(vec![
                format!("scheduler {i}"),
                s.in_window.to_string(),
                format!("{:.1}", s.in_window as f64 / p.window()),
                format!("{:.1}", p.rate / p.schedulers as f64),
                format!("{:.1} %", 100.0 * s.in_window as f64 / sum.max(1) as f64),
                s.total.to_string(),
            ]);
        }
    }
    if !share_rows.is_empty() {
        print_table(
            "limiter: each scheduler's share (steady-state window)",
            &[
                "scheduler",
                "dispatched",
                "rate/s",
                "fair share/s",
                "share",
                "whole run",
            ],
            &share_rows,
        );
    }
    println!(
        "(error = |measured − budget| / budget over the window; the window starts after the burst is spent and the lease count has converged; whole run / bound = all dispatches vs burst + budget × duration)"
    );
}
