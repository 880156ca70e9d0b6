//! Every metric `nexus-link` emits (labels bounded: the shard name, never a run id), and their
//! HELP texts ([`describe`]).

use std::time::Duration;

/// Registers the HELP text of every link metric with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "nexus_grpc_endpoint_down_total",
        "Times a receiver endpoint of a shard was marked down (calls failed)."
    );
    describe_counter!(
        "nexus_grpc_resolve_failures_total",
        "Resolutions of a shard's receiver DNS name that failed (reason=error) or returned no address (reason=empty); the last known addresses were kept."
    );
    describe_counter!(
        "nexus_grpc_submit_batches_total",
        "Submit batches sent to a shard's receivers."
    );
    describe_histogram!(
        "nexus_grpc_submit_batch_size",
        Unit::Count,
        "Runs per Submit batch sent to a shard."
    );
    describe_counter!(
        "nexus_descendants_cancelled_total",
        "Descendants moved to CANCELLED by cascading cancels."
    );
    describe_histogram!(
        "nexus_cascade_cancel_seconds",
        Unit::Seconds,
        "Duration of one cascading cancel through a run's subtree."
    );
}

/// An endpoint of `shard` was marked down.
pub(crate) fn endpoint_down(shard: &str) {
    metrics::counter!("nexus_grpc_endpoint_down_total", "shard" => shard.to_owned()).increment(1);
}

/// Resolving a receiver DNS name of `shard` failed (`reason`: `error` or `empty`).
pub(crate) fn resolve_failure(shard: &str, reason: &'static str) {
    metrics::counter!("nexus_grpc_resolve_failures_total", "shard" => shard.to_owned(), "reason" => reason)
        .increment(1);
}

/// A batch of `runs` was sent to `shard`.
pub(crate) fn submit_batch(shard: &str, runs: usize) {
    metrics::counter!("nexus_grpc_submit_batches_total", "shard" => shard.to_owned()).increment(1);
    #[allow(clippy::cast_precision_loss)] // a batch size fits an f64 exactly
    metrics::histogram!("nexus_grpc_submit_batch_size", "shard" => shard.to_owned())
        .record(runs as f64);
}

/// A cascade cancelled `cancelled` descendants in `took`.
pub(crate) fn cascade(cancelled: usize, took: Duration) {
    metrics::counter!("nexus_descendants_cancelled_total").increment(cancelled as u64);
    metrics::histogram!("nexus_cascade_cancel_seconds").record(took.as_secs_f64());
}
