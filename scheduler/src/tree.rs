//! Execution trees on the scheduler: cancelling a run cancels every descendant, wherever it runs
//! (the walk itself is [`nexus_link::tree::cancel_descendants`]). [`cancel`] is the one cancel of
//! both front ends (HTTP v1 and gRPC `CancelRun`).

pub use nexus_link::tree::Cascade;
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, Run, RunId, RunPatch, Stage};
use nexus_store::StoreError;

use crate::Scheduler;

/// Cancels every descendant of `ancestor` (already cancelled by `initiator` for `reason`) with
/// `policy`.
///
/// # Errors
/// Store failures (the descendants not reached yet stay as they are; cancelling the ancestor
/// again resumes the cascade, and so does the supervisor).
pub async fn cancel_descendants(
    s: &Scheduler,
    ancestor: &Run,
    policy: CancellationPolicy,
    initiator: &str,
    reason: &str,
) -> Result<Cascade, StoreError> {
    let route = |shard: &str| s.shards.route(shard);
    let why = format!(
        "ancestor {}/{} was cancelled by '{initiator}', reason: '{reason}'",
        ancestor.algorithm, ancestor.id
    );
    let r = nexus_link::tree::cancel_descendants(
        s.store.as_ref(),
        &route,
        ancestor,
        policy,
        "Cancelled with its ancestor",
        &why,
        s.config.max_children_per_run,
    )
    .await?;
    if r.descendants > 0 {
        crate::metrics::tree_cancelled(r.cancelled);
    }
    Ok(r)
}

/// Why a cancel changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The run had already finished (a cancelled run resumed its cascade first).
    #[error("run {id} already finished as {stage}; nothing was changed")]
    Finished {
        /// The run.
        id: RunId,
        /// Its final stage.
        stage: Stage,
    },
    /// The run kept changing stage under the compare-and-set.
    #[error("the run changed stage repeatedly while cancelling; retry")]
    Unsettled,
    /// The run store failed.
    #[error("run store unavailable, try again: {source}")]
    Store {
        /// The store's error.
        #[from]
        source: StoreError,
    },
}

impl CancelError {
    /// Returns the kind (a finished or moving run is a conflict).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            CancelError::Finished { .. } | CancelError::Unsettled => ErrorKind::Conflict,
            CancelError::Store { source } => source.kind(),
        }
    }
}

/// Cancels `run` (compare-and-set, following stage changes), stops it on its shard, then
/// cancels every descendant. A run already CANCELLED resumes its cascade and is refused like any
/// finished run.
///
/// # Errors
/// [`CancelError::Finished`] for a finished run, [`CancelError::Unsettled`], store failures.
pub async fn cancel(
    s: &Scheduler,
    mut run: Run,
    policy: CancellationPolicy,
    initiator: &str,
    reason: &str,
) -> Result<Cascade, CancelError> {
    let patch = RunPatch::failure(
        format!("Cancelled by '{initiator}'"),
        format!("Run cancelled, reason: '{reason}'"),
    )
    .by("scheduler", format!("cancelled by '{initiator}': {reason}"));
    // Compare-and-set loop: the stage may move (BUFFERED → RUNNING) between read and write.
    for _ in 0..8 {
        if run.stage.is_terminal() {
            if run.stage == Stage::Cancelled {
                // Cancelled before: finish a cascade an earlier cancel may not have completed.
                cancel_descendants(s, &run, policy, initiator, reason).await?;
            }
            return Err(CancelError::Finished {
                id: run.id,
                stage: run.stage,
            });
        }
        match s
            .store
            .transition(run.id, run.stage, Stage::Cancelled, patch.clone())
            .await
        {
            Ok(_) => {
                // An external run has no process here: its engine learns of the cancel by
                // reading the run.
                if !run.external
                    && let Some(shard) = s.shards.route(&run.shard)
                    && let Err(e) = shard.cancel(run.id, policy).await
                {
                    tracing::warn!(
                        run_id = %run.id,
                        error = %e,
                        "run cancelled in the store, but its process could not be stopped yet"
                    );
                }
                // Every descendant, wherever it runs, is cancelled with a cause naming this run.
                return Ok(cancel_descendants(s, &run, policy, initiator, reason).await?);
            }
            Err(StoreError::Conflict { current, .. }) => run.stage = current,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CancelError::Unsettled)
}
