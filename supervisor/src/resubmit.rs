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
//! never taken as "nothing to do" or "not found"). Several supervisors may run: they elect a
//! leader through the run store ([`RunStore::lead`]) or a Kubernetes Lease
//! ([`nexus_store::leader`]) and only the leader makes passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nexus_link::shard::{Dispatch, Shard};
use nexus_model::catalog::Catalog;
use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunPatch, Stage, now_millis};
use nexus_model::sign::Signer;
use nexus_store::leader::Leadership;
use nexus_store::{RunStore, StoreError};
use tokio_util::sync::CancellationToken;

/// The leadership supervisors contend for: only its holder runs recovery passes.
pub const LEADER: &str = "supervisor";

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
    /// The earliest expiry of a live lease whose owner has runs to take over if it lapses: the
    /// next pass is due then rather than a whole interval later.
    pub next_lapse: Option<Millis>,
}

impl std::ops::AddAssign for PassReport {
    fn add_assign(&mut self, o: Self) {
        self.claimed += o.claimed;
        self.submitted += o.submitted;
        self.deferred += o.deferred;
        self.failed += o.failed;
        self.next_lapse = match (self.next_lapse, o.next_lapse) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl PassReport {
    fn did_something(&self) -> bool {
        self.claimed + self.submitted + self.deferred + self.failed > 0
    }
}

/// How long after a lease's expiry the pass that takes its runs over starts (clock skew between
/// components is absorbed by the lease TTL itself).
const LAPSE_MARGIN: Duration = Duration::from_millis(50);

/// Runs of one owner read per query (an owner with more is read again after these are claimed).
const PAGE: usize = 10_000;

/// Runs settled concurrently in one pass (claims are independent compare-and-sets; the gRPC shard
/// client gathers concurrent submissions into batches).
pub const PASS_CONCURRENCY: usize = 64;

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
    /// The leadership supervisors contend for: [`nexus_store::leader::StoreLeadership`] named [`LEADER`] in the run
    /// store, or a Kubernetes Lease (`supervisor.leader_election`).
    pub leadership: Arc<dyn Leadership>,
}

impl Resubmitter {
    /// One recovery pass.
    ///
    /// # Errors
    /// Store failures (the pass stops; nothing is decided on a store error).
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        let now = now_millis();
        let alive: HashMap<String, Millis> = self
            .store
            .leases()
            .await?
            .into_iter()
            .filter(|l| l.expires_at > now)
            .map(|l| (l.owner, l.expires_at))
            .collect();
        let mut report = PassReport::default();
        for stage in [Stage::Buffered, Stage::Running] {
            for owner in self.store.owners_in_stage(stage).await? {
                let mine = owner == self.instance_id;
                if !mine && let Some(&expires_at) = alive.get(&owner) {
                    report += PassReport {
                        next_lapse: Some(expires_at),
                        ..PassReport::default()
                    };
                    continue;
                }
                loop {
                    let runs = self.store.by_owner_stage(&owner, stage, PAGE).await?;
                    let full = runs.len() == PAGE;
                    let mut settled = futures::stream::iter(runs)
                        .map(|run| self.settle(run, &owner, mine))
                        .buffer_unordered(PASS_CONCURRENCY);
                    let mut page = PassReport::default();
                    while let Some(r) = settled.next().await {
                        page += r?;
                    }
                    let progress = page.claimed + page.failed > 0;
                    report += page;
                    // A lapsed owner's runs leave it as they are claimed: read the next page.
                    if !(full && !mine && progress) {
                        break;
                    }
                }
            }
        }
        if report.did_something() {
            tracing::info!(?report, "resubmitted orphaned runs");
        }
        Ok(report)
    }

    async fn settle(&self, run: Run, owner: &str, mine: bool) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        let relaunch = run.stage == Stage::Running;
        if relaunch && !mine && !owner.starts_with(RECEIVER_PREFIX) {
            // RUNNING under an owner that is not a receiver: a standalone process's local run; it
            // is settled by that mode's recovery, not launched again here.
            return Ok(report);
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
                    return Ok(report);
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
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => return Ok(report),
                Err(e) => return Err(e),
            }
        };
        run.owner = Some(self.instance_id.clone());
        self.submit(run, relaunch, &mut report).await;
        Ok(report)
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
            payload_url: nexus_model::sign::payload_url(&self.payload_base, &self.signer, &run),
            workgroup: wg.spec.clone(),
            run,
            relaunch,
        };
        let stage = d.run.stage;
        let shard_name = d.run.shard.clone();
        // A receiver over its launch limit answers RESOURCE_EXHAUSTED with a hint: wait it out
        // within this pass (bounded by submit_timeout) rather than a whole recovery interval.
        let give_up_at = tokio::time::Instant::now() + self.submit_timeout;
        let submitted = loop {
            let r = tokio::time::timeout_at(give_up_at, shard.submit(d.clone())).await;
            match &r {
                Ok(Err(e)) if e.kind == ErrorKind::ResourceExhausted => {
                    let wait = e.retry_after.unwrap_or(Duration::from_millis(100));
                    if tokio::time::Instant::now() + wait >= give_up_at {
                        break r;
                    }
                    tokio::time::sleep(wait).await;
                }
                _ => break r,
            }
        };
        match submitted {
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

    /// Holds this supervisor's lease, contends for the leadership (every tick, a
    /// compare-and-set in the run store or on a Kubernetes Lease), and while it leads runs a pass every `interval`, until
    /// `shutdown`; then resigns and releases the lease, so a standby takes over (and takes over
    /// this one's pending claims) at its next tick instead of after the lease lapses. Standbys
    /// tick every `lease_ttl / 10` (at most `interval`), so a lost leader is replaced within
    /// about 1.1 lease periods.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let tick = interval.min(lease_ttl / 10).max(Duration::from_millis(10));
        // The lease and the leadership are renewed concurrently with the passes (in the same
        // task, so nothing outlives this future), and a long pass (thousands of orphans) never
        // lets them lapse under it.
        let (lead_tx, mut lead_rx) = tokio::sync::watch::channel(false);
        let keeper_stop = CancellationToken::new();
        let keeper = self
            .clone()
            .keep_leadership(tick, lease_ttl, lead_tx, keeper_stop.clone());
        let passes = async {
            loop {
                // Stand by until leading.
                while !*lead_rx.borrow_and_update() {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        r = lead_rx.changed() => if r.is_err() { break },
                    }
                }
                if shutdown.is_cancelled() {
                    break;
                }
                let started = tokio::time::Instant::now();
                let mut due = started + interval;
                match self.pass().await {
                    Ok(r) => {
                        metrics::counter!("nexus_supervisor_passes_total", "outcome" => "ok")
                            .increment(1);
                        // An owner with runs whose lease lapses before the next pass is due:
                        // wake just after it lapses, so its runs wait at most the lease TTL.
                        if let Some(at) = r.next_lapse {
                            let wait = Duration::from_millis(
                                u64::try_from(at.saturating_sub(now_millis())).unwrap_or(0),
                            ) + LAPSE_MARGIN;
                            due = due.min(tokio::time::Instant::now() + wait);
                        }
                    }
                    Err(e) => {
                        metrics::counter!("nexus_supervisor_passes_total", "outcome" => "store_error")
                            .increment(1);
                        tracing::warn!("recovery pass skipped, store unavailable: {e}");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            keeper_stop.cancel();
        };
        tokio::join!(keeper, passes);
    }

    /// Renews this supervisor's lease and contends for the leadership every `tick`, publishing
    /// whether it leads; on `stop`, resigns (when leading) and releases the lease.
    async fn keep_leadership(
        self: Arc<Self>,
        tick: Duration,
        lease_ttl: Duration,
        leading_tx: tokio::sync::watch::Sender<bool>,
        stop: CancellationToken,
    ) {
        let ttl = i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let now = now_millis();
            if let Err(e) = self.store.heartbeat(&self.instance_id, now, ttl).await {
                tracing::warn!("supervisor lease heartbeat failed: {e}");
                continue;
            }
            let lead = match self.leadership.try_lead(&self.instance_id, lease_ttl).await {
                Ok(l) => l,
                Err(e) => {
                    // Unknown: stand by (two leaders would still be safe, every claim is a
                    // compare-and-set, but wasteful); if it lapses, another takes over.
                    tracing::warn!("leader election failed, standing by: {e}");
                    false
                }
            };
            if lead != leading {
                leading = lead;
                metrics::gauge!("nexus_supervisor_leader").set(if lead { 1.0 } else { 0.0 });
                if lead {
                    tracing::info!(id = %self.instance_id, through = %self.leadership.describe(), "this supervisor leads recovery");
                } else {
                    tracing::info!(id = %self.instance_id, "standing by (another supervisor leads)");
                }
                let _ = leading_tx.send(lead);
            }
        }
        if leading && let Err(e) = self.leadership.resign(&self.instance_id).await {
            tracing::warn!(
                "could not resign the supervisor leadership (a standby takes over when it lapses): {e}"
            );
        }
        if let Err(e) = self.store.release_lease(&self.instance_id).await {
            tracing::warn!("could not release the supervisor lease: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_link::shard::RecordingShard;
    use nexus_model::catalog::Snapshot;
    use nexus_model::spec::Workgroup;
    use nexus_store::InMemoryRunStore;
    use nexus_store::leader::StoreLeadership;
    use nexus_store::test_suite::sample_run;

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
            leadership: Arc::new(StoreLeadership::new(store.clone(), LEADER)),
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

    fn supervisor(
        store: &Arc<InMemoryRunStore>,
        catalog: &Catalog,
        id: &str,
    ) -> (Arc<RecordingShard>, Arc<Resubmitter>) {
        let shard = Arc::new(RecordingShard::default());
        let mut shards: HashMap<String, Arc<dyn Shard>> = HashMap::new();
        shards.insert("a".into(), shard.clone());
        let r = Resubmitter {
            store: store.clone(),
            catalog: catalog.clone(),
            shards,
            signer: Signer::random(),
            payload_base: "http://lb".into(),
            instance_id: id.into(),
            max_relaunches: 1,
            submit_timeout: Duration::from_secs(2),
            leadership: Arc::new(StoreLeadership::new(store.clone(), LEADER)),
        };
        (shard, Arc::new(r))
    }

    /// Waits (at most 20 s, a liveness bound) until `shard` has `n` submissions.
    async fn submitted(shard: &RecordingShard, n: usize) {
        let t0 = tokio::time::Instant::now();
        while shard.submitted().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(20), "not resubmitted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn leader_is(store: &InMemoryRunStore, id: &str) {
        // A renewal by `id` keeps the leadership if and only if `id` holds it.
        while store
            .lead(LEADER, id, now_millis(), 60_000)
            .await
            .unwrap()
            .owner
            != id
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Two supervisors on one store: only the leader resubmits; when it shuts down it resigns
    /// and the standby takes over without waiting for the leadership to lapse (60 s here, longer
    /// than the test's 20 s liveness bound).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_resubmits_and_a_standby_takes_over_on_shutdown() {
        let (store, _, first) = fixture();
        let (shard_a, a) = supervisor(&store, &first.catalog, "supervisor/a");
        let (shard_b, b) = supervisor(&store, &first.catalog, "supervisor/b");
        let (ttl, every) = (Duration::from_secs(60), Duration::from_millis(20));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let task_a = tokio::spawn(a.run(every, ttl, stop_a.clone()));
        leader_is(&store, "supervisor/a").await;
        let task_b = tokio::spawn(b.run(every, ttl, stop_b.clone()));
        for _ in 0..3 {
            put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        }
        submitted(&shard_a, 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(shard_b.submitted().is_empty(), "the standby resubmitted");

        stop_a.cancel();
        task_a.await.unwrap();
        put(&store, Stage::Buffered, "scheduler-dead-2", 0).await;
        submitted(&shard_b, 1).await;
        assert_eq!(shard_a.submitted().len(), 3);
        stop_b.cancel();
        task_b.await.unwrap();
        assert_eq!(
            store
                .lead(LEADER, "probe", now_millis(), 1)
                .await
                .unwrap()
                .owner,
            "probe",
            "a supervisor that stops resigns"
        );
    }

    /// A leader lost without resigning is replaced once its leadership lapses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_leader_is_replaced_after_its_leadership_lapses() {
        let (store, _, first) = fixture();
        let (_, a) = supervisor(&store, &first.catalog, "supervisor/a");
        let (shard_b, b) = supervisor(&store, &first.catalog, "supervisor/b");
        let (ttl, every) = (Duration::from_millis(500), Duration::from_millis(20));
        let task_a = tokio::spawn(a.run(every, ttl, CancellationToken::new()));
        while store.leases().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task_a.abort();
        let _ = task_a.await;
        let stop_b = CancellationToken::new();
        let task_b = tokio::spawn(b.run(every, ttl, stop_b.clone()));
        put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        submitted(&shard_b, 1).await;
        stop_b.cancel();
        task_b.await.unwrap();
    }
}
