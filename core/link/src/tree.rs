//! Execution trees: cancelling a run's descendants, wherever they run.
//!
//! Lineage lives in the run store (each run names its parent; `by_parent` finds children), so a
//! cascade never depends on Kubernetes owner references: the tree is walked level by level, each
//! non-terminal descendant is moved to CANCELLED by compare-and-set with a cause naming the
//! ancestor, and its shard is asked to stop it. Finished descendants are walked through too
//! (their own children may still run). The schedulers cascade when a run is cancelled; the
//! supervisor finishes cascades that were interrupted and applies the parent-failure policy.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::shard::Shard;
use nexus_model::run::{CancellationPolicy, Run, RunId, RunPatch, Stage};
use nexus_store::{RunStore, StoreError};

/// What happens to the running descendants of a run that ends FAILED, SCHEDULING_FAILED or
/// DEADLINE_EXCEEDED (section `supervisor`, key `on_parent_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnParentFailure {
    /// They are cancelled (nobody will read their results).
    #[default]
    Cancel,
    /// They run to their end.
    Keep,
}

/// What a cascade did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cascade {
    /// Descendants visited.
    pub descendants: usize,
    /// Descendants moved to CANCELLED by this cascade.
    pub cancelled: usize,
}

/// Cancels every descendant of `ancestor` with `policy`; `why` is the cause's details (it names
/// the ancestor and what happened to it). `route` gives the shard of a run's shard name.
///
/// # Errors
/// Store failures (descendants not reached yet stay as they are; a later cascade resumes).
pub async fn cancel_descendants(
    store: &dyn RunStore,
    route: &(dyn Fn(&str) -> Option<Arc<dyn Shard>> + Send + Sync),
    ancestor: &Run,
    policy: CancellationPolicy,
    cause: &str,
    why: &str,
    max_children: usize,
) -> Result<Cascade, StoreError> {
    let started = Instant::now();
    let patch =
        RunPatch::failure(cause, why).by("tree", format!("an ancestor was cancelled: {cause}"));
    let limit = max_children.saturating_add(1);
    let mut report = Cascade::default();
    let mut frontier: Vec<RunId> = vec![ancestor.id];
    while !frontier.is_empty() {
        let mut children = Vec::new();
        for r in join_all(frontier.iter().map(|p| store.by_parent(*p, limit))).await {
            children.extend(r?);
        }
        report.descendants += children.len();
        frontier = children.iter().map(|c| c.id).collect();
        let cancels = children
            .into_iter()
            .filter(|c| !c.stage.is_terminal())
            .map(|c| cancel_one(store, route, c, policy, &patch));
        for r in join_all(cancels).await {
            if r? {
                report.cancelled += 1;
            }
        }
    }
    if report.cancelled > 0 {
        crate::metrics::cascade(report.cancelled, started.elapsed());
        tracing::info!(
            run_id = %ancestor.id,
            descendants = report.descendants,
            cancelled = report.cancelled,
            elapsed_ms = started.elapsed().as_millis(),
            "cancelled the run's descendants"
        );
    }
    Ok(report)
}

/// Moves `run` to CANCELLED (compare-and-set, following stage changes) and stops it on its
/// shard; `Ok(false)` when it finished first.
async fn cancel_one(
    store: &dyn RunStore,
    route: &(dyn Fn(&str) -> Option<Arc<dyn Shard>> + Send + Sync),
    mut run: Run,
    policy: CancellationPolicy,
    patch: &RunPatch,
) -> Result<bool, StoreError> {
    for _ in 0..8 {
        if run.stage.is_terminal() {
            return Ok(false);
        }
        match store
            .transition(run.id, run.stage, Stage::Cancelled, patch.clone())
            .await
        {
            Ok(_) => {
                if let Some(shard) = route(&run.shard)
                    && let Err(e) = shard.cancel(run.id, policy).await
                {
                    tracing::warn!(run_id = %run.id, error = %e, "descendant cancelled in the store, but its process could not be stopped yet");
                }
                return Ok(true);
            }
            Err(StoreError::Conflict { current, .. }) => run.stage = current,
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Why a run's descendants are cancelled, given how it ended (`None`: they are kept).
#[must_use]
pub fn cascade_reason(parent: &Run, on_failure: OnParentFailure) -> Option<String> {
    match parent.stage {
        Stage::Cancelled => Some(format!(
            "ancestor {}/{} was cancelled ({})",
            parent.algorithm,
            parent.id,
            parent
                .failure_details
                .as_deref()
                .unwrap_or("no reason given")
        )),
        Stage::Failed | Stage::SchedulingFailed | Stage::DeadlineExceeded
            if on_failure == OnParentFailure::Cancel =>
        {
            Some(format!(
                "ancestor {}/{} ended {} ({}); supervisor.on_parent_failure is cancel",
                parent.algorithm,
                parent.id,
                parent.stage,
                parent.failure_cause.as_deref().unwrap_or("no cause given")
            ))
        }
        _ => None,
    }
}
