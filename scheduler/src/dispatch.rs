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
    let sem = Arc::new(tokio::sync::Semaphore::new(s.config.dispatch_concurrency.max(1)));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let q = tokio::select! {
            () = shutdown.cancelled() => break,
            q = s.queue.pop() => q,
        };
        let Ok(permit) = sem.clone().acquire_owned().await else { break };
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
        fail(s, &run, "Workgroup no longer exists", &format!("workgroup '{}' was deleted before the run could be dispatched", run.workgroup)).await;
        return;
    };
    let payload_url = s.payload_url(&run);
    let Some(shard) = s.shards.route(&run.shard) else {
        fail(s, &run, "Unknown shard", &format!("no receiver is configured for shard '{}'", run.shard)).await;
        return;
    };
    let d = Dispatch { run: run.clone(), workgroup: wg.spec.clone(), payload_url };
    match shard.submit(d).await {
        Ok(()) => metrics::dispatched("ok"),
        Err(e) if e.kind.is_retryable() && q.attempt + 1 < s.config.dispatch_max_attempts => {
            tracing::warn!(run_id = %q.id, attempt = q.attempt + 1, "dispatch failed, retrying: {e}");
            metrics::dispatched("retry");
            requeue(s, q, shutdown).await;
        }
        Err(e) => {
            metrics::dispatched("failed");
            fail(s, &run, "Algorithm could not be launched", &format!("after {} attempt(s): {}", q.attempt + 1, e.message)).await;
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
        .transition(run.id, Stage::Buffered, Stage::SchedulingFailed, RunPatch::failure(cause, details))
        .await
    {
        tracing::warn!(run_id = %run.id, "could not mark run SCHEDULING_FAILED: {e}");
    }
}
