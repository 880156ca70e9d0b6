//! nexus-receiver: the shard side. Accepts runs from schedulers (the [`nexus_link::shard::Shard`]
//! seam; in standalone through [`LocalShard`]), launches them through its executor with a
//! run-scoped token and a signed result-upload URL, and serves the completion endpoint the
//! algorithm calls when it is done.
//!
//! [`serve`] owns the receiver's lifecycle (its listeners, lease, executor events and the ordered
//! drain); standalone calls it without listeners and serves [`api::router`] on its shared port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use nexus_executor::contract::{LaunchContext, launch_spec};
use nexus_executor::{EventHandler, Executor, ExecutorEvent};
use nexus_http::server::ServerConfig;
use nexus_http::{Readiness, health_routes, negotiate_errors};
use nexus_link::grpc::LinkCredentials;
use nexus_link::shard::{Dispatch, Shard, ShardError};
use nexus_model::error::ErrorKind;
use nexus_model::run::now_millis;
use nexus_model::run::{CancellationPolicy, RunId, RunPatch, Stage};
use nexus_model::sign::{Signer, now_secs};
use nexus_payload::{Keys, PayloadStore};
use nexus_store::RunStore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod api;
pub mod grpc;
pub mod metrics;

/// Receiver configuration (section `receiver`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Base URL algorithms use to reach this receiver (`NEXUS__RECEIVER_URL`). Set by the
    /// process from its top-level `public_url` (or listen address), never read from the section.
    #[serde(skip)]
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
        if run.external
            || !(run.stage == Stage::Buffered || d.relaunch && run.stage == Stage::Running)
        {
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
            // Configured, else the dispatcher's: child runs work without configuring it twice.
            scheduler_url: if self.config.scheduler_url.is_empty() {
                d.scheduler_url.trim_end_matches('/')
            } else {
                self.config.scheduler_url.trim_end_matches('/')
            },
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
        }
        .by(
            "receiver",
            if relaunch {
                format!(
                    "launched again by receiver {} (attempt {})",
                    self.instance_id,
                    run.attempts + 1
                )
            } else {
                format!("launched by receiver {}", self.instance_id)
            },
        );
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

    /// What this receiver knows about run `id` now: its executor's view (waiting for a
    /// workgroup slot, its process, its Job and pods) and the state of its launch limiter.
    pub async fn describe(&self, id: RunId) -> Vec<String> {
        let mut facts = self.executor.describe(id).await;
        let (rate, available) = {
            let mut l = self
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (l.rate(), l.available(tokio::time::Instant::now()))
        };
        facts.push(if available < 1.0 {
            format!(
                "its launch limiter is spent: {rate:.2} launches/s, the next in {:.1}s",
                (1.0 - available) / rate.max(f64::EPSILON)
            )
        } else {
            format!("its launch limiter admits {rate:.2} launches/s ({available:.0} available now)")
        });
        facts
    }

    /// Run `id`'s output read from where it runs, when this receiver's executor can read it
    /// (see [`nexus_executor::Executor::logs`]).
    ///
    /// # Errors
    /// The executor's (over its limit of log streams, backend failures).
    pub async fn logs(
        &self,
        id: RunId,
        follow: bool,
    ) -> Result<Option<nexus_link::shard::LogStream>, ShardError> {
        self.executor
            .logs(id, follow)
            .await
            .map_err(|e| ShardError::new(e.kind, e.message))
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
                let started = RunPatch::started_late(&run, nexus_model::run::now_millis())
                    .by("receiver", "completion arrived before the start event");
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

    async fn describe(&self, run_id: RunId) -> Vec<String> {
        self.0.describe(run_id).await
    }

    async fn logs(
        &self,
        run_id: RunId,
        follow: bool,
    ) -> Result<Option<nexus_link::shard::LogStream>, ShardError> {
        self.0.logs(run_id, follow).await
    }
}

/// What [`serve`] runs with, besides the seams.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Receiver settings.
    pub receiver: ReceiverConfig,
    /// The shard served (empty in standalone: every shard).
    pub shard: String,
    /// Owner id (`receiver/<shard>/<instance>`): the runs it launches are recorded under it and
    /// its lease is held in the run store. Empty in standalone: the process's scheduler holds the
    /// one lease and the supervisor records starts.
    pub instance_id: String,
    /// Lease time-to-live (renewed every third of it).
    pub lease_ttl: Duration,
    /// On shutdown, how long running runs get to finish before the receiver leaves.
    pub drain_grace: Duration,
    /// Connection limit and timeouts of the HTTP server (when it has a listener).
    pub server: ServerConfig,
}

/// The seams [`serve`] works through.
#[derive(Debug)]
pub struct Deps {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Payloads, results and logs.
    pub payloads: Arc<dyn PayloadStore>,
    /// Where runs execute.
    pub executor: Arc<dyn Executor>,
    /// The executor's events and what applies them to the run store (the supervisor's
    /// [`EventHandler`]), run here because a local process can only be watched by its parent;
    /// `None` when another component applies them (standalone's supervisor).
    pub events: Option<(UnboundedReceiver<ExecutorEvent>, Arc<dyn EventHandler>)>,
    /// Cancelled once the receiver has drained (stops the executor's own watchers).
    pub executor_stop: CancellationToken,
    /// Signs run tokens.
    pub signer: Signer,
    /// gRPC credentials (needed with a gRPC listener).
    pub credentials: Option<LinkCredentials>,
    /// Readiness: schedulers stop sending runs when it is off.
    pub readiness: Readiness,
}

/// Listeners [`serve`] serves on (bound by the caller, so tests use port 0).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Routes the process serves on this component's HTTP listener besides the component's own
    /// (its `/metrics`); unused without an HTTP listener.
    pub telemetry: Router,
    /// Completion endpoint, health probes and `/metrics`; `None` when the caller serves
    /// [`api::router`] (standalone).
    pub http: Option<TcpListener>,
    /// `nexus.v1.ShardService`, `CompletionService`, `grpc.health.v1`; `None` in standalone
    /// (runs arrive through [`LocalShard`]).
    pub grpc: Option<TcpListener>,
}

/// A running receiver.
#[derive(Debug)]
pub struct Handle {
    /// The receiver (for an in-process [`LocalShard`] and a shared HTTP server).
    pub receiver: Arc<Receiver>,
    /// HTTP address, when it has a listener.
    pub addr: Option<SocketAddr>,
    /// gRPC address, when it has a listener.
    pub grpc_addr: Option<SocketAddr>,
    /// Cancel to stop it (ordered drain).
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Handle {
    /// Waits until the receiver has stopped (after `shutdown` was cancelled).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener's address cannot be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// A gRPC listener without credentials.
    #[error("grpc: a gRPC listener needs credentials")]
    NoCredentials,
    /// The first lease could not be taken.
    #[error("run store: {0}")]
    Store(#[from] nexus_store::StoreError),
}

/// Starts the receiver: takes its lease (with an instance id), serves gRPC and HTTP on the
/// listeners given, applies executor events, renews the lease. On `shutdown`: not ready
/// (schedulers go elsewhere), gRPC stops taking runs, running runs get `drain_grace` to finish
/// (completions still arrive over HTTP), then HTTP stops and the lease is released so the
/// supervisor launches what is left again at once.
///
/// # Errors
/// A listener's address, missing gRPC credentials, the first lease.
pub async fn serve(
    config: ServeConfig,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<Handle, ServeError> {
    metrics::describe();
    let addr = listeners
        .http
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let grpc_addr = listeners
        .grpc
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let receiver = Receiver::for_shard(
        config.receiver.clone(),
        &config.shard,
        &config.instance_id,
        deps.store.clone(),
        deps.payloads,
        deps.executor.clone(),
        deps.signer,
    );
    let id = config.instance_id.clone();
    let lease = !id.is_empty();
    let ttl = i64::try_from(config.lease_ttl.as_millis()).unwrap_or(15_000);
    if lease {
        deps.store.heartbeat(&id, now_millis(), ttl).await?;
    }
    let tasks = TaskTracker::new();
    let grpc_stop = CancellationToken::new();
    if let Some(listener) = listeners.grpc {
        let creds = deps.credentials.ok_or(ServeError::NoCredentials)?;
        let (r, rd, stop) = (receiver.clone(), deps.readiness.clone(), grpc_stop.clone());
        tasks.spawn(async move {
            if let Err(e) = grpc::serve(r, creds, listener, rd, stop).await {
                tracing::error!(error = %e, "grpc server failed");
            }
        });
    }
    let http_stop = CancellationToken::new();
    if let Some(listener) = listeners.http {
        let app = Router::new()
            .merge(api::router(receiver.clone()))
            .merge(health_routes(deps.readiness.clone()))
            .merge(listeners.telemetry)
            .fallback(nexus_http::not_found)
            .layer(axum::middleware::from_fn(negotiate_errors));
        tasks.spawn(nexus_http::server::serve(
            listener,
            app,
            config.server.clone(),
            http_stop.clone(),
        ));
    }
    let events_stop = CancellationToken::new();
    if let Some((events, handler)) = deps.events {
        tasks.spawn(nexus_executor::apply_events(
            handler,
            events,
            events_stop.clone(),
        ));
    }
    let beat_stop = CancellationToken::new();
    if lease {
        let (store, id, stop) = (deps.store.clone(), id.clone(), beat_stop.clone());
        let every = config.lease_ttl / 3;
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = store.heartbeat(&id, now_millis(), ttl).await {
                    tracing::warn!(error = %e, "receiver lease heartbeat failed");
                }
            }
        });
    }
    let (sd, rd, store, exec, grace, executor_stop) = (
        shutdown.clone(),
        deps.readiness.clone(),
        deps.store,
        deps.executor,
        config.drain_grace,
        deps.executor_stop,
    );
    tasks.spawn(async move {
        sd.cancelled().await;
        rd.set(false);
        grpc_stop.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while !exec.active().await.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        beat_stop.cancel();
        events_stop.cancel();
        http_stop.cancel();
        let left = exec.active().await.len();
        executor_stop.cancel();
        if lease && let Err(e) = store.release_lease(&id).await {
            tracing::warn!(
                error = %e,
                "could not release the receiver lease (its runs are relaunched when it lapses)"
            );
        }
        tracing::info!(left_running = left, "receiver stopped");
    });
    deps.readiness.set(true);
    tracing::info!(shard = %config.shard, id = %config.instance_id, grpc = ?grpc_addr, "receiver started");
    Ok(Handle {
        receiver,
        addr,
        grpc_addr,
        shutdown,
        tasks,
    })
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

    /// Progress reports: validated, kept in place, at most one a second, none after the end.
    #[tokio::test]
    async fn progress_is_kept_in_place_bounded_and_refused_after_the_end() {
        use crate::api::{CompletionError, ProgressError};
        use nexus_proto::v1::ProgressReport;
        let store = Arc::new(InMemoryRunStore::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let r = Receiver::new(
            ReceiverConfig::default(),
            store.clone(),
            Arc::new(InMemoryPayloadStore::default()),
            Arc::new(RecordingExecutor::new(tx)),
            Signer::random(),
        );
        let run = sample_run("alg");
        store.insert(run.clone()).await.unwrap();
        let report = |f: Option<f64>, m: Option<&str>| ProgressReport {
            fraction: f,
            message: m.map(str::to_owned),
        };
        for bad in [
            report(None, None),
            report(Some(f64::NAN), None),
            report(Some(-0.1), None),
            report(Some(1.01), None),
            report(None, Some(&"é".repeat(513))),
        ] {
            assert!(
                matches!(
                    r.apply_progress("alg", run.id, &bad).await,
                    Err(ProgressError::Refused(CompletionError::InvalidInput(_)))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            r.apply_progress("other", run.id, &report(Some(0.5), None))
                .await,
            Err(ProgressError::Refused(CompletionError::NotFound(_)))
        ));
        // A run still BUFFERED (its start event not applied yet) takes reports too.
        r.apply_progress("alg", run.id, &report(Some(0.5), Some("half")))
            .await
            .unwrap();
        let stored = store.get(run.id).await.unwrap().unwrap();
        assert_eq!(stored.stage, Stage::Buffered);
        let p = stored.progress.clone().unwrap();
        assert_eq!(
            (p.fraction, p.message.as_deref()),
            (Some(0.5), Some("half"))
        );
        assert_eq!(stored.timeline, run.timeline);
        match r
            .apply_progress("alg", run.id, &report(Some(0.6), None))
            .await
        {
            Err(ProgressError::Throttled(ms)) => assert!((1..=1_000).contains(&ms), "{ms}"),
            other => panic!("expected throttled, got {other:?}"),
        }
        assert_eq!(store.get(run.id).await.unwrap().unwrap().progress, Some(p));
        store
            .transition(
                run.id,
                Stage::Buffered,
                Stage::Cancelled,
                RunPatch::default(),
            )
            .await
            .unwrap();
        assert!(matches!(
            r.apply_progress("alg", run.id, &report(Some(1.0), None))
                .await,
            Err(ProgressError::Refused(
                CompletionError::AlreadyFinished { .. }
            ))
        ));
    }

    /// Drops events (this test is about the lease, not about outcomes).
    #[derive(Debug)]
    struct Ignore;

    #[async_trait::async_trait]
    impl EventHandler for Ignore {
        async fn handle(&self, _event: ExecutorEvent) {}
    }

    /// An executor that reads one run's output where it runs: a 200 KiB burst, then (following)
    /// nothing more until the caller or the server goes.
    #[derive(Debug)]
    struct PodExecutor {
        inner: RecordingExecutor,
        run: RunId,
    }

    #[async_trait]
    impl Executor for PodExecutor {
        async fn launch(
            &self,
            spec: nexus_executor::LaunchSpec,
        ) -> Result<(), nexus_executor::ExecutorError> {
            self.inner.launch(spec).await
        }
        async fn cancel(
            &self,
            id: RunId,
            p: CancellationPolicy,
        ) -> Result<(), nexus_executor::ExecutorError> {
            self.inner.cancel(id, p).await
        }
        async fn active(&self) -> Vec<RunId> {
            self.inner.active().await
        }
        async fn logs(
            &self,
            id: RunId,
            follow: bool,
        ) -> Result<Option<nexus_executor::LogStream>, nexus_executor::ExecutorError> {
            use futures::StreamExt as _;
            if id != self.run {
                return Ok(None);
            }
            let burst = futures::stream::iter([bytes::Bytes::from(vec![b'x'; 200 * 1024])]);
            Ok(Some(if follow {
                burst.chain(futures::stream::pending()).boxed()
            } else {
                burst.boxed()
            }))
        }
    }

    /// `Logs` over the receiver's gRPC server: chunks of at most 64 KiB, an unknown run is
    /// nobody's output, and a follow that never ends does not hold the shutdown.
    #[tokio::test]
    async fn logs_are_served_in_bounded_chunks_and_cut_at_shutdown() {
        use futures::StreamExt as _;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let run = RunId::new();
        let shutdown = CancellationToken::new();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let h = serve(
            ServeConfig {
                receiver: ReceiverConfig::default(),
                shard: "a".into(),
                instance_id: String::new(),
                lease_ttl: Duration::from_secs(15),
                drain_grace: Duration::from_secs(1),
                server: ServerConfig::default(),
            },
            Deps {
                store: Arc::new(InMemoryRunStore::default()),
                payloads: Arc::new(InMemoryPayloadStore::default()),
                executor: Arc::new(PodExecutor {
                    inner: RecordingExecutor::new(tx),
                    run,
                }),
                events: Some((rx, Arc::new(Ignore))),
                executor_stop: CancellationToken::new(),
                signer: Signer::random(),
                credentials: Some(LinkCredentials::none()),
                readiness: Readiness::default(),
            },
            Listeners {
                grpc: Some(grpc),
                ..Listeners::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let shard = nexus_link::grpc::GrpcShard::new(
            "a",
            &[url],
            &LinkCredentials::none(),
            nexus_link::grpc::GrpcShardOptions::default(),
        )
        .unwrap();
        assert!(shard.logs(RunId::new(), false).await.unwrap().is_none());
        let chunks: Vec<bytes::Bytes> = shard
            .logs(run, false)
            .await
            .unwrap()
            .expect("the run's output")
            .collect()
            .await;
        assert_eq!(
            chunks.iter().map(bytes::Bytes::len).collect::<Vec<_>>(),
            vec![65536, 65536, 65536, 8192]
        );
        let mut follow = shard.logs(run, true).await.unwrap().expect("a follow");
        let mut got = 0;
        while got < 200 * 1024 {
            got += tokio::time::timeout(Duration::from_secs(10), follow.next())
                .await
                .expect("the burst arrives")
                .expect("more")
                .len();
        }
        shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("the follow ends at shutdown");
        assert!(end.is_none(), "{end:?}");
        tokio::time::timeout(Duration::from_secs(10), h.wait())
            .await
            .expect("an open follow does not hold the shutdown");
    }

    /// The ordered drain of a distributed receiver: it holds its lease while serving (on port 0
    /// here), and after `shutdown` its handle resolves with the lease released.
    #[tokio::test]
    async fn serve_holds_its_lease_and_releases_it_after_the_drain() {
        let store = Arc::new(InMemoryRunStore::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let id = "receiver/a/one";
        let h = serve(
            ServeConfig {
                receiver: ReceiverConfig::default(),
                shard: "a".into(),
                instance_id: id.into(),
                lease_ttl: Duration::from_secs(15),
                drain_grace: Duration::from_secs(5),
                server: ServerConfig::default(),
            },
            Deps {
                store: store.clone(),
                payloads: Arc::new(InMemoryPayloadStore::default()),
                executor: Arc::new(RecordingExecutor::new(tx)),
                events: Some((rx, Arc::new(Ignore))),
                executor_stop: CancellationToken::new(),
                signer: Signer::random(),
                credentials: None,
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
        assert!(h.addr.is_some_and(|a| a.port() != 0));
        assert!(readiness.is_ready());
        let holds = |leases: Vec<nexus_store::Lease>| leases.iter().any(|l| l.owner == id);
        assert!(
            holds(store.leases().await.unwrap()),
            "the lease is taken at start"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), h.wait())
            .await
            .expect("the drain is bounded");
        assert!(!readiness.is_ready());
        assert!(
            !holds(store.leases().await.unwrap()),
            "the lease is released after the drain"
        );
    }
}
