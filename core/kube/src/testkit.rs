//! Test helpers that play the parts of a cluster the test API server does not run: the Job
//! controller (creating a Job's pod, setting the Job's terminal conditions) and the kubelet
//! (patching the pod's status: running, succeeded, failed with an exit code, OOM-killed, image
//! pull back-off, unschedulable). Everything goes through the real API server, so its validation
//! of pods and status updates applies. Only with the `testsuite` feature.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// Timestamp used for every status field (the API server wants one; its value is irrelevant).
const NOW: &str = "2026-01-01T00:00:00Z";

/// What the kubelet reports for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Pending with `PodScheduled=False`, reason `Unschedulable` and this scheduler message.
    Unschedulable(String),
    /// Pending with the container waiting in `ImagePullBackOff`.
    ImagePullBackOff,
    /// Pending with the container waiting in `ErrImagePull`.
    ErrImagePull,
    /// Pending with the container waiting in `CreateContainerConfigError` and this message.
    ConfigError(String),
    /// Running and ready.
    Running,
    /// Succeeded (exit code 0).
    Succeeded,
    /// Failed with this exit code (reason `Error`).
    Failed(i32),
    /// Failed with exit code 137, reason `OOMKilled`.
    OomKilled,
}

/// How the Job controller ends a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// `SuccessCriteriaMet` then `Complete`.
    Complete,
    /// `FailureTarget` then `Failed` with this reason (`DeadlineExceeded`,
    /// `BackoffLimitExceeded`, `PodFailurePolicy`).
    Failed(String),
}

/// Creates a namespace `<prefix>-<random>` for one test and returns its name.
///
/// # Errors
/// The API server refused it.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String, String> {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .map_err(|e| e.to_string())?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("cannot create namespace {name}: {e}"))?;
    Ok(name)
}

/// Creates the pod the Job controller would create for `job` (its template, the controller's
/// labels, owned by the Job) and returns its name. The pod's service account is created first
/// when missing (the test server runs no service-account controller).
///
/// # Errors
/// The API server refused the service account or the pod.
pub async fn create_pod(client: &Client, job: &Job) -> Result<String, String> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let job_name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or("the Job has no spec")?;
    let mut spec = template.spec.ok_or("the Job's pod template has no spec")?;
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    ensure_service_account(client, &ns, &sa).await?;
    spec.service_account_name = Some(sa);
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", job_name.as_str()),
        ("job-name", job_name.as_str()),
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{job_name}-"),
            "namespace": ns,
            "labels": labels,
            "annotations": template.metadata.as_ref().and_then(|m| m.annotations.clone()),
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": spec,
    }))
    .map_err(|e| format!("cannot build the pod: {e}"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| format!("the API server refused the Job's pod: {e}"))?;
    Ok(created.name_any())
}

async fn ensure_service_account(client: &Client, ns: &str, name: &str) -> Result<(), String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}
    }))
    .map_err(|e| e.to_string())?;
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("cannot create service account {ns}/{name}: {e}")),
    }
}

/// The pod status the kubelet would report in `state` for a pod whose container is `container`
/// running `image`.
#[must_use]
pub fn pod_status(state: &PodState, container: &str, image: &str) -> serde_json::Value {
    let waiting = |reason: &str, message: &str| serde_json::json!({"waiting": {"reason": reason, "message": message}});
    let terminated = |code: i32, reason: &str| {
        serde_json::json!({"terminated": {
            "exitCode": code, "reason": reason, "startedAt": NOW, "finishedAt": NOW
        }})
    };
    let (phase, scheduled, container_state, ready) = match state {
        PodState::Unschedulable(msg) => {
            return serde_json::json!({
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": msg, "lastTransitionTime": NOW
                }]
            });
        }
        PodState::ImagePullBackOff => (
            "Pending",
            true,
            waiting(
                "ImagePullBackOff",
                &format!("Back-off pulling image \"{image}\""),
            ),
            false,
        ),
        PodState::ErrImagePull => (
            "Pending",
            true,
            waiting(
                "ErrImagePull",
                &format!("failed to pull and unpack image \"{image}\": not found"),
            ),
            false,
        ),
        PodState::ConfigError(msg) => (
            "Pending",
            true,
            waiting("CreateContainerConfigError", msg),
            false,
        ),
        PodState::Running => (
            "Running",
            true,
            serde_json::json!({"running": {"startedAt": NOW}}),
            true,
        ),
        PodState::Succeeded => ("Succeeded", true, terminated(0, "Completed"), false),
        PodState::Failed(code) => ("Failed", true, terminated(*code, "Error"), false),
        PodState::OomKilled => ("Failed", true, terminated(137, "OOMKilled"), false),
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    serde_json::json!({
        "phase": phase,
        "startTime": NOW,
        "conditions": [
            {"type": "PodScheduled", "status": flag(scheduled), "lastTransitionTime": NOW},
            {"type": "Ready", "status": flag(ready), "lastTransitionTime": NOW}
        ],
        "containerStatuses": [{
            "name": container, "image": image, "imageID": "",
            "ready": ready, "started": ready, "restartCount": 0,
            "state": container_state
        }]
    })
}

/// Plays the kubelet: sets the status of pod `name` in `ns` to `state`.
///
/// # Errors
/// The API server refused the status update.
pub async fn set_pod_state(
    client: &Client,
    ns: &str,
    name: &str,
    state: &PodState,
) -> Result<Pod, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods
        .get(name)
        .await
        .map_err(|e| format!("cannot read pod {ns}/{name}: {e}"))?;
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or("the pod has no container")?;
    let status = pod_status(state, &c.name, c.image.as_deref().unwrap_or_default());
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|e| format!("the API server refused the pod status {state:?}: {e}"))
}

/// Plays the Job controller: ends Job `name` in `ns` the way the controller would.
///
/// # Errors
/// The API server refused the status update.
pub async fn end_job(client: &Client, ns: &str, name: &str, end: &JobEnd) -> Result<Job, String> {
    let status = match end {
        JobEnd::Complete => serde_json::json!({
            "startTime": NOW, "completionTime": NOW, "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": NOW},
                {"type": "Complete", "status": "True", "lastTransitionTime": NOW}
            ]
        }),
        JobEnd::Failed(reason) => serde_json::json!({
            "startTime": NOW, "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": NOW},
                {"type": "Failed", "status": "True", "reason": reason, "lastTransitionTime": NOW}
            ]
        }),
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|e| format!("the API server refused the Job status {end:?}: {e}"))
}
