//! The dispatcher: one worker per lane of the virtual queue, each behind its shard's budget.
//!
//! A worker waits for a ready run in its lane, takes a token from the shard's [`ShardBudget`]
//! (this scheduler's share of the shard's rate, AIMD-adjusted), and dispatches the run with at
//! most `dispatch_concurrency` dispatches of that lane in flight. Lanes never wait on each other:
//! a shard that is down or slow delays its own runs only.
//!
//! For each run it re-reads the record (a run cancelled while queued is skipped, and its token
//! given back), mints the payload URL (at dispatch, so a long wait never hands out an expired
//! URL) and calls [`nexus_link::shard::Shard::submit`]. Outcomes:
//! * retryable failure: back to the lane's delayed part after exponential back-off with jitter;
//!   after `dispatch_max_attempts`, or on a final error, SCHEDULING_FAILED with the last error as
//!   its cause. Nothing is dropped silently.
//! * "slow down" (`RESOURCE_EXHAUSTED`): the shard's rate is halved (AIMD) and the run is retried
//!   after a back-off without spending one of its attempts: an overloaded shard delays runs, it
//!   does not fail them.
//! * shard unreachable (`UNAVAILABLE`: no receiver of the shard answers): the lane pauses with a
//!   growing back-off and the run keeps its place and its attempts; other lanes go on.
//! * store unavailable while reading the record: retried after a back-off, no attempt spent.
//! * no answer within `dispatch_timeout`: a retryable timeout. A retry of a dispatch that did
//!   arrive launches nothing twice: the retry re-reads the record (a started run is no longer
//!   BUFFERED and is skipped) and an executor ignores a launch of a run it already holds. The
//!   timeout also bounds how long shutdown waits for in-flight dispatches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nexus_link::shard::Dispatch;
use nexus_model::error::ErrorKind;
use nexus_model::run::{RunPatch, Stage, now_millis};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limiter::{BudgetConfig, ShardBudget};
use crate::queue::{Entry, Lane};
use crate::{Scheduler, metrics};

/// The budgets of every shard this scheduler dispatches to.
#[derive(Debug)]
pub struct Budgets {
    default: BudgetConfig,
    overrides: HashMap<String, BudgetConfig>,
    recovery: Duration,
    replicas: Mutex<u32>,
    map: Mutex<HashMap<String, Arc<Mutex<ShardBudget>>>>,
    started_at: Instant,
}

/// One shard's budget, shared by its lane worker and its in-flight dispatches.
pub type SharedBudget = Arc<Mutex<ShardBudget>>;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Budget state is plain numbers updated in one step: usable after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Budgets {
    /// Budgets from configuration: `default` for every shard not in `overrides`.
    #[must_use]
    pub fn new(
        default: BudgetConfig,
        overrides: HashMap<String, BudgetConfig>,
        recovery: Duration,
    ) -> Self {
        Self {
            default,
            overrides,
            recovery,
            replicas: Mutex::new(1),
            map: Mutex::new(HashMap::new()),
            started_at: Instant::now(),
        }
    }

    /// The budget of `shard`, created on first use with the current replica count.
    pub fn get(&self, shard: &str) -> SharedBudget {
        let mut map = locked(&self.map);
        if let Some(b) = map.get(shard) {
            return b.clone();
        }
        let cfg = self.overrides.get(shard).copied().unwrap_or(self.default);
        let now = Instant::now();
        let mut b = ShardBudget::new(cfg, self.recovery, now);
        b.set_replicas(*locked(&self.replicas), now);
        if self.started_at.elapsed() < self.recovery.min(Duration::from_secs(5)) {
            // Just started: others sharing the shard may not be counted yet (their leases are
            // taken at the same moment), so no burst before the share is known.
            b.start_empty(now);
        }
        let b = Arc::new(Mutex::new(b));
        map.insert(shard.to_owned(), b.clone());
        b
    }

    /// Sets the number of live schedulers sharing every shard's budget.
    pub fn set_replicas(&self, n: u32) {
        let n = n.max(1);
        *locked(&self.replicas) = n;
        let now = Instant::now();
        for (shard, b) in locked(&self.map).iter() {
            let mut b = locked(b);
            b.set_replicas(n, now);
            metrics::budget_rate(shard, b.current_rate());
        }
    }

    /// Live schedulers sharing the budgets.
    #[must_use]
    pub fn replicas(&self) -> u32 {
        *locked(&self.replicas)
    }
}

/// Runs the dispatcher until `shutdown`: a worker per lane, started as lanes appear. In-flight
/// dispatches finish before it returns; queued runs stay in the queue (the caller hands them over).
pub async fn run(s: Arc<Scheduler>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut started: HashMap<String, ()> = HashMap::new();
    loop {
        let added = s.queue.lane_added();
        tokio::pin!(added);
        added.as_mut().enable();
        for lane in s.queue.lanes() {
            if started.insert(lane.name().to_owned(), ()).is_none() {
                tracker.spawn(lane_worker(
                    s.clone(),
                    lane,
                    shutdown.clone(),
                    tracker.clone(),
                ));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = added => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn sleep_until_or_forever(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn lane_worker(
    s: Arc<Scheduler>,
    lane: Arc<Lane>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let budget = s.budgets.get(lane.name());
    metrics::budget_rate(lane.name(), locked(&budget).current_rate());
    let waits = metrics::LimiterWaits::new(lane.name());
    let inflight = Arc::new(Semaphore::new(s.config.dispatch_concurrency.max(1)));
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if let Some(until) = lane.paused_until(now) {
            // The shard was unreachable: wait out the pause (its runs keep their place).
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(until) => {}
            }
            continue;
        }
        if !lane.has_ready(now) {
            tokio::select! {
                () = stop.cancelled() => break,
                () = lane.pushed() => {}
                () = sleep_until_or_forever(lane.next_due()) => {}
            }
            continue;
        }
        let token = locked(&budget).try_acquire(now);
        if let Err(wait) = token {
            waits.record(wait);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let permit = tokio::select! {
            () = stop.cancelled() => {
                locked(&budget).refund();
                break;
            }
            p = inflight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let Some(entry) = lane.pop_ready(Instant::now()) else {
            locked(&budget).refund();
            continue;
        };
        tracker.spawn(dispatch_one(
            s.clone(),
            lane.clone(),
            budget.clone(),
            entry,
            permit,
        ));
    }
}

fn backoff(cfg: &crate::SchedulerConfig, attempt: u32) -> Duration {
    let base = u64::try_from(cfg.retry_base_delay.as_millis()).unwrap_or(u64::MAX);
    let max = u64::try_from(cfg.retry_max_delay.as_millis()).unwrap_or(u64::MAX);
    let exp = base.saturating_mul(1u64 << attempt.min(20)).min(max);
    // Jitter in [exp/2, exp]: spreads retries of many runs hitting the same outage.
    Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2))
}

async fn dispatch_one(
    s: Arc<Scheduler>,
    lane: Arc<Lane>,
    budget: SharedBudget,
    e: Entry,
    permit: OwnedSemaphorePermit,
) {
    // The run stays held (not "stranded") until this dispatch is over, however it ends.
    let _held = Held(lane.clone(), e.id);
    let run = match s.store.get(e.id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::error!(run_id = %e.id, "queued run is missing from the store; dropping it from the queue");
            locked(&budget).refund();
            metrics::dispatched("skipped");
            return;
        }
        Err(err) => {
            tracing::warn!(run_id = %e.id, error = %err, "store unavailable while dispatching, will retry");
            locked(&budget).refund();
            metrics::dispatched("retry");
            lane.push_delayed(e, Instant::now() + backoff(&s.config, e.attempt));
            return;
        }
    };
    // A RUNNING run is dispatched only as a relaunch (its process was lost with a previous
    // nexus process and it has retries left; see `Scheduler::enqueue_recovered`).
    let relaunch = run.stage == Stage::Running && s.is_relaunch(run.id);
    // An external run is executed elsewhere: it is never launched here, whatever queued it.
    if run.external || (run.stage != Stage::Buffered && !relaunch) {
        s.relaunch_done(run.id);
        locked(&budget).refund();
        metrics::dispatched("skipped");
        return;
    }
    let from = run.stage;
    if e.attempt == 0 {
        #[allow(clippy::cast_precision_loss)] // milliseconds since accept fit an f64
        metrics::time_in_queue((now_millis() - run.received_at).max(0) as f64 / 1000.0);
    }
    let snap = s.catalog.snapshot();
    let Some(wg) = snap.workgroups.get(&run.workgroup) else {
        let details = format!(
            "workgroup '{}' was deleted before the run could be dispatched",
            run.workgroup
        );
        locked(&budget).refund();
        fail(&s, run.id, from, "Workgroup no longer exists", &details).await;
        return;
    };
    let Some(shard) = s.shards.route(&run.shard) else {
        let details = format!("no receiver is configured for shard '{}'", run.shard);
        locked(&budget).refund();
        fail(&s, run.id, from, "Unknown shard", &details).await;
        return;
    };
    let id = run.id;
    let d = Dispatch {
        payload_url: s.payload_url(&run),
        workgroup: wg.spec.clone(),
        run,
        relaunch,
        scheduler_url: s.config.public_url.clone(),
    };
    let limit = s.config.dispatch_timeout;
    let result = match tokio::time::timeout(limit, shard.submit(d)).await {
        Ok(r) => r,
        Err(_) => Err(nexus_link::shard::ShardError::new(
            ErrorKind::Timeout,
            format!(
                "shard '{}' did not answer within {}",
                lane.name(),
                humantime::format_duration(limit)
            ),
        )),
    };
    drop(permit);
    match result {
        Ok(()) => {
            s.relaunch_done(id);
            s.handed_over(id);
            lane.mark_up();
            lane.count_handed_over();
            metrics::dispatched("ok");
        }
        Err(err) if err.kind == ErrorKind::Unavailable => {
            // The shard is down (no receiver reachable): pause the whole lane with a growing
            // back-off and keep the run's place and attempts. A shard outage delays its own runs;
            // it neither fails them nor touches other lanes.
            let now = Instant::now();
            let until = lane.mark_down(now, |streak| backoff(&s.config, streak.min(16)));
            tracing::warn!(shard = %lane.name(), pause_ms = until.saturating_duration_since(now).as_millis(), error = %err.message, "shard unreachable, pausing its lane");
            metrics::dispatched("shard_down");
            lane.push_delayed(e, until);
        }
        Err(err) if err.kind == ErrorKind::ResourceExhausted => {
            let halved = locked(&budget).slow_down(Instant::now());
            if halved {
                let rate = locked(&budget).current_rate();
                tracing::warn!(shard = %lane.name(), rate, error = %err.message, "shard asked to slow down");
                metrics::budget_rate(lane.name(), rate);
            }
            metrics::dispatched("slow_down");
            let wait = err
                .retry_after
                .unwrap_or_else(|| backoff(&s.config, e.attempt));
            lane.push_delayed(e, Instant::now() + wait);
        }
        Err(err) if err.kind.is_retryable() && e.attempt + 1 < s.config.dispatch_max_attempts => {
            tracing::warn!(run_id = %e.id, attempt = e.attempt + 1, error = %err, "dispatch failed, retrying");
            metrics::dispatched("retry");
            let next = Entry {
                id: e.id,
                attempt: e.attempt + 1,
            };
            lane.push_delayed(next, Instant::now() + backoff(&s.config, e.attempt));
        }
        Err(err) => {
            metrics::dispatched("failed");
            let details = format!("after {} attempt(s): {}", e.attempt + 1, err.message);
            fail(&s, id, from, "Algorithm could not be launched", &details).await;
        }
    }
}

/// Releases a popped run's hold on its lane when its dispatch ends.
struct Held(Arc<Lane>, nexus_model::run::RunId);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Ends a run that cannot be dispatched: SCHEDULING_FAILED from BUFFERED, FAILED for a relaunch
/// of a RUNNING run (an attempt of it did run).
async fn fail(s: &Scheduler, id: nexus_model::run::RunId, from: Stage, cause: &str, details: &str) {
    s.relaunch_done(id);
    tracing::warn!(run_id = %id, cause = %cause, details = %details, "run failed to schedule");
    let to = if from == Stage::Running {
        Stage::Failed
    } else {
        Stage::SchedulingFailed
    };
    if let Err(e) = s
        .store
        .transition(
            id,
            from,
            to,
            RunPatch::failure(cause, details).by("scheduler", format!("dispatch gave up: {cause}")),
        )
        .await
    {
        tracing::warn!(run_id = %id, stage = ?to, error = %e, "could not record the run's stage");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_link::shard::RecordingShard;
    use nexus_model::catalog::{Catalog, Snapshot};
    use nexus_model::error::ErrorKind;
    use nexus_model::run::Stage;
    use nexus_model::sign::Signer;
    use nexus_model::spec::Workgroup;
    use nexus_payload::InMemoryPayloadStore;
    use nexus_store::{InMemoryRunStore, RunStore, test_suite::sample_run};
    use tokio_util::sync::CancellationToken;

    use crate::{Deps, Queued, Scheduler, SchedulerConfig, ShardMap};

    fn scheduler(
        shard: std::sync::Arc<dyn nexus_link::shard::Shard>,
        store: std::sync::Arc<InMemoryRunStore>,
    ) -> std::sync::Arc<Scheduler> {
        let mut snap = Snapshot::default();
        snap.workgroups
            .insert("wg".into(), Workgroup::on_cluster("wg", "local"));
        let config = SchedulerConfig {
            retry_base_delay: Duration::from_millis(1),
            retry_max_delay: Duration::from_millis(5),
            dispatch_max_attempts: 3,
            dispatch_timeout: Duration::from_secs(2),
            drain_grace: Duration::from_millis(100),
            ..SchedulerConfig::default()
        };
        Scheduler::new(
            config,
            Deps {
                store,
                payloads: std::sync::Arc::new(InMemoryPayloadStore::default()),
                catalog: Catalog::new(snap),
                shards: ShardMap {
                    fallback: Some(shard),
                    ..ShardMap::default()
                },
                signer: Signer::random(),
                instance_id: "me".into(),
                readiness: nexus_http::Readiness::default(),
            },
        )
    }

    async fn wait_for(
        store: &InMemoryRunStore,
        id: nexus_model::run::RunId,
        want: impl Fn(Stage) -> bool,
    ) -> nexus_model::run::Run {
        for _ in 0..500 {
            let r = store.get(id).await.unwrap().unwrap();
            if want(r.stage) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {id} never reached the expected stage");
    }

    fn queued_run(alg: &str) -> nexus_model::run::Run {
        let mut r = sample_run(alg);
        r.workgroup = "wg".into();
        r.shard = "local".into();
        r
    }

    type Fixture = (
        std::sync::Arc<RecordingShard>,
        std::sync::Arc<InMemoryRunStore>,
        std::sync::Arc<Scheduler>,
    );

    fn fixture() -> Fixture {
        let shard = std::sync::Arc::new(RecordingShard::default());
        let store = std::sync::Arc::new(InMemoryRunStore::default());
        let s = scheduler(shard.clone(), store.clone());
        (shard, store, s)
    }

    /// Stores `run` BUFFERED and puts it in the queue, as admission does.
    async fn enqueue(store: &InMemoryRunStore, s: &Scheduler, run: &nexus_model::run::Run) {
        if store.get(run.id).await.unwrap().is_none() {
            store.insert(run.clone()).await.unwrap();
        }
        s.queue.push(Queued {
            id: run.id,
            shard: "local".into(),
            attempt: 0,
        });
    }

    #[tokio::test]
    async fn stranded_runs_are_queued_again_and_held_ones_are_left_alone() {
        let (_shard, store, s) = fixture();
        let old = nexus_model::run::now_millis() - 60_000;
        // Stored BUFFERED and owned by this scheduler, but in no queue: stranded.
        let mut stranded = queued_run("a");
        stranded.owner = Some("me".into());
        stranded.received_at = old;
        store.insert(stranded.clone()).await.unwrap();
        // Queued as admission does: held, not stranded.
        let mut queued = queued_run("b");
        queued.owner = Some("me".into());
        queued.received_at = old;
        enqueue(&store, &s, &queued).await;
        // Just accepted (between its write and its enqueue): not judged yet.
        let mut fresh = queued_run("c");
        fresh.owner = Some("me".into());
        store.insert(fresh.clone()).await.unwrap();
        // Another scheduler's run: not ours to queue.
        let mut theirs = queued_run("d");
        theirs.owner = Some("other".into());
        theirs.received_at = old;
        store.insert(theirs).await.unwrap();

        assert_eq!(crate::requeue_stranded_once(&s).await.unwrap(), 1);
        assert!(s.queue.holds("local", stranded.id));
        assert_eq!(s.queue.len(), 2, "the queued run was not queued twice");
        // Once queued, it is not found stranded again.
        assert_eq!(crate::requeue_stranded_once(&s).await.unwrap(), 0);
        // A popped run stays held until its dispatch releases it.
        let lane = s.queue.lane("local");
        let e = lane.pop_ready(tokio::time::Instant::now()).unwrap();
        assert!(lane.holds(e.id), "held while being dispatched");
        lane.release(e.id);
        assert!(!lane.holds(e.id));
    }

    #[tokio::test]
    async fn a_recovered_running_run_is_dispatched_as_a_relaunch() {
        let (shard, store, s) = fixture();
        let mut run = queued_run("a");
        run.stage = Stage::Running;
        run.attempts = 1;
        store.insert(run.clone()).await.unwrap();
        // A RUNNING run that is merely queued (not recovered) is skipped.
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(shard.submitted().is_empty());
        s.enqueue_recovered(&run);
        for _ in 0..500 {
            if !shard.submitted().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shard.submitted(), vec![run.id]);
        assert!(
            !s.is_relaunch(run.id),
            "the relaunch is forgotten once dispatched"
        );
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_then_dispatched() {
        let (shard, store, s) = fixture();
        shard.fail_next([ErrorKind::Unavailable, ErrorKind::Timeout]);
        let run = queued_run("a");
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        for _ in 0..500 {
            if shard.submitted() == vec![run.id] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            shard.submitted(),
            vec![run.id],
            "dispatched after two retryable failures"
        );
        assert_eq!(
            store.get(run.id).await.unwrap().unwrap().stage,
            Stage::Buffered
        );
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn exhausted_or_final_failures_end_scheduling_failed_with_cause() {
        let (shard, store, s) = fixture();
        shard.fail_next([ErrorKind::Timeout; 3]);
        let a = queued_run("a");
        enqueue(&store, &s, &a).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        let r = wait_for(&store, a.id, |st| st == Stage::SchedulingFailed).await;
        assert!(r.failure_details.unwrap().contains("after 3 attempt(s)"));
        shard.fail_next([ErrorKind::InvalidInput]);
        let b = queued_run("b");
        enqueue(&store, &s, &b).await;
        let r = wait_for(&store, b.id, |st| st == Stage::SchedulingFailed).await;
        assert!(r.failure_details.unwrap().contains("after 1 attempt(s)"));
        assert!(shard.submitted().is_empty());
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn a_shard_that_is_down_pauses_its_lane_without_spending_attempts() {
        let (shard, store, s) = fixture();
        // Twice dispatch_max_attempts "down" answers: the run must still be dispatched.
        shard.fail_next([ErrorKind::Unavailable; 6]);
        let run = queued_run("a");
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        for _ in 0..500 {
            if shard.submitted() == vec![run.id] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            shard.submitted(),
            vec![run.id],
            "dispatched once the shard is back"
        );
        assert_eq!(
            store.get(run.id).await.unwrap().unwrap().stage,
            Stage::Buffered
        );
        let lane = s.queue.lane("local");
        assert!(
            lane.paused_until(tokio::time::Instant::now()).is_none(),
            "a successful dispatch ends the pause"
        );
        stop.cancel();
        h.await.unwrap();
    }

    #[test]
    fn lane_pause_grows_with_the_streak_and_ends_on_success() {
        let q = crate::VirtualQueue::new(10);
        let lane = q.lane("x");
        let now = tokio::time::Instant::now();
        let secs = |n: u32| Duration::from_secs(u64::from(n));
        let a = lane.mark_down(now, secs);
        assert_eq!(a - now, Duration::from_secs(1));
        assert_eq!(
            lane.mark_down(now, secs),
            a,
            "failures while paused do not lengthen the pause"
        );
        let b = lane.mark_down(a, secs);
        assert_eq!(
            b - a,
            Duration::from_secs(2),
            "a failure after the pause doubles it"
        );
        assert_eq!(lane.paused_until(a), Some(b));
        assert_eq!(lane.paused_until(b), None, "the pause ends by itself");
        lane.mark_up();
        assert_eq!(lane.paused_until(now), None);
    }

    #[tokio::test]
    async fn runs_cancelled_while_queued_are_skipped() {
        let (shard, store, s) = fixture();
        let run = queued_run("a");
        store.insert(run.clone()).await.unwrap();
        store
            .transition(
                run.id,
                Stage::Buffered,
                Stage::Cancelled,
                Default::default(),
            )
            .await
            .unwrap();
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        for _ in 0..50 {
            if s.queue.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(shard.submitted().is_empty());
        stop.cancel();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn external_runs_are_never_dispatched() {
        let (shard, store, s) = fixture();
        let mut run = queued_run("a");
        run.external = true;
        store.insert(run.clone()).await.unwrap();
        // Even when something queues it (nothing should), the dispatcher skips it.
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(super::run(s.clone(), stop.clone()));
        for _ in 0..50 {
            if s.queue.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.queue.is_empty(), "the entry was taken and dropped");
        assert!(
            shard.submitted().is_empty(),
            "an external run reached a shard"
        );
        let stored = store.get(run.id).await.unwrap().unwrap();
        assert_eq!((stored.stage, stored.attempts), (Stage::Buffered, 0));
        stop.cancel();
        h.await.unwrap();
    }

    /// A receiver that never answers.
    #[derive(Debug, Default)]
    struct HungShard {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl nexus_link::shard::Shard for HungShard {
        async fn submit(
            &self,
            _d: nexus_link::shard::Dispatch,
        ) -> Result<(), nexus_link::shard::ShardError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending().await
        }
        async fn cancel(
            &self,
            _id: nexus_model::run::RunId,
            _p: nexus_model::run::CancellationPolicy,
        ) -> Result<(), nexus_link::shard::ShardError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_receiver_times_out_and_cannot_hold_shutdown() {
        let shard = std::sync::Arc::new(HungShard::default());
        let store = std::sync::Arc::new(InMemoryRunStore::default());
        let s = scheduler(shard.clone(), store.clone());
        let run = queued_run("a");
        enqueue(&store, &s, &run).await;
        let stop = CancellationToken::new();
        let h = tokio::spawn(crate::run(s.clone(), stop.clone()));
        // One timeout (2 s, plus a back-off of milliseconds) and the second call in flight; the
        // third attempt (the last of 3) is never reached, so the run is handed over BUFFERED.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(shard.calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("shutdown waits at most one dispatch timeout")
            .unwrap();
        // Handed over, not lost: still BUFFERED in the store, and the lease is released.
        let r = store.get(run.id).await.unwrap().unwrap();
        assert_eq!(r.stage, Stage::Buffered);
        assert!(store.leases().await.unwrap().is_empty());
    }
}
