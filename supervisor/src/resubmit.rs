//! Distributed-mode recovery: the `nexus supervisor` process hands runs orphaned by a lost
//! component straight to their shard.
//!
//! One [`Resubmitter::pass`] every `recovery_interval`:
//! * **BUFFERED runs of a scheduler whose lease lapsed or was released** (crash, kill, graceful
//!   shutdown with runs still queued) are claimed by compare-and-set (owner → this supervisor) and
//!   submitted to their shard ahead of anything else.
//! * **RUNNING runs of a receiver whose lease lapsed** (the receiver was killed or lost with its
//!   runs) are claimed the same way and launched again on their shard (`relaunch`), at most
//!   `max_relaunches` times beyond the algorithm's own retries; past that they end FAILED with a
//!   cause naming the lost receiver.
//! * Runs this supervisor claimed earlier and could not hand over yet (their shard was down) are
//!   submitted again: a claim is kept until the run is launched (the receiver then owns it), so
//!   nothing claimed is dropped, and a supervisor that dies with claims is itself a lapsed owner.
//!
//! Every decision is a compare-and-set on the stored record; a store error skips the pass (it is
//! never taken as "nothing to do" or "not found").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nexus_core::catalog::Catalog;
use nexus_core::error::ErrorKind;
use nexus_core::run::{Run, RunPatch, Stage, now_millis};
use nexus_core::shard::{Dispatch, Shard};
use nexus_core::sign::Signer;
use nexus_core::store::{RunStore, StoreError};
use tokio_util::sync::CancellationToken;

/// Prefix of receiver lease / owner ids (`receiver/<shard>/<instance>`).
pub const RECEIVER_PREFIX: &str = "receiver/";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Runs claimed from lapsed owners.
    pub claimed: usize,
    /// Runs handed to their shard (BUFFERED) or launched again (RUNNING).
    pub submitted: usize,
    /// Runs kept for the next pass (their shard did not take them).
    pub deferred: usize,
    /// Runs ended with a cause (no workgroup / shard, relaunches exhausted, refused).
    pub failed: usize,
}

/// The supervisor's resubmission of orphaned runs (distributed mode).
#[derive(Debug)]
pub struct Resubmitter {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Templates and workgroups (the workgroup travels with a dispatch).
    pub catalog: Catalog,
    /// Receivers by shard name.
    pub shards: HashMap<String, Arc<dyn Shard>>,
    /// Signs the payload URLs of resubmitted runs.
    pub signer: Signer,
    /// Base URL of the schedulers' payload route (`/data/v1/payloads/...`), usually the load
    /// balancer in front of them.
    pub payload_base: String,
    /// This supervisor's owner id (`supervisor/...`).
    pub instance_id: String,
    /// Launches of a run beyond its algorithm's retries after receivers were lost.
    pub max_relaunches: u32,
    /// Longest wait for a shard to answer one submission.
    pub submit_timeout: Duration,
}

impl Resubmitter {
    /// One recovery pass.
    ///
    /// # Errors
    /// Store failures (the pass stops; nothing is decided on a store error).
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        let now = now_millis();
        let alive: HashSet<String> = self
            .store
            .leases()
            .await?
            .into_iter()
            .filter(|l| l.expires_at > now)
            .map(|l| l.owner)
            .collect();
        let mut report = PassReport::default();
        for stage in [Stage::Buffered, Stage::Running] {
            for owner in self.store.owners_in_stage(stage).await? {
                let mine = owner == self.instance_id;
                if !mine && alive.contains(&owner) {
                    continue;
                }
                let runs = self.store.by_owner_stage(&owner, stage, 10_000).await?;
                for run in runs {
                    self.settle(run, &owner, mine, &mut report).await?;
                }
            }
        }
        if report != PassReport::default() {
            tracing::info!(?report, "resubmitted orphaned runs");
        }
        Ok(report)
    }

    async fn settle(
        &self,
        run: Run,
        owner: &str,
        mine: bool,
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let relaunch = run.stage == Stage::Running;
        if relaunch && !mine && !owner.starts_with(RECEIVER_PREFIX) {
            // RUNNING under an owner that is not a receiver: a standalone process's local run; it
            // is settled by that mode's recovery, not launched again here.
            return Ok(());
        }
        let mut run = if mine {
            run
        } else {
            let claim = RunPatch {
                owner: Some(Some(self.instance_id.clone())),
                ..RunPatch::default()
            };
            if relaunch {
                let allowed = run.applied_configuration.maximum_retries() + 1 + self.max_relaunches;
                if run.attempts >= allowed {
                    let mut p = RunPatch::failure(
                        "Receiver lost while the run was running",
                        format!(
                            "receiver {owner} stopped answering (its lease lapsed) during attempt {}; \
                             the run was launched {} time(s), the limit (maximumRetries + 1 + supervisor.max_relaunches = {allowed}) is reached; submit it again",
                            run.attempts, run.attempts
                        ),
                    );
                    p.owner = claim.owner;
                    if self
                        .store
                        .transition(run.id, Stage::Running, Stage::Failed, p)
                        .await
                        .is_ok()
                    {
                        report.failed += 1;
                    }
                    return Ok(());
                }
            }
            match self
                .store
                .transition(run.id, run.stage, run.stage, claim)
                .await
            {
                Ok(r) => {
                    report.claimed += 1;
                    r
                }
                // Someone else (a live owner, a cancel, a completion) changed it first.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        run.owner = Some(self.instance_id.clone());
        self.submit(run, relaunch, report).await;
        Ok(())
    }

    async fn submit(&self, run: Run, relaunch: bool, report: &mut PassReport) {
        let snap = self.catalog.snapshot();
        let Some(wg) = snap.workgroups.get(&run.workgroup) else {
            let d = format!(
                "workgroup '{}' no longer exists, so the run cannot be resubmitted",
                run.workgroup
            );
            self.fail(&run, "Workgroup no longer exists", &d, report)
                .await;
            return;
        };
        let Some(shard) = self.shards.get(&run.shard).cloned() else {
            let d = format!(
                "no receiver is configured for shard '{}' in the supervisor's `shards`",
                run.shard
            );
            self.fail(&run, "Unknown shard", &d, report).await;
            return;
        };
        let id = run.id;
        let d = Dispatch {
            payload_url: nexus_core::sign::payload_url(&self.payload_base, &self.signer, &run),
            workgroup: wg.spec.clone(),
            run,
            relaunch,
        };
        let stage = d.run.stage;
        let shard_name = d.run.shard.clone();
        match tokio::time::timeout(self.submit_timeout, shard.submit(d)).await {
            Ok(Ok(())) => {
                report.submitted += 1;
                metrics::counter!("nexus_supervisor_resubmitted_total", "outcome" => if relaunch { "relaunched" } else { "dispatched" }).increment(1);
            }
            Ok(Err(e)) if e.kind.is_retryable() || e.kind == ErrorKind::Unauthorized => {
                tracing::warn!(run_id = %id, shard = %shard_name, "resubmission deferred to the next pass: {e}");
                report.deferred += 1;
            }
            Ok(Err(e)) => {
                let to = if stage == Stage::Running {
                    Stage::Failed
                } else {
                    Stage::SchedulingFailed
                };
                let p = RunPatch::failure("Algorithm could not be launched", e.message);
                let _ = self.store.transition(id, stage, to, p).await;
                report.failed += 1;
            }
            Err(_) => {
                tracing::warn!(run_id = %id, shard = %shard_name, "shard did not answer the resubmission in time; next pass");
                report.deferred += 1;
            }
        }
    }

    async fn fail(&self, run: &Run, cause: &str, details: &str, report: &mut PassReport) {
        let to = if run.stage == Stage::Running {
            Stage::Failed
        } else {
            Stage::SchedulingFailed
        };
        if self
            .store
            .transition(run.id, run.stage, to, RunPatch::failure(cause, details))
            .await
            .is_ok()
        {
            report.failed += 1;
        }
    }

    /// Holds this supervisor's lease and runs a pass every `interval` until `shutdown`, then
    /// releases the lease (its pending claims are taken over by a successor at once).
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let ttl = i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut tick = tokio::time::interval(interval.min(lease_ttl / 3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = tokio::time::Instant::now() - interval;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self
                .store
                .heartbeat(&self.instance_id, now_millis(), ttl)
                .await
            {
                tracing::warn!("supervisor lease heartbeat failed: {e}");
                continue;
            }
            if last_pass.elapsed() < interval {
                continue;
            }
            last_pass = tokio::time::Instant::now();
            match self.pass().await {
                Ok(_) => metrics::counter!("nexus_supervisor_passes_total", "outcome" => "ok")
                    .increment(1),
                Err(e) => {
                    metrics::counter!("nexus_supervisor_passes_total", "outcome" => "store_error")
                        .increment(1);
                    tracing::warn!("recovery pass skipped, store unavailable: {e}");
                }
            }
        }
        if let Err(e) = self.store.release_lease(&self.instance_id).await {
            tracing::warn!("could not release the supervisor lease: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::catalog::Snapshot;
    use nexus_core::shard::RecordingShard;
    use nexus_core::spec::Workgroup;
    use nexus_core::store::InMemoryRunStore;
    use nexus_core::store::test_suite::sample_run;

    fn fixture() -> (Arc<InMemoryRunStore>, Arc<RecordingShard>, Resubmitter) {
        let store = Arc::new(InMemoryRunStore::default());
        let shard = Arc::new(RecordingShard::default());
        let mut snap = Snapshot::default();
        snap.workgroups
            .insert("wg".into(), Workgroup::on_cluster("wg", "a"));
        let mut shards: HashMap<String, Arc<dyn Shard>> = HashMap::new();
        shards.insert("a".into(), shard.clone());
        let r = Resubmitter {
            store: store.clone(),
            catalog: Catalog::new(snap),
            shards,
            signer: Signer::random(),
            payload_base: "http://lb".into(),
            instance_id: "supervisor/s1".into(),
            max_relaunches: 1,
            submit_timeout: Duration::from_secs(2),
        };
        (store, shard, r)
    }

    fn run_in(owner: &str) -> Run {
        let mut r = sample_run("alg");
        r.workgroup = "wg".into();
        r.shard = "a".into();
        r.owner = Some(owner.into());
        r.stage = Stage::Buffered;
        r
    }

    async fn put(store: &InMemoryRunStore, stage: Stage, owner: &str, attempts: u32) -> Run {
        let r = run_in(owner);
        store.insert(r.clone()).await.unwrap();
        if stage == Stage::Running {
            let p = RunPatch {
                attempts: Some(attempts),
                ..RunPatch::default()
            };
            store
                .transition(r.id, Stage::Buffered, Stage::Running, p)
                .await
                .unwrap();
        }
        r
    }

    #[tokio::test]
    async fn orphans_of_lapsed_owners_are_claimed_and_handed_to_their_shard() {
        let (store, shard, r) = fixture();
        let now = now_millis();
        store
            .heartbeat("scheduler-live", now, 60_000)
            .await
            .unwrap();
        store
            .heartbeat("receiver/a/live", now, 60_000)
            .await
            .unwrap();
        let live_b = put(&store, Stage::Buffered, "scheduler-live", 0).await;
        let dead_b = put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        let live_r = put(&store, Stage::Running, "receiver/a/live", 1).await;
        let dead_r = put(&store, Stage::Running, "receiver/a/dead", 1).await;
        let spent = put(&store, Stage::Running, "receiver/a/dead", 2).await;
        let rep = r.pass().await.unwrap();
        assert_eq!(rep.claimed, 2, "{rep:?}");
        assert_eq!(rep.submitted, 2, "{rep:?}");
        assert_eq!(rep.failed, 1, "{rep:?}");
        let sent = shard.submitted();
        assert!(
            sent.contains(&dead_b.id) && sent.contains(&dead_r.id),
            "{sent:?}"
        );
        assert!(!sent.contains(&live_b.id) && !sent.contains(&live_r.id));
        let s = store.get(spent.id).await.unwrap().unwrap();
        assert_eq!(s.stage, Stage::Failed);
        assert!(s.failure_details.unwrap().contains("receiver/a/dead"));
        let d = store.get(dead_b.id).await.unwrap().unwrap();
        assert_eq!(d.owner.as_deref(), Some("supervisor/s1"));
    }

    #[tokio::test]
    async fn a_claim_is_kept_until_the_shard_takes_the_run() {
        let (store, shard, r) = fixture();
        let b = put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        shard.fail_next([ErrorKind::Unavailable]);
        let rep = r.pass().await.unwrap();
        assert_eq!((rep.claimed, rep.deferred, rep.submitted), (1, 1, 0));
        assert!(shard.submitted().is_empty());
        let rep = r.pass().await.unwrap();
        assert_eq!((rep.claimed, rep.submitted), (0, 1), "{rep:?}");
        assert_eq!(shard.submitted(), vec![b.id]);
    }

    #[tokio::test]
    async fn unknown_shard_or_workgroup_ends_the_run_with_a_cause() {
        let (store, _shard, r) = fixture();
        let mut x = run_in("scheduler-dead");
        x.shard = "nowhere".into();
        store.insert(x.clone()).await.unwrap();
        let rep = r.pass().await.unwrap();
        assert_eq!(rep.failed, 1);
        let got = store.get(x.id).await.unwrap().unwrap();
        assert_eq!(got.stage, Stage::SchedulingFailed);
        assert!(got.failure_details.unwrap().contains("nowhere"));
    }
}
