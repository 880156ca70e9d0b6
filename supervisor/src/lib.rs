//! nexus-supervisor: turns what executors observe into stage transitions, and recovers runs
//! orphaned by owners that died or shut down.
//!
//! * [`classify`] is a pure decision: executor outcome + current stage → the transition to make,
//!   with a cause a person can act on. Table-driven tests pin it.
//! * [`Supervisor::handle`] applies it by compare-and-set, so it can never overwrite a completion
//!   or a cancellation that won the race.
//! * [`recovery`] is the one orphan-recovery path of every mode: runs of lapsed owners are claimed
//!   and handed over again (standalone: to the local queue; distributed: to their shard).
//! * [`serve`] owns the component's lifecycle: recovery, garbage collection, the tree sweep,
//!   executor events, health and metrics; its [`Handle`] resolves after the ordered drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use nexus_executor::{Executor, ExecutorEvent, Outcome};
use nexus_http::server::ServerConfig;
use nexus_http::{Readiness, health_routes, negotiate_errors};
use nexus_model::run::{CancellationPolicy, Run, RunPatch, Stage, now_millis};
use nexus_payload::PayloadStore;
use nexus_store::{RunStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod gc;
pub mod metrics;
pub mod recovery;

/// Runs `pass` every `interval` until `shutdown`; a failed pass is logged as skipped (`what`
/// names it) and the next one runs on schedule.
pub async fn every<F, Fut, T>(
    interval: Duration,
    shutdown: CancellationToken,
    what: &str,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A shutdown does not wait for a pass (each step is a store operation that the next
        // pass, or the next process, does again if it did not complete).
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = pass() => r,
        };
        if let Err(e) = outcome {
            tracing::warn!(pass = what, error = %e, "pass skipped, store unavailable");
        }
    }
}
pub mod tree_sweep;

/// Supervisor configuration (section `supervisor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How often to look for orphaned runs.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
    /// Most orphaned runs recovery settles (claims and hands over) per second: a large backlog is
    /// worked off at this pace, leaving the store room for new submissions.
    pub recovery_rate: u32,
    /// Treat every other owner as dead at once (standalone: the embedded store is locked by this
    /// process, so nobody else can be alive).
    pub exclusive_store: bool,
    /// How long finished runs (records, payloads, results, logs) are kept before garbage
    /// collection deletes them. Runs that are not finished are never collected.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often garbage collection runs.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// What a run that ends FAILED, SCHEDULING_FAILED or DEADLINE_EXCEEDED does to its running
    /// descendants: `cancel` (default) or `keep`. A cancelled run always cancels them.
    pub on_parent_failure: nexus_link::tree::OnParentFailure,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            recovery_interval: Duration::from_secs(5),
            recovery_rate: 1_000,
            exclusive_store: false,
            retention: Duration::from_secs(7 * 24 * 3600),
            gc_interval: Duration::from_secs(600),
            on_parent_failure: nexus_link::tree::OnParentFailure::Cancel,
        }
    }
}

impl SupervisorConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.recovery_interval < Duration::from_millis(100) {
            return Err("supervisor.recovery_interval: must be at least 100ms".into());
        }
        if !(10..=100_000).contains(&self.recovery_rate) {
            return Err(format!(
                "supervisor.recovery_rate: {} runs/s is out of range; give 10 to 100000 (default 1000)",
                self.recovery_rate
            ));
        }
        if self.retention < Duration::from_secs(60) {
            return Err(format!(
                "supervisor.retention: {:?} is too short; keep finished runs at least 1m (clients read results after they finish)",
                self.retention
            ));
        }
        if self.gc_interval < Duration::from_secs(1) {
            return Err("supervisor.gc_interval: must be at least 1s".into());
        }
        Ok(())
    }
}

/// A decided transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Target stage.
    pub to: Stage,
    /// Short cause.
    pub cause: String,
    /// Details.
    pub details: String,
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| format!("{s:?}"))
}

/// Decides what a finished execution means for a run currently in `stage`. Returns `None` when
/// nothing is to be written (already terminal, or the algorithm completed itself).
#[must_use]
pub fn classify(outcome: &Outcome, stage: Stage, run: &Run) -> Option<Decision> {
    if stage.is_terminal() {
        return None;
    }
    let d = |to, cause: &str, details: String| {
        Some(Decision {
            to,
            cause: cause.to_owned(),
            details,
        })
    };
    match outcome {
        Outcome::Succeeded => d(
            Stage::Failed,
            "Algorithm exited without reporting a result",
            "the process exited with code 0 but never called the completion endpoint \
             (POST $NEXUS__RECEIVER_URL/algorithm/v1/complete/...); make the algorithm report its result before exiting"
                .to_owned(),
        ),
        Outcome::Failed { exit, attempts, fatal } => {
            let how = match (exit.code, exit.signal) {
                (_, Some(9)) => "was killed by SIGKILL (the kernel's out-of-memory killer does this when the machine runs out of memory)".to_owned(),
                (_, Some(s)) => format!("was killed by {}", signal_name(s)),
                (Some(c), None) => format!("exited with code {c}"),
                (None, None) => "ended abnormally".to_owned(),
            };
            let why = if *fatal {
                "the exit code is listed in errorHandlingBehaviour.fatalExitCodes, so it was not retried".to_owned()
            } else {
                format!(
                    "{attempts} attempt(s) made; runtimeEnvironment.maximumRetries is {}",
                    run.applied_configuration.maximum_retries()
                )
            };
            d(Stage::Failed, "Algorithm process failed", format!("the process {how}; {why}"))
        }
        Outcome::DeadlineExceeded { deadline } => d(
            Stage::DeadlineExceeded,
            "Algorithm exceeded its max allowed run time",
            format!(
                "the run was stopped after {}s (runtimeEnvironment.deadlineSeconds); raise it or make the algorithm faster",
                deadline.as_secs()
            ),
        ),
        Outcome::Cancelled => d(Stage::Cancelled, "Cancelled", "the run's process was stopped by a cancellation".to_owned()),
        Outcome::LaunchFailed { message } => d(
            if stage == Stage::Running { Stage::Failed } else { Stage::SchedulingFailed },
            "Algorithm could not be launched",
            message.clone(),
        ),
        // A container that never ran (image, placement, configuration) is a scheduling failure
        // even though its Job was created (RUNNING); the diagnosis already says what to do.
        Outcome::Diagnosed { kind, cause, details } => d(
            if kind.never_started() { Stage::SchedulingFailed } else { Stage::Failed },
            cause,
            details.clone(),
        ),
    }
}

/// Applies executor events to the run store.
#[derive(Debug)]
pub struct Supervisor {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Executor (to stop processes of runs cancelled meanwhile, and to see what is alive).
    pub executor: Arc<dyn Executor>,
    /// This instance's owner id.
    pub instance_id: String,
}

impl Supervisor {
    /// Applies one executor event to the store.
    pub async fn handle(&self, ev: ExecutorEvent) {
        match ev {
            ExecutorEvent::Started {
                run_id,
                attempt,
                executor_ref,
            } => {
                // The process that launched it owns a RUNNING run (in distributed mode the
                // receiver: when its lease lapses, the supervisor launches the run again).
                let started = format!("attempt {attempt} started ({executor_ref})");
                let patch = RunPatch {
                    owner: Some(Some(self.instance_id.clone())),
                    attempts: Some(attempt),
                    executor_ref: Some(executor_ref),
                    started_at: Some(now_millis()),
                    ..RunPatch::default()
                }
                .by("executor", started);
                for _ in 0..4 {
                    let Ok(Some(run)) = self.store.get(run_id).await else {
                        return;
                    };
                    if run.stage.is_terminal() {
                        // Cancelled (or finished) while starting: make sure the process stops.
                        if run.stage == Stage::Cancelled {
                            let _ = self
                                .executor
                                .cancel(run_id, CancellationPolicy::Background)
                                .await;
                        }
                        return;
                    }
                    // Attempts never go down: a launch again after a lost receiver already
                    // counted the attempts before it.
                    let mut patch = patch.clone();
                    patch.attempts = Some(attempt.max(run.attempts));
                    match self
                        .store
                        .transition(run_id, run.stage, Stage::Running, patch)
                        .await
                    {
                        Ok(_) => return,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => {
                            tracing::warn!(%run_id, error = %e, "could not record start");
                            return;
                        }
                    }
                }
            }
            ExecutorEvent::Finished {
                run_id,
                outcome,
                logs_stored,
            } => {
                metrics::outcome(outcome_label(&outcome));
                for _ in 0..4 {
                    let run = match self.store.get(run_id).await {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(%run_id, error = %e, "store unavailable, outcome retried shortly");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    let Some(dec) = classify(&outcome, run.stage, &run) else {
                        if logs_stored && !run.logs_stored && !run.stage.is_terminal() {
                            let p = RunPatch {
                                logs_stored: Some(true),
                                ..RunPatch::default()
                            };
                            let _ = self.store.transition(run_id, run.stage, run.stage, p).await;
                        }
                        return;
                    };
                    let why = format!("process ended: {}", dec.cause);
                    let mut patch = RunPatch::failure(dec.cause, dec.details).by("supervisor", why);
                    patch.logs_stored = Some(logs_stored);
                    let to = if run.stage == Stage::Buffered
                        && dec.to != Stage::SchedulingFailed
                        && dec.to != Stage::Cancelled
                    {
                        // The start was not recorded yet: record it, then finish.
                        let _ = self
                            .store
                            .transition(
                                run_id,
                                Stage::Buffered,
                                Stage::Running,
                                RunPatch::started_late(&run, now_millis())
                                    .by("supervisor", "ended before its start was recorded"),
                            )
                            .await;
                        continue;
                    } else {
                        dec.to
                    };
                    match self.store.transition(run_id, run.stage, to, patch).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => return,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => {
                            tracing::warn!(%run_id, error = %e, "could not record outcome");
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed { .. } => "failed",
        Outcome::DeadlineExceeded { .. } => "deadline_exceeded",
        Outcome::Cancelled => "cancelled",
        Outcome::LaunchFailed { .. } => "launch_failed",
        Outcome::Diagnosed { kind, .. } => kind.as_str(),
    }
}

/// Applies executor events to the store until `shutdown` (or until the executor is gone), then
/// applies what is already reported, so outcomes are not lost at shutdown. A receiver process runs
/// this for its own executor (a local process can only be watched by its parent).
pub async fn apply_events(
    sup: Arc<Supervisor>,
    events: UnboundedReceiver<ExecutorEvent>,
    shutdown: CancellationToken,
) {
    nexus_executor::apply_events(sup, events, shutdown).await;
}

#[async_trait::async_trait]
impl nexus_executor::EventHandler for Supervisor {
    async fn handle(&self, event: ExecutorEvent) {
        Supervisor::handle(self, event).await;
    }
}

/// What [`serve`] runs with, besides the seams.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The owner id recovery claims runs for (`supervisor/...`; standalone shares the process's).
    pub instance_id: String,
    /// How often to look for orphaned runs and unfinished trees.
    pub recovery_interval: Duration,
    /// Most orphaned runs settled per second.
    pub recovery_rate: u32,
    /// How often garbage collection runs.
    pub gc_interval: Duration,
    /// How long finished runs are kept.
    pub retention: Duration,
    /// What a failed parent does to its running descendants.
    pub on_parent_failure: nexus_link::tree::OnParentFailure,
    /// How many children of one run the tree sweep reads.
    pub max_children_per_run: usize,
    /// Releases every other lease at start (the embedded store is locked by this process: their
    /// owners are gone, and must not count as live schedulers sharing the dispatch budget).
    pub release_other_leases: bool,
    /// Connection limit and timeouts of the HTTP server (when it has a listener).
    pub server: ServerConfig,
}

/// The seams [`serve`] works through.
pub struct Deps {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Payloads, deleted with the runs they belong to (`None`: the bucket's lifecycle rule does).
    pub payloads: Option<Arc<dyn PayloadStore>>,
    /// Who counts as alive and how lost attempts count.
    pub policy: recovery::Policy,
    /// Where claimed runs go.
    pub handoff: Arc<dyn recovery::Handoff>,
    /// Lease and leadership, when several supervisors may run (distributed mode).
    pub leading: Option<recovery::Leading>,
    /// The receivers the tree sweep cancels descendants through, by shard.
    pub route: tree_sweep::Route,
    /// The executor whose events this component applies, with their channel (standalone: the
    /// supervisor watches the one local executor; a distributed receiver applies its own).
    pub events: Option<(Arc<dyn Executor>, UnboundedReceiver<ExecutorEvent>)>,
    /// Readiness, off at shutdown (noted while the first recovery pass runs).
    pub readiness: Readiness,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("policy", &self.policy)
            .field("handoff", &self.handoff)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

/// Listeners [`serve`] serves on (bound by the caller, so tests use port 0).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Routes the process serves on this component's HTTP listener besides the component's own
    /// (its `/metrics`); unused without an HTTP listener.
    pub telemetry: Router,
    /// Health probes and `/metrics`; `None` when the caller serves them (standalone).
    pub http: Option<TcpListener>,
}

/// A running supervisor.
#[derive(Debug)]
pub struct Handle {
    /// The HTTP address, when it has a listener.
    pub addr: Option<SocketAddr>,
    /// Cancel to stop it (ordered drain).
    pub shutdown: CancellationToken,
    /// Cancel to stop orphan recovery only (a process that stops its scheduler first stops
    /// feeding it at once); `shutdown` stops it too.
    pub stop_recovery: CancellationToken,
    tasks: TaskTracker,
}

impl Handle {
    /// Waits until the supervisor has stopped (after `shutdown` was cancelled).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts the supervisor: garbage collection, the tree sweep, orphan recovery (the first pass at
/// once, in the background; without `leading`, `readiness` notes it until it is over), executor
/// events and, with a listener, health probes and `/metrics`. On `shutdown`: readiness off,
/// recovery stops (resigns and releases its lease), executor events already reported are
/// applied, then HTTP stops.
///
/// # Errors
/// The listener's address cannot be read.
pub async fn serve(
    config: ServeConfig,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> std::io::Result<Handle> {
    metrics::describe();
    let addr = listeners
        .http
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let tasks = TaskTracker::new();
    let store = deps.store.clone();
    if config.release_other_leases
        && let Ok(leases) = store.leases().await
    {
        for l in leases.iter().filter(|l| l.owner != config.instance_id) {
            let _ = store.release_lease(&l.owner).await;
        }
    }
    let work_stop = CancellationToken::new();
    tasks.spawn(
        Arc::new(gc::Collector {
            store: store.clone(),
            payloads: deps.payloads,
            retention: config.retention,
            batch: 1_000,
        })
        .run(config.gc_interval, work_stop.clone()),
    );
    tasks.spawn(
        Arc::new(tree_sweep::TreeSweep {
            store: store.clone(),
            route: deps.route,
            on_parent_failure: config.on_parent_failure,
            max_children: config.max_children_per_run,
        })
        .run(config.recovery_interval, work_stop.clone()),
    );
    // One recoverer (standalone): its first pass is noted on the readiness probe, before any
    // probe can answer; the pass clears it. Several (distributed) leave the probe alone: a
    // standby makes no pass.
    let note = deps.leading.is_none().then(|| deps.readiness.clone());
    if let Some(r) = &note {
        r.set_note(Some("recovering runs left by a previous process".into()));
    }
    let recovery = Arc::new(recovery::Recovery {
        store: store.clone(),
        instance_id: config.instance_id.clone(),
        policy: deps.policy,
        handoff: deps.handoff,
        rate: config.recovery_rate,
    });
    let recovery_stop = CancellationToken::new();
    let stop_recovery = recovery_stop.clone();
    let recovery_task = tasks.spawn(recovery.run(
        config.recovery_interval,
        deps.leading,
        note,
        recovery_stop.clone(),
    ));
    let events_stop = CancellationToken::new();
    if let Some((executor, events)) = deps.events {
        let watcher = Arc::new(Supervisor {
            store: store.clone(),
            executor,
            instance_id: config.instance_id.clone(),
        });
        tasks.spawn(apply_events(watcher, events, events_stop.clone()));
    }
    let http_stop = CancellationToken::new();
    if let Some(listener) = listeners.http {
        let app = health_routes(deps.readiness.clone())
            .merge(listeners.telemetry)
            .fallback(nexus_http::not_found)
            .layer(axum::middleware::from_fn(negotiate_errors));
        tasks.spawn(nexus_http::server::serve(
            listener,
            app,
            config.server,
            http_stop.clone(),
        ));
    }
    deps.readiness.set(true);
    let (sd, readiness) = (shutdown.clone(), deps.readiness);
    tasks.spawn(async move {
        sd.cancelled().await;
        readiness.set(false);
        recovery_stop.cancel();
        let _ = recovery_task.await;
        work_stop.cancel();
        events_stop.cancel();
        http_stop.cancel();
    });
    tracing::info!(id = %config.instance_id, "supervisor started");
    Ok(Handle {
        addr,
        shutdown,
        stop_recovery,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_executor::ExitInfo;

    fn run() -> Run {
        nexus_store::test_suite::sample_run("alg")
    }

    #[tokio::test]
    async fn lost_attempts_are_relaunched_while_retries_remain() {
        use nexus_store::InMemoryRunStore;
        let store = Arc::new(InMemoryRunStore::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let requeued = Arc::new(std::sync::Mutex::new(Vec::new()));
        let q = requeued.clone();
        let sup = recovery::Recovery {
            store: store.clone(),
            rate: 100_000,
            instance_id: "me".into(),
            policy: recovery::Policy::Local {
                exclusive_store: true,
                executor: Arc::new(nexus_executor::RecordingExecutor::new(tx)),
            },
            handoff: Arc::new(recovery::QueueHandoff(Arc::new(move |r: &Run| {
                q.lock().unwrap().push((r.id, r.stage, r.attempts));
            }))),
        };
        let running = |retries: u32, attempts: u32| {
            let mut r = run();
            r.stage = Stage::Running;
            r.owner = Some("killed".into());
            r.attempts = attempts;
            r.applied_configuration.runtime_environment =
                Some(nexus_model::spec::RuntimeEnvironment {
                    maximum_retries: Some(retries),
                    ..Default::default()
                });
            r
        };
        let retry = running(2, 1);
        let last = running(2, 3);
        let never_started = running(1, 0);
        for r in [&retry, &last, &never_started] {
            store.insert(r.clone()).await.unwrap();
        }
        let n = sup.pass().await.unwrap().recovered();
        assert_eq!(n, 3);
        let mut got = requeued.lock().unwrap().clone();
        got.sort_by_key(|g| g.0);
        let mut want = vec![
            (retry.id, Stage::Running, 1),
            (never_started.id, Stage::Running, 1),
        ];
        want.sort_by_key(|g| g.0);
        assert_eq!(got, want, "relaunched with their attempts counted");
        let r = store.get(last.id).await.unwrap().unwrap();
        assert_eq!(r.stage, Stage::Failed, "no retry left");
        assert!(
            r.failure_details.unwrap().contains("maximumRetries (2)"),
            "the cause names the limit"
        );
        for id in [retry.id, never_started.id] {
            let r = store.get(id).await.unwrap().unwrap();
            assert_eq!(r.owner.as_deref(), Some("me"));
        }
    }

    #[test]
    fn classification_table() {
        let r = run();
        let cases: Vec<(Outcome, Stage, Option<Stage>, &str)> = vec![
            (
                Outcome::Succeeded,
                Stage::Running,
                Some(Stage::Failed),
                "never called the completion endpoint",
            ),
            (Outcome::Succeeded, Stage::Completed, None, ""),
            (
                Outcome::Failed {
                    exit: ExitInfo {
                        code: Some(3),
                        signal: None,
                    },
                    attempts: 3,
                    fatal: false,
                },
                Stage::Running,
                Some(Stage::Failed),
                "exited with code 3; 3 attempt(s)",
            ),
            (
                Outcome::Failed {
                    exit: ExitInfo {
                        code: Some(2),
                        signal: None,
                    },
                    attempts: 1,
                    fatal: true,
                },
                Stage::Running,
                Some(Stage::Failed),
                "fatalExitCodes",
            ),
            (
                Outcome::Failed {
                    exit: ExitInfo {
                        code: None,
                        signal: Some(9),
                    },
                    attempts: 1,
                    fatal: false,
                },
                Stage::Running,
                Some(Stage::Failed),
                "out-of-memory",
            ),
            (
                Outcome::Failed {
                    exit: ExitInfo {
                        code: None,
                        signal: Some(6),
                    },
                    attempts: 1,
                    fatal: false,
                },
                Stage::Running,
                Some(Stage::Failed),
                "SIGABRT",
            ),
            (
                Outcome::DeadlineExceeded {
                    deadline: Duration::from_secs(5),
                },
                Stage::Running,
                Some(Stage::DeadlineExceeded),
                "after 5s",
            ),
            (
                Outcome::Diagnosed {
                    kind: nexus_executor::FailureKind::ImagePull,
                    cause: "Container image could not be pulled".into(),
                    details: "ImagePullBackOff for 'x': not found".into(),
                },
                Stage::Running,
                Some(Stage::SchedulingFailed),
                "ImagePullBackOff",
            ),
            (
                Outcome::Diagnosed {
                    kind: nexus_executor::FailureKind::Unschedulable,
                    cause: "No node can run the algorithm".into(),
                    details: "Insufficient memory".into(),
                },
                Stage::Running,
                Some(Stage::SchedulingFailed),
                "Insufficient memory",
            ),
            (
                Outcome::Diagnosed {
                    kind: nexus_executor::FailureKind::OutOfMemory,
                    cause: "Algorithm ran out of memory".into(),
                    details: "memory limit of 256Mi".into(),
                },
                Stage::Running,
                Some(Stage::Failed),
                "256Mi",
            ),
            (
                Outcome::LaunchFailed {
                    message: "no such program".into(),
                },
                Stage::Buffered,
                Some(Stage::SchedulingFailed),
                "no such program",
            ),
            (Outcome::Cancelled, Stage::Cancelled, None, ""),
            (
                Outcome::DeadlineExceeded {
                    deadline: Duration::from_secs(5),
                },
                Stage::Completed,
                None,
                "",
            ),
        ];
        for (o, stage, want, text) in cases {
            let got = classify(&o, stage, &r);
            assert_eq!(got.as_ref().map(|d| d.to), want, "{o:?} in {stage}");
            if let Some(d) = got {
                assert!(
                    d.details.contains(text) || d.cause.contains(text),
                    "{o:?}: {d:?} lacks '{text}'"
                );
            }
        }
    }

    /// Standalone recovery under a lease: a lapsed owner's BUFFERED run goes to the local queue,
    /// and after `shutdown` the handle resolves with the recoverer's lease released.
    #[tokio::test]
    async fn serve_recovers_orphans_and_stops_in_order() {
        use nexus_store::InMemoryRunStore;
        use nexus_store::leader::StoreLeadership;
        let store = Arc::new(InMemoryRunStore::default());
        let mut orphan = run();
        orphan.stage = Stage::Buffered;
        orphan.owner = Some("gone".into());
        store.insert(orphan.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let executor: Arc<dyn Executor> = Arc::new(nexus_executor::RecordingExecutor::new(tx));
        let queued = Arc::new(std::sync::Mutex::new(Vec::new()));
        let q = queued.clone();
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let h = serve(
            ServeConfig {
                instance_id: "supervisor/one".into(),
                recovery_interval: Duration::from_millis(100),
                recovery_rate: 100_000,
                gc_interval: Duration::from_secs(600),
                retention: Duration::from_secs(3600),
                on_parent_failure: nexus_link::tree::OnParentFailure::Cancel,
                max_children_per_run: 10,
                release_other_leases: false,
                server: ServerConfig::default(),
            },
            Deps {
                store: store.clone(),
                payloads: None,
                policy: recovery::Policy::Local {
                    exclusive_store: true,
                    executor: executor.clone(),
                },
                handoff: Arc::new(recovery::QueueHandoff(Arc::new(move |r: &Run| {
                    q.lock().unwrap().push(r.id);
                }))),
                leading: Some(recovery::Leading {
                    leadership: Arc::new(StoreLeadership::new(store.clone(), recovery::LEADER)),
                    lease_ttl: Duration::from_secs(60),
                }),
                route: Arc::new(|_| None),
                events: Some((executor, rx)),
                readiness: readiness.clone(),
            },
            Listeners {
                http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
                ..Listeners::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert!(readiness.is_ready(), "ready at once");
        let t0 = tokio::time::Instant::now();
        while queued.lock().unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "not recovered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*queued.lock().unwrap(), vec![orphan.id]);
        let got = store.get(orphan.id).await.unwrap().unwrap();
        assert_eq!(got.owner.as_deref(), Some("supervisor/one"));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), h.wait())
            .await
            .expect("the drain is bounded");
        assert!(!readiness.is_ready());
        assert!(
            !store
                .leases()
                .await
                .unwrap()
                .iter()
                .any(|l| l.owner == "supervisor/one"),
            "the lease is released at shutdown"
        );
    }
}
