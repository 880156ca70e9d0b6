//! Why a run's Job or pod failed, from their *status* (Events are lossy and expire): pure
//! functions of the objects, pinned by table-driven tests; the Kubernetes executor applies them to
//! what its watches see.
//!
//! Two moments:
//! * **Before the container runs** ([`pod_problem`]): an image that cannot be pulled, a pod the
//!   scheduler cannot place, a container that cannot be configured (missing Secret or ConfigMap).
//!   Some are transient (a registry hiccup, a cluster autoscaling up), so each kind has a grace
//!   ([`FailureConfig`]) before the run is given up as SCHEDULING_FAILED; an invalid image name
//!   is final at once.
//! * **After the Job failed** ([`job_failure`]): the Job's `Failed` condition, refined by the last
//!   terminated container (OOM-killed at its memory limit, the exit code a pod failure policy
//!   matched, the exit code of the last attempt).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use serde::{Deserialize, Serialize};

use nexus_executor::{FailureKind, Outcome};

/// How long a pod may show a possibly transient problem before its run is given up (section
/// `failures` of a Kubernetes receiver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// `ErrImagePull` / `ImagePullBackOff` (a registry outage, a tag being pushed).
    #[serde(with = "humantime_serde")]
    pub image_pull_grace: Duration,
    /// `PodScheduled=False` (no node fits yet; the cluster autoscaler may add one).
    #[serde(with = "humantime_serde")]
    pub unschedulable_limit: Duration,
    /// `CreateContainerConfigError` (a Secret or ConfigMap that does not exist yet).
    #[serde(with = "humantime_serde")]
    pub config_error_grace: Duration,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            image_pull_grace: Duration::from_secs(120),
            unschedulable_limit: Duration::from_secs(600),
            config_error_grace: Duration::from_secs(120),
        }
    }
}

impl FailureConfig {
    /// How long `kind` may last before the run is given up.
    #[must_use]
    pub fn grace(&self, kind: FailureKind) -> Duration {
        match kind {
            FailureKind::ImagePull => self.image_pull_grace,
            FailureKind::Unschedulable => self.unschedulable_limit,
            FailureKind::ContainerConfig => self.config_error_grace,
            _ => Duration::ZERO,
        }
    }
}

/// A problem a pod shows before its container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// Which.
    pub kind: FailureKind,
    /// Final at once (no grace), e.g. an invalid image name.
    pub immediate: bool,
    /// Short cause.
    pub cause: String,
    /// What happened and what to do, for a person.
    pub details: String,
}

impl PodProblem {
    /// The outcome of giving the run up for this problem.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        Outcome::Diagnosed {
            kind: self.kind,
            cause: self.cause.clone(),
            details: self.details.clone(),
        }
    }
}

/// The problem `pod` shows before its container runs, if any.
#[must_use]
pub fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    for cs in status.container_statuses.as_deref().unwrap_or_default() {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let msg = w.message.clone().unwrap_or_default();
        let problem = |kind, immediate, cause: &str, details: String| PodProblem {
            kind,
            immediate,
            cause: cause.to_owned(),
            details,
        };
        match w.reason.as_deref() {
            Some("InvalidImageName") => {
                return Some(problem(
                    FailureKind::ImagePull,
                    true,
                    "Invalid container image",
                    format!(
                        "the image reference '{image}' is not valid ({msg}); fix container.registry / image / versionTag of the template"
                    ),
                ));
            }
            Some(r @ ("ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull")) => {
                return Some(problem(
                    FailureKind::ImagePull,
                    r == "ErrImageNeverPull",
                    "Container image could not be pulled",
                    format!(
                        "{r} for '{image}': {msg}; check that the image and tag exist in the registry and that the service account's imagePullSecrets can read it"
                    ),
                ));
            }
            Some(r @ ("CreateContainerConfigError" | "CreateContainerError")) => {
                return Some(problem(
                    FailureKind::ContainerConfig,
                    false,
                    "Container could not be configured",
                    format!(
                        "{r}: {msg}; create the Secret / ConfigMap the template's environment refers to (runtimeEnvironment.environmentVariables, mappedEnvironmentVariables) or fix the reference"
                    ),
                ));
            }
            _ => {}
        }
    }
    let unschedulable = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unschedulable {
        let msg = c.message.clone().unwrap_or_default();
        return Some(PodProblem {
            kind: FailureKind::Unschedulable,
            immediate: false,
            cause: "No node can run the algorithm".into(),
            details: format!(
                "the pod could not be scheduled ({}: {msg}); {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                unschedulable_advice(&msg)
            ),
        });
    }
    None
}

/// What to do about a pod the scheduler cannot place, from its message (kube-scheduler names
/// each filter that rejected the nodes: resources, node affinity / selector, taints), so the
/// advice points at the field to change rather than at every field that could matter.
fn unschedulable_advice(message: &str) -> String {
    let mut advice = Vec::new();
    if message.contains("Insufficient") {
        advice.push(
            "lower computeResources (cpuLimit, memoryLimit, customResources) or add capacity to the cluster",
        );
    }
    if message.contains("node affinity") || message.contains("node selector") {
        advice.push(
            "no node has the labels the workgroup's affinity requires: fix the workgroup's affinity or label the nodes meant for it",
        );
    }
    if message.contains("taint") {
        advice.push(
            "the nodes have taints the workgroup does not tolerate: add tolerations to the workgroup or free nodes of the taints",
        );
    }
    if advice.is_empty() {
        return "lower computeResources (cpuLimit, memoryLimit, customResources) or the workgroup's tolerations / affinity, or add capacity to the cluster".to_owned();
    }
    advice.join("; ")
}

/// The most recent terminated container state among `pods` (the last attempt's exit).
fn last_termination(pods: &[Pod]) -> Option<&ContainerStateTerminated> {
    pods.iter()
        .flat_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or_default()
        })
        .filter_map(|cs| cs.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))
}

fn memory_limit(job: &Job) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .map(|q| q.0.clone())
}

/// The outcome of a Job with a `Failed` condition, using its pods' last termination for the
/// cause; `None` when the Job has not failed. `deadline` is its `activeDeadlineSeconds`.
#[must_use]
pub fn job_failure(job: &Job, pods: &[Pod], deadline: Duration) -> Option<Outcome> {
    let status = job.status.as_ref()?;
    let failed = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    let reason = failed.reason.as_deref().unwrap_or_default();
    if reason == "DeadlineExceeded" {
        return Some(Outcome::DeadlineExceeded { deadline });
    }
    let attempts = status.failed.unwrap_or(0).max(1);
    let retries = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(0);
    let last = last_termination(pods);
    let code = last.map(|t| t.exit_code);
    let (kind, cause, details) = if last.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
        let limit = memory_limit(job).unwrap_or_else(|| "(none set)".into());
        (
            FailureKind::OutOfMemory,
            "Algorithm ran out of memory".to_owned(),
            format!(
                "the container was killed for exceeding its memory limit of {limit} (computeResources.memoryLimit) after {attempts} attempt(s); raise the limit or reduce the algorithm's memory use"
            ),
        )
    } else if reason == "PodFailurePolicy" {
        (
            FailureKind::PodFailurePolicy,
            "Algorithm failed with a fatal exit code".to_owned(),
            format!(
                "the container exited with code {}, listed in errorHandlingBehaviour.fatalExitCodes, so the Job was failed without further retries",
                code.map_or_else(|| "?".to_owned(), |c| c.to_string())
            ),
        )
    } else if reason == "BackoffLimitExceeded" {
        let how = match last {
            Some(t) => format!(
                "the last attempt exited with code {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .filter(|r| *r != "Error")
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            None => "no pod status was seen".to_owned(),
        };
        (
            FailureKind::BackoffLimitExceeded,
            "Algorithm failed after all its retries".to_owned(),
            format!(
                "{attempts} attempt(s) failed; {how}; runtimeEnvironment.maximumRetries is {retries} (the Job's backoffLimit); see the run's logs"
            ),
        )
    } else {
        (
            FailureKind::JobFailed,
            "Algorithm Job failed".to_owned(),
            format!(
                "the Job failed ({reason}: {})",
                failed.message.as_deref().unwrap_or_default()
            ),
        )
    };
    Some(Outcome::Diagnosed {
        kind,
        cause,
        details,
    })
}

#[cfg(all(test, feature = "client"))]
mod tests {
    use super::*;
    use crate::testkit::{PodState, pod_status};

    fn pod(state: &PodState) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "registry.example/ml/trainer:2025.1"}]},
            "status": pod_status(state, "c", "registry.example/ml/trainer:2025.1"),
        }))
        .unwrap()
    }

    #[test]
    fn problems_before_the_container_runs() {
        type Want = Option<(FailureKind, bool, &'static str)>;
        let table: &[(PodState, Want)] = &[
            (PodState::Running, None),
            (PodState::Succeeded, None),
            (PodState::Failed(1), None),
            (PodState::OomKilled, None),
            (
                PodState::ImagePullBackOff,
                Some((FailureKind::ImagePull, false, "ml/trainer:2025.1")),
            ),
            (
                PodState::ErrImagePull,
                Some((FailureKind::ImagePull, false, "imagePullSecrets")),
            ),
            (
                PodState::ConfigError("secret \"db\" not found".into()),
                Some((
                    FailureKind::ContainerConfig,
                    false,
                    "secret \"db\" not found",
                )),
            ),
            (
                PodState::Unschedulable("0/3 nodes are available: 3 Insufficient memory.".into()),
                Some((FailureKind::Unschedulable, false, "3 Insufficient memory")),
            ),
        ];
        for (state, want) in table {
            let got = pod_problem(&pod(state));
            match (got, want) {
                (None, None) => {}
                (Some(p), Some((kind, immediate, needle))) => {
                    assert_eq!((p.kind, p.immediate), (*kind, *immediate), "{state:?}");
                    assert!(p.details.contains(needle), "{state:?}: {}", p.details);
                }
                (got, want) => panic!("{state:?}: got {got:?}, want {want:?}"),
            }
        }
        // An invalid image name is final at once.
        let mut p = pod(&PodState::ErrImagePull);
        p.status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .waiting
            .as_mut()
            .unwrap()
            .reason = Some("InvalidImageName".into());
        let got = pod_problem(&p).unwrap();
        assert!(got.immediate);
        assert_eq!(got.cause, "Invalid container image");
    }

    /// The advice follows the filters kube-scheduler names (messages as v1.36 writes them).
    #[test]
    fn unschedulable_pods_get_advice_for_what_rejected_them() {
        let details = |msg: &str| {
            pod_problem(&pod(&PodState::Unschedulable(msg.into())))
                .unwrap()
                .details
        };
        let affinity = details(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
        );
        assert!(affinity.contains("workgroup's affinity"), "{affinity}");
        assert!(!affinity.contains("computeResources"), "{affinity}");
        let memory = details("0/3 nodes are available: 3 Insufficient memory.");
        assert!(memory.contains("lower computeResources"), "{memory}");
        assert!(!memory.contains("affinity"), "{memory}");
        let taint =
            details("0/2 nodes are available: 2 node(s) had untolerated taint {gpu: true}.");
        assert!(taint.contains("add tolerations"), "{taint}");
        let both = details(
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {gpu: true}.",
        );
        assert!(
            both.contains("computeResources") && both.contains("tolerations"),
            "{both}"
        );
        let other =
            details("0/1 nodes are available: 1 node(s) had volume node affinity conflict.");
        assert!(other.contains("affinity"), "{other}");
        let unknown = details("no nodes available to schedule pods");
        assert!(unknown.contains("add capacity"), "{unknown}");
    }

    #[test]
    fn every_transient_kind_has_its_grace() {
        let c = FailureConfig::default();
        assert_eq!(c.grace(FailureKind::ImagePull), Duration::from_secs(120));
        assert_eq!(
            c.grace(FailureKind::Unschedulable),
            Duration::from_secs(600)
        );
        assert_eq!(
            c.grace(FailureKind::ContainerConfig),
            Duration::from_secs(120)
        );
        assert_eq!(c.grace(FailureKind::OutOfMemory), Duration::ZERO);
    }

    fn failed_job(reason: &str, failed: i32) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {
                "backoffLimit": 3,
                "template": {"spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"limits": {"memory": "256Mi", "cpu": "1"}}}]}}
            },
            "status": {"failed": failed, "conditions": [
                {"type": "Failed", "status": "True", "reason": reason, "message": "Job has reached the specified backoff limit"}
            ]}
        }))
        .unwrap()
    }

    fn diagnosed(o: Option<Outcome>) -> (FailureKind, String, String) {
        match o {
            Some(Outcome::Diagnosed {
                kind,
                cause,
                details,
            }) => (kind, cause, details),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn job_failures_name_their_cause() {
        let d = Duration::from_secs(60);
        let running: Job = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "j"}, "status": {"active": 1}}),
        )
        .unwrap();
        assert_eq!(job_failure(&running, &[], d), None);
        assert_eq!(
            job_failure(&failed_job("DeadlineExceeded", 1), &[], d),
            Some(Outcome::DeadlineExceeded { deadline: d })
        );
        // OOM-killed: names the memory limit, whatever the Job's reason.
        let (k, cause, details) = diagnosed(job_failure(
            &failed_job("BackoffLimitExceeded", 4),
            &[pod(&PodState::Failed(1)), pod(&PodState::OomKilled)],
            d,
        ));
        assert_eq!(k, FailureKind::OutOfMemory);
        assert_eq!(cause, "Algorithm ran out of memory");
        assert!(details.contains("memory limit of 256Mi"), "{details}");
        assert!(details.contains("4 attempt(s)"), "{details}");
        // Fatal exit code through the pod failure policy.
        let (k, _, details) = diagnosed(job_failure(
            &failed_job("PodFailurePolicy", 1),
            &[pod(&PodState::Failed(2))],
            d,
        ));
        assert_eq!(k, FailureKind::PodFailurePolicy);
        assert!(details.contains("exited with code 2"), "{details}");
        assert!(details.contains("fatalExitCodes"), "{details}");
        // Retries exhausted.
        let (k, _, details) = diagnosed(job_failure(
            &failed_job("BackoffLimitExceeded", 4),
            &[pod(&PodState::Failed(3))],
            d,
        ));
        assert_eq!(k, FailureKind::BackoffLimitExceeded);
        assert!(details.contains("4 attempt(s) failed"), "{details}");
        assert!(details.contains("exited with code 3"), "{details}");
        assert!(details.contains("maximumRetries is 3"), "{details}");
        let (_, _, details) =
            diagnosed(job_failure(&failed_job("BackoffLimitExceeded", 4), &[], d));
        assert!(details.contains("no pod status was seen"), "{details}");
        // Anything else keeps the controller's reason and message.
        let (k, _, details) = diagnosed(job_failure(
            &failed_job("MaxFailedIndexesExceeded", 1),
            &[],
            d,
        ));
        assert_eq!(k, FailureKind::JobFailed);
        assert!(details.contains("MaxFailedIndexesExceeded"), "{details}");
    }
}
