//! nexus-receiver: the shard side. Accepts runs from schedulers (the [`nexus_link::shard::Shard`]
//! seam; in standalone through [`LocalShard`]), launches them through its executor with a
//! run-scoped token and a signed result-upload URL, and serves the completion endpoint the
//! algorithm calls when it is done.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_executor::Executor;
use nexus_executor::contract::{LaunchContext, launch_spec};
use nexus_link::shard::{Dispatch, Shard, ShardError};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId, RunPatch, Stage};
use nexus_model::sign::{Signer, now_secs};
use nexus_payload::{Keys, PayloadStore};
use nexus_store::RunStore;
use serde::{Deserialize, Serialize};

pub mod api;
pub mod grpc;

/// Receiver configuration (section `receiver`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Base URL algorithms use to reach this receiver (`NEXUS__RECEIVER_URL`).
    pub public_url: String,
    /// Extra validity of a run token beyond the run's own deadline × attempts.
    #[serde(with = "humantime_serde")]
    pub token_grace: Duration,
    /// Maximum body of a completion request, in bytes.
    pub max_completion_bytes: usize,
    /// Safety-net launch limit of this receiver (runs per second, burst), behind the schedulers'
    /// shard budgets: submissions over it are answered `RESOURCE_EXHAUSTED` with a retry hint and
    /// the schedulers slow down. Applies to gRPC submissions (distributed mode).
    pub launch_limit: nexus_model::limiter::BudgetConfig,
    /// Base URL of the schedulers (their load balancer), handed to algorithms as
    /// `NEXUS__SCHEDULER_URL` so they can create child runs (`RunService`); empty: not set.
    /// Standalone sets it to its own URL.
    pub scheduler_url: String,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8090".into(),
            scheduler_url: String::new(),
            token_grace: Duration::from_secs(15 * 60),
            max_completion_bytes: 1024 * 1024,
            launch_limit: nexus_model::limiter::BudgetConfig {
                rate: 500.0,
                burst: 1000,
            },
        }
    }
}

impl ReceiverConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "receiver.public_url: '{}' must start with http:// or https://",
                self.public_url
            ));
        }
        if self.max_completion_bytes < 1024 {
            return Err("receiver.max_completion_bytes: must be at least 1024".into());
        }
        self.launch_limit.validate("receiver.launch_limit")
    }
}

/// The receiver's shared state.
#[derive(Debug)]
pub struct Receiver {
    /// Config.
    pub config: ReceiverConfig,
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Payload store (results, logs).
    pub payloads: Arc<dyn PayloadStore>,
    /// Executor.
    pub executor: Arc<dyn Executor>,
    /// Signs run tokens (and verifies them on completion).
    pub signer: Signer,
    /// The shard this receiver serves (empty in standalone: every shard).
    pub shard: String,
    /// This receiver's instance id (its lease in the run store, the owner of the runs it runs).
    pub instance_id: String,
    /// The safety-net launch limiter (`config.launch_limit`).
    pub limiter: std::sync::Mutex<nexus_model::limiter::TokenBucket>,
}

impl Receiver {
    /// Builds the receiver.
    #[must_use]
    pub fn new(
        config: ReceiverConfig,
        store: Arc<dyn RunStore>,
        payloads: Arc<dyn PayloadStore>,
        executor: Arc<dyn Executor>,
        signer: Signer,
    ) -> Arc<Self> {
        Self::for_shard(config, "", "", store, payloads, executor, signer)
    }

    /// Builds the receiver of one shard (distributed mode), with its instance id.
    #[must_use]
    pub fn for_shard(
        config: ReceiverConfig,
        shard: &str,
        instance_id: &str,
        store: Arc<dyn RunStore>,
        payloads: Arc<dyn PayloadStore>,
        executor: Arc<dyn Executor>,
        signer: Signer,
    ) -> Arc<Self> {
        let limiter = nexus_model::limiter::TokenBucket::new(
            config.launch_limit.rate,
            f64::from(config.launch_limit.burst),
            tokio::time::Instant::now(),
        );
        Arc::new(Self {
            shard: shard.to_owned(),
            instance_id: instance_id.to_owned(),
            limiter: std::sync::Mutex::new(limiter),
            config,
            store,
            payloads,
            executor,
            signer,
        })
    }

    /// Launches a dispatched run: mints its token and result-upload URL, renders the launch and
    /// hands it to the executor. Idempotent: a run dispatched in a stage other than BUFFERED is
    /// not launched, and the executor ignores a second launch of an active run.
    ///
    /// # Errors
    /// Retryable kinds when the store or executor is unavailable; `InvalidInput` for a run whose
    /// launch can never work.
    #[tracing::instrument(skip_all, fields(run_id = %d.run.id))]
    pub async fn submit(&self, d: Dispatch) -> Result<(), ShardError> {
        // The dispatch carries the record as the scheduler just read it, so it is not read again
        // here. A cancel that lands between that read and the launch is caught when the start is
        // recorded: the supervisor sees CANCELLED and stops the process.
        let run = &d.run;
        if !(run.stage == Stage::Buffered || d.relaunch && run.stage == Stage::Running) {
            return Ok(());
        }
        let spec = &run.applied_configuration;
        let attempts = u64::from(spec.maximum_retries()) + 1;
        let lifetime = u64::from(spec.deadline_seconds()).saturating_mul(attempts)
            + self.config.token_grace.as_secs();
        let exp = now_secs() + i64::try_from(lifetime).unwrap_or(i64::MAX / 4);
        let token = self.signer.run_token(run.id, exp);
        let key = Keys::result(&run.algorithm, &run.id.to_string());
        let upload = self
            .payloads
            .signed_put_url(&key, Duration::from_secs(lifetime))
            .await
            .map_err(|e| ShardError::new(e.kind, e.message))?;
        let ctx = LaunchContext {
            payload_url: &d.payload_url,
            run_token: &token,
            receiver_url: self.config.public_url.trim_end_matches('/'),
            result_upload_url: &upload,
            scheduler_url: self.config.scheduler_url.trim_end_matches('/'),
        };
        // The executor renders the launch its own way (a process, a Kubernetes Job).
        let spec = match launch_spec(run, &d.workgroup, &ctx) {
            Ok(s) => s,
            Err(msg) => return Err(ShardError::new(ErrorKind::InvalidInput, msg)),
        };
        self.executor
            .launch(spec)
            .await
            .map_err(|e| ShardError::new(e.kind, e.message))?;
        if !self.instance_id.is_empty() {
            self.record_launch(run, d.relaunch).await?;
        }
        Ok(())
    }

    /// Distributed mode: records the run as RUNNING and owned by this receiver *before* the
    /// scheduler hears "accepted". From then on a lost receiver is visible (its lease lapses and
    /// the supervisor launches the run again); a receiver lost before this point never answered,
    /// so the scheduler dispatches the run again.
    async fn record_launch(
        &self,
        run: &nexus_model::run::Run,
        relaunch: bool,
    ) -> Result<(), ShardError> {
        use nexus_store::StoreError;
        let patch = RunPatch {
            owner: Some(Some(self.instance_id.clone())),
            // A launch again after a lost receiver is one more attempt (the supervisor caps them).
            attempts: relaunch.then_some(run.attempts + 1),
            ..RunPatch::default()
        };
        match self
            .store
            .transition(run.id, run.stage, Stage::Running, patch)
            .await
        {
            // Conflict: already recorded (a repeated submission, or the executor's start event
            // won), or cancelled meanwhile (the start event then stops the process).
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(StoreError::NotFound(id)) => Err(ShardError::new(
                ErrorKind::NotFound,
                format!("run {id} is not in the run store"),
            )),
            Err(e) => Err(ShardError::new(
                e.kind(),
                format!("could not record the launch: {e}"),
            )),
        }
    }

    /// Stops a run's process (idempotent).
    ///
    /// # Errors
    /// Executor failures.
    pub async fn cancel(&self, id: RunId, policy: CancellationPolicy) -> Result<(), ShardError> {
        self.executor
            .cancel(id, policy)
            .await
            .map_err(|e| ShardError::new(e.kind, e.message))
    }

    /// Applies a completion to the store (compare-and-set; a BUFFERED run whose start has not
    /// been recorded yet is moved through RUNNING first).
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (already finished), store failures.
    pub async fn complete(
        &self,
        id: RunId,
        target: Stage,
        patch: RunPatch,
    ) -> Result<(), nexus_store::StoreError> {
        use nexus_store::StoreError;
        let run = match self.store.get(id).await? {
            Some(r) => r,
            None => return Err(StoreError::NotFound(id)),
        };
        let mut stage = run.stage;
        for _ in 0..8 {
            if stage.is_terminal() {
                return Err(StoreError::Conflict {
                    id,
                    current: stage,
                    expected: Stage::Running,
                });
            }
            let from = stage;
            if from == Stage::Buffered || from == Stage::New {
                // The start was not recorded yet (the executor's start event is still on its
                // way): record it now, so a finished run always shows an attempt and a start.
                let started = RunPatch::started_late(&run, nexus_model::run::now_millis());
                match self
                    .store
                    .transition(id, from, Stage::Running, started)
                    .await
                {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
                stage = Stage::Running;
                continue;
            }
            match self.store.transition(id, from, target, patch.clone()).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { current, .. }) => stage = current,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::backend(
            ErrorKind::Unavailable,
            "run changed stage repeatedly; retry",
        ))
    }
}

/// The in-process [`Shard`]: a scheduler in the same process hands runs straight to this
/// receiver (standalone mode).
#[derive(Debug, Clone)]
pub struct LocalShard(pub Arc<Receiver>);

#[async_trait]
impl Shard for LocalShard {
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError> {
        self.0.submit(dispatch).await
    }

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError> {
        self.0.cancel(run_id, policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_executor::RecordingExecutor;
    use nexus_payload::InMemoryPayloadStore;
    use nexus_store::{InMemoryRunStore, RunStore, test_suite::sample_run};

    #[tokio::test]
    async fn local_shard_conforms_and_launches_with_token_and_urls() {
        let store = Arc::new(InMemoryRunStore::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = Arc::new(RecordingExecutor::new(tx));
        let signer = Signer::random();
        let r = Receiver::new(
            ReceiverConfig::default(),
            store.clone(),
            Arc::new(InMemoryPayloadStore::default()),
            exec.clone(),
            signer.clone(),
        );
        let mut run = sample_run("alg");
        run.applied_configuration.args = vec!["--sas-uri=%s".into(), "--request-id=%s".into()];
        store.insert(run.clone()).await.unwrap();
        nexus_link::shard::test_suite::run_all(&LocalShard(r), run.clone()).await;
        let launches = exec.launches();
        assert!(!launches.is_empty());
        let l = &launches[0];
        assert_eq!(
            l.args,
            vec![
                "--sas-uri=http://127.0.0.1:1/p".to_owned(),
                format!("--request-id={}", run.id)
            ]
        );
        let env: std::collections::HashMap<_, _> = l.env.iter().cloned().collect();
        let token = &env[nexus_proto::v1::env::RUN_TOKEN];
        signer
            .verify_run_token(run.id, token, now_secs())
            .expect("the launch carries a valid run token");
        assert!(env[nexus_proto::v1::env::RESULT_UPLOAD_URL].contains("results/alg/"));
    }
}
