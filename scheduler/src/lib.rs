//! nexus-scheduler: the HTTP v1 API, admission, the virtual queue and the dispatcher.
//!
//! [`serve`] takes everything it needs as parameters (config, seams, listeners, shutdown) and owns
//! the component's lifecycle (its routers, lease, dispatcher and the ordered drain), so tests
//! start it in-process with fakes on port 0 and `main` stays thin. [`run`] is its background work
//! alone (dispatcher, lease heartbeat, drain).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use nexus_http::server::ServerConfig;
use nexus_http::{Readiness, health_routes, negotiate_errors};
use nexus_link::shard::Shard;
use nexus_model::catalog::Catalog;
use nexus_model::run::{Run, Stage, now_millis};
use nexus_model::sign::Signer;
use nexus_payload::PayloadStore;
use nexus_store::RunStore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod access;
pub mod admission;
pub mod algorithms;
pub mod api;
pub mod console;
pub mod dispatch;
pub mod edge;
pub mod explain;
pub mod external;
pub mod fanout;
pub mod grpc;
pub mod limiter;
pub mod listing;
pub mod logs;
pub mod metrics;
pub mod queue;
pub(crate) mod request_split;
pub mod shards;
mod spool;
pub mod tree;

pub use limiter::BudgetConfig;
pub use queue::{Queued, VirtualQueue};

/// Scheduler configuration (section `scheduler`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Public base URL under which this scheduler's `/data/v1/payloads` route is reachable by
    /// algorithms (e.g. `http://127.0.0.1:8090`). Set by the process from its top-level
    /// `public_url` (or listen address), never read from the section.
    #[serde(skip)]
    pub public_url: String,
    /// Maximum body of `POST /run`, in bytes (413 above).
    pub max_request_bytes: usize,
    /// Payloads up to this size live inline in the run record (one durable write per accept);
    /// larger ones go to the payload store.
    pub inline_payload_bytes: usize,
    /// Queue bound: past it, `POST /run` answers 429 with `Retry-After`.
    pub queue_bound: usize,
    /// Dispatches in flight per shard.
    pub dispatch_concurrency: usize,
    /// Dispatch budget of every shard not listed in `shard_budgets`: a rate in runs per second
    /// and a burst, for all schedulers together (each takes its share).
    pub shard_budget: BudgetConfig,
    /// Per-shard budgets, by shard name (a workgroup's `spec.cluster`).
    pub shard_budgets: std::collections::BTreeMap<String, BudgetConfig>,
    /// After a shard says "slow down" (its rate halves), how long the rate takes to climb back
    /// from zero to the full budget (linear increase).
    #[serde(with = "humantime_serde")]
    pub slow_down_recovery: Duration,
    /// Longest wait for a shard to answer one dispatch; past it the dispatch counts as a
    /// retryable timeout (so a hung receiver can neither hold a lane's slots nor a shutdown).
    #[serde(with = "humantime_serde")]
    pub dispatch_timeout: Duration,
    /// Dispatch attempts before SCHEDULING_FAILED.
    pub dispatch_max_attempts: u32,
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Default validity of payload URLs.
    #[serde(with = "humantime_serde")]
    pub payload_valid_for: Duration,
    /// How long a queued run may wait after shutdown starts before it is handed over.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Lease time-to-live (heartbeat every third of it).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Deepest execution tree: a run at this depth (a root is 0) cannot create children.
    pub max_tree_depth: u32,
    /// Most children one run may create.
    pub max_children_per_run: usize,
    /// Most runs in one batch submit (`POST /algorithm/v1/runs/{alg}`, gRPC `CreateRuns`).
    pub max_batch_runs: usize,
    /// Maximum body of a batch submit, in bytes (413 above). A batch is parsed in memory.
    pub max_batch_bytes: usize,
    /// Deepest nesting of arrays and objects in a run request (the request object is level 1).
    pub max_json_depth: usize,
    /// Highest `runtimeEnvironment.maximumRetries` a template or a run may ask for.
    pub max_retries: u32,
    /// Longest `runtimeEnvironment.deadlineSeconds` a template or a run may ask for.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Longest `payloadValidFor` (payload URLs and run tokens live that long).
    #[serde(with = "humantime_serde")]
    pub max_payload_valid_for: Duration,
    /// How often this scheduler looks for BUFFERED runs it owns that are neither queued nor being
    /// dispatched, and queues them again (defence in depth: every accepted run reaches a queue).
    #[serde(with = "humantime_serde")]
    pub requeue_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8090".into(),
            max_request_bytes: 64 * 1024 * 1024,
            inline_payload_bytes: 256 * 1024,
            queue_bound: 100_000,
            dispatch_concurrency: 64,
            shard_budget: BudgetConfig::default(),
            shard_budgets: std::collections::BTreeMap::new(),
            slow_down_recovery: Duration::from_secs(20),
            dispatch_timeout: Duration::from_secs(30),
            dispatch_max_attempts: 8,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            payload_valid_for: Duration::from_secs(24 * 3600),
            drain_grace: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(15),
            max_tree_depth: 16,
            max_children_per_run: 10_000,
            max_batch_runs: 1_000,
            max_batch_bytes: 16 * 1024 * 1024,
            max_json_depth: 128,
            max_retries: 100,
            max_deadline: Duration::from_secs(7 * 24 * 3600),
            max_payload_valid_for: Duration::from_secs(30 * 24 * 3600),
            requeue_interval: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key and what would be valid.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            e.push(format!(
                "scheduler.public_url: '{}' must start with http:// or https://",
                self.public_url
            ));
        }
        if self.max_request_bytes < 1024 {
            e.push("scheduler.max_request_bytes: must be at least 1024".to_owned());
        }
        if self.queue_bound == 0 {
            e.push("scheduler.queue_bound: must be at least 1".to_owned());
        }
        if self.dispatch_concurrency == 0 {
            e.push("scheduler.dispatch_concurrency: must be at least 1".to_owned());
        }
        if let Err(m) = self.shard_budget.validate("scheduler.shard_budget") {
            e.push(m);
        }
        for (name, b) in &self.shard_budgets {
            if let Err(m) = b.validate(&format!("scheduler.shard_budgets.{name}")) {
                e.push(m);
            }
        }
        if self.dispatch_timeout < Duration::from_millis(100) {
            e.push("scheduler.dispatch_timeout: must be at least 100ms".to_owned());
        }
        if self.slow_down_recovery < Duration::from_millis(100) {
            e.push("scheduler.slow_down_recovery: must be at least 100ms".to_owned());
        }
        if self.dispatch_max_attempts == 0 {
            e.push("scheduler.dispatch_max_attempts: must be at least 1".to_owned());
        }
        if self.retry_base_delay > self.retry_max_delay {
            e.push("scheduler.retry_base_delay: must not exceed retry_max_delay".to_owned());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            e.push("scheduler.lease_ttl: must be at least 1s".to_owned());
        }
        if self.max_tree_depth == 0 {
            e.push(
                "scheduler.max_tree_depth: must be at least 1 (runs could not have children)"
                    .to_owned(),
            );
        }
        if self.max_children_per_run == 0 {
            e.push("scheduler.max_children_per_run: must be at least 1".to_owned());
        }
        if !(1..=nexus_store::MAX_BATCH_RUNS).contains(&self.max_batch_runs) {
            e.push(format!(
                "scheduler.max_batch_runs: must be between 1 and {}",
                nexus_store::MAX_BATCH_RUNS
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_batch_bytes) {
            e.push(
                "scheduler.max_batch_bytes: must be between 1024 and 268435456 (256 MiB)"
                    .to_owned(),
            );
        }
        if !(2..=10_000).contains(&self.max_json_depth) {
            e.push("scheduler.max_json_depth: must be between 2 and 10000".to_owned());
        }
        if self.max_retries > 10_000 {
            e.push("scheduler.max_retries: must be at most 10000".to_owned());
        }
        if self.max_deadline < Duration::from_secs(1)
            || self.max_deadline > Duration::from_secs(366 * 24 * 3600)
        {
            e.push("scheduler.max_deadline: must be between 1s and 366d".to_owned());
        }
        if self.max_payload_valid_for < Duration::from_secs(60)
            || self.max_payload_valid_for > Duration::from_secs(366 * 24 * 3600)
        {
            e.push("scheduler.max_payload_valid_for: must be between 1m and 366d".to_owned());
        }
        if self.payload_valid_for > self.max_payload_valid_for {
            e.push("scheduler.payload_valid_for: must not exceed max_payload_valid_for".to_owned());
        }
        if self.requeue_interval < Duration::from_secs(1) {
            e.push("scheduler.requeue_interval: must be at least 1s".to_owned());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// Shard name → receiver. A `fallback` takes every shard not named (standalone: the one local
/// receiver runs every workgroup's runs).
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    /// Named shards.
    pub shards: HashMap<String, Arc<dyn Shard>>,
    /// Shard used for names not in `shards`.
    pub fallback: Option<Arc<dyn Shard>>,
}

impl ShardMap {
    /// Returns the receiver of `shard`.
    #[must_use]
    pub fn route(&self, shard: &str) -> Option<Arc<dyn Shard>> {
        self.shards
            .get(shard)
            .cloned()
            .or_else(|| self.fallback.clone())
    }
}

/// Everything the scheduler needs from outside.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Run records.
    pub store: Arc<dyn RunStore>,
    /// Payloads and results.
    pub payloads: Arc<dyn PayloadStore>,
    /// Templates and workgroups.
    pub catalog: Catalog,
    /// Receivers by shard.
    pub shards: ShardMap,
    /// Signs payload URLs.
    pub signer: Signer,
    /// This instance's owner id (written on the runs it accepts; its lease in the store).
    pub instance_id: String,
    /// Readiness flag (turned off at shutdown).
    pub readiness: Readiness,
}

/// The scheduler's shared state.
#[derive(Debug)]
pub struct Scheduler {
    /// Config.
    pub config: SchedulerConfig,
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Payload store.
    pub payloads: Arc<dyn PayloadStore>,
    /// Catalog.
    pub catalog: Catalog,
    /// Shards.
    pub shards: ShardMap,
    /// URL signer.
    pub signer: Signer,
    /// Owner id.
    pub instance_id: String,
    /// The queue.
    pub queue: VirtualQueue,
    /// Dispatch budgets per shard.
    pub budgets: dispatch::Budgets,
    /// Readiness.
    pub readiness: Readiness,
    /// Who may call the API (see [`access`]); off by default.
    pub auth: nexus_auth::Authenticator,
    /// RUNNING runs queued to be launched again (their process was lost; see
    /// [`Scheduler::enqueue_recovered`]).
    relaunches: std::sync::Mutex<std::collections::HashSet<nexus_model::run::RunId>>,
    /// BUFFERED runs handed to their shard, which has not recorded their start yet (a local
    /// executor waiting for a workgroup slot): they are the shard's now, not stranded. Pruned by
    /// the stranded-run pass (started runs, and entries older than [`HANDED_OVER_FOR`]).
    handed_over: std::sync::Mutex<HashMap<nexus_model::run::RunId, std::time::Instant>>,
    /// When this scheduler last handed a run to a shard (see [`Scheduler::payload_linger`]).
    last_handover: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Scheduler {
    /// Builds the shared state, without authentication.
    #[must_use]
    pub fn new(config: SchedulerConfig, deps: Deps) -> Arc<Self> {
        Self::with_auth(config, deps, nexus_auth::Authenticator::none())
    }

    /// Builds the shared state, with `auth` deciding who may call the API.
    #[must_use]
    pub fn with_auth(
        config: SchedulerConfig,
        deps: Deps,
        auth: nexus_auth::Authenticator,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue: VirtualQueue::new(config.queue_bound),
            budgets: dispatch::Budgets::new(
                config.shard_budget,
                config
                    .shard_budgets
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                config.slow_down_recovery,
            ),
            config,
            store: deps.store,
            payloads: deps.payloads,
            catalog: deps.catalog,
            shards: deps.shards,
            signer: deps.signer,
            instance_id: deps.instance_id,
            readiness: deps.readiness,
            auth,
            relaunches: std::sync::Mutex::default(),
            handed_over: std::sync::Mutex::default(),
            last_handover: std::sync::Mutex::default(),
        })
    }

    fn relaunches_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<nexus_model::run::RunId>> {
        // Each critical section is one set operation: consistent after a panic elsewhere.
        self.relaunches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when a RUNNING run was queued to be launched again.
    pub(crate) fn is_relaunch(&self, id: nexus_model::run::RunId) -> bool {
        self.relaunches_mut().contains(&id)
    }

    /// When `id` was handed to its shard by this scheduler, if it still waits there to start.
    pub(crate) fn handed_over_at(&self, id: nexus_model::run::RunId) -> Option<std::time::Instant> {
        self.handed_over
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    /// Notes that a run was handed to its shard (see `handed_over`).
    pub(crate) fn handed_over(&self, id: nexus_model::run::RunId) {
        self.handed_over
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, std::time::Instant::now());
        *self
            .last_handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }

    /// How long a stopping scheduler should keep serving HTTP after its queue drained: the
    /// payload URLs of the runs it handed over last point at it (`/data/v1/payloads`), and
    /// their algorithms may not have fetched them yet. Zero when nothing was handed over in the
    /// last [`PAYLOAD_LINGER`].
    #[must_use]
    pub fn payload_linger(&self) -> Duration {
        self.last_handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(Duration::ZERO, |at| {
                PAYLOAD_LINGER.saturating_sub(at.elapsed())
            })
    }

    /// Forgets a relaunch (dispatched, failed or no longer needed).
    pub(crate) fn relaunch_done(&self, id: nexus_model::run::RunId) {
        self.relaunches_mut().remove(&id);
    }

    /// Returns a signed GET URL of the run's payload, served by [`api::router`] at
    /// `/data/v1/payloads/{alg}/{id}`, valid for the run's `payload_valid_for` from now.
    #[must_use]
    pub fn payload_url(&self, run: &Run) -> String {
        nexus_model::sign::payload_url(&self.config.public_url, &self.signer, run)
    }

    /// Enqueues a recovered run ahead of the queue (used by the supervisor's orphan recovery).
    /// A RUNNING run is queued as a relaunch: its attempt was lost with the process that ran it,
    /// and it is launched again (the receiver continues its attempt count).
    pub fn enqueue_recovered(&self, run: &Run) {
        if run.stage == Stage::Running {
            self.relaunches_mut().insert(run.id);
        }
        self.queue.push_priority(Queued {
            id: run.id,
            shard: run.shard.clone(),
            attempt: 0,
        });
    }
}

/// What [`serve`] runs with, besides the seams.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Per-client rate limiting of the API.
    pub rate_limit: edge::EdgeLimitConfig,
    /// Connection limit and timeouts of the HTTP server (when it has a listener).
    pub server: ServerConfig,
    /// Who may call the API ([`nexus_auth::Authenticator::none`]: anyone).
    pub auth: nexus_auth::Authenticator,
}

/// Listeners [`serve`] serves on (bound by the caller, so tests use port 0).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Routes the process serves on this component's HTTP listener besides the component's own
    /// (its `/metrics`); unused without an HTTP listener.
    pub telemetry: Router,
    /// The HTTP v1 API, gRPC `RunService`, health probes and `/metrics`; `None` when the caller
    /// serves [`Handle::routes`] on a shared port (standalone).
    pub http: Option<TcpListener>,
}

/// A running scheduler.
#[derive(Debug)]
pub struct Handle {
    /// The scheduler (standalone's recovery queues recovered runs on it).
    pub scheduler: Arc<Scheduler>,
    /// HTTP address, when it has a listener.
    pub addr: Option<SocketAddr>,
    /// The API and gRPC routes (rate-limited API first), when the caller serves them: without a
    /// listener.
    pub routes: Option<Router>,
    /// Cancel to stop it (ordered drain).
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Handle {
    /// Waits until the scheduler has stopped (after `shutdown` was cancelled): its queue drained
    /// or handed over, its lease released and, with a listener, its HTTP server stopped.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts the scheduler: picks up the BUFFERED runs a previous life of its instance id left,
/// starts the dispatcher and lease heartbeat ([`run`]) and, with a listener, serves the API,
/// gRPC, health probes and `telemetry` (`/metrics`). On `shutdown`: readiness off, the queue
/// drains for `drain_grace` (what is left is handed over by releasing the lease), then, with a
/// listener, payloads of the runs handed over last are served a little longer
/// ([`Scheduler::payload_linger`]) before HTTP stops.
///
/// # Errors
/// A listener's address cannot be read; the run store cannot list this instance's runs.
pub async fn serve(
    config: ServeConfig,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<Handle, ServeError> {
    let addr = listeners
        .http
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    metrics::describe();
    nexus_link::metrics::describe();
    let readiness = deps.readiness.clone();
    let scheduler = Scheduler::with_auth(config.scheduler, deps, config.auth);
    // Limited before merging: the scheduler API only, not gRPC, probes or metrics.
    let routes = Router::new()
        .merge(nexus_http::telemetry::track(
            "nexus_scheduler",
            edge::apply(
                &config.rate_limit,
                api::router(scheduler.clone()),
                shutdown.clone(),
            ),
        ))
        // gRPC (content-type application/grpc only) and the app's fallback: 404 text.
        .merge(grpc::routes(scheduler.clone()));
    let tasks = TaskTracker::new();
    let run_stop = CancellationToken::new();
    let run_task = tasks.spawn(run(scheduler.clone(), run_stop.clone()));
    let http_stop = CancellationToken::new();
    let (routes, serving) = match listeners.http {
        Some(listener) => {
            let app = routes
                .merge(health_routes(readiness.clone()))
                .merge(listeners.telemetry)
                .layer(axum::middleware::from_fn(negotiate_errors));
            tasks.spawn(nexus_http::server::serve(
                listener,
                app,
                config.server,
                http_stop.clone(),
            ));
            (None, true)
        }
        None => (Some(routes), false),
    };
    let (sd, linger_of) = (shutdown.clone(), scheduler.clone());
    tasks.spawn(async move {
        sd.cancelled().await;
        readiness.set(false);
        run_stop.cancel();
        let _ = run_task.await;
        // Runs handed over last may still fetch their payload from this scheduler (its
        // `public_url` is in their payload URL): keep serving a little longer (readiness is off).
        let linger = linger_of.payload_linger();
        if serving && !linger.is_zero() {
            tracing::info!(
                seconds = linger.as_secs_f64(),
                "serving payloads of the last runs handed over before stopping"
            );
            tokio::time::sleep(linger).await;
        }
        http_stop.cancel();
    });
    scheduler.readiness.set(true);
    tracing::info!(instance = %scheduler.instance_id, "scheduler started");
    Ok(Handle {
        scheduler,
        addr,
        routes,
        shutdown,
        tasks,
    })
}

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener's address cannot be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The run store failed.
    #[error("run store: {0}")]
    Store(#[from] nexus_store::StoreError),
}

/// Runs the scheduler's background work (dispatcher and lease heartbeat) until `shutdown`, then
/// drains: queued runs get `drain_grace` to be dispatched, the rest stay BUFFERED and the lease is
/// released so a successor takes them over at once. The HTTP router is [`api::router`]; the caller
/// serves it (standalone merges several routers on one listener).
pub async fn run(s: Arc<Scheduler>, shutdown: CancellationToken) {
    // Lease and share first, so the first dispatch already uses this scheduler's share.
    beat(&s).await;
    let dispatch_stop = CancellationToken::new();
    let dispatcher = tokio::spawn(dispatch::run(s.clone(), dispatch_stop.clone()));
    let hb = tokio::spawn(heartbeat(s.clone(), shutdown.clone()));
    // A stable instance id picks up the BUFFERED runs its previous life left queued: in the
    // background, page by page, so a large backlog neither delays serving nor a shutdown.
    let own = tokio::spawn(requeue_own_in_background(s.clone(), shutdown.clone()));
    let sweep = tokio::spawn(requeue_stranded(s.clone(), shutdown.clone()));
    shutdown.cancelled().await;
    s.readiness.set(false);
    let deadline = tokio::time::Instant::now() + s.config.drain_grace;
    while !s.queue.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dispatch_stop.cancel();
    let _ = dispatcher.await;
    let _ = hb.await;
    let _ = own.await;
    let _ = sweep.await;
    let left = s.queue.drain().len();
    if let Err(e) = s.store.release_lease(&s.instance_id).await {
        tracing::warn!(
            error = %e,
            "could not release lease at shutdown (runs are recovered when it expires)"
        );
    }
    tracing::info!(handed_over = left, "scheduler stopped");
}

/// Renews this scheduler's lease and re-counts the live schedulers, so that each takes its share
/// of every shard's budget. A scheduler that leaves gracefully releases its lease and the others
/// take up its share at their next beat (within a third of the TTL); one that crashes is counted
/// until its lease expires (within one TTL).
async fn beat(s: &Scheduler) {
    let ttl = i64::try_from(s.config.lease_ttl.as_millis()).unwrap_or(i64::MAX);
    let now = now_millis();
    if let Err(e) = s.store.heartbeat(&s.instance_id, now, ttl).await {
        tracing::warn!(error = %e, "lease heartbeat failed");
    }
    match s.store.leases().await {
        Ok(leases) => {
            let live = leases
                .iter()
                .filter(|l| l.expires_at > now && is_scheduler_lease(&l.owner))
                .count();
            let n = u32::try_from(live).unwrap_or(u32::MAX).max(1);
            if n != s.budgets.replicas() {
                tracing::info!(
                    schedulers = n,
                    "live schedulers changed; re-balancing shard budgets"
                );
            }
            s.budgets.set_replicas(n);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot count live schedulers (keeping the current share)");
        }
    }
}

/// Beats every third of the lease TTL. The first re-count comes after [`FIRST_RECOUNT`] (or
/// sooner with a short TTL): schedulers started together each saw only the leases taken before
/// theirs, so the early ones briefly hold more than their share; the re-count ends that quickly.
async fn heartbeat(s: Arc<Scheduler>, shutdown: CancellationToken) {
    let mut wait = FIRST_RECOUNT.min(s.config.lease_ttl / 3);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        beat(&s).await;
        wait = s.config.lease_ttl / 3;
    }
}

/// Runs accepted this recently are not judged stranded yet (between their durable write and
/// their enqueue).
const STRANDED_AFTER_MS: i64 = 2_000;
/// How long a stopping scheduler keeps serving payloads after its last hand-over.
pub const PAYLOAD_LINGER: Duration = Duration::from_secs(15);
/// How long a run handed to its shard but not started yet is left to the shard.
const HANDED_OVER_FOR: Duration = Duration::from_secs(600);
/// Most runs looked at by one stranded-run pass.
const STRANDED_PAGE: usize = 10_000;

/// Every `requeue_interval`, queues again the BUFFERED runs this scheduler owns that are neither
/// queued nor being dispatched. Admission enqueues every run it stores (in a task of its own, so
/// a client that disconnects cannot stop it), so this finds nothing unless something went wrong;
/// it makes "an accepted run always runs" independent of that.
async fn requeue_stranded(s: Arc<Scheduler>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(s.config.requeue_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pass = tokio::select! {
            () = shutdown.cancelled() => return,
            r = requeue_stranded_once(&s) => r,
        };
        match pass {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                requeued = n,
                "queued again BUFFERED runs that were in no queue"
            ),
            Err(e) => tracing::warn!(error = %e, "stranded-run pass skipped, store unavailable"),
        }
    }
}

/// One pass of [`requeue_stranded`]; returns how many runs were queued again.
///
/// # Errors
/// Store failures.
pub async fn requeue_stranded_once(s: &Scheduler) -> Result<usize, nexus_store::StoreError> {
    let runs = s
        .store
        .by_owner_stage(&s.instance_id, Stage::Buffered, STRANDED_PAGE)
        .await?;
    let now = now_millis();
    let complete = runs.len() < STRANDED_PAGE;
    let buffered: std::collections::HashSet<_> = runs.iter().map(|r| r.id).collect();
    let handed = {
        let mut h = s
            .handed_over
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget runs that have started (no longer BUFFERED, when the listing is whole) and
        // hand-overs so old that the shard may have lost them (launching again is idempotent).
        h.retain(|id, at| (!complete || buffered.contains(id)) && at.elapsed() < HANDED_OVER_FOR);
        h.clone()
    };
    let mut n = 0;
    for r in runs {
        if now - r.received_at < STRANDED_AFTER_MS
            || s.queue.holds(&r.shard, r.id)
            || handed.contains_key(&r.id)
        {
            continue;
        }
        metrics::requeued_stranded();
        s.enqueue_recovered(&r);
        n += 1;
    }
    Ok(n)
}

/// Receivers and supervisors hold leases in the same table (their ids start with `receiver/` and
/// `supervisor/`); only schedulers share the shard budgets.
#[must_use]
pub fn is_scheduler_lease(owner: &str) -> bool {
    !(owner.starts_with("receiver/") || owner.starts_with("supervisor/"))
}

/// Delay of the first re-count of live schedulers after start.
const FIRST_RECOUNT: Duration = Duration::from_millis(500);

/// Runs read per page when picking up a previous life's backlog.
pub const OWN_PAGE: usize = 2_000;

/// Queues the BUFFERED runs a previous life of this instance id left, page by page (by
/// ascending id, [`RunStore::by_owner_stage_after`]), until the end or `shutdown`; logs what it
/// picked up. Runs already queued or handed over (accepted by this life) are skipped.
async fn requeue_own_in_background(s: Arc<Scheduler>, shutdown: CancellationToken) {
    let started = tokio::time::Instant::now();
    let since = now_millis();
    let mut total = 0;
    let mut after = None;
    let mut failures = 0u32;
    loop {
        // A shutdown does not wait for a page (reading it changes nothing).
        let page = tokio::select! {
            () = shutdown.cancelled() => break,
            p = requeue_own_page(&s, after, since) => p,
        };
        match page {
            Ok((n, next)) => {
                failures = 0;
                total += n;
                match next {
                    Some(id) => after = Some(id),
                    None => break,
                }
            }
            Err(e) => {
                // The stranded-run sweep covers the rest if the store stays down.
                failures += 1;
                tracing::warn!(error = %e, "reading this scheduler's queued runs failed; retrying");
                if failures >= 10 {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    if total > 0 {
        tracing::info!(
            requeued = total,
            seconds = started.elapsed().as_secs_f64(),
            "picked up this scheduler's queued runs"
        );
    }
}

/// Queues one page of this instance's BUFFERED runs with ids above `after` that were accepted
/// before `since` (by a previous life); returns how many were queued and where the next page
/// starts (`None` at the end).
///
/// # Errors
/// Store failures.
pub async fn requeue_own_page(
    s: &Scheduler,
    after: Option<nexus_model::run::RunId>,
    since: nexus_model::run::Millis,
) -> Result<(usize, Option<nexus_model::run::RunId>), nexus_store::StoreError> {
    let runs = s
        .store
        .by_owner_stage_after(&s.instance_id, Stage::Buffered, after, OWN_PAGE)
        .await?;
    let next = (runs.len() == OWN_PAGE)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    let handed = s
        .handed_over
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .keys()
        .copied()
        .collect::<std::collections::HashSet<_>>();
    let mut n = 0;
    for r in &runs {
        if r.received_at >= since || s.queue.holds(&r.shard, r.id) || handed.contains(&r.id) {
            continue;
        }
        s.enqueue_recovered(r);
        n += 1;
    }
    Ok((n, next))
}

/// Queues every BUFFERED run this instance owns (what a previous life of the same instance id
/// left), page by page; returns how many were queued. [`serve`] does this in the background.
///
/// # Errors
/// Store failures.
pub async fn requeue_own(s: &Scheduler) -> Result<usize, nexus_store::StoreError> {
    let (mut total, mut after, since) = (0, None, now_millis());
    loop {
        let (n, next) = requeue_own_page(s, after, since).await?;
        total += n;
        match next {
            Some(id) => after = Some(id),
            None => return Ok(total),
        }
    }
}

#[cfg(test)]
mod own_backlog_tests {
    use nexus_model::run::{Stage, now_millis};
    use nexus_store::RunStore;

    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler;

    /// A previous life's backlog (more than a page) is queued page by page, each run once; runs
    /// accepted by this life are left to admission.
    #[tokio::test]
    async fn a_previous_lifes_backlog_is_queued_page_by_page_once() {
        let (s, store) = scheduler(SchedulerConfig::default());
        let n = super::OWN_PAGE * 2 + 17;
        for _ in 0..n {
            let mut run = nexus_store::test_suite::sample_run("knapsack");
            run.owner = Some(s.instance_id.clone());
            run.shard = "local".into();
            run.received_at = now_millis() - 60_000;
            store.insert(run).await.unwrap();
        }
        let mut fresh = nexus_store::test_suite::sample_run("knapsack");
        fresh.owner = Some(s.instance_id.clone());
        fresh.received_at = now_millis() + 1_000;
        store.insert(fresh.clone()).await.unwrap();
        assert_eq!(super::requeue_own(&s).await.unwrap(), n);
        assert_eq!(s.queue.len(), n);
        assert!(!s.queue.holds(&fresh.shard, fresh.id));
        // Again: everything is held already.
        assert_eq!(super::requeue_own(&s).await.unwrap(), 0);
        assert_eq!(
            store
                .by_owner_stage(&s.instance_id, Stage::Buffered, usize::MAX)
                .await
                .unwrap()
                .len(),
            n + 1
        );
    }
}
