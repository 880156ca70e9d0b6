//! Execution-tree sweep: runs still going whose parent has ended in a way that ends them too.
//!
//! * A parent CANCELLED: its cascade was interrupted (a scheduler died or the store failed
//!   mid-walk), so the sweep finishes it.
//! * A parent FAILED, SCHEDULING_FAILED or DEADLINE_EXCEEDED: with `on_parent_failure: cancel`
//!   (the default) its subtree is cancelled; with `keep` it runs on.
//! * A parent COMPLETED: its children are kept (it finished without waiting for them).
//!
//! Every change is a compare-and-set; a store error ends the pass without deciding anything.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nexus_link::shard::Shard;
use nexus_link::tree::{OnParentFailure, cancel_descendants, cascade_reason};
use nexus_model::run::{CancellationPolicy, Stage};
use nexus_store::{RunStore, StoreError};
use tokio_util::sync::CancellationToken;

/// Routes a shard name to its shard.
pub type Route = Arc<dyn Fn(&str) -> Option<Arc<dyn Shard>> + Send + Sync>;

/// The sweep.
pub struct TreeSweep {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Shards, to stop cancelled runs.
    pub route: Route,
    /// What a failed parent does to its children.
    pub on_parent_failure: OnParentFailure,
    /// Children read per run at most.
    pub max_children: usize,
}

impl std::fmt::Debug for TreeSweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeSweep")
            .field("on_parent_failure", &self.on_parent_failure)
            .finish_non_exhaustive()
    }
}

impl TreeSweep {
    /// One pass; returns the runs cancelled.
    ///
    /// # Errors
    /// Store failures.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let mut seen: HashSet<nexus_model::run::RunId> = HashSet::new();
        let mut cancelled = 0;
        for stage in [Stage::Buffered, Stage::Running] {
            for owner in self.store.owners_in_stage(stage).await? {
                for run in self.store.by_owner_stage(&owner, stage, 10_000).await? {
                    let Some(p) = run.parent.as_ref() else {
                        continue;
                    };
                    if !seen.insert(p.request_id) {
                        continue;
                    }
                    let Some(parent) = self.store.get(p.request_id).await? else {
                        continue;
                    };
                    let Some(why) = cascade_reason(&parent, self.on_parent_failure) else {
                        continue;
                    };
                    let cause = if parent.stage == Stage::Cancelled {
                        "Cancelled with its ancestor"
                    } else {
                        "Cancelled because an ancestor failed"
                    };
                    let r = cancel_descendants(
                        self.store.as_ref(),
                        self.route.as_ref(),
                        &parent,
                        CancellationPolicy::Background,
                        cause,
                        &why,
                        self.max_children,
                    )
                    .await?;
                    cancelled += r.cancelled;
                }
            }
        }
        Ok(cancelled)
    }

    /// A pass every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        crate::every(interval, shutdown, "execution-tree sweep", || self.pass()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_link::shard::RecordingShard;
    use nexus_model::run::{RunPatch, RunRef};
    use nexus_store::InMemoryRunStore;
    use nexus_store::test_suite::sample_run;

    async fn tree(store: &InMemoryRunStore) -> (nexus_model::run::Run, Vec<nexus_model::run::Run>) {
        let mut parent = sample_run("alg");
        parent.owner = Some("s".into());
        store.insert(parent.clone()).await.unwrap();
        let mut kids = Vec::new();
        for _ in 0..2 {
            let mut k = sample_run("alg");
            k.owner = Some("s".into());
            k.parent = Some(RunRef {
                request_id: parent.id,
                algorithm_name: "alg".into(),
            });
            k.root = parent.id;
            k.depth = 1;
            store.insert(k.clone()).await.unwrap();
            kids.push(k);
        }
        (parent, kids)
    }

    fn sweep(
        store: &Arc<InMemoryRunStore>,
        policy: OnParentFailure,
    ) -> (TreeSweep, Arc<RecordingShard>) {
        let shard = Arc::new(RecordingShard::default());
        let s2: Arc<dyn Shard> = shard.clone();
        (
            TreeSweep {
                store: store.clone(),
                route: Arc::new(move |_| Some(s2.clone())),
                on_parent_failure: policy,
                max_children: 100,
            },
            shard,
        )
    }

    #[tokio::test]
    async fn children_of_failed_and_cancelled_parents_are_cancelled_by_policy() {
        for (end, policy, expect) in [
            (Stage::Failed, OnParentFailure::Cancel, 2),
            (Stage::Failed, OnParentFailure::Keep, 0),
            (Stage::Cancelled, OnParentFailure::Keep, 2),
            (Stage::Completed, OnParentFailure::Cancel, 0),
        ] {
            let store = Arc::new(InMemoryRunStore::default());
            let (parent, kids) = tree(&store).await;
            if end == Stage::Completed {
                store
                    .transition(
                        parent.id,
                        Stage::Buffered,
                        Stage::Running,
                        RunPatch::default(),
                    )
                    .await
                    .unwrap();
                store
                    .transition(parent.id, Stage::Running, end, RunPatch::default())
                    .await
                    .unwrap();
            } else {
                store
                    .transition(
                        parent.id,
                        Stage::Buffered,
                        end,
                        RunPatch::failure("boom", "it broke"),
                    )
                    .await
                    .unwrap();
            }
            let (s, shard) = sweep(&store, policy);
            assert_eq!(s.pass().await.unwrap(), expect, "{end:?} {policy:?}");
            for k in &kids {
                let k = store.get(k.id).await.unwrap().unwrap();
                if expect > 0 {
                    assert_eq!(k.stage, Stage::Cancelled);
                    let d = k.failure_details.unwrap();
                    assert!(d.contains(&parent.id.to_string()), "{d}");
                } else {
                    assert_eq!(k.stage, Stage::Buffered);
                }
            }
            assert_eq!(shard.cancelled().len(), expect);
            assert_eq!(s.pass().await.unwrap(), 0, "idempotent");
        }
    }
}
