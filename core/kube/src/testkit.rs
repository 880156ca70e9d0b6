//! Test helpers: a namespace per test on a real cluster, and the pod statuses a kubelet reports
//! in each state [`crate::classify`] tells apart (fixtures for its table-driven unit tests). The
//! end-to-end tests run on a real cluster (`scripts/kube-cluster.sh`) where the Job controller
//! and the kubelet are real: nothing here plays them. Only with the `testsuite` feature (and in
//! this crate's unit tests).

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};

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
