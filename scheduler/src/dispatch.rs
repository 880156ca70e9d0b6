//! The dispatcher: takes runs from the virtual queue and hands them to their shard.
//!
//! For each run it re-reads the record (a run cancelled while queued is skipped), mints the
//! payload URL (at dispatch, so a long wait never hands out an expired URL) and calls
//! [`nexus_core::shard::Shard::submit`]. Retryable failures go back to the priority lane after an
//! exponential back-off with jitter; after `max_attempts`, or on a final error, the run ends
//! SCHEDULING_FAILED with the last error as its cause. Nothing is dropped silently.

use std::sync::Arc;
use std::time::Duration;

use nexus_core::run::{RunPatch, Stage, now_millis};
use nexus_core::shard::Dispatch;
use tokio_util::sync::CancellationToken;

use crate::queue::Queued;
use crate::{Scheduler, metrics};

/// Runs the dispatch loop until `shutdown`; up to `concurrency` dispatches in flight.
pub async fn run(s: Arc<Scheduler>, shutdown: CancellationToken) {
    let sem = Arc::new(tokio::sync::Semaphore::new(
        s.config.dispatch_concurrency.max(1),
    ));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let q = tokio::select! {
            () = shutdown.cancelled() => break,
            q = s.queue.pop() => q,
        };
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let s2 = s.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            dispatch_one(&s2, q, &stop).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn backoff(cfg: &crate::SchedulerConfig, attempt: u32) -> Duration {
    let base = cfg.retry_base_delay.as_millis() as u64;
    let max = cfg.retry_max_delay.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << attempt.min(20)).min(max);
    // Full jitter in [exp/2, exp]: spreads retries of many runs hitting the same outage.
    Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2))
}

async fn dispatch_one(s: &Scheduler, q: Queued, shutdown: &CancellationToken) {
    let run = match s.store.get(q.id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::error!(run_id = %q.id, "queued run is missing from the store; dropping it from the queue");
            metrics::dispatched("skipped");
            return;
        }
        Err(e) => {
            tracing::warn!(run_id = %q.id, "store unavailable while dispatching, will retry: {e}");
            requeue(s, q, shutdown).await;
            return;
        }
    };
    if run.stage != Stage::Buffered {
        metrics::dispatched("skipped");
        return;
    }
    if q.attempt == 0 {
        #[allow(clippy::cast_precision_loss)] // milliseconds since accept fit an f64
        metrics::time_in_queue((now_millis() - run.received_at).max(0) as f64 / 1000.0);
    }
    let snap = s.catalog.snapshot();
    let Some(wg) = snap.workgroups.get(&run.workgroup) else {
        fail(
            s,
            &run,
            "Workgroup no longer exists",
            &format!(
                "workgroup '{}' was deleted before the run could be dispatched",
                run.workgroup
            ),
        )
        .await;
        return;
    };
    let payload_url = s.payload_url(&run);
    let Some(shard) = s.shards.route(&run.shard) else {
        fail(
            s,
            &run,
            "Unknown shard",
            &format!("no receiver is configured for shard '{}'", run.shard),
        )
        .await;
        return;
    };
    let d = Dispatch {
        run: run.clone(),
        workgroup: wg.spec.clone(),
        payload_url,
    };
    match shard.submit(d).await {
        Ok(()) => metrics::dispatched("ok"),
        Err(e) if e.kind.is_retryable() && q.attempt + 1 < s.config.dispatch_max_attempts => {
            tracing::warn!(run_id = %q.id, attempt = q.attempt + 1, "dispatch failed, retrying: {e}");
            metrics::dispatched("retry");
            requeue(s, q, shutdown).await;
        }
        Err(e) => {
            metrics::dispatched("failed");
            fail(
                s,
                &run,
                "Algorithm could not be launched",
                &format!("after {} attempt(s): {}", q.attempt + 1, e.message),
            )
            .await;
        }
    }
}

async fn requeue(s: &Scheduler, mut q: Queued, shutdown: &CancellationToken) {
    let delay = backoff(&s.config, q.attempt);
    q.attempt += 1;
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
    // Even on shutdown the run goes back to the queue, so the hand-over sees it.
    s.queue.push_priority(q);
}

async fn fail(s: &Scheduler, run: &nexus_core::run::Run, cause: &str, details: &str) {
    tracing::warn!(run_id = %run.id, "{cause}: {details}");
    if let Err(e) = s
        .store
        .transition(
            run.id,
            Stage::Buffered,
            Stage::SchedulingFailed,
            RunPatch::failure(cause, details),
        )
        .await
    {
        tracing::warn!(run_id = %run.id, "could not mark run SCHEDULING_FAILED: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_core::catalog::{Catalog, Snapshot};
    use nexus_core::error::ErrorKind;
    use nexus_core::payload::InMemoryPayloadStore;
    use nexus_core::run::Stage;
    use nexus_core::shard::RecordingShard;
    use nexus_core::sign::Signer;
    use nexus_core::spec::{API_VERSION, ObjectMeta, WORKGROUP_KIND, Workgroup, WorkgroupSpec};
    use nexus_core::store::{InMemoryRunStore, RunStore, test_suite::sample_run};
    use tokio_util::sync::CancellationToken;

    use crate::{Deps, Queued, Scheduler, SchedulerConfig, ShardMap};

    fn scheduler(
        shard: std::sync::Arc<RecordingShard>,
        store: std::sync::Arc<InMemoryRunStore>,
    ) -> std::sync::Arc<Scheduler> {
        let mut snap = Snapshot::default();
        let wg = Workgroup {
            api_version: API_VERSION.into(),
            kind: WORKGROUP_KIND.into(),
            metadata: ObjectMeta {
                name: "wg".into(),
                ..Default::default()
            },
            spec: WorkgroupSpec {
                cluster: "local".into(),
                ..Default::default()
            },
        };
        snap.workgroups.insert("wg".into(), wg);
        let config = SchedulerConfig {
            retry_base_delay: Duration::from_millis(1),
            retry_max_delay: Duration::from_millis(5),
            dispatch_max_attempts: 3,
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
                readiness: nexus_core::http::Readiness::default(),
            },
        )
    }

    async fn wait_for(
        store: &InMemoryRunStore,
        id: nexus_core::run::RunId,
        want: impl Fn(Stage) -> bool,
    ) -> nexus_core::run::Run {
        for _ in 0..500 {
            let r = store.get(id).await.unwrap().unwrap();
            if want(r.stage) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {id} never reached the expected stage");
    }

    fn queued_run(alg: &str) -> nexus_core::run::Run {
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
    async fn enqueue(store: &InMemoryRunStore, s: &Scheduler, run: &nexus_core::run::Run) {
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
        shard.fail_next([ErrorKind::Unavailable; 3]);
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
}
