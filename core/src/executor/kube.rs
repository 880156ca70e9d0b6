//! The Kubernetes executor: a run is a `batch/v1` Job in the shard cluster (rendered by
//! [`crate::kube_job::render_job`] into [`LaunchSpec::job`]). Kubernetes owns the retries
//! (`backoffLimit`, the pod failure policy), the deadline (`activeDeadlineSeconds`) and the
//! placement; this executor creates the Job, follows it through a watch of the Jobs it labels,
//! reports the outcome from the Job's conditions, and deletes it with the requested propagation
//! policy on cancel. Every request goes through the cluster's API budget (the client's tower
//! layer, [`crate::kube_client::ApiBudgetLayer`]).
//!
//! Launch is idempotent: a Job that already exists (a repeated submission, a launch again after a
//! lost receiver) is adopted, not created twice. Classification of *why* a pod failed (image pull,
//! OOM, unschedulable) from pod status is the supervisor's (issue #8); here the Job's own
//! conditions decide (`Complete`, `Failed` with reason `DeadlineExceeded`, `BackoffLimitExceeded`
//! or `PodFailurePolicy`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{Executor, ExecutorError, ExecutorEvent, ExitInfo, LaunchSpec, Outcome};
use crate::error::ErrorKind;
use crate::kube_job::{COMPONENT_ALGORITHM_RUN, JobOptions, LABEL_COMPONENT, LABEL_REQUEST_ID};
use crate::run::{CancellationPolicy, RunId};

/// What the executor remembers of a launched Job.
#[derive(Debug, Clone)]
struct Tracked {
    /// `activeDeadlineSeconds`, for the outcome.
    deadline: Duration,
}

/// Runs runs as Kubernetes Jobs.
#[derive(Debug, Clone)]
pub struct KubeExecutor {
    jobs: Api<Job>,
    opts: JobOptions,
    events: UnboundedSender<ExecutorEvent>,
    active: Arc<Mutex<HashMap<RunId, Tracked>>>,
}

/// Maps a Kubernetes API error to an executor error.
fn kube_err(what: &str, e: &kube::Error) -> ExecutorError {
    let kind = match e {
        kube::Error::Api(s) => match s.code {
            400 | 422 => ErrorKind::InvalidInput,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::ResourceExhausted,
            504 => ErrorKind::Timeout,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Unavailable,
    };
    ExecutorError::new(kind, format!("{what}: {e}"))
}

/// The outcome a finished Job's conditions say, or `None` while it runs.
#[must_use]
pub fn outcome_of(job: &Job, deadline: Duration) -> Option<Outcome> {
    let status = job.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return Some(Outcome::Succeeded);
    }
    let failed = is("Failed")?;
    let attempts = u32::try_from(status.failed.unwrap_or(0).max(1)).unwrap_or(1);
    Some(match failed.reason.as_deref() {
        Some("DeadlineExceeded") => Outcome::DeadlineExceeded { deadline },
        Some("PodFailurePolicy") => Outcome::Failed {
            exit: ExitInfo {
                code: None,
                signal: None,
            },
            attempts,
            fatal: true,
        },
        _ => Outcome::Failed {
            exit: ExitInfo {
                code: None,
                signal: None,
            },
            attempts,
            fatal: false,
        },
    })
}

impl KubeExecutor {
    /// An executor creating Jobs in `opts.namespace` through `client`, reporting on `events`.
    /// Starts the watch that follows its Jobs until `shutdown`.
    #[must_use]
    pub fn new(
        client: Client,
        opts: JobOptions,
        events: UnboundedSender<ExecutorEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        let jobs: Api<Job> = Api::namespaced(client, &opts.namespace);
        let me = Self {
            jobs,
            opts,
            events,
            active: Arc::default(),
        };
        tokio::spawn(me.clone().follow(shutdown));
        me
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Tracked>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the Jobs this executor labels and reports those that finished.
    async fn follow(self, shutdown: CancellationToken) {
        let cfg = watcher::Config::default()
            .labels(&format!("{LABEL_COMPONENT}={COMPONENT_ALGORITHM_RUN}"));
        let mut stream = watcher(self.jobs.clone(), cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    metrics::counter!("nexus_kube_job_watch_errors_total").increment(1);
                    tracing::warn!("job watch failed, retrying: {e}");
                }
                Some(Ok(job)) => self.observe(&job),
            }
        }
    }

    fn observe(&self, job: &Job) {
        let Some(id) = job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_REQUEST_ID))
            .and_then(|v| v.parse::<RunId>().ok())
        else {
            return;
        };
        let Some(tracked) = self.active().get(&id).cloned() else {
            return;
        };
        let Some(outcome) = outcome_of(job, tracked.deadline) else {
            return;
        };
        if self.active().remove(&id).is_some() {
            let _ = self.events.send(ExecutorEvent::Finished {
                run_id: id,
                outcome,
                logs_stored: false,
            });
        }
    }
}

#[async_trait]
impl Executor for KubeExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        let Some(job) = spec.job else {
            return Err(ExecutorError::new(
                ErrorKind::InvalidInput,
                "the Kubernetes executor needs a rendered Job (LaunchSpec::job)",
            ));
        };
        if self.active().contains_key(&spec.run_id) {
            return Ok(());
        }
        let name = spec.run_id.to_string();
        let created = match self.jobs.create(&PostParams::default(), &job).await {
            Ok(j) => j,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Already there (a repeated submission, a launch again): adopt it.
                self.jobs
                    .get(&name)
                    .await
                    .map_err(|e| kube_err("cannot read the existing Job", &e))?
            }
            Err(e) => return Err(kube_err("cannot create the Job", &e)),
        };
        let deadline = Duration::from_secs(
            created
                .spec
                .as_ref()
                .and_then(|s| s.active_deadline_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(spec.deadline.as_secs()),
        );
        self.active().insert(spec.run_id, Tracked { deadline });
        metrics::counter!("nexus_kube_jobs_created_total").increment(1);
        let _ = self.events.send(ExecutorEvent::Started {
            run_id: spec.run_id,
            attempt: 1,
            executor_ref: format!(
                "job/{}/{}",
                self.opts.namespace,
                created.metadata.uid.clone().unwrap_or(name)
            ),
        });
        // It may have finished before the watch saw it (an adopted Job).
        self.observe(&created);
        Ok(())
    }

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ExecutorError> {
        let dp = DeleteParams {
            propagation_policy: Some(match policy {
                CancellationPolicy::Background => PropagationPolicy::Background,
                CancellationPolicy::Foreground => PropagationPolicy::Foreground,
                CancellationPolicy::Orphan => PropagationPolicy::Orphan,
            }),
            ..DeleteParams::default()
        };
        match self.jobs.delete(&run_id.to_string(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err("cannot delete the Job", &e)),
        }
        if self.active().remove(&run_id).is_some() {
            let _ = self.events.send(ExecutorEvent::Finished {
                run_id,
                outcome: Outcome::Cancelled,
                logs_stored: false,
            });
        }
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        self.active().keys().copied().collect()
    }

    fn job_options(&self) -> Option<&JobOptions> {
        Some(&self.opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conditions: serde_json::Value, failed: i32) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
            "status": {"conditions": conditions, "failed": failed}
        }))
        .unwrap()
    }

    #[test]
    fn outcomes_from_job_conditions() {
        let d = Duration::from_secs(60);
        assert_eq!(outcome_of(&job(serde_json::json!([]), 0), d), None);
        assert_eq!(
            outcome_of(
                &job(
                    serde_json::json!([{"type": "Complete", "status": "True"}]),
                    0
                ),
                d
            ),
            Some(Outcome::Succeeded)
        );
        assert_eq!(
            outcome_of(
                &job(
                    serde_json::json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
                    1
                ),
                d
            ),
            Some(Outcome::DeadlineExceeded { deadline: d })
        );
        match outcome_of(
            &job(
                serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                4,
            ),
            d,
        ) {
            Some(Outcome::Failed {
                attempts: 4,
                fatal: false,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match outcome_of(
            &job(
                serde_json::json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
                1,
            ),
            d,
        ) {
            Some(Outcome::Failed { fatal: true, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            outcome_of(
                &job(
                    serde_json::json!([{"type": "Failed", "status": "False"}]),
                    0
                ),
                d
            ),
            None,
            "a condition that is not True decides nothing"
        );
    }
}
