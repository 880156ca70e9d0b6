//! In-process executors for the benchmark scenarios (never used outside `nexus-bench`).
//!
//! * [`InstantExecutor`] plays a real algorithm for every launch without starting a process: it
//!   reads the launch's environment (the algorithm-container contract of `nexus_proto::v1::env`),
//!   PUTs a small result to the signed `NEXUS__RESULT_UPLOAD_URL` and calls
//!   `{NEXUS__RECEIVER_URL}/algorithm/v1/complete/{alg}/requests/{id}` with the run token, over
//!   HTTP, exactly as `nexus-demo` does. It emits `Started` when the "process" starts and
//!   `Finished` once the algorithm reported. `e2e` measures the whole pipeline with it.
//! * [`ParkedExecutor`] accepts launches and never runs them: `accept` uses it so that dispatch
//!   keeps doing its real work (store read, receiver, launch) without process spawning competing
//!   with the accept path for the CPU.
//!
//! Both keep the executor contract's bookkeeping: a launch of an active id is a no-op, every
//! accepted launch gets exactly one `Finished`, cancel of an unknown run is `Ok`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use nexus_executor::{Executor, ExecutorError, ExecutorEvent, ExitInfo, LaunchSpec, Outcome};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_proto::v1::env;
use tokio::sync::mpsc::UnboundedSender;

type Active = Arc<Mutex<HashSet<RunId>>>;

/// Ends an active run as Cancelled (a cancel of an unknown or finished run is a no-op).
fn cancel_active(active: &Active, events: &UnboundedSender<ExecutorEvent>, run_id: RunId) {
    if lock(active).remove(&run_id) {
        let _ = events.send(ExecutorEvent::Finished {
            run_id,
            outcome: Outcome::Cancelled,
            logs_stored: false,
        });
    }
}

fn lock(a: &Mutex<HashSet<RunId>>) -> MutexGuard<'_, HashSet<RunId>> {
    // Each critical section is one set operation: the set stays consistent after a panic.
    a.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The result document the instant algorithm uploads for run `id` (the `e2e` client checks it).
#[must_use]
pub fn result_body(id: &str) -> String {
    format!("{{\"requestId\":\"{id}\",\"value\":90}}")
}

/// An executor whose "process" is an in-process task speaking HTTP like an algorithm; see the
/// module docs.
#[derive(Debug)]
pub struct InstantExecutor {
    events: UnboundedSender<ExecutorEvent>,
    http: reqwest::Client,
    active: Active,
    next_ref: AtomicU64,
}

impl InstantExecutor {
    /// Builds one reporting on `events`, speaking HTTP with `http`.
    #[must_use]
    pub fn new(events: UnboundedSender<ExecutorEvent>, http: reqwest::Client) -> Self {
        Self {
            events,
            http,
            active: Arc::default(),
            next_ref: AtomicU64::new(0),
        }
    }
}

fn var<'a>(spec: &'a LaunchSpec, name: &str) -> Option<&'a str> {
    spec.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What the algorithm needs from its environment.
struct Contract {
    algorithm: String,
    request_id: String,
    token: String,
    receiver: String,
    upload: String,
}

impl Contract {
    fn from_spec(spec: &LaunchSpec) -> Result<Self, String> {
        let need = |name: &str| {
            var(spec, name)
                .map(str::to_owned)
                .ok_or_else(|| format!("the launch has no {name} in its environment"))
        };
        Ok(Self {
            algorithm: var(spec, env::ALGORITHM_NAME)
                .map_or_else(|| spec.algorithm.clone(), str::to_owned),
            request_id: var(spec, env::REQUEST_ID)
                .map_or_else(|| spec.run_id.to_string(), str::to_owned),
            token: need(env::RUN_TOKEN)?,
            receiver: need(env::RECEIVER_URL)?,
            upload: need(env::RESULT_UPLOAD_URL)?,
        })
    }
}

/// Uploads the result and reports completion, as an algorithm does.
async fn play(http: &reqwest::Client, c: &Contract) -> Result<(), String> {
    let put = http
        .put(&c.upload)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(result_body(&c.request_id))
        .send()
        .await
        .map_err(|e| format!("result upload: {e}"))?;
    if !put.status().is_success() {
        return Err(format!("result upload answered {}", put.status()));
    }
    let url = format!(
        "{}/algorithm/v1/complete/{}/requests/{}",
        c.receiver.trim_end_matches('/'),
        c.algorithm,
        c.request_id
    );
    let done = http
        .post(&url)
        .bearer_auth(&c.token)
        .json(&serde_json::json!({ "resultUri": "" }))
        .send()
        .await
        .map_err(|e| format!("completion: {e}"))?;
    if !done.status().is_success() {
        return Err(format!("completion answered {}", done.status()));
    }
    Ok(())
}

#[async_trait]
impl Executor for InstantExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        let run_id = spec.run_id;
        let contract = Contract::from_spec(&spec)
            .map_err(|m| ExecutorError::new(ErrorKind::InvalidInput, m))?;
        if !lock(&self.active).insert(run_id) {
            return Ok(());
        }
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.events.send(ExecutorEvent::Started {
            run_id,
            attempt: 1,
            executor_ref: format!("instant-{n}"),
        });
        let (http, active, events) = (self.http.clone(), self.active.clone(), self.events.clone());
        tokio::spawn(async move {
            let outcome = match play(&http, &contract).await {
                Ok(()) => Outcome::Succeeded,
                Err(message) => {
                    eprintln!("instant executor: run {run_id}: {message}");
                    Outcome::Failed {
                        exit: ExitInfo {
                            code: Some(1),
                            signal: None,
                        },
                        attempts: 1,
                        fatal: false,
                    }
                }
            };
            // A cancel that came first already emitted this run's `Finished`.
            if lock(&active).remove(&run_id) {
                let _ = events.send(ExecutorEvent::Finished {
                    run_id,
                    outcome,
                    logs_stored: false,
                });
            }
        });
        Ok(())
    }

    async fn cancel(
        &self,
        run_id: RunId,
        _policy: CancellationPolicy,
    ) -> Result<(), ExecutorError> {
        cancel_active(&self.active, &self.events, run_id);
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        lock(&self.active).iter().copied().collect()
    }
}

/// An executor that accepts launches and never runs them; see the module docs.
#[derive(Debug)]
pub struct ParkedExecutor {
    events: UnboundedSender<ExecutorEvent>,
    active: Active,
}

impl ParkedExecutor {
    /// Builds one reporting cancels on `events`.
    #[must_use]
    pub fn new(events: UnboundedSender<ExecutorEvent>) -> Self {
        Self {
            events,
            active: Arc::default(),
        }
    }
}

#[async_trait]
impl Executor for ParkedExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        lock(&self.active).insert(spec.run_id);
        Ok(())
    }

    async fn cancel(
        &self,
        run_id: RunId,
        _policy: CancellationPolicy,
    ) -> Result<(), ExecutorError> {
        cancel_active(&self.active, &self.events, run_id);
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        lock(&self.active).iter().copied().collect()
    }
}
