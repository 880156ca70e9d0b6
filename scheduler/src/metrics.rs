//! Every metric the scheduler emits (Prometheus names; labels bounded: never a run id), and
//! their HELP texts ([`describe`]).

/// Registers the HELP text and unit of every scheduler metric with the installed recorder (call
/// once, after installing it).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    nexus_store::describe();
    describe_counter!(
        "nexus_scheduler_runs_accepted_total",
        "Runs accepted (202), by outcome."
    );
    describe_counter!(
        "nexus_scheduler_requests_rejected_total",
        "Submissions refused before a run was stored, by reason."
    );
    describe_gauge!(
        "nexus_scheduler_queue_depth",
        "Runs queued or in flight in this scheduler's lane toward a shard."
    );
    describe_gauge!(
        "nexus_scheduler_shard_budget_rate",
        "Dispatch rate (runs/s) in force toward a shard: this scheduler's share, AIMD-adjusted."
    );
    describe_histogram!(
        "nexus_scheduler_limiter_wait_seconds",
        Unit::Seconds,
        "Waits of a lane for a dispatch budget token toward its shard (count: how often; sum: how long)."
    );
    describe_counter!(
        "nexus_scheduler_dispatch_total",
        "Hand-overs of runs to shards, by result (ok, retry, slow_down, shard_down, failed, skipped)."
    );
    describe_histogram!(
        "nexus_scheduler_time_in_queue_seconds",
        Unit::Seconds,
        "Time a run waited between its accept and its hand-over to a shard."
    );
    describe_histogram!(
        "nexus_scheduler_accept_seconds",
        Unit::Seconds,
        "Latency of a durable accept (payload and record stored)."
    );
    describe_counter!(
        "nexus_scheduler_descendants_cancelled_total",
        "Descendants moved to CANCELLED by cascading cancels this scheduler started."
    );
    describe_counter!(
        "nexus_scheduler_stranded_requeued_total",
        "BUFFERED runs found in no queue and queued again by the stranded-run pass."
    );
    // Present from the first scrape after a start, at zero.
    for o in ["accepted", "unknown_algorithm"] {
        metrics::counter!("nexus_scheduler_runs_accepted_total", "outcome" => o).absolute(0);
    }
    for r in REJECT_REASONS {
        metrics::counter!("nexus_scheduler_requests_rejected_total", "reason" => *r).absolute(0);
    }
    for r in DISPATCH_RESULTS {
        metrics::counter!("nexus_scheduler_dispatch_total", "result" => *r).absolute(0);
    }
    metrics::counter!("nexus_scheduler_descendants_cancelled_total").absolute(0);
    metrics::counter!("nexus_scheduler_stranded_requeued_total").absolute(0);
}

/// Every `reason` of `nexus_scheduler_requests_rejected_total`.
pub const REJECT_REASONS: &[&str] = &[
    "idempotency_conflict",
    "invalid_body",
    "invalid_header",
    "invalid_query",
    "queue_full",
    "rate_limited",
    "too_large",
];

/// Every `result` of `nexus_scheduler_dispatch_total`.
pub const DISPATCH_RESULTS: &[&str] = &[
    "ok",
    "retry",
    "slow_down",
    "shard_down",
    "failed",
    "skipped",
];

/// Counts an accepted run.
pub fn accepted(algorithm_known: bool) {
    metrics::counter!("nexus_scheduler_runs_accepted_total", "outcome" => if algorithm_known { "accepted" } else { "unknown_algorithm" }).increment(1);
}

/// Counts a refused request by reason (one of [`REJECT_REASONS`]).
pub fn rejected(reason: &'static str) {
    debug_assert!(REJECT_REASONS.contains(&reason), "{reason}");
    metrics::counter!("nexus_scheduler_requests_rejected_total", "reason" => reason).increment(1);
}

/// Queue depth of one lane: `nexus_scheduler_queue_depth{shard}`, kept by the lane (queue.rs).
#[derive(Debug)]
pub struct QueueDepth(metrics::Gauge);

impl QueueDepth {
    /// The handle for `shard` (looked up once, not per push).
    #[must_use]
    pub fn new(shard: &str) -> Self {
        Self(metrics::gauge!("nexus_scheduler_queue_depth", "shard" => shard.to_owned()))
    }

    /// Sets the lane's depth to `runs`.
    pub fn set(&self, runs: usize) {
        #[allow(clippy::cast_precision_loss)] // a depth fits an f64 exactly up to 2^53
        self.0.set(runs as f64);
    }
}

/// Sets the dispatch rate currently in force toward `shard` (its share, AIMD-adjusted).
pub fn budget_rate(shard: &str, rate: f64) {
    metrics::gauge!("nexus_scheduler_shard_budget_rate", "shard" => shard.to_owned()).set(rate);
}

/// Limiter waits of one lane: how often and how long its worker waited for a budget token.
#[derive(Debug)]
pub struct LimiterWaits(metrics::Histogram);

impl LimiterWaits {
    /// The handle for `shard` (looked up once, not per wait).
    #[must_use]
    pub fn new(shard: &str) -> Self {
        Self(
            metrics::histogram!("nexus_scheduler_limiter_wait_seconds", "shard" => shard.to_owned()),
        )
    }

    /// Records one wait.
    pub fn record(&self, wait: std::time::Duration) {
        self.0.record(wait.as_secs_f64());
    }
}

/// Counts a dispatch result (`ok`, `retry`, `slow_down`, `failed`, `skipped`).
pub fn dispatched(result: &'static str) {
    debug_assert!(DISPATCH_RESULTS.contains(&result), "{result}");
    metrics::counter!("nexus_scheduler_dispatch_total", "result" => result).increment(1);
}

/// Records the time a run waited between accept and dispatch.
pub fn time_in_queue(seconds: f64) {
    metrics::histogram!("nexus_scheduler_time_in_queue_seconds").record(seconds);
}

/// Records the latency of a durable accept.
pub fn accept_latency(seconds: f64) {
    metrics::histogram!("nexus_scheduler_accept_seconds").record(seconds);
}

/// A cascading cancel started by this scheduler: descendants moved to CANCELLED.
pub fn tree_cancelled(cancelled: usize) {
    metrics::counter!("nexus_scheduler_descendants_cancelled_total").increment(cancelled as u64);
}

/// Counts a BUFFERED run found in no queue and queued again by the stranded-run pass.
pub fn requeued_stranded() {
    metrics::counter!("nexus_scheduler_stranded_requeued_total").increment(1);
}
