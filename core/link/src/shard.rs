//! `Shard`: hands a run to a shard's receiver.
//!
//! Standalone uses in-process implementations (`nexus_receiver::LocalShard`) that call the receiver directly; the
//! distributed mode (gRPC) implements the same trait. Contract: `submit` is idempotent per run id
//! (a receiver that already launched the run answers `Ok`); an `Err` with a retryable kind means
//! "try again later" and the dispatcher backs off; `cancel` of an unknown run is `Ok`.

use std::time::Duration;

use async_trait::async_trait;

use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, Run, RunId};
use nexus_model::spec::WorkgroupSpec;

/// One run handed to a shard.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The run record as dispatched.
    pub run: Run,
    /// Its workgroup (placement, concurrency).
    pub workgroup: WorkgroupSpec,
    /// Signed GET URL of the payload, minted at dispatch time (never at accept time, so a run that
    /// waited in the queue never receives an expired URL).
    pub payload_url: String,
    /// True when the supervisor launches again a RUNNING run whose receiver was lost (otherwise
    /// only BUFFERED runs are launched).
    pub relaunch: bool,
    /// Base URL of the schedulers as the dispatcher knows it, for algorithms' child runs when the
    /// receiver has no `receiver.scheduler_url` of its own (empty: unknown).
    pub scheduler_url: String,
}

/// Errors of a [`Shard`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("shard {kind:?}: {message}{}", retry_hint(*.retry_after))]
pub struct ShardError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details.
    pub message: String,
    /// When a retry may succeed (set with `ResourceExhausted` when the shard said so).
    pub retry_after: Option<Duration>,
}

fn retry_hint(d: Option<Duration>) -> String {
    d.map(|d| format!(" (retry after {} ms)", d.as_millis()))
        .unwrap_or_default()
}

impl ShardError {
    /// Builds an error without a retry hint.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Returns the error with a retry hint: the shard asked callers to wait `d` before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
}

/// A shard's receiver, as seen by a scheduler.
#[async_trait]
pub trait Shard: Send + Sync + std::fmt::Debug + 'static {
    /// Hands a run to the shard for launch.
    ///
    /// # Errors
    /// Retryable kinds mean "later"; others are final for this run.
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError>;

    /// Cancels a run on the shard (idempotent).
    ///
    /// # Errors
    /// Backend failures.
    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError>;

    /// What the shard's receivers know about a run now, one fact a line for a person (their
    /// launch limiters, the run's process or its Kubernetes Job and pods). Empty when they know
    /// nothing; receivers that do not answer are facts too, never an error.
    async fn describe(&self, run_id: RunId) -> Vec<String> {
        let _ = run_id;
        Vec::new()
    }

    /// The shard's receivers as this client sees them now (no call is made): their endpoints and
    /// whether calls to them are paused after failures. Empty for a shard served in-process.
    fn receivers(&self) -> Vec<ReceiverHealth> {
        Vec::new()
    }

    /// A run's output read from where it runs, through a receiver whose executor can (a
    /// Kubernetes run: its pod's log; `follow` streams new output until the run's process ends).
    /// `Ok(None)` when no receiver of the shard has output of the run to read: its output, if
    /// any, is the one published to the payload store (local processes); the default.
    ///
    /// # Errors
    /// Every receiver that could have answered failed (unreachable, over its limit of log
    /// streams); retryable kinds mean "later".
    async fn logs(&self, run_id: RunId, follow: bool) -> Result<Option<LogStream>, ShardError> {
        let _ = (run_id, follow);
        Ok(None)
    }
}

/// One receiver endpoint of a shard, as a scheduler's client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverHealth {
    /// Its URL (a DNS name resolved to an address).
    pub endpoint: String,
    /// How much longer calls to it stay paused after failures; `None` while it is in use.
    pub down_for: Option<std::time::Duration>,
}

/// A run's output in chunks, as [`Shard::logs`] reads it.
pub type LogStream = futures::stream::BoxStream<'static, bytes::Bytes>;

/// A recording [`Shard`] for unit tests: remembers submissions and cancels, and can be told to
/// fail the next submissions with a given error kind.
#[derive(Debug, Default)]
pub struct RecordingShard {
    inner: std::sync::Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    submitted: Vec<RunId>,
    cancelled: Vec<RunId>,
    fail_next: Vec<ErrorKind>,
}

impl RecordingShard {
    fn state(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        // Every mutation is a single push/pop: a poisoned lock still holds consistent data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the next submissions fail, one per kind, in order.
    pub fn fail_next(&self, kinds: impl IntoIterator<Item = ErrorKind>) {
        self.state().fail_next.extend(kinds);
    }

    /// Returns the ids submitted successfully, in order (repeats included).
    #[must_use]
    pub fn submitted(&self) -> Vec<RunId> {
        self.state().submitted.clone()
    }

    /// Returns the ids cancelled, in order.
    #[must_use]
    pub fn cancelled(&self) -> Vec<RunId> {
        self.state().cancelled.clone()
    }
}

#[async_trait]
impl Shard for RecordingShard {
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError> {
        let mut s = self.state();
        if !s.fail_next.is_empty() {
            let kind = s.fail_next.remove(0);
            return Err(ShardError::new(kind, format!("injected {kind:?}")));
        }
        if !s.submitted.contains(&dispatch.run.id) {
            s.submitted.push(dispatch.run.id);
        }
        Ok(())
    }

    async fn cancel(&self, run_id: RunId, _policy: CancellationPolicy) -> Result<(), ShardError> {
        self.state().cancelled.push(run_id);
        Ok(())
    }
}

/// Conformance suite of the [`Shard`] contract.
#[cfg(any(test, feature = "testsuite"))]
pub mod test_suite {
    use super::{Dispatch, Shard};
    use nexus_model::run::{CancellationPolicy, Run, RunId};
    use nexus_model::spec::WorkgroupSpec;

    /// Runs every check: `run` must be a BUFFERED run the shard may launch.
    ///
    /// # Panics
    /// When the shard breaks the contract.
    pub async fn run_all(shard: &dyn Shard, run: Run) {
        let d = Dispatch {
            run: run.clone(),
            workgroup: WorkgroupSpec {
                cluster: run.shard.clone(),
                ..Default::default()
            },
            payload_url: "http://127.0.0.1:1/p".into(),
            relaunch: false,
            scheduler_url: String::new(),
        };
        shard.submit(d.clone()).await.expect("first submit");
        shard
            .submit(d)
            .await
            .expect("submit is idempotent per run id");
        shard
            .cancel(run.id, CancellationPolicy::Background)
            .await
            .expect("cancel");
        shard
            .cancel(run.id, CancellationPolicy::Background)
            .await
            .expect("cancel is idempotent");
        shard
            .cancel(RunId::new(), CancellationPolicy::Orphan)
            .await
            .expect("cancel of an unknown run is Ok");
    }

    #[cfg(test)]
    mod tests {
        #[tokio::test]
        async fn recording_shard_conforms() {
            let s = super::super::RecordingShard::default();
            let run = nexus_store::test_suite::sample_run("alg");
            super::run_all(&s, run.clone()).await;
            assert_eq!(s.submitted(), vec![run.id]);
        }
    }
}
