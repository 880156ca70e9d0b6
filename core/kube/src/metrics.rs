//! Every metric `nexus-kube` emits (labels bounded: never a run id), and their HELP texts
//! ([`describe`]).

/// Registers the HELP text of every Kubernetes metric with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "nexus_kube_api_budget_waits_total",
        "Kubernetes API requests that waited for the cluster's API budget."
    );
    describe_gauge!(
        "nexus_catalog_templates",
        "Algorithm templates in the catalog read from the cluster."
    );
    describe_counter!(
        "nexus_catalog_watch_errors_total",
        "Errors of the watches over NexusAlgorithmTemplate / NexusAlgorithmWorkgroup (retried)."
    );
    describe_counter!(
        "nexus_kube_job_watch_errors_total",
        "Errors of the executor's watches over Jobs and pods (retried)."
    );
    describe_counter!(
        "nexus_kube_jobs_collected_total",
        "Finished Jobs deleted by the executor's garbage collection."
    );
    describe_counter!(
        "nexus_kube_runs_given_up_total",
        "Runs the executor gave up on (a pod that cannot start or run), by kind."
    );
    describe_counter!("nexus_kube_jobs_created_total", "Jobs created for runs.");
    describe_counter!(
        "nexus_kube_pod_logs_kept_total",
        "Copies of finished runs' pod logs, by outcome (kept, none: no container ran, failed, skipped: too many waiting)."
    );
}

/// A copy of a finished run's pod log was made (or not), `outcome` one of kept, none, failed,
/// skipped.
pub(crate) fn pod_log_kept(outcome: &'static str) {
    metrics::counter!("nexus_kube_pod_logs_kept_total", "outcome" => outcome).increment(1);
}

/// A request waited for the API budget.
pub(crate) fn budget_wait() {
    metrics::counter!("nexus_kube_api_budget_waits_total").increment(1);
}

/// The catalog now holds `n` templates.
pub(crate) fn catalog_templates(n: usize) {
    #[allow(clippy::cast_precision_loss)] // a count of templates fits an f64 exactly
    metrics::gauge!("nexus_catalog_templates").set(n as f64);
}

/// A catalog watch failed.
pub(crate) fn catalog_watch_error() {
    metrics::counter!("nexus_catalog_watch_errors_total").increment(1);
}

/// A Job or pod watch failed.
pub(crate) fn job_watch_error() {
    metrics::counter!("nexus_kube_job_watch_errors_total").increment(1);
}

/// `n` finished Jobs were deleted.
pub(crate) fn jobs_collected(n: usize) {
    metrics::counter!("nexus_kube_jobs_collected_total").increment(n as u64);
}

/// A run was given up on, of `kind`.
pub(crate) fn run_given_up(kind: &'static str) {
    metrics::counter!("nexus_kube_runs_given_up_total", "kind" => kind).increment(1);
}

/// A Job was created.
pub(crate) fn job_created() {
    metrics::counter!("nexus_kube_jobs_created_total").increment(1);
}
