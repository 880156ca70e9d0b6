//! Every metric the receiver emits (Prometheus names; labels bounded: never a run id).
//! [`describe`] gives each its HELP text; the recording functions are the only call sites of the
//! `metrics` macros in this crate.

/// Registers the HELP text of every metric below (with the recorder installed; idempotent).
pub fn describe() {
    nexus_store::describe();
    metrics::describe_counter!(
        "nexus_receiver_submitted_total",
        "Runs submitted to this receiver over gRPC, by outcome."
    );
    metrics::describe_counter!(
        "nexus_receiver_completions_total",
        "Completions reported by algorithms (HTTP and gRPC), by outcome."
    );
    metrics::describe_counter!(
        "nexus_receiver_progress_reports_total",
        "Progress reports of running algorithms, by outcome (recorded, throttled: sent within a second of the previous one, refused: invalid, unauthorized or finished run)."
    );
    // Present from the first scrape after a start, at zero.
    for o in [
        "accepted",
        "invalid",
        "resource_exhausted",
        "unavailable",
        "error",
    ] {
        metrics::counter!("nexus_receiver_submitted_total", "outcome" => o).absolute(0);
    }
    for o in ["completed", "failed", "conflict", "unauthorized"] {
        metrics::counter!("nexus_receiver_completions_total", "outcome" => o).absolute(0);
    }
    for o in ["recorded", "throttled", "refused"] {
        metrics::counter!("nexus_receiver_progress_reports_total", "outcome" => o).absolute(0);
    }
}

/// Counts `n` runs of one gRPC submission with the same `outcome`.
pub fn submitted(outcome: &'static str, n: usize) {
    metrics::counter!("nexus_receiver_submitted_total", "outcome" => outcome).increment(n as u64);
}

/// Counts one completion by `outcome`.
pub fn completion(outcome: &'static str) {
    metrics::counter!("nexus_receiver_completions_total", "outcome" => outcome).increment(1);
}

/// Counts one progress report by `outcome`.
pub fn progress(outcome: &'static str) {
    metrics::counter!("nexus_receiver_progress_reports_total", "outcome" => outcome).increment(1);
}
