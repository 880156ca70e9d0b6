//! Orphan recovery, the one path for every mode: runs left by an owner that died or shut down
//! are claimed by compare-and-set (owner → this recoverer) and handed over again.
//!
//! One [`Recovery::pass`] every `recovery_interval`:
//! * **BUFFERED runs of an owner whose lease lapsed or was released** (crash, kill, graceful
//!   shutdown with runs still queued) are claimed and handed over ahead of anything else.
//! * **RUNNING runs whose process was lost** are claimed the same way and launched again while
//!   their attempts allow; past that they end FAILED with a cause naming what was lost.
//! * Runs claimed earlier and not handed over yet (their shard was down) are handed over again:
//!   a claim is kept until the run is launched, so nothing claimed is dropped.
//!
//! What differs between modes is a [`Policy`] (who counts as alive, how a lost attempt is
//! counted) and a [`Handoff`] (where claimed runs go): in standalone the local scheduler's queue
//! ([`Policy::Local`], [`QueueHandoff`]); in distributed mode the shard's receivers over gRPC
//! ([`Policy::Shards`], [`ShardHandoff`]).
//!
//! Every decision is a compare-and-set on the stored record; a store error skips the pass (it is
//! never taken as "nothing to do" or "not found"). Several supervisors may run: they elect a
//! leader through the run store ([`RunStore::lead`]) or a Kubernetes Lease
//! ([`nexus_store::leader`]) and only the leader makes passes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nexus_executor::Executor;
use nexus_http::Readiness;
use nexus_link::shard::{Dispatch, Shard};
use nexus_model::catalog::Catalog;
use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunPatch, Stage, now_millis};
use nexus_model::sign::Signer;
use nexus_store::leader::Leadership;
use nexus_store::{RunStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// The leadership supervisors contend for: only its holder runs recovery passes.
pub const LEADER: &str = "supervisor";

/// Age after which a batch still being written is taken as abandoned by its submitter and
/// finished by recovery ([`RunStore::resume_batches`]).
const BATCH_GRACE_MS: Millis = 60_000;

/// Prefix of receiver lease / owner ids (`receiver/<shard>/<instance>`).
pub const RECEIVER_PREFIX: &str = "receiver/";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Runs claimed from lapsed owners.
    pub claimed: usize,
    /// Runs handed over (BUFFERED) or launched again (RUNNING).
    pub submitted: usize,
    /// Runs kept for the next pass (their shard did not take them).
    pub deferred: usize,
    /// Runs ended with a cause (no workgroup / shard, attempts exhausted, refused).
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

    /// Runs recovered: handed over again or settled with a cause.
    #[must_use]
    pub fn recovered(&self) -> usize {
        self.submitted + self.failed
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

/// What became of one hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Taken: queued or launched.
    Taken,
    /// Not taken now (the shard is down or busy); the claim is kept for the next pass.
    Deferred,
    /// Refused for good; the run ends with this cause and details.
    Refused {
        /// Short cause.
        cause: String,
        /// What happened and what to do.
        details: String,
    },
}

/// Where claimed runs go.
#[async_trait]
pub trait Handoff: Send + Sync + std::fmt::Debug {
    /// Hands a claimed run over: a BUFFERED run to be dispatched, a RUNNING one (`relaunch`) to
    /// be launched again. Never fails the pass: what went wrong is in the returned [`Handover`].
    async fn hand_over(&self, run: Run, relaunch: bool) -> Handover;
}

/// Standalone: claimed runs go ahead of the local scheduler's queue (a RUNNING one as a
/// relaunch).
pub struct QueueHandoff(pub Arc<dyn Fn(&Run) + Send + Sync>);

impl std::fmt::Debug for QueueHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueHandoff")
    }
}

#[async_trait]
impl Handoff for QueueHandoff {
    async fn hand_over(&self, run: Run, _relaunch: bool) -> Handover {
        (self.0)(&run);
        Handover::Taken
    }
}

/// Distributed mode: claimed runs go straight to their shard's receivers.
#[derive(Debug)]
pub struct ShardHandoff {
    /// Templates and workgroups (the workgroup travels with a dispatch).
    pub catalog: Catalog,
    /// Receivers by shard name.
    pub shards: HashMap<String, Arc<dyn Shard>>,
    /// Signs the payload URLs of resubmitted runs.
    pub signer: Signer,
    /// Base URL of the schedulers' payload route (`/data/v1/payloads/...`), usually the load
    /// balancer in front of them.
    pub payload_base: String,
    /// Longest wait for a shard to answer one submission.
    pub submit_timeout: Duration,
}

#[async_trait]
impl Handoff for ShardHandoff {
    async fn hand_over(&self, run: Run, relaunch: bool) -> Handover {
        let snap = self.catalog.snapshot();
        let Some(wg) = snap.workgroups.get(&run.workgroup) else {
            return Handover::Refused {
                cause: "Workgroup no longer exists".into(),
                details: format!(
                    "workgroup '{}' no longer exists, so the run cannot be resubmitted",
                    run.workgroup
                ),
            };
        };
        let Some(shard) = self.shards.get(&run.shard).cloned() else {
            return Handover::Refused {
                cause: "Unknown shard".into(),
                details: format!(
                    "no receiver is configured for shard '{}' in the supervisor's `shards`",
                    run.shard
                ),
            };
        };
        let id = run.id;
        let shard_name = run.shard.clone();
        let d = Dispatch {
            payload_url: nexus_model::sign::payload_url(&self.payload_base, &self.signer, &run),
            workgroup: wg.spec.clone(),
            run,
            relaunch,
            scheduler_url: self.payload_base.clone(),
        };
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
            Ok(Ok(())) => Handover::Taken,
            Ok(Err(e)) if e.kind.is_retryable() || e.kind == ErrorKind::Unauthorized => {
                tracing::warn!(run_id = %id, shard = %shard_name, error = %e, "resubmission deferred to the next pass");
                Handover::Deferred
            }
            Ok(Err(e)) => Handover::Refused {
                cause: "Algorithm could not be launched".into(),
                details: e.message,
            },
            Err(_) => {
                tracing::warn!(run_id = %id, shard = %shard_name, "shard did not answer the resubmission in time; next pass");
                Handover::Deferred
            }
        }
    }
}

/// Who counts as alive, and how a lost attempt is counted.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Standalone: this process's scheduler, executor and recovery share one owner id, so runs
    /// it owns are its own (never claims). A RUNNING run whose process `executor` does not know
    /// lost its attempt with a previous process: its process is stopped if still alive, and it
    /// is launched again while `maximumRetries` allows (the lost attempt counted here).
    Local {
        /// Every other owner is dead at once (the embedded store is locked by this process).
        exclusive_store: bool,
        /// The local executor (which runs are still alive here).
        executor: Arc<dyn Executor>,
    },
    /// Distributed mode: the recoverer owns no runs but its claims. RUNNING runs of a lapsed
    /// receiver are launched again (the receiver counts the attempt), at most `max_relaunches`
    /// times beyond the algorithm's own retries. RUNNING runs of other owners (a standalone
    /// process sharing the store) are left to that mode's recovery.
    Shards {
        /// Launches of a run beyond its algorithm's retries after receivers were lost.
        max_relaunches: u32,
    },
}

/// The recovery of orphaned runs.
#[derive(Debug)]
pub struct Recovery {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// This recoverer's owner id (`supervisor/...` in distributed mode; standalone shares the
    /// process's id).
    pub instance_id: String,
    /// Who counts as alive, how lost attempts count.
    pub policy: Policy,
    /// Where claimed runs go.
    pub handoff: Arc<dyn Handoff>,
    /// Most runs settled per second (`supervisor.recovery_rate`).
    pub rate: u32,
}

/// Runs settled between two checks of the pace and of a shutdown.
const CHUNK: usize = 256;

/// How a recoverer keeps its own lease and contends for leading (distributed mode; several
/// supervisors may run, one leads).
#[derive(Debug, Clone)]
pub struct Leading {
    /// The leadership contended for ([`nexus_store::leader::StoreLeadership`] named [`LEADER`],
    /// or a Kubernetes Lease).
    pub leadership: Arc<dyn Leadership>,
    /// The recoverer's lease and leadership period.
    pub lease_ttl: Duration,
}

impl Recovery {
    /// One recovery pass.
    ///
    /// # Errors
    /// Store failures (the pass stops; nothing is decided on a store error).
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        self.pass_until(&CancellationToken::new()).await
    }

    /// One recovery pass that ends early (what it did so far reported) when `stop` is cancelled,
    /// and settles at most [`Recovery::rate`] runs per second.
    ///
    /// # Errors
    /// Store failures (the pass stops; nothing is decided on a store error).
    pub async fn pass_until(&self, stop: &CancellationToken) -> Result<PassReport, StoreError> {
        let now = now_millis();
        let started = tokio::time::Instant::now();
        let per_run = Duration::from_secs(1) / self.rate.max(1);
        let mut settled_total: u32 = 0;
        let exclusive = matches!(
            self.policy,
            Policy::Local {
                exclusive_store: true,
                ..
            }
        );
        let alive: HashMap<String, Millis> = self
            .store
            .leases()
            .await?
            .into_iter()
            .filter(|l| l.expires_at > now && (!exclusive || l.owner == self.instance_id))
            .map(|l| (l.owner, l.expires_at))
            .collect();
        let active: HashSet<_> = match &self.policy {
            Policy::Local { executor, .. } => executor.active().await.into_iter().collect(),
            Policy::Shards { .. } => HashSet::new(),
        };
        let local = matches!(self.policy, Policy::Local { .. });
        // Batches whose submitter died while writing their runs are finished first, so their
        // runs are then claimed like any other orphan (stores writing a batch in one
        // transaction have none).
        let resumed = self
            .store
            .resume_batches(now.saturating_sub(BATCH_GRACE_MS), 64)
            .await?;
        if resumed > 0 {
            tracing::info!(batches = resumed, "finished batches left half-written");
        }
        let mut report = PassReport::default();
        for stage in [Stage::Buffered, Stage::Running] {
            for owner in self.store.owners_in_stage(stage).await? {
                let mine = owner == self.instance_id;
                if mine && local {
                    // Standalone: this process's own queue and executor hold them.
                    continue;
                }
                if !mine && let Some(&expires_at) = alive.get(&owner) {
                    report += PassReport {
                        next_lapse: Some(expires_at),
                        ..PassReport::default()
                    };
                    continue;
                }
                loop {
                    if stop.is_cancelled() {
                        return Ok(report);
                    }
                    let runs = self.store.by_owner_stage(&owner, stage, PAGE).await?;
                    let full = runs.len() == PAGE;
                    let mut page = PassReport::default();
                    let mut runs = runs.into_iter().peekable();
                    while runs.peek().is_some() {
                        // Paced: the pass is at most `rate` runs per second ahead of its start.
                        let due = started + per_run * settled_total;
                        tokio::select! {
                            () = stop.cancelled() => {
                                report += page;
                                return Ok(report);
                            }
                            () = tokio::time::sleep_until(due) => {}
                        }
                        let chunk: Vec<Run> = runs.by_ref().take(CHUNK).collect();
                        settled_total = settled_total
                            .saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
                        // After a stop no settle starts; those in flight finish.
                        let settled = futures::stream::iter(chunk)
                            .take_until(stop.cancelled())
                            .map(|run| self.settle(run, &owner, mine, &active))
                            .buffer_unordered(PASS_CONCURRENCY);
                        tokio::pin!(settled);
                        while let Some(r) = settled.next().await {
                            page += r?;
                        }
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
            tracing::info!(
                claimed = report.claimed,
                submitted = report.submitted,
                deferred = report.deferred,
                failed = report.failed,
                "recovered orphaned runs"
            );
        }
        Ok(report)
    }

    async fn settle(
        &self,
        run: Run,
        owner: &str,
        mine: bool,
        active: &HashSet<nexus_model::run::RunId>,
    ) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        // An external run is executed elsewhere: nothing here launched it, nothing relaunches
        // it (it has no owner; this guards against one given by mistake).
        if run.external {
            return Ok(report);
        }
        let relaunch = run.stage == Stage::Running;
        let claim = RunPatch {
            owner: Some(Some(self.instance_id.clone())),
            ..RunPatch::default()
        }
        .by(
            "supervisor",
            format!(
                "owner {owner} lapsed; claimed by {}{}",
                self.instance_id,
                if relaunch {
                    " to launch it again"
                } else {
                    " to queue it again"
                }
            ),
        );
        let mut run = if mine {
            run
        } else {
            let patch = if relaunch {
                match self.lost_attempt(&run, owner, active) {
                    Lost::StillRunning => {
                        // Its process is alive here: only the owner changes.
                        let _ = self
                            .store
                            .transition(run.id, run.stage, run.stage, claim)
                            .await;
                        return Ok(report);
                    }
                    Lost::Skip => return Ok(report),
                    Lost::Exhausted { cause, details } => {
                        let why = format!("owner {owner} lapsed and no attempt is left: {cause}");
                        let mut p = RunPatch::failure(cause, details).by("supervisor", why);
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
                    Lost::Relaunch { attempts } => RunPatch { attempts, ..claim },
                }
            } else {
                claim
            };
            match self
                .store
                .transition(run.id, run.stage, run.stage, patch)
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
        let (id, stage) = (run.id, run.stage);
        if relaunch {
            tracing::warn!(run_id = %id, attempt = run.attempts, lost_with = %owner, "the process of a RUNNING run was lost; launching it again");
        }
        match self.handoff.hand_over(run, relaunch).await {
            Handover::Taken => {
                report.submitted += 1;
                metrics::resubmitted(relaunch);
            }
            Handover::Deferred => report.deferred += 1,
            Handover::Refused { cause, details } => {
                let to = if stage == Stage::Running {
                    Stage::Failed
                } else {
                    Stage::SchedulingFailed
                };
                if self
                    .store
                    .transition(
                        id,
                        stage,
                        to,
                        RunPatch::failure(cause.clone(), details)
                            .by("supervisor", format!("hand-over refused: {cause}")),
                    )
                    .await
                    .is_ok()
                {
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Decides what a RUNNING run of the lost `owner` becomes.
    fn lost_attempt(
        &self,
        run: &Run,
        owner: &str,
        active: &HashSet<nexus_model::run::RunId>,
    ) -> Lost {
        match &self.policy {
            Policy::Local { .. } => {
                if active.contains(&run.id) {
                    return Lost::StillRunning;
                }
                stop_orphan_process(run);
                // A lost attempt is an attempt: launch again while retries remain.
                let used = run.attempts.max(1);
                let allowed = run
                    .applied_configuration
                    .maximum_retries()
                    .saturating_add(1);
                if used < allowed {
                    return Lost::Relaunch {
                        attempts: Some(used),
                    };
                }
                Lost::Exhausted {
                    cause: "Algorithm process was lost",
                    details: format!(
                        "the nexus process that ran attempt {used} stopped ({owner}) while the run was RUNNING, and runtimeEnvironment.maximumRetries ({}) allows no further attempt; submit the run again",
                        allowed - 1
                    ),
                }
            }
            Policy::Shards { max_relaunches } => {
                if !owner.starts_with(RECEIVER_PREFIX) {
                    // A standalone process's local run: settled by that mode's recovery.
                    return Lost::Skip;
                }
                let allowed = run.applied_configuration.maximum_retries() + 1 + max_relaunches;
                if run.attempts >= allowed {
                    return Lost::Exhausted {
                        cause: "Receiver lost while the run was running",
                        details: format!(
                            "receiver {owner} stopped answering (its lease lapsed) during attempt {}; \
                             the run was launched {} time(s), the limit (maximumRetries + 1 + supervisor.max_relaunches = {allowed}) is reached; submit it again",
                            run.attempts, run.attempts
                        ),
                    };
                }
                Lost::Relaunch { attempts: None }
            }
        }
    }

    /// Runs a pass every `interval` until `shutdown` (the first at once). With `leading`, holds
    /// this recoverer's lease and contends for the leadership (every tick, a compare-and-set in
    /// the run store or on a Kubernetes Lease), passing only while it leads; at shutdown it
    /// resigns and releases the lease, so a standby takes over (and takes over this one's pending
    /// claims) at its next tick instead of after the lease lapses. Standbys tick every
    /// `lease_ttl / 10` (at most `interval`), so a lost leader is replaced within about 1.1 lease
    /// periods. `readiness` carries a note until the first pass is over.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        leading: Option<Leading>,
        readiness: Option<Readiness>,
        shutdown: CancellationToken,
    ) {
        // The lease and the leadership are renewed concurrently with the passes (in the same
        // task, so nothing outlives this future), and a long pass (thousands of orphans) never
        // lets them lapse under it.
        let (lead_tx, mut lead_rx) = tokio::sync::watch::channel(leading.is_none());
        let keeper_stop = CancellationToken::new();
        let keeper = {
            let this = self.clone();
            let stop = keeper_stop.clone();
            async move {
                if let Some(l) = leading {
                    let tick = interval
                        .min(l.lease_ttl / 10)
                        .max(Duration::from_millis(10));
                    this.keep_leadership(l, tick, lead_tx, stop).await;
                }
            }
        };
        let passes = async {
            let mut first = true;
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
                match self.pass_until(&shutdown).await {
                    Ok(r) => {
                        metrics::pass("ok");
                        if first && r.recovered() > 0 {
                            tracing::info!(
                                recovered = r.recovered(),
                                seconds = started.elapsed().as_secs_f64(),
                                "picked up runs left by a previous nexus process"
                            );
                        }
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
                        metrics::pass("store_error");
                        tracing::warn!(error = %e, "recovery pass skipped, store unavailable");
                    }
                }
                if first {
                    if let Some(r) = &readiness {
                        r.set_note(None);
                    }
                    first = false;
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

    /// Renews this recoverer's lease and contends for the leadership every `tick`, publishing
    /// whether it leads; on `stop`, resigns (when leading) and releases the lease.
    async fn keep_leadership(
        &self,
        l: Leading,
        tick: Duration,
        leading_tx: tokio::sync::watch::Sender<bool>,
        stop: CancellationToken,
    ) {
        let ttl = i64::try_from(l.lease_ttl.as_millis()).unwrap_or(i64::MAX);
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
                tracing::warn!(error = %e, "supervisor lease heartbeat failed");
                continue;
            }
            let lead = match l.leadership.try_lead(&self.instance_id, l.lease_ttl).await {
                Ok(lead) => lead,
                Err(e) => {
                    // Unknown: stand by (two leaders would still be safe, every claim is a
                    // compare-and-set, but wasteful); if it lapses, another takes over.
                    tracing::warn!(error = %e, "leader election failed, standing by");
                    false
                }
            };
            if lead != leading {
                leading = lead;
                metrics::leader(lead);
                if lead {
                    tracing::info!(id = %self.instance_id, through = %l.leadership.describe(), "this supervisor leads recovery");
                } else {
                    tracing::info!(id = %self.instance_id, "standing by (another supervisor leads)");
                }
                let _ = leading_tx.send(lead);
            }
        }
        if leading && let Err(e) = l.leadership.resign(&self.instance_id).await {
            tracing::warn!(
                error = %e,
                "could not resign the supervisor leadership (a standby takes over when it lapses)"
            );
        }
        if let Err(e) = self.store.release_lease(&self.instance_id).await {
            tracing::warn!(error = %e, "could not release the supervisor lease");
        }
    }
}

/// What a RUNNING run of a lost owner becomes.
enum Lost {
    /// Its process is alive in this process's executor: only claimed.
    StillRunning,
    /// Not this recoverer's to settle.
    Skip,
    /// Launched again, with this attempt count written on the claim (`None`: unchanged).
    Relaunch { attempts: Option<u32> },
    /// No attempt left: ends FAILED with this cause.
    Exhausted {
        cause: &'static str,
        details: String,
    },
}

/// Stops the process group of a local run left behind by a dead nexus process, but only when
/// `/proc/<pid>/environ` proves the pid still belongs to that run (pids are reused).
fn stop_orphan_process(run: &Run) {
    let Some(pid) = run
        .executor_ref
        .as_deref()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return;
    };
    let marker = format!("{}={}", nexus_proto::v1::env::REQUEST_ID, run.id);
    if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
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

    fn recovery(
        store: &Arc<InMemoryRunStore>,
        catalog: Catalog,
        shards: HashMap<String, Arc<dyn Shard>>,
        id: &str,
    ) -> Recovery {
        Recovery {
            rate: 100_000,
            store: store.clone(),
            instance_id: id.into(),
            policy: Policy::Shards { max_relaunches: 1 },
            handoff: Arc::new(ShardHandoff {
                catalog,
                shards,
                signer: Signer::random(),
                payload_base: "http://lb".into(),
                submit_timeout: Duration::from_secs(2),
            }),
        }
    }

    fn leading(store: &Arc<InMemoryRunStore>, ttl: Duration) -> Option<Leading> {
        Some(Leading {
            leadership: Arc::new(StoreLeadership::new(store.clone(), LEADER)),
            lease_ttl: ttl,
        })
    }

    fn fixture() -> (
        Arc<InMemoryRunStore>,
        Arc<RecordingShard>,
        Recovery,
        Catalog,
    ) {
        let store = Arc::new(InMemoryRunStore::default());
        let shard = Arc::new(RecordingShard::default());
        let mut snap = Snapshot::default();
        snap.workgroups
            .insert("wg".into(), Workgroup::on_cluster("wg", "a"));
        let mut shards: HashMap<String, Arc<dyn Shard>> = HashMap::new();
        shards.insert("a".into(), shard.clone());
        let catalog = Catalog::new(snap);
        let r = recovery(&store, catalog.clone(), shards, "supervisor/s1");
        (store, shard, r, catalog)
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

    /// A large backlog is settled at `rate` runs per second, a chunk at a time, and a stop ends
    /// a pass between chunks with what it did (virtual time: no wall-clock assertion).
    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_settled_at_the_rate_and_a_stop_ends_the_pass() {
        let (store, shard, mut r, _) = fixture();
        r.rate = 100;
        for _ in 0..1_000 {
            put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        }
        let r = Arc::new(r);
        let stop = CancellationToken::new();
        let pass = tokio::spawn({
            let (r, stop) = (r.clone(), stop.clone());
            async move { r.pass_until(&stop).await }
        });
        // The first chunk goes at once; the next is due 2.56 s later (256 runs at 100/s).
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop.cancel();
        let rep = pass.await.unwrap().unwrap();
        assert_eq!(rep.claimed, CHUNK);
        assert_eq!(rep.submitted, CHUNK);
        // The next pass picks up the rest.
        let rest = r.pass().await.unwrap();
        assert_eq!(rest.claimed, 1_000 - CHUNK);
        assert_eq!(shard.submitted().len(), 1_000);
    }

    #[tokio::test]
    async fn orphans_of_lapsed_owners_are_claimed_and_handed_to_their_shard() {
        let (store, shard, r, _) = fixture();
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
    async fn external_runs_are_never_claimed_or_launched() {
        let (store, shard, r, _) = fixture();
        // External runs have no owner: recovery never meets them.
        let mut ownerless = run_in("x");
        ownerless.owner = None;
        ownerless.external = true;
        store.insert(ownerless.clone()).await.unwrap();
        // Even one given a lapsed owner by mistake, BUFFERED or RUNNING, is left alone.
        for stage in [Stage::Buffered, Stage::Running] {
            let mut ext = run_in("scheduler-dead");
            ext.external = true;
            store.insert(ext.clone()).await.unwrap();
            if stage == Stage::Running {
                store
                    .transition(ext.id, Stage::Buffered, Stage::Running, RunPatch::default())
                    .await
                    .unwrap();
            }
        }
        let ordinary = put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        let rep = r.pass().await.unwrap();
        assert_eq!(
            (rep.claimed, rep.submitted, rep.failed),
            (1, 1, 0),
            "{rep:?}"
        );
        assert_eq!(shard.submitted(), vec![ordinary.id]);
        let again = r.pass().await.unwrap();
        assert_eq!((again.claimed, again.failed), (0, 0), "{again:?}");
        let runs = store
            .by_owner_stage("scheduler-dead", Stage::Buffered, 10)
            .await
            .unwrap();
        assert!(
            runs.iter().all(|r| r.external && r.attempts == 0),
            "{runs:?}"
        );
        assert_eq!(
            store.get(ownerless.id).await.unwrap().unwrap(),
            ownerless,
            "untouched"
        );
    }

    #[tokio::test]
    async fn a_claim_is_kept_until_the_shard_takes_the_run() {
        let (store, shard, r, _) = fixture();
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
        let (store, _shard, r, _) = fixture();
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
    ) -> (Arc<RecordingShard>, Arc<Recovery>) {
        let shard = Arc::new(RecordingShard::default());
        let mut shards: HashMap<String, Arc<dyn Shard>> = HashMap::new();
        shards.insert("a".into(), shard.clone());
        (
            shard,
            Arc::new(recovery(store, catalog.clone(), shards, id)),
        )
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
        let (store, _, _, catalog) = fixture();
        let (shard_a, a) = supervisor(&store, &catalog, "supervisor/a");
        let (shard_b, b) = supervisor(&store, &catalog, "supervisor/b");
        let (ttl, every) = (Duration::from_secs(60), Duration::from_millis(20));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let task_a = tokio::spawn(a.run(every, leading(&store, ttl), None, stop_a.clone()));
        leader_is(&store, "supervisor/a").await;
        let task_b = tokio::spawn(b.run(every, leading(&store, ttl), None, stop_b.clone()));
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
        let (store, _, _, catalog) = fixture();
        let (_, a) = supervisor(&store, &catalog, "supervisor/a");
        let (shard_b, b) = supervisor(&store, &catalog, "supervisor/b");
        let (ttl, every) = (Duration::from_millis(500), Duration::from_millis(20));
        let task_a =
            tokio::spawn(a.run(every, leading(&store, ttl), None, CancellationToken::new()));
        while store.leases().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task_a.abort();
        let _ = task_a.await;
        let stop_b = CancellationToken::new();
        let task_b = tokio::spawn(b.run(every, leading(&store, ttl), None, stop_b.clone()));
        put(&store, Stage::Buffered, "scheduler-dead", 0).await;
        submitted(&shard_b, 1).await;
        stop_b.cancel();
        task_b.await.unwrap();
    }
}
