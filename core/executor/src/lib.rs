//! nexus-executor: the `Executor` seam, which launches, cancels and observes a run's process (or
//! Kubernetes Job, in `nexus-kube`), the algorithm contract rendered for a launch ([`contract`]),
//! the local-process executor ([`local`]), a recording fake ([`fake`]) and the conformance suite.
//! The seam knows nothing of Kubernetes: an executor renders the run its own way.
//!
//! An executor behaves like the Kubernetes Job controller: it owns relaunching after failures
//! (`maximumRetries`, transient and fatal exit codes), the deadline and the concurrency limit, and
//! reports what happened as [`ExecutorEvent`]s on the channel it was built with. It never writes
//! the run store: turning events into stage transitions is the supervisor's job.
//!
//! Contract (held by [`test_suite`]):
//! * [`Executor::launch`] returns once the launch is accepted (the process may wait for a
//!   concurrency slot); exactly one [`ExecutorEvent::Finished`] follows for every accepted launch,
//!   preceded by one [`ExecutorEvent::Started`] per attempt that actually started.
//! * Launching a run id that is already active is a no-op returning `Ok`.
//! * [`Executor::cancel`] of an unknown or finished run is `Ok` (idempotent); of an active one it
//!   kills it (and its children) and the run finishes with [`Outcome::Cancelled`] within 1 s.

use std::time::Duration;

use async_trait::async_trait;

use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};

pub mod contract;
pub mod fake;
pub mod local;
#[cfg(any(test, feature = "testsuite"))]
pub mod test_suite;

pub use fake::RecordingExecutor;
pub use local::{LocalExecutorConfig, LocalProcessExecutor};

/// Everything an executor needs to launch one run (already rendered: no templating left).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The run.
    pub run_id: RunId,
    /// Its algorithm (template name).
    pub algorithm: String,
    /// Its workgroup (the concurrency limit applies per workgroup).
    pub workgroup: String,
    /// Max concurrent runs of the workgroup, if the workgroup sets one.
    pub max_concurrent: Option<u32>,
    /// Program to run.
    pub command: String,
    /// Its arguments (placeholders already substituted).
    pub args: Vec<String>,
    /// Environment variables added to the process (on top of a minimal inherited set).
    pub env: Vec<(String, String)>,
    /// Wall-clock limit for the whole run (all attempts).
    pub deadline: Duration,
    /// Relaunches allowed after a failed attempt.
    pub max_retries: u32,
    /// Attempts already made by earlier launches of this run, whose processes were lost with the
    /// process that ran them: a relaunch continues the count (each lost attempt used a retry).
    pub prior_attempts: u32,
    /// Exit codes that relaunch without counting against `max_retries`.
    pub transient_exit_codes: Vec<i32>,
    /// Exit codes that fail the run at once.
    pub fatal_exit_codes: Vec<i32>,
    /// Where to store captured stdout+stderr (a payload-store key), if anywhere.
    pub logs_key: Option<String>,
    /// The run, its workgroup and the contract this launch was rendered from
    /// ([`contract::launch_spec`]). An executor that renders a run its own way (a Kubernetes Job
    /// carries the template's container, resources and pod settings) reads it; a process executor
    /// uses the fields above. `None` for bare processes (tests, tools).
    pub source: Option<Box<contract::LaunchSource>>,
}

/// How one process attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

/// How a launched run ended (after all its attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The last attempt exited 0.
    Succeeded,
    /// The run failed: the last attempt's exit, the number of attempts, and whether a fatal exit
    /// code stopped retries early.
    Failed {
        /// Last attempt's exit.
        exit: ExitInfo,
        /// Attempts made.
        attempts: u32,
        /// A fatal exit code ended it.
        fatal: bool,
    },
    /// The deadline passed; the process was killed.
    DeadlineExceeded {
        /// The deadline.
        deadline: Duration,
    },
    /// [`Executor::cancel`] killed it.
    Cancelled,
    /// The program could not be started at all (not found, not executable, …).
    LaunchFailed {
        /// Why.
        message: String,
    },
    /// The executor diagnosed the failure from the platform's status (Kubernetes pods and Jobs,
    /// `nexus_kube::classify`).
    Diagnosed {
        /// Which failure.
        kind: FailureKind,
        /// Short cause.
        cause: String,
        /// What happened and what to do.
        details: String,
    },
}

/// A failure diagnosed from Kubernetes status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The image could not be pulled (or its name is invalid).
    ImagePull,
    /// No node could take the pod.
    Unschedulable,
    /// The container could not be configured (missing Secret / ConfigMap).
    ContainerConfig,
    /// The container was OOM-killed at its memory limit.
    OutOfMemory,
    /// Every attempt failed (`BackoffLimitExceeded`).
    BackoffLimitExceeded,
    /// A fatal exit code matched the pod failure policy.
    PodFailurePolicy,
    /// Another Job failure reason.
    JobFailed,
}

impl FailureKind {
    /// The algorithm's container never ran: the run ends SCHEDULING_FAILED, not FAILED.
    #[must_use]
    pub fn never_started(self) -> bool {
        matches!(
            self,
            Self::ImagePull | Self::Unschedulable | Self::ContainerConfig
        )
    }

    /// Label value for metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImagePull => "image_pull",
            Self::Unschedulable => "unschedulable",
            Self::ContainerConfig => "container_config",
            Self::OutOfMemory => "out_of_memory",
            Self::BackoffLimitExceeded => "backoff_limit_exceeded",
            Self::PodFailurePolicy => "pod_failure_policy",
            Self::JobFailed => "job_failed",
        }
    }
}

/// What an executor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorEvent {
    /// An attempt started.
    Started {
        /// The run.
        run_id: RunId,
        /// Attempt number, from 1.
        attempt: u32,
        /// Executor handle (process id, Job uid).
        executor_ref: String,
    },
    /// The run finished. `logs_stored` says whether logs were captured under the launch's key.
    Finished {
        /// The run.
        run_id: RunId,
        /// How it ended.
        outcome: Outcome,
        /// Logs were stored.
        logs_stored: bool,
    },
}

/// Errors of an [`Executor`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("executor {kind:?}: {message}")]
pub struct ExecutorError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details.
    pub message: String,
}

impl ExecutorError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Runs runs. See the module docs for the contract.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// Accepts a launch.
    ///
    /// # Errors
    /// `InvalidInput` for a spec that can never run; backend failures otherwise.
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError>;

    /// Cancels a run (idempotent).
    ///
    /// # Errors
    /// Backend failures.
    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ExecutorError>;

    /// Returns the ids of runs launched and not yet finished.
    async fn active(&self) -> Vec<RunId>;

    /// What the executor knows about a run now, one fact a line for a person: waiting for a
    /// slot of its workgroup, its process, its Kubernetes Job's and pods' conditions. Empty when
    /// it does not hold the run or has nothing to say. Best effort: a failure to look is
    /// reported as a fact, never an error.
    async fn describe(&self, run_id: RunId) -> Vec<String> {
        let _ = run_id;
        Vec::new()
    }

    /// A run's output read from where it runs (a Kubernetes run: its pod's log), for executors
    /// whose output is not published to the payload store while the run runs. Without `follow`,
    /// the output there is now (bounded: its tail); with `follow`, that and then new output as it
    /// comes, until the run's process ends (for every attempt), the executor shuts down or its
    /// longest follow. `Ok(None)`: this executor has no output of the run to read (not its kind
    /// of run, unknown, or not started and `follow` not asked); the default. A failure while
    /// streaming ends the stream with a line saying so.
    ///
    /// # Errors
    /// `ResourceExhausted` when the executor serves as many log streams as it allows; backend
    /// failures.
    async fn logs(&self, run_id: RunId, follow: bool) -> Result<Option<LogStream>, ExecutorError> {
        let _ = (run_id, follow);
        Ok(None)
    }
}

/// A run's output in chunks, as [`Executor::logs`] reads it.
pub type LogStream = futures::stream::BoxStream<'static, bytes::Bytes>;

/// Turns executor events into stage transitions: the supervisor's job (`nexus_supervisor`
/// implements it). A receiver hands its own executor's events to one (a local process can only
/// be watched by its parent), without depending on the supervisor.
#[async_trait]
pub trait EventHandler: Send + Sync + std::fmt::Debug + 'static {
    /// Applies one event.
    async fn handle(&self, event: ExecutorEvent);
}

/// Applies `events` with `handler` until `shutdown` (or until the executor is gone), then applies
/// what is already reported, so outcomes are not lost at shutdown.
pub async fn apply_events(
    handler: std::sync::Arc<dyn EventHandler>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ExecutorEvent>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            ev = events.recv() => match ev {
                Some(ev) => handler.handle(ev).await,
                None => break,
            },
        }
    }
    while let Ok(ev) = events.try_recv() {
        handler.handle(ev).await;
    }
}
