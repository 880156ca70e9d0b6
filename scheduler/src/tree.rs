//! Execution trees on the scheduler: cancelling a run cancels every descendant, wherever it runs
//! (the walk itself is [`nexus_link::tree::cancel_descendants`]).

pub use nexus_link::tree::Cascade;
use nexus_model::run::{CancellationPolicy, Run};
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
