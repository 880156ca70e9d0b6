//! nexus-supervisor: turns what executors observe into stage transitions, and recovers runs
//! orphaned by owners that died or shut down.
//!
//! * [`classify`] is a pure decision: executor outcome + current stage → the transition to make,
//!   with a cause a person can act on. Table-driven tests pin it.
//! * [`Supervisor::handle`] applies it by compare-and-set, so it can never overwrite a completion
//!   or a cancellation that won the race.
//! * [`Supervisor::recover`] claims BUFFERED runs of lapsed owners (hands them to `requeue`, which
//!   puts them ahead of the queue) and settles RUNNING runs whose process is gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nexus_executor::{Executor, ExecutorEvent, Outcome};
use nexus_model::run::{CancellationPolicy, Run, RunPatch, Stage, now_millis};
use nexus_store::{RunStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

pub mod gc;

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
        if let Err(e) = pass().await {
            tracing::warn!("{what} skipped, store unavailable: {e}");
        }
    }
}
pub mod resubmit;
pub mod tree_sweep;

/// Supervisor configuration (section `supervisor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How often to look for orphaned runs.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
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

/// The supervisor.
#[derive(Debug)]
pub struct Supervisor {
    /// Config.
    pub config: SupervisorConfig,
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
                let patch = RunPatch {
                    owner: Some(Some(self.instance_id.clone())),
                    attempts: Some(attempt),
                    executor_ref: Some(executor_ref),
                    started_at: Some(now_millis()),
                    ..RunPatch::default()
                };
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
                            tracing::warn!(%run_id, "could not record start: {e}");
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
                metrics::counter!("nexus_supervisor_outcomes_total", "outcome" => outcome_label(&outcome)).increment(1);
                for _ in 0..4 {
                    let run = match self.store.get(run_id).await {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(%run_id, "store unavailable, outcome retried shortly: {e}");
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
                    let mut patch = RunPatch::failure(dec.cause, dec.details);
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
                                RunPatch::started_late(&run, now_millis()),
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
                            tracing::warn!(%run_id, "could not record outcome: {e}");
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Claims runs of dead owners: BUFFERED ones go to `requeue`; RUNNING ones whose process this
    /// executor does not know lost their attempt (their process is stopped if it is still
    /// alive): they go to `requeue` to be launched again while `maximumRetries` allows, else they
    /// are settled FAILED with a cause. Returns how many runs were recovered.
    ///
    /// # Errors
    /// Store failures (nothing is decided on a store error).
    pub async fn recover(
        &self,
        requeue: &(dyn Fn(&Run) + Send + Sync),
    ) -> Result<usize, StoreError> {
        let now = now_millis();
        let leases = self.store.leases().await?;
        let alive: HashSet<String> = leases
            .iter()
            .filter(|l| {
                l.expires_at > now && (!self.config.exclusive_store || l.owner == self.instance_id)
            })
            .map(|l| l.owner.clone())
            .collect();
        let active: HashSet<_> = self.executor.active().await.into_iter().collect();
        let mut n = 0;
        for stage in [Stage::Buffered, Stage::Running] {
            for owner in self.store.owners_in_stage(stage).await? {
                if owner == self.instance_id || alive.contains(&owner) {
                    continue;
                }
                for run in self.store.by_owner_stage(&owner, stage, 10_000).await? {
                    let claim = RunPatch {
                        owner: Some(Some(self.instance_id.clone())),
                        ..RunPatch::default()
                    };
                    if stage == Stage::Buffered {
                        if self
                            .store
                            .transition(run.id, stage, stage, claim)
                            .await
                            .is_ok()
                        {
                            requeue(&run);
                            n += 1;
                        }
                    } else if active.contains(&run.id) {
                        let _ = self.store.transition(run.id, stage, stage, claim).await;
                    } else {
                        stop_orphan_process(&run);
                        // A lost attempt is an attempt: launch again while retries remain.
                        let used = run.attempts.max(1);
                        let allowed = run
                            .applied_configuration
                            .maximum_retries()
                            .saturating_add(1);
                        if used < allowed {
                            let relaunch = RunPatch {
                                attempts: Some(used),
                                ..claim
                            };
                            if let Ok(r) =
                                self.store.transition(run.id, stage, stage, relaunch).await
                            {
                                tracing::warn!(run_id = %run.id, attempt = used, "the process of a RUNNING run was lost with a previous nexus process; launching it again");
                                requeue(&r);
                                n += 1;
                            }
                            continue;
                        }
                        let mut p = RunPatch::failure(
                            "Algorithm process was lost",
                            format!(
                                "the nexus process that ran attempt {used} stopped ({owner}) while the run was RUNNING, and runtimeEnvironment.maximumRetries ({}) allows no further attempt; submit the run again",
                                allowed - 1
                            ),
                        );
                        p.owner = claim.owner;
                        if self
                            .store
                            .transition(run.id, stage, Stage::Failed, p)
                            .await
                            .is_ok()
                        {
                            n += 1;
                        }
                    }
                }
            }
        }
        if n > 0 {
            tracing::info!(recovered = n, "recovered orphaned runs");
        }
        Ok(n)
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

/// Stops the process group of a local run left behind by a dead nexus process, but only when
/// `/proc/<pid>/environ` proves the pid still belongs to that run (pids are reused).
fn stop_orphan_process(run: &Run) {
    let Some(pid) = run
        .executor_ref
        .as_deref()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return;
    };
    let marker = format!("{}={}", nexus_proto::v1::env::REQUEST_ID, run.id);
    if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs the supervisor until `shutdown`: applies executor events as they come and looks for
/// orphans every `recovery_interval` (and once at start, in the background: the component
/// serves meanwhile, and `readiness` notes the recovery until its first pass is over).
pub async fn run(
    sup: Arc<Supervisor>,
    events: UnboundedReceiver<ExecutorEvent>,
    requeue: Arc<dyn Fn(&Run) + Send + Sync>,
    readiness: nexus_http::Readiness,
    shutdown: CancellationToken,
) {
    let s2 = sup.clone();
    let stop = shutdown.clone();
    let recovery = tokio::spawn(async move {
        let mut tick = tokio::time::interval(s2.config.recovery_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    if first {
                        readiness.set_note(Some("recovering runs left by a previous process".into()));
                    }
                    let started = std::time::Instant::now();
                    match s2.recover(requeue.as_ref()).await {
                        Ok(n) if first && n > 0 => tracing::info!(recovered = n, seconds = started.elapsed().as_secs_f64(), "picked up runs left by a previous nexus process"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("orphan recovery skipped, store unavailable: {e}"),
                    }
                    if first {
                        readiness.set_note(None);
                        first = false;
                    }
                }
            }
        }
    });
    apply_events(sup, events, shutdown).await;
    let _ = recovery.await;
}

/// Applies executor events to the store until `shutdown` (or until the executor is gone), then
/// applies what is already reported, so outcomes are not lost at shutdown. A receiver process runs
/// this for its own executor (a local process can only be watched by its parent).
pub async fn apply_events(
    sup: Arc<Supervisor>,
    mut events: UnboundedReceiver<ExecutorEvent>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ev = events.recv() => match ev {
                Some(ev) => sup.handle(ev).await,
                None => break,
            },
        }
    }
    while let Ok(ev) = events.try_recv() {
        sup.handle(ev).await;
    }
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
        let sup = Supervisor {
            config: SupervisorConfig {
                exclusive_store: true,
                ..SupervisorConfig::default()
            },
            store: store.clone(),
            executor: Arc::new(nexus_executor::RecordingExecutor::new(tx)),
            instance_id: "me".into(),
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
        let requeued = std::sync::Mutex::new(Vec::new());
        let n = sup
            .recover(&|r: &Run| requeued.lock().unwrap().push((r.id, r.stage, r.attempts)))
            .await
            .unwrap();
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
}
