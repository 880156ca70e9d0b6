//! Every metric the scheduler emits (Prometheus names; labels bounded: never a run id).

/// Counts an accepted run.
pub fn accepted(algorithm_known: bool) {
    metrics::counter!("nexus_scheduler_runs_accepted_total", "outcome" => if algorithm_known { "accepted" } else { "unknown_algorithm" }).increment(1);
}

/// Counts a refused request by reason.
pub fn rejected(reason: &'static str) {
    metrics::counter!("nexus_scheduler_requests_rejected_total", "reason" => reason).increment(1);
}

/// Sets the queue depth.
pub fn queue_depth(n: usize) {
    #[allow(clippy::cast_precision_loss)] // a queue depth fits an f64 exactly up to 2^53
    metrics::gauge!("nexus_scheduler_queue_depth").set(n as f64);
}

/// Counts a dispatch result (`ok`, `retry`, `failed`, `skipped`).
pub fn dispatched(result: &'static str) {
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
