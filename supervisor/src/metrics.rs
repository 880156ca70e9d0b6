//! Every metric the supervisor emits (Prometheus names; labels bounded: never a run id).
//! [`describe`] gives each its HELP text; the recording functions are the only call sites of the
//! `metrics` macros in this crate.

/// Registers the HELP text of every metric below (with the recorder installed; idempotent).
pub fn describe() {
    nexus_store::describe();
    metrics::describe_counter!(
        "nexus_supervisor_outcomes_total",
        "Executor outcomes applied to runs, by outcome."
    );
    metrics::describe_counter!(
        "nexus_supervisor_resubmitted_total",
        "Orphaned runs handed over again, by outcome (dispatched: BUFFERED, relaunched: RUNNING)."
    );
    metrics::describe_counter!(
        "nexus_supervisor_passes_total",
        "Orphan-recovery passes, by outcome (ok, store_error)."
    );
    metrics::describe_gauge!(
        "nexus_supervisor_leader",
        "1 while this supervisor leads recovery, 0 while it stands by."
    );
    metrics::describe_counter!(
        "nexus_supervisor_gc_runs_purged_total",
        "Finished runs deleted by garbage collection (records, payloads, results, logs)."
    );
    metrics::describe_counter!(
        "nexus_supervisor_gc_stale_lookups_total",
        "Stale lookup rows swept by garbage collection."
    );
    // Present from the first scrape after a start, at zero.
    for o in ["dispatched", "relaunched"] {
        metrics::counter!("nexus_supervisor_resubmitted_total", "outcome" => o).absolute(0);
    }
    for o in ["ok", "store_error"] {
        metrics::counter!("nexus_supervisor_passes_total", "outcome" => o).absolute(0);
    }
    metrics::gauge!("nexus_supervisor_leader").set(0.0);
    metrics::counter!("nexus_supervisor_gc_runs_purged_total").absolute(0);
    metrics::counter!("nexus_supervisor_gc_stale_lookups_total").absolute(0);
}

/// Counts an executor outcome applied to a run.
pub fn outcome(label: &'static str) {
    metrics::counter!("nexus_supervisor_outcomes_total", "outcome" => label).increment(1);
}

/// Counts an orphaned run handed over again (`relaunch`: it was RUNNING).
pub fn resubmitted(relaunch: bool) {
    metrics::counter!("nexus_supervisor_resubmitted_total", "outcome" => if relaunch { "relaunched" } else { "dispatched" }).increment(1);
}

/// Counts a recovery pass (`ok` or `store_error`).
pub fn pass(outcome: &'static str) {
    metrics::counter!("nexus_supervisor_passes_total", "outcome" => outcome).increment(1);
}

/// Sets whether this supervisor leads recovery.
pub fn leader(leading: bool) {
    metrics::gauge!("nexus_supervisor_leader").set(if leading { 1.0 } else { 0.0 });
}

/// Counts what one garbage-collection pass deleted.
pub fn gc_purged(runs: usize, stale_lookups: usize) {
    metrics::counter!("nexus_supervisor_gc_runs_purged_total").increment(runs as u64);
    metrics::counter!("nexus_supervisor_gc_stale_lookups_total").increment(stale_lookups as u64);
}
