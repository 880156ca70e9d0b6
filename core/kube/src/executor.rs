//! The Kubernetes executor: a run is a `batch/v1` Job in the shard cluster (rendered by
//! [`crate::job::render_job`] from [`LaunchSpec::source`]). Kubernetes owns the retries
//! (`backoffLimit`, the pod failure policy), the deadline (`activeDeadlineSeconds`) and the
//! placement; this executor creates the Job, follows it through a watch of the Jobs it labels,
//! reports the outcome from the Job's conditions, and deletes it with the requested propagation
//! policy on cancel. Every request goes through the cluster's API budget (the client's tower
//! layer, [`crate::client::ApiBudgetLayer`]).
//!
//! Launch is idempotent: a Job that already exists (a repeated submission, a launch again after a
//! lost receiver) is adopted, not created twice.
//!
//! *Why* a run failed comes from status, not Events ([`crate::classify`]): a second watch
//! follows the runs' pods; a pod stuck before its container runs (image pull, unschedulable,
//! container configuration) past its grace ends the run SCHEDULING_FAILED and deletes its Job; a
//! Job's `Failed` condition is refined by its pods' last termination (OOM-killed at the memory
//! limit, the fatal exit code, the last exit code).
//!
//! Memory stays flat however many Jobs share the namespace (issue #24 item 5): the watches keep
//! no objects (each event is looked at and dropped), read their initial lists in pages of
//! [`WATCH_PAGE`], the garbage collection reads Jobs in pages of [`JOB_GC_PAGE`], and of a
//! tracked run's pods only what classification reads is kept ([`trim_pod`]), never whole objects
//! with their `managedFields`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::classify::{FailureConfig, PodProblem, job_failure, pod_problem};
use crate::job::{
    COMPONENT_ALGORITHM_RUN, JobOptions, LABEL_COMPONENT, LABEL_REQUEST_ID, render_job,
};
use crate::logs::{PodLogOptions, PodLogs};
use nexus_executor::{
    Executor, ExecutorError, ExecutorEvent, ExitInfo, LaunchSpec, LogStream, Outcome,
};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_payload::PayloadStore;

/// What the executor remembers of a launched Job.
#[derive(Debug, Clone)]
struct Tracked {
    /// `activeDeadlineSeconds`, for the outcome.
    deadline: Duration,
    /// The latest status of each of its pods (for the cause of a Job failure), trimmed to what
    /// classification reads ([`trim_pod`]).
    pods: HashMap<String, Pod>,
    /// A problem its latest pod shows before running, and since when.
    problem: Option<(PodProblem, tokio::time::Instant)>,
    /// This executor is deleting the Job (a cancel): its deletion is expected.
    cancelling: bool,
    /// Where a copy of its pod's log is kept when it finishes ([`LaunchSpec::logs_key`]).
    logs_key: Option<String>,
}

impl Tracked {
    fn new(deadline: Duration, logs_key: Option<String>) -> Self {
        Self {
            deadline,
            pods: HashMap::new(),
            problem: None,
            cancelling: false,
            logs_key,
        }
    }
}

/// Runs runs as Kubernetes Jobs.
#[derive(Debug, Clone)]
pub struct KubeExecutor {
    jobs: Api<Job>,
    pods: Api<Pod>,
    opts: JobOptions,
    failures: FailureConfig,
    events: UnboundedSender<ExecutorEvent>,
    active: Arc<Mutex<HashMap<RunId, Tracked>>>,
    logs: PodLogs,
}

/// How often the executor looks for finished Jobs past their TTL.
pub(crate) const JOB_GC_INTERVAL: Duration = Duration::from_secs(60);
/// How long past `ttlSecondsAfterFinished` a finished Job is left to the TTL controller.
pub(crate) const JOB_GC_SLACK: Duration = Duration::from_secs(60);
/// Jobs per page of the garbage collection's list: at most this many whole Jobs are held at a
/// time, whatever the namespace holds (an unpaginated list of 10,000 Jobs is a body of tens of
/// MiB, parsed into several times that).
pub(crate) const JOB_GC_PAGE: u32 = 100;
/// Upper bound on the pages of one garbage collection pass (10 million Jobs): the loop ends even
/// if the API server kept answering continue tokens.
const JOB_GC_MAX_PAGES: usize = 100_000;
/// Objects per page of the watches' initial lists (and re-lists after a watch expired).
pub(crate) const WATCH_PAGE: u32 = 100;

/// What of a pod the executor keeps for a tracked run: what [`pod_problem`] and
/// [`job_failure`] read (name, phase, conditions, container statuses, the first container's
/// image) and no more. A whole pod carries its `managedFields`, volumes, environment and
/// scheduling constraints: kilobytes each that nothing here reads.
#[must_use]
pub(crate) fn trim_pod(pod: Pod) -> Pod {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    let meta = pod.metadata;
    let containers = pod
        .spec
        .map(|s| {
            s.containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    image: c.image,
                    ..Container::default()
                })
                .collect()
        })
        .unwrap_or_default();
    Pod {
        metadata: kube::api::ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            labels: meta.labels,
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            ..kube::api::ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers,
            ..PodSpec::default()
        }),
        status: pod.status,
    }
}

/// The name of `job` if the garbage collection deletes it at `now`: it finished more than its
/// `ttlSecondsAfterFinished` (else `default_ttl`) + [`JOB_GC_SLACK`] ago and is not being
/// deleted already.
pub(crate) fn expired_job(
    job: &Job,
    now: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>,
    default_ttl: i32,
) -> Option<String> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let finished = finished_at(job)?;
    let ttl = job
        .spec
        .as_ref()
        .and_then(|s| s.ttl_seconds_after_finished)
        .unwrap_or(default_ttl);
    let keep = Duration::from_secs(u64::try_from(ttl).unwrap_or(0)) + JOB_GC_SLACK;
    let age = (now - finished).to_std().unwrap_or_default();
    (age >= keep).then(|| job.metadata.name.clone().unwrap_or_default())
}

/// When a Job finished: the transition time of its `Complete` or `Failed` condition.
pub(crate) fn finished_at(
    job: &Job,
) -> Option<k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>> {
    job.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Maps a Kubernetes API error to an executor error.
pub(crate) fn kube_err(what: &str, e: &kube::Error) -> ExecutorError {
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
pub(crate) fn outcome_of(job: &Job, deadline: Duration) -> Option<Outcome> {
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
    /// An executor creating Jobs in `opts.namespace` through `client`, reporting on `events`,
    /// giving runs up after the graces of `failures`. Starts the watches that follow its Jobs
    /// and their pods until `shutdown`. Pod logs are read with the default
    /// [`PodLogOptions`] and not kept (no payload store); see [`KubeExecutor::with_logs`].
    #[must_use]
    pub fn new(
        client: Client,
        opts: JobOptions,
        failures: FailureConfig,
        events: UnboundedSender<ExecutorEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_logs(
            client,
            opts,
            failures,
            (PodLogOptions::default(), None),
            events,
            shutdown,
        )
    }

    /// [`KubeExecutor::new`] with pod logs read as `logs.0` says and, when `logs.1` is given
    /// and `logs.0.keep`, a copy of a run's pod log kept there when its Job finishes
    /// ([`crate::logs`]).
    #[must_use]
    pub fn with_logs(
        client: Client,
        opts: JobOptions,
        failures: FailureConfig,
        logs: (PodLogOptions, Option<Arc<dyn PayloadStore>>),
        events: UnboundedSender<ExecutorEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &opts.namespace);
        let pods: Api<Pod> = Api::namespaced(client, &opts.namespace);
        let logs = PodLogs::new(pods.clone(), jobs.clone(), logs.0, logs.1, shutdown.clone());
        let me = Self {
            jobs,
            pods,
            opts,
            failures,
            events,
            active: Arc::default(),
            logs,
        };
        tokio::spawn(me.clone().follow(shutdown));
        me
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Tracked>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the Jobs this executor labels and their pods, reports the runs that finished and
    /// gives up the ones whose pods are stuck past their grace.
    async fn follow(self, shutdown: CancellationToken) {
        let selector = format!("{LABEL_COMPONENT}={COMPONENT_ALGORITHM_RUN}");
        let mut jobs = watcher(
            self.jobs.clone(),
            watcher::Config::default()
                .labels(&selector)
                .page_size(WATCH_PAGE),
        )
        .default_backoff()
        .boxed();
        let mut pods = watcher(
            self.pods.clone(),
            watcher::Config::default()
                .labels(&selector)
                .page_size(WATCH_PAGE),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        let shortest = [
            self.failures.image_pull_grace,
            self.failures.unschedulable_limit,
            self.failures.config_error_grace,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1));
        let mut tick = tokio::time::interval(
            (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gc = tokio::time::interval(JOB_GC_INTERVAL);
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = gc.tick() => {
                    let me = self.clone();
                    tokio::spawn(async move { me.collect_finished_jobs().await });
                }
                n = jobs.next() => match n {
                    None => return,
                    Some(Err(e)) => {
                        crate::metrics::job_watch_error();
                        tracing::warn!(error = %e, "job watch failed, retrying");
                    }
                    Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                        self.observe(&job);
                    }
                    Some(Ok(watcher::Event::Delete(job))) => self.vanished(&job),
                    Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                },
                n = pods.next() => match n {
                    None => return,
                    Some(Err(e)) => {
                        crate::metrics::job_watch_error();
                        tracing::warn!(error = %e, "pod watch failed, retrying");
                    }
                    Some(Ok(pod)) => self.observe_pod(pod),
                },
                _ = tick.tick() => self.give_up_expired(),
            }
        }
    }

    /// Deletes this executor's Jobs that finished more than `ttlSecondsAfterFinished` +
    /// [`JOB_GC_SLACK`] ago: a backstop for Jobs the TTL controller did not remove (a cluster
    /// without it, a Job whose TTL was removed by hand, Jobs left by an orphaning cancel). Jobs
    /// that have not finished are never touched. Reads the Jobs in pages of [`JOB_GC_PAGE`] (a
    /// pass over 10,000 Jobs holds 100 at a time); a pass whose list fails (its continue token
    /// expired, the API server is away) stops there, the next one starts over. Returns how many
    /// were deleted.
    pub async fn collect_finished_jobs(&self) -> usize {
        let mut lp = kube::api::ListParams::default()
            .labels(&format!("{LABEL_COMPONENT}={COMPONENT_ALGORITHM_RUN}"))
            .limit(JOB_GC_PAGE);
        let mut deleted = 0;
        for _ in 0..JOB_GC_MAX_PAGES {
            let page = match self.jobs.list(&lp).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "job garbage collection stopped, cannot list Jobs");
                    break;
                }
            };
            let now = k8s_openapi::chrono::Utc::now();
            let expired: Vec<String> = page
                .items
                .iter()
                .filter_map(|j| expired_job(j, now, self.opts.ttl_seconds_after_finished))
                .collect();
            let next = page.metadata.continue_.filter(|c| !c.is_empty());
            // The page's Jobs are dropped before the deletes wait on the API budget.
            drop(page.items);
            for name in expired {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match self.jobs.delete(&name, &dp).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(job = %name, error = %e, "could not delete a finished Job")
                    }
                }
            }
            match next {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        if deleted > 0 {
            crate::metrics::jobs_collected(deleted);
            tracing::info!(deleted, "finished Jobs past their TTL deleted");
        }
        deleted
    }

    fn run_of(meta: &kube::api::ObjectMeta) -> Option<RunId> {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(LABEL_REQUEST_ID))
            .and_then(|v| v.parse::<RunId>().ok())
    }

    fn observe(&self, job: &Job) {
        let Some(id) = Self::run_of(&job.metadata) else {
            return;
        };
        let (outcome, deadline, seen) = {
            let active = self.active();
            let Some(tracked) = active.get(&id) else {
                return;
            };
            let Some(outcome) = outcome_of(job, tracked.deadline) else {
                return;
            };
            let seen: Vec<Pod> = tracked.pods.values().cloned().collect();
            (outcome, tracked.deadline, seen)
        };
        if matches!(
            outcome,
            Outcome::Succeeded | Outcome::DeadlineExceeded { .. }
        ) {
            self.finish(id, outcome);
            return;
        }
        // A failure: its cause is in the pods' last termination. The pod watch may not have
        // delivered it yet, so read the pods now (falling back to what the watch saw).
        let (me, job) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let lp = kube::api::ListParams::default().labels(&format!("{LABEL_REQUEST_ID}={id}"));
            let pods = match me.pods.list(&lp).await {
                Ok(list) => list.items,
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "cannot list the pods of a failed Job");
                    seen
                }
            };
            let outcome = job_failure(&job, &pods, deadline).unwrap_or(outcome);
            me.finish(id, outcome);
        });
    }

    /// A tracked run's Job was deleted before it finished, by someone other than this executor
    /// (whose cancel and give-up remove the run from the active set first): the run fails with
    /// that cause rather than staying RUNNING forever.
    fn vanished(&self, job: &Job) {
        let Some(id) = Self::run_of(&job.metadata) else {
            return;
        };
        if outcome_of(job, Duration::ZERO).is_some() {
            // Finished before it was deleted: its outcome was (or is being) reported.
            self.observe(job);
            return;
        }
        if self.active().get(&id).is_some_and(|t| t.cancelling) {
            return;
        }
        self.finish(
            id,
            Outcome::Diagnosed {
                kind: nexus_executor::FailureKind::JobFailed,
                cause: "Algorithm Job was deleted".into(),
                details: format!(
                    "Job {}/{} was deleted by something other than Nexus before it finished (kubectl delete, a namespace cleanup, an operator); submit the run again",
                    self.opts.namespace, id
                ),
            },
        );
    }

    /// Reports `id` finished once (whoever removes it from the active set reports it), then
    /// has a copy of its pod's log kept (after the report: the copy never delays it), unless its
    /// container never ran.
    fn finish(&self, id: RunId, outcome: Outcome) {
        let Some(tracked) = self.active().remove(&id) else {
            return;
        };
        let ran = !matches!(&outcome, Outcome::Diagnosed { kind, .. } if kind.never_started());
        let _ = self.events.send(ExecutorEvent::Finished {
            run_id: id,
            outcome,
            logs_stored: false,
        });
        if ran && let Some(key) = tracked.logs_key {
            self.logs.keep(id, key);
        }
    }

    fn observe_pod(&self, pod: Pod) {
        let Some(id) = Self::run_of(&pod.metadata) else {
            return;
        };
        let problem = pod_problem(&pod);
        let immediate = {
            let mut active = self.active();
            let Some(tracked) = active.get_mut(&id) else {
                return;
            };
            tracked
                .pods
                .insert(pod.metadata.name.clone().unwrap_or_default(), trim_pod(pod));
            match problem {
                None => {
                    tracked.problem = None;
                    None
                }
                Some(p) if p.immediate => Some(p),
                Some(p) => {
                    // The clock starts when the problem is first seen, and restarts when it
                    // changes kind (pulled at last, then unschedulable: a new problem).
                    if tracked
                        .problem
                        .as_ref()
                        .is_none_or(|(old, _)| old.kind != p.kind)
                    {
                        tracked.problem = Some((p, tokio::time::Instant::now()));
                    }
                    None
                }
            }
        };
        if let Some(p) = immediate {
            self.give_up(id, &p);
        }
    }

    fn give_up_expired(&self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<(RunId, PodProblem)> = self
            .active()
            .iter()
            .filter_map(|(id, t)| {
                let (p, since) = t.problem.as_ref()?;
                (now.duration_since(*since) >= self.failures.grace(p.kind))
                    .then(|| (*id, p.clone()))
            })
            .collect();
        for (id, p) in expired {
            self.give_up(id, &p);
        }
    }

    /// Ends run `id` for a pod problem: reports it, then deletes its Job (its pods would
    /// otherwise keep pulling or pending).
    fn give_up(&self, id: RunId, p: &PodProblem) {
        tracing::info!(run_id = %id, cause = %p.cause, details = %p.details, "giving the run up");
        crate::metrics::run_given_up(p.kind.as_str());
        self.finish(id, p.outcome());
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match jobs.delete(&id.to_string(), &dp).await {
                Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "could not delete the Job of a run given up")
                }
            }
        });
    }
}

#[async_trait]
impl Executor for KubeExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        let Some(src) = spec.source.as_deref() else {
            return Err(ExecutorError::new(
                ErrorKind::InvalidInput,
                "the Kubernetes executor launches runs (LaunchSpec::source), not bare processes",
            ));
        };
        let job = render_job(
            &src.run,
            &src.workgroup,
            &src.contract.context(),
            None,
            &self.opts,
        )
        .map_err(|e| ExecutorError::new(ErrorKind::InvalidInput, e.to_string()))?;
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
        self.active()
            .entry(spec.run_id)
            .or_insert_with(|| Tracked::new(deadline, spec.logs_key.clone()));
        crate::metrics::job_created();
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
        if let Some(t) = self.active().get_mut(&run_id) {
            t.cancelling = true;
        }
        match self.jobs.delete(&run_id.to_string(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                if let Some(t) = self.active().get_mut(&run_id) {
                    t.cancelling = false;
                }
                return Err(kube_err("cannot delete the Job", &e));
            }
        }
        self.finish(run_id, Outcome::Cancelled);
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        self.active().keys().copied().collect()
    }

    async fn logs(&self, run_id: RunId, follow: bool) -> Result<Option<LogStream>, ExecutorError> {
        self.logs.logs(run_id, follow).await
    }

    async fn describe(&self, run_id: RunId) -> Vec<String> {
        let name = run_id.to_string();
        let mut facts = Vec::new();
        match self.jobs.get_opt(&name).await {
            Ok(Some(job)) => facts.extend(describe_job(&job)),
            Ok(None) => return facts,
            Err(e) => {
                facts.push(format!("cannot read Job {name}: {e}"));
                return facts;
            }
        }
        let lp = kube::api::ListParams::default().labels(&format!("{LABEL_REQUEST_ID}={name}"));
        match self.pods.list(&lp).await {
            Ok(list) if list.items.is_empty() => facts.push("no pod yet".to_owned()),
            Ok(list) => facts.extend(list.items.iter().flat_map(describe_pod)),
            Err(e) => facts.push(format!("cannot list the Job's pods: {e}")),
        }
        facts
    }
}

/// A Job's counts and conditions, one fact a line.
fn describe_job(job: &Job) -> Vec<String> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let Some(st) = &job.status else {
        return vec![format!("Job {name}: no status yet")];
    };
    let mut out = vec![format!(
        "Job {name}: {} active, {} succeeded, {} failed",
        st.active.unwrap_or(0),
        st.succeeded.unwrap_or(0),
        st.failed.unwrap_or(0)
    )];
    for c in st.conditions.iter().flatten() {
        out.push(format!(
            "Job condition {}={}{}{}",
            c.type_,
            c.status,
            c.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// A pod's phase, unmet conditions and waiting or terminated containers, one fact a line.
fn describe_pod(pod: &Pod) -> Vec<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(st) = &pod.status else {
        return vec![format!("pod {name}: no status yet")];
    };
    let mut out = vec![format!(
        "pod {name}: {}",
        st.phase.as_deref().unwrap_or("Unknown")
    )];
    for c in st
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
    {
        out.push(format!(
            "pod {name} condition {}={}{}{}",
            c.type_,
            c.status,
            c.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    for cs in st.container_statuses.iter().flatten() {
        let Some(state) = &cs.state else { continue };
        if let Some(w) = &state.waiting {
            out.push(format!(
                "container {} waiting{}{}",
                cs.name,
                w.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(t) = &state.terminated {
            out.push(format!(
                "container {} terminated with exit code {}{}",
                cs.name,
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    #[test]
    fn jobs_and_pods_are_described_by_their_conditions() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r1"},
            "status": {"active": 1, "conditions": [
                {"type": "Suspended", "status": "False"}
            ]}
        }))
        .unwrap();
        assert_eq!(
            describe_job(&job),
            vec![
                "Job r1: 1 active, 0 succeeded, 0 failed".to_owned(),
                "Job condition Suspended=False".to_owned()
            ]
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r1-abc"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient cpu."},
                    {"type": "Initialized", "status": "True"}
                ],
                "containerStatuses": [{
                    "name": "algo", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling image"}}
                }]
            }
        }))
        .unwrap();
        assert_eq!(
            describe_pod(&pod),
            vec![
                "pod r1-abc: Pending".to_owned(),
                "pod r1-abc condition PodScheduled=False (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu.".to_owned(),
                "container algo waiting (ImagePullBackOff): back-off pulling image".to_owned(),
            ]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{PodState, pod_status};

    const IMAGE: &str = "registry.example/ml/trainer:2025.1";

    /// A pod as the API server sends it: managedFields, annotations, owner, volumes, environment,
    /// scheduling constraints, and the status of `state`.
    fn whole_pod(state: &PodState) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "r1-abc", "namespace": "runs", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"science.sneaksanddata.com/request-id": "r1", "job-name": "r1"},
                "annotations": {"a": "x".repeat(1000)},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "r1", "uid": "j-1"}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:job-name": {}}}}}]
            },
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "containers": [{"name": "c", "image": IMAGE, "args": ["--a"],
                    "env": [{"name": "E", "value": "x".repeat(1000)}],
                    "resources": {"limits": {"memory": "256Mi"}}}]
            },
            "status": pod_status(state, "c", IMAGE),
        }))
        .unwrap()
    }

    #[test]
    fn a_trimmed_pod_classifies_as_the_whole_pod() {
        let states = [
            PodState::Unschedulable("0/3 nodes are available".into()),
            PodState::ImagePullBackOff,
            PodState::ErrImagePull,
            PodState::ConfigError("secret \"db\" not found".into()),
            PodState::Running,
            PodState::Succeeded,
            PodState::Failed(3),
            PodState::OomKilled,
        ];
        let failed: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r1"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"containers": [{"name": "c",
                "image": IMAGE, "resources": {"limits": {"memory": "256Mi"}}}]}}},
            "status": {"failed": 1, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
        }))
        .unwrap();
        let d = Duration::from_secs(60);
        for state in &states {
            let whole = whole_pod(state);
            let trimmed = trim_pod(whole.clone());
            assert_eq!(
                pod_problem(&trimmed),
                pod_problem(&whole),
                "pod problem of {state:?}"
            );
            assert_eq!(
                job_failure(&failed, std::slice::from_ref(&trimmed), d),
                job_failure(&failed, std::slice::from_ref(&whole), d),
                "job failure with a pod {state:?}"
            );
            assert_eq!(describe_pod(&trimmed), describe_pod(&whole), "{state:?}");
        }
    }

    #[test]
    fn a_trimmed_pod_keeps_no_managed_fields_or_spec_beyond_the_image() {
        let t = trim_pod(whole_pod(&PodState::ImagePullBackOff));
        assert_eq!(t.metadata.name.as_deref(), Some("r1-abc"));
        assert_eq!(
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("science.sneaksanddata.com/request-id"))
                .map(String::as_str),
            Some("r1")
        );
        assert!(t.metadata.managed_fields.is_none());
        assert!(t.metadata.annotations.is_none());
        assert!(t.metadata.owner_references.is_none());
        let spec = t.spec.unwrap();
        assert!(spec.volumes.is_none() && spec.tolerations.is_none());
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].image.as_deref(), Some(IMAGE));
        assert!(spec.containers[0].env.is_none() && spec.containers[0].args.is_none());
        assert!(t.status.is_some());
        let whole = serde_json::to_vec(&whole_pod(&PodState::Running)).unwrap();
        let trimmed = serde_json::to_vec(&trim_pod(whole_pod(&PodState::Running))).unwrap();
        assert!(
            trimmed.len() * 3 < whole.len(),
            "{} of {} bytes kept",
            trimmed.len(),
            whole.len()
        );
    }

    fn finished_job(name: &str, finished: &str, ttl: Option<i32>, deleting: bool) -> Job {
        let mut v = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"template": {}},
            "status": {"conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": finished}]}
        });
        if let Some(t) = ttl {
            v["spec"]["ttlSecondsAfterFinished"] = t.into();
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_garbage_collection_deletes_only_jobs_finished_past_ttl_and_slack() {
        let now = "2026-01-01T01:00:00Z"
            .parse::<k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>>()
            .unwrap();
        // 300 s TTL + 60 s slack = 6 minutes.
        let old = "2026-01-01T00:53:59Z";
        let recent = "2026-01-01T00:54:30Z";
        assert_eq!(
            expired_job(&finished_job("a", old, Some(300), false), now, 300).as_deref(),
            Some("a")
        );
        assert_eq!(
            expired_job(&finished_job("b", recent, Some(300), false), now, 300),
            None
        );
        assert_eq!(
            expired_job(&finished_job("c", old, Some(300), true), now, 300),
            None,
            "being deleted already"
        );
        assert_eq!(
            expired_job(&finished_job("d", old, Some(86_400), false), now, 300),
            None,
            "its own TTL wins"
        );
        assert_eq!(
            expired_job(&finished_job("e", recent, None, false), now, 0).as_deref(),
            Some("e"),
            "no TTL on the Job: the configured one"
        );
        assert_eq!(
            expired_job(&job(serde_json::json!([]), 0), now, 0),
            None,
            "not finished"
        );
    }

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
