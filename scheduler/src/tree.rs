//! Execution trees: cancelling a run cancels every descendant, wherever it runs.
//!
//! Lineage lives in the run store (each run names its parent; `by_parent` finds children), so a
//! cascade never depends on Kubernetes owner references: the tree is walked level by level, each
//! non-terminal descendant is moved to CANCELLED by compare-and-set with a cause naming the
//! cancelled ancestor, and its shard is asked to stop it (a run still queued is dropped by the
//! dispatcher when it sees the stage). Finished descendants are walked through too (their own
//! children may still run).

use std::time::Instant;

use futures::future::join_all;
use nexus_core::run::{CancellationPolicy, Run, RunId, RunPatch, Stage};
use nexus_core::store::StoreError;

use crate::Scheduler;

/// What a cascade did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cascade {
    /// Descendants visited.
    pub descendants: usize,
    /// Descendants moved to CANCELLED by this cascade.
    pub cancelled: usize,
}

/// Cancels every descendant of `ancestor` (already cancelled by `initiator` for `reason`) with
/// `policy`.
///
/// # Errors
/// Store failures (the descendants not reached yet stay as they are; cancelling the ancestor
/// again resumes the cascade).
pub async fn cancel_descendants(
    s: &Scheduler,
    ancestor: &Run,
    policy: CancellationPolicy,
    initiator: &str,
    reason: &str,
) -> Result<Cascade, StoreError> {
    let started = Instant::now();
    let patch = RunPatch::failure(
        "Cancelled with its ancestor",
        format!(
            "ancestor {}/{} was cancelled by '{initiator}', reason: '{reason}'",
            ancestor.algorithm, ancestor.id
        ),
    );
    let limit = s.config.max_children_per_run.saturating_add(1);
    let mut report = Cascade::default();
    let mut frontier: Vec<RunId> = vec![ancestor.id];
    while !frontier.is_empty() {
        let mut children = Vec::new();
        for r in join_all(frontier.iter().map(|p| s.store.by_parent(*p, limit))).await {
            children.extend(r?);
        }
        report.descendants += children.len();
        frontier = children.iter().map(|c| c.id).collect();
        let cancels = children
            .into_iter()
            .filter(|c| !c.stage.is_terminal())
            .map(|c| cancel_one(s, c, policy, &patch));
        for r in join_all(cancels).await {
            if r? {
                report.cancelled += 1;
            }
        }
    }
    if report.descendants > 0 {
        crate::metrics::tree_cancelled(report.cancelled, started.elapsed());
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
    s: &Scheduler,
    mut run: Run,
    policy: CancellationPolicy,
    patch: &RunPatch,
) -> Result<bool, StoreError> {
    for _ in 0..8 {
        if run.stage.is_terminal() {
            return Ok(false);
        }
        match s
            .store
            .transition(run.id, run.stage, Stage::Cancelled, patch.clone())
            .await
        {
            Ok(_) => {
                if let Some(shard) = s.shards.route(&run.shard)
                    && let Err(e) = shard.cancel(run.id, policy).await
                {
                    tracing::warn!(run_id = %run.id, "descendant cancelled in the store, but its process could not be stopped yet: {e}");
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
