//! Property tests of the dispatcher (issue #3 item 6): under random interleavings of enqueues
//! (1–3 shards), dispatch failures of every kind, retries, cancels and a shutdown at a random
//! moment, no run is lost or dispatched twice and every shard's budget is respected; plus lane
//! isolation and AIMD slow-down.
//!
//! Everything runs on a current-thread runtime with paused time: virtual time only, so the tests
//! are fast and deterministic (the back-off jitter is seeded per case).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use nexus_link::shard::{Dispatch, Shard, ShardError};
use nexus_model::catalog::{Catalog, Snapshot};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, Run, RunId, RunPatch, Stage, now_millis};
use nexus_model::sign::Signer;
use nexus_model::spec::Workgroup;
use nexus_payload::InMemoryPayloadStore;
use nexus_scheduler::{BudgetConfig, Deps, Queued, Scheduler, SchedulerConfig, ShardMap};
use nexus_store::{InMemoryRunStore, RunStore, test_suite::sample_run};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INSTANCE: &str = "me";
const SHARDS: [&str; 3] = ["s0", "s1", "s2"];

// ---------------------------------------------------------------------------------------------
// The scripted shard and the record of everything it saw.
// ---------------------------------------------------------------------------------------------

/// What one submit answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    Unavailable,
    Timeout,
    Exhausted,
    Invalid,
    /// Never answers.
    Hang,
}

impl Answer {
    fn kind(self) -> Option<ErrorKind> {
        match self {
            Answer::Ok | Answer::Hang => None,
            Answer::Unavailable => Some(ErrorKind::Unavailable),
            Answer::Timeout => Some(ErrorKind::Timeout),
            Answer::Exhausted => Some(ErrorKind::ResourceExhausted),
            Answer::Invalid => Some(ErrorKind::InvalidInput),
        }
    }

    /// Failures that use up one of the run's dispatch attempts ("slow down" does not, nor "shard
    /// down": an unreachable shard pauses its lane and its runs keep their attempts).
    fn spends_attempt(self) -> bool {
        matches!(self, Answer::Timeout | Answer::Invalid)
    }
}

#[derive(Debug, Clone, Copy)]
struct Step {
    answer: Answer,
    latency_ms: u64,
}

const OK: Step = Step {
    answer: Answer::Ok,
    latency_ms: 0,
};

/// One call of `submit`, recorded when it starts.
#[derive(Debug, Clone)]
struct Call {
    id: RunId,
    shard: String,
    at: Instant,
    /// Logical clock (cancels and calls share it): orders events of the same virtual instant.
    seq: u64,
    answer: Answer,
}

#[derive(Debug, Default)]
struct World {
    seq: u64,
    /// Per-run scripts: the n-th submit of a run answers the n-th step (then Ok).
    scripts: HashMap<RunId, VecDeque<Step>>,
    /// Per-shard scripts, consulted before the run's own (the shard's next answers).
    shard_scripts: HashMap<String, VecDeque<Step>>,
    /// Every submit call, in start order.
    calls: Vec<Call>,
    /// Submit calls that have returned (either way).
    answered: usize,
    /// Successful submits: run, shard, virtual time when it was accepted.
    submits: Vec<(RunId, String, Instant)>,
    /// Dispatches that reached a shard other than the run's.
    misrouted: Vec<RunId>,
    /// Runs this test cancelled (BUFFERED → CANCELLED succeeded), with the logical time.
    cancels: HashMap<RunId, u64>,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<World>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(w: &mut World) -> u64 {
        w.seq += 1;
        w.seq
    }

    fn submitted(&self, id: RunId) -> bool {
        self.lock().submits.iter().any(|s| s.0 == id)
    }
}

#[derive(Debug)]
struct ScriptedShard {
    name: String,
    world: Shared,
    /// Answer when neither script has a step left.
    fallback: Step,
}

#[async_trait]
impl Shard for ScriptedShard {
    async fn submit(&self, d: Dispatch) -> Result<(), ShardError> {
        let id = d.run.id;
        let step = {
            let mut w = self.world.lock();
            let seq = Shared::tick(&mut w);
            if d.run.shard != self.name {
                w.misrouted.push(id);
            }
            let step = w
                .shard_scripts
                .get_mut(&self.name)
                .and_then(VecDeque::pop_front)
                .or_else(|| w.scripts.get_mut(&id).and_then(VecDeque::pop_front))
                .unwrap_or(self.fallback);
            w.calls.push(Call {
                id,
                shard: self.name.clone(),
                at: Instant::now(),
                seq,
                answer: step.answer,
            });
            step
        };
        if step.answer == Answer::Hang {
            std::future::pending::<()>().await;
        }
        if step.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(step.latency_ms)).await;
        }
        self.world.lock().answered += 1;
        match step.answer.kind() {
            None => {
                self.world
                    .lock()
                    .submits
                    .push((id, self.name.clone(), Instant::now()));
                Ok(())
            }
            Some(kind) => Err(ShardError::new(kind, format!("scripted {kind:?}"))),
        }
    }

    async fn cancel(&self, _: RunId, _: CancellationPolicy) -> Result<(), ShardError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture: a scheduler built as dispatch.rs's unit tests build it.
// ---------------------------------------------------------------------------------------------

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn base_config() -> SchedulerConfig {
    SchedulerConfig {
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(80),
        dispatch_max_attempts: 3,
        dispatch_concurrency: 2,
        slow_down_recovery: Duration::from_secs(1),
        drain_grace: Duration::from_millis(200),
        shard_budget: BudgetConfig {
            rate: 10.0,
            burst: 2,
        },
        ..SchedulerConfig::default()
    }
}

fn scheduler(
    config: SchedulerConfig,
    shards: Vec<Arc<ScriptedShard>>,
    store: Arc<InMemoryRunStore>,
) -> Arc<Scheduler> {
    let mut snap = Snapshot::default();
    snap.workgroups
        .insert("wg".into(), Workgroup::on_cluster("wg", "s0"));
    let shards = ShardMap {
        shards: shards
            .into_iter()
            .map(|s| (s.name.clone(), s as Arc<dyn Shard>))
            .collect(),
        fallback: None,
    };
    Scheduler::new(
        config,
        Deps {
            store,
            payloads: Arc::new(InMemoryPayloadStore::default()),
            catalog: Catalog::new(snap),
            shards,
            signer: Signer::random(),
            instance_id: INSTANCE.into(),
            readiness: nexus_http::Readiness::default(),
        },
    )
}

fn new_run(shard: &str) -> Run {
    let mut r = sample_run("alg");
    r.workgroup = "wg".into();
    r.shard = shard.into();
    r.owner = Some(INSTANCE.into());
    r
}

/// Stores `run` BUFFERED and queues it, as admission does.
async fn enqueue(store: &InMemoryRunStore, s: &Scheduler, run: &Run) {
    store.insert(run.clone()).await.expect("insert");
    s.queue.push(Queued {
        id: run.id,
        shard: run.shard.clone(),
        attempt: 0,
    });
}

/// Registers `n` other live schedulers in the store so that the lease heartbeat of
/// `nexus_scheduler::run` counts `n + 1` and keeps the budgets' share at that.
async fn other_schedulers(store: &InMemoryRunStore, n: u32) {
    for i in 0..n {
        store
            .heartbeat(&format!("other-{i}"), now_millis(), 3_600_000)
            .await
            .expect("lease");
    }
}

/// Window bound: over any window [t_i, t_j] of `times`, at most `burst + rate × (t_j − t_i) + 1`.
fn check_rate_bound(
    shard: &str,
    times: &[Instant],
    rate: f64,
    burst: f64,
) -> Result<(), TestCaseError> {
    let mut t = times.to_vec();
    t.sort();
    for i in 0..t.len() {
        for j in i..t.len() {
            let dt = (t[j] - t[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            let bound = burst + rate * dt + 1.0;
            prop_assert!(
                count <= bound + 1e-6,
                "shard {shard}: {count} submits in {dt:.6}s window (#{i}..#{j}) exceeds \
                 burst {burst} + rate {rate} × dt + 1 = {bound:.3}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RunPlan {
    shard: usize,
    enqueue_at_ms: u64,
    script: Vec<Step>,
    /// Cancel this long after the enqueue.
    cancel_after_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// (rate, burst) per shard; 1–3 shards.
    budgets: Vec<(f64, u32)>,
    concurrency: usize,
    runs: Vec<RunPlan>,
    /// `None`: shut down only once everything has settled (then nothing may be left BUFFERED).
    shutdown_at_ms: Option<u64>,
    seed: u64,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        3 => Just(Answer::Ok),
        2 => Just(Answer::Unavailable),
        2 => Just(Answer::Timeout),
        2 => Just(Answer::Exhausted),
        1 => Just(Answer::Invalid),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (answer(), prop_oneof![2 => Just(0u64), 1 => 1u64..300])
        .prop_map(|(answer, latency_ms)| Step { answer, latency_ms })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let budgets = prop::collection::vec(
        ((2u32..60).prop_map(|r| f64::from(r) / 2.0), 1u32..7),
        1..=3,
    );
    let plan = (
        0usize..3,
        0u64..1500,
        prop::collection::vec(step(), 0..5),
        prop_oneof![3 => Just(None), 1 => (0u64..1500).prop_map(Some)],
    )
        .prop_map(|(shard, enqueue_at_ms, script, cancel_after_ms)| RunPlan {
            shard,
            enqueue_at_ms,
            script,
            cancel_after_ms,
        });
    (
        budgets,
        1usize..=4,
        prop::collection::vec(plan, 1..=40),
        prop_oneof![1 => Just(None), 1 => (0u64..3000).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(|(budgets, concurrency, mut runs, shutdown_at_ms, seed)| {
            for r in &mut runs {
                r.shard %= budgets.len();
            }
            Scenario {
                budgets,
                concurrency,
                runs,
                shutdown_at_ms,
                seed,
            }
        })
}

/// What a scenario left behind.
#[derive(Debug)]
struct Outcome {
    config: SchedulerConfig,
    /// Admitted runs (enqueued before the shutdown) and their final records.
    finals: Vec<Run>,
    world: World,
    /// Submit calls made after `nexus_scheduler::run` returned.
    calls_after_stop: usize,
    /// Submit calls still in flight when `nexus_scheduler::run` returned.
    in_flight_at_stop: usize,
    /// Runs in the queue when `run` returned, and 10 s later.
    queue_left: usize,
    queue_left_late: usize,
    lease_released: bool,
    stopped_in_time: bool,
}

fn play(sc: &Scenario, replicas: u32) -> Outcome {
    fastrand::seed(sc.seed);
    paused_runtime().block_on(async {
        let t0 = Instant::now();
        let world = Shared::default();
        let store = Arc::new(InMemoryRunStore::default());
        let mut config = SchedulerConfig {
            dispatch_concurrency: sc.concurrency,
            ..base_config()
        };
        config.shard_budgets = sc
            .budgets
            .iter()
            .enumerate()
            .map(|(i, &(rate, burst))| (SHARDS[i].to_owned(), BudgetConfig { rate, burst }))
            .collect::<BTreeMap<_, _>>();
        let shards = (0..sc.budgets.len())
            .map(|i| {
                Arc::new(ScriptedShard {
                    name: SHARDS[i].into(),
                    world: world.clone(),
                    fallback: OK,
                })
            })
            .collect();
        let s = scheduler(config.clone(), shards, store.clone());
        other_schedulers(&store, replicas - 1).await;
        s.budgets.set_replicas(replicas);

        let runs: Vec<Run> = sc.runs.iter().map(|p| new_run(SHARDS[p.shard])).collect();
        {
            let mut w = world.lock();
            for (r, p) in runs.iter().zip(&sc.runs) {
                w.scripts.insert(r.id, p.script.iter().copied().collect());
            }
        }

        let shutdown = CancellationToken::new();
        let sched = tokio::spawn(nexus_scheduler::run(s.clone(), shutdown.clone()));
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let mut events = Vec::new();
        for (run, plan) in runs.iter().cloned().zip(sc.runs.clone()) {
            let (s, store, world, shutdown, admitted) = (
                s.clone(),
                store.clone(),
                world.clone(),
                shutdown.clone(),
                admitted.clone(),
            );
            events.push(tokio::spawn(async move {
                let at = t0 + Duration::from_millis(plan.enqueue_at_ms);
                tokio::time::sleep_until(at).await;
                // Admission refuses once shutdown has started.
                if shutdown.is_cancelled() {
                    return;
                }
                enqueue(&store, &s, &run).await;
                admitted.lock().unwrap().push(run.id);
                if let Some(after) = plan.cancel_after_ms {
                    tokio::time::sleep_until(at + Duration::from_millis(after)).await;
                    if store
                        .transition(
                            run.id,
                            Stage::Buffered,
                            Stage::Cancelled,
                            RunPatch::default(),
                        )
                        .await
                        .is_ok()
                    {
                        let mut w = world.lock();
                        let seq = Shared::tick(&mut w);
                        w.cancels.insert(run.id, seq);
                    }
                }
            }));
        }

        match sc.shutdown_at_ms {
            Some(ms) => tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await,
            None => {
                for e in events.drain(..) {
                    e.await.expect("event task");
                }
                // Everything enqueued: wait (virtual time) until every run has settled.
                let ids = admitted.lock().unwrap().clone();
                let deadline = Instant::now() + Duration::from_secs(600);
                'settle: while Instant::now() < deadline {
                    for id in &ids {
                        let stage = store.get(*id).await.unwrap().unwrap().stage;
                        if stage == Stage::Buffered && !world.submitted(*id) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue 'settle;
                        }
                    }
                    break;
                }
            }
        }
        shutdown.cancel();
        let stopped_in_time = tokio::time::timeout(Duration::from_secs(600), sched)
            .await
            .is_ok();
        let (calls_at_stop, in_flight_at_stop) = {
            let w = world.lock();
            (w.calls.len(), w.calls.len() - w.answered)
        };
        let queue_left = s.queue.len();
        for e in events {
            e.await.expect("event task");
        }
        // Anything still dispatching after the hand-over would race the successor.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let calls_after_stop = world.lock().calls.len() - calls_at_stop;
        let queue_left_late = s.queue.len();
        let lease_released = !store
            .leases()
            .await
            .unwrap()
            .iter()
            .any(|l| l.owner == INSTANCE);
        let ids = admitted.lock().unwrap().clone();
        let mut finals = Vec::new();
        for id in ids {
            finals.push(
                store
                    .get(id)
                    .await
                    .unwrap()
                    .expect("admitted run is stored"),
            );
        }
        let world = std::mem::take(&mut *world.lock());
        Outcome {
            config,
            finals,
            world,
            calls_after_stop,
            in_flight_at_stop,
            queue_left,
            queue_left_late,
            lease_released,
            stopped_in_time,
        }
    })
}

fn check(sc: &Scenario, replicas: u32) -> Result<(), TestCaseError> {
    let o = play(sc, replicas);
    let w = &o.world;
    let max_attempts = o.config.dispatch_max_attempts;

    prop_assert!(
        o.stopped_in_time,
        "nexus_scheduler::run did not return after shutdown"
    );
    prop_assert_eq!(o.queue_left, 0, "queue not handed over at shutdown");
    prop_assert_eq!(
        o.in_flight_at_stop,
        0,
        "run returned (lease released) with submits still in flight"
    );
    prop_assert_eq!(o.queue_left_late, 0, "runs re-queued after the hand-over");
    prop_assert!(o.lease_released, "lease not released at shutdown");
    prop_assert_eq!(o.calls_after_stop, 0, "submits after the scheduler stopped");
    prop_assert!(
        w.misrouted.is_empty(),
        "dispatched to the wrong shard: {:?}",
        w.misrouted
    );
    let admitted: std::collections::HashSet<RunId> = o.finals.iter().map(|r| r.id).collect();
    prop_assert!(
        w.calls.iter().all(|c| admitted.contains(&c.id)),
        "a run that was never admitted reached a shard"
    );

    for run in &o.finals {
        let id = run.id;
        let calls: Vec<&Call> = w.calls.iter().filter(|c| c.id == id).collect();
        let oks: Vec<_> = w.submits.iter().filter(|s| s.0 == id).collect();
        // Property 2: never dispatched twice.
        prop_assert!(oks.len() <= 1, "run {id} submitted {} times", oks.len());
        // Nothing is attempted again once a submit has succeeded.
        if let Some(i) = calls.iter().position(|c| c.answer == Answer::Ok) {
            prop_assert_eq!(i + 1, calls.len(), "run {} attempted after its success", id);
        }
        // Never (even attempted) after its cancel.
        if let Some(&cancel) = w.cancels.get(&id) {
            prop_assert!(
                calls.iter().all(|c| c.seq < cancel),
                "run {id} dispatched after it was cancelled"
            );
        }
        let spent = calls.iter().filter(|c| c.answer.spends_attempt()).count();
        prop_assert!(
            spent <= max_attempts as usize,
            "run {id}: {spent} attempts spent, max {max_attempts}"
        );

        // Property 1: exactly one fate.
        match (oks.len(), run.stage) {
            // Submitted (launch pending; the receiver leaves it BUFFERED) or cancelled after.
            (1, Stage::Buffered | Stage::Cancelled) => {}
            (0, Stage::Cancelled) => {
                prop_assert!(w.cancels.contains_key(&id), "run {id} CANCELLED by nobody");
            }
            (0, Stage::SchedulingFailed) => {
                let cause = run.failure_cause.as_deref().unwrap_or("");
                prop_assert!(
                    !cause.is_empty(),
                    "run {id} SCHEDULING_FAILED without a cause"
                );
                let details = run.failure_details.as_deref().unwrap_or("");
                prop_assert!(
                    details.contains(&format!("after {spent} attempt(s)")),
                    "run {id}: details {details:?} but {spent} attempts spent"
                );
                let last = calls.iter().rev().find(|c| c.answer.spends_attempt());
                prop_assert!(
                    last.is_some_and(|c| c.answer == Answer::Invalid)
                        || spent == max_attempts as usize,
                    "run {id} failed early: {spent} attempt(s), last {last:?}"
                );
            }
            (0, Stage::Buffered) => {
                prop_assert!(
                    sc.shutdown_at_ms.is_some(),
                    "run {id} lost: still BUFFERED, never submitted, although everything had \
                     time to settle ({} calls: {:?})",
                    calls.len(),
                    calls.iter().map(|c| c.answer).collect::<Vec<_>>()
                );
                prop_assert_eq!(
                    run.owner.as_deref(),
                    Some(INSTANCE),
                    "handed-over run not owned"
                );
            }
            (n, stage) => {
                prop_assert!(false, "run {id}: {n} submits, final stage {stage:?}");
            }
        }
    }

    // Property 3: rate bound over every window of attempted submits, per shard.
    let n = f64::from(replicas);
    for (i, &(rate, burst)) in sc.budgets.iter().enumerate() {
        let times: Vec<Instant> = w
            .calls
            .iter()
            .filter(|c| c.shard == SHARDS[i])
            .map(|c| c.at)
            .collect();
        check_rate_bound(SHARDS[i], &times, rate / n, (f64::from(burst) / n).max(1.0))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No run lost, none dispatched twice, rate bound per shard: one scheduler alone.
    #[test]
    fn dispatch_is_exactly_once_and_within_budget(sc in scenario()) {
        check(&sc, 1)?;
    }

    /// The same with three live schedulers sharing every shard's budget.
    #[test]
    fn shared_budget_is_divided_between_replicas(sc in scenario()) {
        check(&sc, 3)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Plain tests.
// ---------------------------------------------------------------------------------------------

/// A shard whose submits hang forever, and one that always answers Unavailable, do not delay
/// another shard's lane: every run of "up" goes at the pace of its own budget.
#[test]
fn a_down_shard_does_not_delay_other_lanes() {
    paused_runtime().block_on(async {
        let world = Shared::default();
        let store = Arc::new(InMemoryRunStore::default());
        let (rate, burst) = (10.0, 2u32);
        let mut config = SchedulerConfig {
            dispatch_max_attempts: 1000,
            ..base_config()
        };
        config
            .shard_budgets
            .insert("up".into(), BudgetConfig { rate, burst });
        let mk = |name: &str, answer| {
            Arc::new(ScriptedShard {
                name: name.into(),
                world: world.clone(),
                fallback: Step {
                    answer,
                    latency_ms: 0,
                },
            })
        };
        let s = scheduler(
            config,
            vec![
                mk("up", Answer::Ok),
                mk("hung", Answer::Hang),
                mk("flaky", Answer::Unavailable),
            ],
            store.clone(),
        );
        // The down shards' runs are queued first.
        for shard in ["hung", "flaky"] {
            for _ in 0..10 {
                enqueue(&store, &s, &new_run(shard)).await;
            }
        }
        let up: Vec<Run> = (0..20).map(|_| new_run("up")).collect();
        for r in &up {
            enqueue(&store, &s, r).await;
        }
        let t0 = Instant::now();
        let _sched = tokio::spawn(nexus_scheduler::run(s.clone(), CancellationToken::new()));
        tokio::time::sleep(Duration::from_secs(5)).await;

        let w = world.lock();
        let mut times: Vec<Instant> = w
            .submits
            .iter()
            .filter(|x| x.1 == "up")
            .map(|x| x.2)
            .collect();
        times.sort();
        assert_eq!(times.len(), up.len(), "every run of 'up' submitted");
        for r in &up {
            assert_eq!(w.submits.iter().filter(|x| x.0 == r.id).count(), 1);
        }
        // The k-th submit (0-based) is due when the bucket has given k+1 tokens. A scheduler that
        // has just started begins with an empty bucket (it cannot know yet how many others share
        // the shard), so one token per 1/rate seconds from the start.
        for (k, t) in times.iter().enumerate() {
            let due = (k + 1) as f64 / rate;
            let took = (*t - t0).as_secs_f64();
            assert!(
                took <= due + 0.005,
                "submit #{k} of 'up' at {took:.3}s, its budget allows {due:.3}s"
            );
        }
        // The other lanes really were down meanwhile (the test would prove nothing otherwise).
        let hung = w.calls.iter().filter(|c| c.shard == "hung").count();
        let flaky = w.calls.iter().filter(|c| c.shard == "flaky").count();
        assert_eq!(
            hung, 2,
            "'hung' holds its dispatch_concurrency (2) submits forever"
        );
        assert!(flaky > 10, "'flaky' kept retrying: {flaky} calls");
        assert!(w.submits.iter().all(|x| x.1 == "up"));
    });
}

/// "Slow down" answers halve the shard's rate, spend no attempt (every run is still submitted,
/// none SCHEDULING_FAILED), and the rate climbs back to the ceiling over `slow_down_recovery`.
#[test]
fn resource_exhausted_halves_the_rate_and_spends_no_attempt() {
    fastrand::seed(7);
    paused_runtime().block_on(async {
        let world = Shared::default();
        let store = Arc::new(InMemoryRunStore::default());
        let (ceiling, exhausted) = (20.0, 6usize);
        let recovery = Duration::from_secs(60);
        let mut config = SchedulerConfig {
            dispatch_max_attempts: 2,
            dispatch_concurrency: 1,
            slow_down_recovery: recovery,
            ..base_config()
        };
        config.shard_budgets.insert(
            "x".into(),
            BudgetConfig {
                rate: ceiling,
                burst: 1,
            },
        );
        world.lock().shard_scripts.insert(
            "x".into(),
            std::iter::repeat_n(
                Step {
                    answer: Answer::Exhausted,
                    latency_ms: 0,
                },
                exhausted,
            )
            .collect(),
        );
        let s = scheduler(
            config,
            vec![Arc::new(ScriptedShard {
                name: "x".into(),
                world: world.clone(),
                fallback: OK,
            })],
            store.clone(),
        );
        // 3 runs, 6 "slow down" answers: some run hears at least 2 = dispatch_max_attempts.
        let runs: Vec<Run> = (0..3).map(|_| new_run("x")).collect();
        for r in &runs {
            enqueue(&store, &s, r).await;
        }
        let shutdown = CancellationToken::new();
        let sched = tokio::spawn(nexus_scheduler::run(s.clone(), shutdown.clone()));
        let budget = s.budgets.get("x");

        while world.lock().calls.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The submit answered at once: the first "slow down" has been handled right here.
        tokio::task::yield_now().await;
        let halved = budget.lock().unwrap().current_rate();
        assert!(
            (halved - ceiling / 2.0).abs() < 0.05,
            "rate after the first slow-down: {halved}"
        );

        let deadline = Instant::now() + Duration::from_secs(600);
        while !runs.iter().all(|r| world.submitted(r.id)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let w = std::mem::take(&mut *world.lock());
        let answered_exhausted = w
            .calls
            .iter()
            .filter(|c| c.answer == Answer::Exhausted)
            .count();
        assert_eq!(answered_exhausted, exhausted);
        let most = runs
            .iter()
            .map(|r| {
                w.calls
                    .iter()
                    .filter(|c| c.id == r.id && c.answer == Answer::Exhausted)
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            most >= 2,
            "some run heard 'slow down' dispatch_max_attempts times"
        );
        for r in &runs {
            assert_eq!(
                w.submits.iter().filter(|x| x.0 == r.id).count(),
                1,
                "run {} submitted once",
                r.id
            );
            let stage = store.get(r.id).await.unwrap().unwrap().stage;
            assert_eq!(stage, Stage::Buffered, "run {} not failed", r.id);
        }
        assert!(budget.lock().unwrap().current_rate() < ceiling);

        // Additive increase: after the recovery time the rate is back at the ceiling.
        tokio::time::sleep(recovery * 2).await;
        let late = new_run("x");
        enqueue(&store, &s, &late).await;
        while !world.submitted(late.id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = budget.lock().unwrap().current_rate();
        assert!((rate - ceiling).abs() < 1e-9, "recovered rate {rate}");

        shutdown.cancel();
        sched.await.unwrap();
    });
}
