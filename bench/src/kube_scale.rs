//! `kube-scale` (issue #20): runs submitted over HTTP go through schedulers and receivers into
//! Kubernetes Jobs under a given API budget, against a real API server — with, when they run, the
//! Job controller and kube-scheduler (`scripts/kube-cluster.sh`) and kwok's simulated nodes
//! (`scripts/kwok.sh`), so Jobs become Pods that go Running and then Succeeded.
//!
//! For each budget B (requests per second toward the cluster) a fresh namespace gets its own
//! deployment, in this process: `--schedulers` schedulers sharing a shard budget of B runs/s
//! (each takes its share from the leases, AIMD on "slow down") and `--receivers` receivers of
//! that shard, each with a Kubernetes client budget of B / receivers requests/s (the budget of
//! the process, spent on Job creates, its watches and lists). The receivers authenticate as a
//! ServiceAccount of the namespace (a TokenRequest token), as a deployed receiver does, so the
//! API server's priority and fairness treats them as a workload (`workload-low`), not as the
//! exempt superuser. Run store and payload store are in memory: this measures the Kubernetes
//! path. The runs are submitted by closed-loop HTTP clients on loopback, alternating schedulers.
//!
//! Measured per budget: Jobs created per second (as the receivers saw their creates succeed,
//! sustained over the 10th–90th percentile of creations, and from the Jobs' creation timestamps),
//! its ratio to B, API-server 429s (`apiserver_request_total{code="429"}` from `/metrics`) and the
//! 429s Nexus saw, the schedulers' AIMD rate over time (`nexus_scheduler_shard_budget_rate`) and
//! their slow-down answers, time to drain (first submission → every Job created; → every Job
//! complete), and the CPU time of the API server, the controllers, kwok and this process (Nexus
//! and the load generator) from `/proc/<pid>/stat`.
//!
//! A Job completed by kwok ran no algorithm, so nothing reported a result: its run ends FAILED
//! with "Algorithm exited without reporting a result" (the receiver's classification of a Job that
//! succeeded without a completion call). `--check` asserts exactly that chain and nothing about
//! time: every run became a Job, and (with `--complete`) every Job completed and every run ended
//! so.
//!
//! Every wait is bounded (`--timeout` per budget, stalls cut short); only loopback and the given
//! API server are contacted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use nexus_cli::distributed::{
    self, CatalogSource, ReceiverHandle, ReceiverProcess, Runtime, SchedulerProcess, ShardEntry,
    SharedStores,
};
use nexus_executor::{Executor, ExecutorError, ExecutorEvent, LaunchSpec};
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_model::limiter::BudgetConfig;
use nexus_model::run::{CancellationPolicy, RunId, Stage};
use nexus_payload::PayloadStore;
use nexus_store::{InMemoryRunStore, RunStore};
use tokio::sync::mpsc::UnboundedSender;

use crate::{f0, load_client, print_table};

const SHARD: &str = "kwok";
const ALGORITHM: &str = "scale";
/// The cause a run gets when its Job succeeded without the algorithm reporting a result.
pub const NO_RESULT_CAUSE: &str = "Algorithm exited without reporting a result";
/// Label of kwok's nodes (scripts/kwok.sh).
const KWOK_NODE_LABEL: &str = "type=kwok";
/// A phase whose creations (or completions) made no progress for this long is cut short.
const STALL: Duration = Duration::from_secs(30);
/// How often the AIMD rate is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for the API server to settle before a phase.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);
/// The API server counts as settled below this CPU use (cores).
const SETTLED_CORES: f64 = 0.25;
/// `/proc/<pid>/stat` counts in USER_HZ, which is 100 on every Linux ABI this runs on.
const CLOCK_TICKS: f64 = 100.0;

const WORKGROUP: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmWorkgroup
metadata:
  name: kwok
spec:
  description: kwok's simulated nodes (scripts/kwok.sh)
  cluster: kwok
  tolerations:
  - {key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: type, operator: In, values: [kwok]}
";

// The image is never pulled: kwok plays the pod.
const TEMPLATE: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: scale
spec:
  container: {image: scale-algorithm, registry: kwok.invalid, versionTag: v1}
  computeResources: {cpuLimit: \"1\", memoryLimit: 64Mi}
  workgroupRef: {name: kwok, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: scale
  args: [--sas-uri=%s, --request-id=%s]
  runtimeEnvironment: {deadlineSeconds: 3600, maximumRetries: 0}
";

/// Who the receivers are toward the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Identity {
    /// A ServiceAccount of the namespace (TokenRequest): a workload under priority and fairness.
    ServiceAccount,
    /// The kubeconfig's own user (the test server's superuser: exempt from priority and fairness).
    Admin,
}

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kubeconfig of the cluster (its user creates namespaces, service accounts and tokens).
    pub kubeconfig: PathBuf,
    /// API budgets, requests/s, one phase each.
    pub budgets: Vec<f64>,
    /// Runs per phase: one value for all, or one per budget.
    pub runs: Vec<usize>,
    /// kwok nodes that must be Ready (0: do not check).
    pub nodes: usize,
    /// Schedulers sharing the shard budget.
    pub schedulers: usize,
    /// Receivers of the shard, each with budget / receivers.
    pub receivers: usize,
    /// Closed-loop HTTP clients submitting the runs.
    pub submit_concurrency: usize,
    /// Burst of every budget, in seconds of its rate.
    pub burst_secs: f64,
    /// Wait for every Job to complete (needs the Job controller, kube-scheduler and kwok).
    pub complete: bool,
    /// Assert correctness (exit non-zero otherwise); no timing is asserted.
    pub check: bool,
    /// Bound on each phase.
    pub timeout: Duration,
    /// The receivers' identity.
    pub identity: Identity,
    /// Dispatches in flight per scheduler toward the shard (`scheduler.dispatch_concurrency`; 0:
    /// the product's default): one value for all, or one per budget.
    pub dispatch_concurrency: Vec<usize>,
    /// Jobs of the baseline (created directly, as fast as the API server takes them); 0: none.
    pub baseline_jobs: usize,
    /// Requests in flight of the baseline.
    pub baseline_concurrency: usize,
}

impl Options {
    /// Checks the values, with messages naming the flag.
    ///
    /// # Errors
    /// The first bad value.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.kubeconfig.is_file(),
            "--kubeconfig {}: no such file (scripts/kube-cluster.sh start or scripts/kube-apiserver.sh start prints it)",
            self.kubeconfig.display()
        );
        anyhow::ensure!(!self.budgets.is_empty(), "--budgets: give at least one");
        for b in &self.budgets {
            anyhow::ensure!(
                b.is_finite() && (1.0..=100_000.0).contains(b),
                "--budgets: {b} must be between 1 and 100000 requests/s"
            );
        }
        anyhow::ensure!(
            self.runs.len() == 1 || self.runs.len() == self.budgets.len(),
            "--runs: give one value, or one per budget ({} budgets)",
            self.budgets.len()
        );
        for r in &self.runs {
            anyhow::ensure!(
                (1..=100_000).contains(r),
                "--runs: {r} must be between 1 and 100000"
            );
        }
        anyhow::ensure!(
            (1..=16).contains(&self.schedulers),
            "--schedulers must be between 1 and 16"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.receivers),
            "--receivers must be between 1 and 16"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.submit_concurrency),
            "--submit-concurrency must be between 1 and 1024"
        );
        anyhow::ensure!(
            self.burst_secs.is_finite() && (0.0..=10.0).contains(&self.burst_secs),
            "--burst-secs must be between 0 and 10"
        );
        anyhow::ensure!(self.nodes <= 100_000, "--nodes must be at most 100000");
        anyhow::ensure!(
            self.dispatch_concurrency.len() == 1
                || self.dispatch_concurrency.len() == self.budgets.len(),
            "--dispatch-concurrency: give one value, or one per budget ({} budgets)",
            self.budgets.len()
        );
        for c in &self.dispatch_concurrency {
            anyhow::ensure!(
                *c <= 100_000,
                "--dispatch-concurrency: {c} must be at most 100000 (0: the default)"
            );
        }
        anyhow::ensure!(
            self.baseline_jobs <= 100_000,
            "--baseline-jobs must be at most 100000"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.baseline_concurrency),
            "--baseline-concurrency must be between 1 and 4096"
        );
        anyhow::ensure!(
            self.timeout >= Duration::from_secs(10) && self.timeout <= Duration::from_secs(3600),
            "--timeout must be between 10s and 3600s"
        );
        Ok(())
    }

    fn dispatch_concurrency_for(&self, i: usize) -> usize {
        if self.dispatch_concurrency.len() == 1 {
            self.dispatch_concurrency[0]
        } else {
            self.dispatch_concurrency[i]
        }
    }

    fn runs_for(&self, i: usize) -> usize {
        if self.runs.len() == 1 {
            self.runs[0]
        } else {
            self.runs[i]
        }
    }
}

// ---------------------------------------------------------------- measurements

/// CPU seconds of the processes that make the cluster, and of this one.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    /// By process name (`kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, `kwok`,
    /// `nexus (this process)`).
    pub by_process: BTreeMap<String, f64>,
}

/// One budget's figures.
#[derive(Debug, Clone)]
pub struct Phase {
    /// API budget, requests/s.
    pub budget: f64,
    /// Dispatches in flight per scheduler in force (the configured or the default bound).
    pub in_flight: usize,
    /// Runs asked for.
    pub runs: usize,
    /// Runs accepted (202).
    pub submitted: usize,
    /// First submission → last 202.
    pub submit_time: Duration,
    /// Creation instants (since the first submission) of the Jobs, as their creates returned.
    pub created: Vec<Duration>,
    /// Completion instants (since the first submission): the receivers saw the Job finish.
    pub finished: Vec<Duration>,
    /// Jobs created per second, from their `creationTimestamp`s over the whole seconds between
    /// the first and the last (None: under 3 such seconds).
    pub server_rate: Option<f64>,
    /// API-server answers, by code, to `POST jobs` during the phase.
    pub job_posts: BTreeMap<String, f64>,
    /// Every 429 the API server answered during the phase (all resources and users).
    pub apiserver_429: f64,
    /// Pods created (`POST pods` 201) during the phase: the Job controller at work.
    pub pod_posts: f64,
    /// Launch errors the receivers saw, by kind (`ResourceExhausted` = a 429 from the API server).
    pub launch_errors: BTreeMap<String, usize>,
    /// Dispatches the schedulers had answered "slow down" (`RESOURCE_EXHAUSTED`).
    pub slow_downs: f64,
    /// The schedulers' dispatch outcomes (`nexus_scheduler_dispatch_total` by result).
    pub dispatches: BTreeMap<String, f64>,
    /// Launch latency (API budget wait + Job create) at the 50th and 99th percentiles.
    pub launch_p50_p99: (Duration, Duration),
    /// Requests that waited for the receivers' API budget.
    pub budget_waits: f64,
    /// (seconds since the first submission, AIMD rate in force toward the shard, one scheduler).
    pub aimd: Vec<(f64, f64)>,
    /// CPU seconds spent during the phase.
    pub cpu: Cpu,
    /// Wall time the CPU was measured over.
    pub cpu_wall: Duration,
    /// Jobs listed in the namespace at the end, and how many had completed.
    pub jobs_listed: usize,
    /// Of those, Complete.
    pub jobs_complete: usize,
    /// Run stages at the end.
    pub stages: BTreeMap<String, usize>,
    /// Runs ended FAILED with [`NO_RESULT_CAUSE`].
    pub no_result: usize,
    /// Runs with no Job of their name.
    pub without_job: usize,
    /// Why the phase stopped waiting early, if it did.
    pub stalled: Option<String>,
    /// The baseline: the same Jobs created directly by this process with the receivers'
    /// identity, no budget, `--baseline-concurrency` in flight: (Jobs, Jobs/s).
    pub baseline: Option<(usize, f64)>,
}

impl Phase {
    /// Jobs created per second between the 10th and the 90th percentile of creations.
    #[must_use]
    pub fn sustained(&self) -> f64 {
        Self::rate_of(&self.created)
    }

    /// Events per second between the 10th and the 90th percentile of sorted instants.
    fn rate_of(created: &[Duration]) -> f64 {
        let n = created.len();
        if n < 20 {
            return match (created.first(), created.last()) {
                (Some(a), Some(b)) if b > a => n as f64 / (*b - *a).as_secs_f64(),
                _ => 0.0,
            };
        }
        let (a, b) = (created[n / 10], created[n * 9 / 10]);
        let span = (b - a).as_secs_f64().max(1e-6);
        (n * 9 / 10 - n / 10) as f64 / span
    }

    /// First submission → last Job created.
    #[must_use]
    pub fn drain_created(&self) -> Option<Duration> {
        self.created.last().copied()
    }

    /// First submission → last Job seen finished.
    #[must_use]
    pub fn drain_complete(&self) -> Option<Duration> {
        self.finished.last().copied()
    }

    fn lowest_aimd(&self) -> Option<f64> {
        self.aimd.iter().map(|(_, r)| *r).reduce(f64::min)
    }
}

// ---------------------------------------------------------------- the counting executor

#[derive(Debug, Default)]
struct Tally {
    created: Mutex<Vec<Instant>>,
    /// How long each successful launch took (the API budget's wait + the create).
    latency: Mutex<Vec<Duration>>,
    /// The first launch, to render the baseline's Jobs exactly as the receivers render theirs.
    first: Mutex<Option<nexus_executor::contract::LaunchSource>>,
    finished: Mutex<Vec<Instant>>,
    errors: Mutex<BTreeMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain tallies: usable after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The receiver's Kubernetes executor, timing each Job create that succeeded.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Executor>,
    tally: Arc<Tally>,
}

#[async_trait]
impl Executor for Counting {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        if let Some(src) = spec.source.as_deref() {
            let mut first = lock(&self.tally.first);
            if first.is_none() {
                *first = Some(src.clone());
            }
        }
        let t = Instant::now();
        let r = self.inner.launch(spec).await;
        match &r {
            Ok(()) => {
                lock(&self.tally.created).push(Instant::now());
                lock(&self.tally.latency).push(t.elapsed());
            }
            Err(e) => {
                *lock(&self.tally.errors)
                    .entry(format!("{:?}", e.kind))
                    .or_default() += 1
            }
        }
        r
    }

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ExecutorError> {
        self.inner.cancel(run_id, policy).await
    }

    async fn active(&self) -> Vec<RunId> {
        self.inner.active().await
    }
}

/// Forwards executor events to the receiver, timing each `Finished`. Ends when the executor
/// drops its sender (the receiver stopped).
async fn forward_events(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ExecutorEvent>,
    to: UnboundedSender<ExecutorEvent>,
    tally: Arc<Tally>,
) {
    while let Some(ev) = rx.recv().await {
        if matches!(ev, ExecutorEvent::Finished { .. }) {
            lock(&tally.finished).push(Instant::now());
        }
        if to.send(ev).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- processes and metrics

/// CPU seconds (user + system) of `pid`, or None when it is gone.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// The processes of the cluster: `kube-*` and `kwok` processes whose command line names `dir`
/// (the directory the cluster's scripts keep their binaries, kubeconfigs and data in). Other
/// clusters on the machine name other directories.
fn cluster_processes(dir: &Path) -> Vec<(String, u32)> {
    let me = std::process::id();
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim().to_owned();
        if !(comm.starts_with("kube") || comm.starts_with("kwok")) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            out.push((comm, pid));
        }
    }
    out.sort();
    out
}

/// Waits (at most [`SETTLE_LIMIT`]) until the API server is nearly idle: the previous phase's
/// deletions and the controllers' backlog would otherwise be measured with this phase.
async fn settle(procs: &[(String, u32)]) {
    let Some(pid) = procs
        .iter()
        .find(|(n, _)| n == "kube-apiserver")
        .map(|(_, p)| *p)
    else {
        return;
    };
    let t0 = Instant::now();
    while t0.elapsed() < SETTLE_LIMIT {
        let a = cpu_seconds(pid).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = (cpu_seconds(pid).unwrap_or_default() - a) / 2.0;
        if busy < SETTLED_CORES {
            break;
        }
        eprintln!(
            "kube-scale: the API server is still busy ({:.0}% of a core); waiting for it to settle …",
            busy * 100.0
        );
    }
}

fn cpu_snapshot(procs: &[(String, u32)]) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for (name, pid) in procs {
        if let Some(s) = cpu_seconds(*pid) {
            *m.entry(name.clone()).or_default() += s;
        }
    }
    if let Some(s) = cpu_seconds(std::process::id()) {
        m.insert("nexus (this process)".to_owned(), s);
    }
    m
}

/// A Prometheus text sample: name, labels, value.
fn samples(text: &str) -> impl Iterator<Item = (&str, HashMap<&str, &str>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            Some((name, labels, value))
        })
}

/// What the API server's `/metrics` says, summed.
#[derive(Debug, Default, Clone)]
struct ServerCounts {
    all_429: f64,
    job_posts: BTreeMap<String, f64>,
    pod_posts: f64,
}

async fn server_counts(admin: &Client) -> anyhow::Result<ServerCounts> {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .context("metrics request")?;
    let text = admin
        .request_text(req)
        .await
        .context("cannot read the API server's /metrics")?;
    let mut c = ServerCounts::default();
    for (name, l, v) in samples(&text) {
        if name != "apiserver_request_total" {
            continue;
        }
        let code = l.get("code").copied().unwrap_or_default();
        if code == "429" {
            c.all_429 += v;
        }
        let verb = l.get("verb").copied().unwrap_or_default();
        let resource = l.get("resource").copied().unwrap_or_default();
        let sub = l.get("subresource").copied().unwrap_or_default();
        if verb == "POST" && resource == "jobs" && sub.is_empty() {
            *c.job_posts.entry(code.to_owned()).or_default() += v;
        }
        if verb == "POST" && resource == "pods" && sub.is_empty() && code == "201" {
            c.pod_posts += v;
        }
    }
    Ok(c)
}

/// The value of a Nexus metric (summed over label sets matching `label`).
fn nexus_metric(text: &str, metric: &str, label: Option<(&str, &str)>) -> f64 {
    samples(text)
        .filter(|(n, l, _)| {
            *n == metric && label.is_none_or(|(k, v)| l.get(k).is_some_and(|x| *x == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn nexus_metrics(http: &reqwest::Client, url: &str) -> String {
    match http.get(format!("{url}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

// ---------------------------------------------------------------- cluster setup

async fn admin_client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let c = KubeClientConfig {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        // The bench's own requests (setup, /metrics, the final list) are not what is measured.
        api_budget: BudgetConfig {
            rate: 10_000.0,
            burst: 10_000,
        },
        ..KubeClientConfig::default()
    };
    nexus_kube::client::client(&c, &ApiBudget::new(c.api_budget))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// kwok nodes that are Ready.
async fn ready_kwok_nodes(admin: &Client) -> anyhow::Result<usize> {
    let nodes: Api<Node> = Api::all(admin.clone());
    let list = nodes
        .list(&ListParams::default().labels(KWOK_NODE_LABEL))
        .await
        .context("cannot list nodes")?;
    Ok(list
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}

/// Creates the phase's namespace, and (for [`Identity::ServiceAccount`]) a ServiceAccount with the
/// `edit` role in it and a kubeconfig holding a token of it; returns the kubeconfig the
/// receivers use.
async fn prepare_namespace(
    admin: &Client,
    kubeconfig: &Path,
    ns: &str,
    identity: Identity,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let nss: Api<Namespace> = Api::all(admin.clone());
    let n: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"app.kubernetes.io/created-by": "nexus-bench"}}
    }))?;
    nss.create(&PostParams::default(), &n)
        .await
        .with_context(|| format!("cannot create namespace {ns}"))?;
    if identity == Identity::Admin {
        return Ok(kubeconfig.to_path_buf());
    }
    let sa_name = "nexus-receiver";
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa_name}
    }))?;
    sas.create(&PostParams::default(), &sa)
        .await
        .context("cannot create the receivers' ServiceAccount")?;
    // Jobs and pods in this namespace (only enforced when the server authorizes with RBAC).
    let rb = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": sa_name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns}]
    });
    let rbs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
        )),
    );
    rbs.create(&PostParams::default(), &serde_json::from_value(rb)?)
        .await
        .context("cannot bind the ServiceAccount to the edit role")?;
    let tr = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 7200}
    });
    let answer: serde_json::Value = sas
        .create_subresource("token", sa_name, &PostParams::default(), tr.to_string().into_bytes())
        .await
        .context("TokenRequest for the receivers' ServiceAccount (does the API server issue service account tokens?)")?;
    let token = answer["status"]["token"]
        .as_str()
        .context("TokenRequest answered no token")?
        .to_owned();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let mut c = serde_json::json!({"server": cluster.server});
    if let Some(ca) = cluster.certificate_authority_data {
        c["certificate-authority-data"] = ca.into();
    }
    if let Some(ca) = cluster.certificate_authority {
        c["certificate-authority"] = ca.into();
    }
    let out = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": c}],
        "users": [{"name": sa_name, "user": {"token": token}}],
        "contexts": [{"name": "receiver", "context": {"cluster": "cluster", "user": sa_name, "namespace": ns}}],
        "current-context": "receiver"
    });
    let path = dir.join("receiver.kubeconfig");
    // Inside the phase's private temporary directory.
    std::fs::write(&path, out.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Deletes the namespace's Jobs (their pods follow through the garbage collector) and the
/// namespace. Best effort, bounded.
async fn cleanup_namespace(admin: &Client, ns: &str) {
    let jobs: Api<Job> = Api::namespaced(admin.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let all = ListParams::default();
    let del = jobs.delete_collection(&dp, &all);
    match tokio::time::timeout(Duration::from_secs(60), del).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("kube-scale: could not delete the Jobs of {ns}: {e}"),
        Err(_) => eprintln!(
            "kube-scale: deleting the Jobs of {ns} takes over 60s; the API server goes on with it"
        ),
    }
    let nss: Api<Namespace> = Api::all(admin.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        nss.delete(ns, &DeleteParams::default()),
    )
    .await;
}

/// Every Job of the namespace (paged): name → (creation second, complete).
async fn list_jobs(admin: &Client, ns: &str) -> anyhow::Result<HashMap<String, (i64, bool)>> {
    let jobs: Api<Job> = Api::namespaced(admin.clone(), ns);
    let mut out = HashMap::new();
    let mut lp = ListParams::default().limit(500);
    for _ in 0..10_000 {
        let page = jobs.list(&lp).await.context("cannot list the Jobs")?;
        for j in page.items {
            let name = j.metadata.name.clone().unwrap_or_default();
            let created = j
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.timestamp());
            let complete = j
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                });
            out.insert(name, (created, complete));
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    Ok(out)
}

/// Jobs per second over the whole seconds strictly between the first and the last creation
/// second (the partial edge seconds are left out).
fn server_rate(jobs: &HashMap<String, (i64, bool)>) -> Option<f64> {
    let mut per: BTreeMap<i64, usize> = BTreeMap::new();
    for (s, _) in jobs.values() {
        *per.entry(*s).or_default() += 1;
    }
    let (first, last) = (*per.keys().next()?, *per.keys().next_back()?);
    let inner: Vec<usize> = per.range(first + 1..last).map(|(_, n)| *n).collect();
    let secs = usize::try_from(last - first - 1).ok()?;
    (secs >= 3).then(|| inner.iter().sum::<usize>() as f64 / secs as f64)
}

/// Creates `n` Jobs rendered as the receivers render theirs (from the first launch `src`), named
/// `baseline-<i>`, through a client of `kubeconfig` without a budget, `concurrency` at a time;
/// returns Jobs created per second (10th to 90th percentile of creations).
async fn baseline(
    kubeconfig: &Path,
    ns: &str,
    src: &nexus_executor::contract::LaunchSource,
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<(usize, f64)> {
    let c = KubeClientConfig {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        namespace: Some(ns.to_owned()),
        api_budget: BudgetConfig {
            rate: 100_000.0,
            burst: 100_000,
        },
        ..KubeClientConfig::default()
    };
    let client = nexus_kube::client::client(&c, &ApiBudget::new(c.api_budget))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = nexus_kube::job::JobOptions {
        namespace: ns.to_owned(),
        ..nexus_kube::job::JobOptions::default()
    };
    let job = nexus_kube::job::render_job(
        &src.run,
        &src.workgroup,
        &src.contract.context(),
        None,
        &opts,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let jobs: Api<Job> = Api::namespaced(client, ns);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (jobs, next, job) = (jobs.clone(), next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let mut j = job.clone();
                j.metadata.name = Some(format!("baseline-{i}"));
                if jobs.create(&PostParams::default(), &j).await.is_ok() {
                    done.push(t0.elapsed());
                }
            }
            done
        }));
    }
    let mut created = Vec::with_capacity(n);
    for t in tasks {
        created.extend(t.await.context("baseline task panicked")?);
    }
    created.sort_unstable();
    let p = Phase::rate_of(&created);
    Ok((created.len(), p))
}

// ---------------------------------------------------------------- one phase

struct Deployment {
    schedulers: Vec<nexus_cli::standalone::Handle>,
    receivers: Vec<ReceiverHandle>,
    store: Arc<InMemoryRunStore>,
    tally: Arc<Tally>,
}

async fn port0() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

fn budget(rate: f64, burst_secs: f64) -> BudgetConfig {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rate ≤ 100000
    let burst = ((rate * burst_secs).round() as u32).max(1);
    BudgetConfig { rate, burst }
}

async fn deploy(
    o: &Options,
    b: f64,
    dispatch_concurrency: usize,
    ns: &str,
    receiver_kubeconfig: &Path,
    dir: &Path,
) -> anyhow::Result<Deployment> {
    let files = crate::distributed::DeploymentFiles::write(dir)?;
    // This scenario's workgroup and template in place of the bench's (same files).
    std::fs::write(files.templates.join("workgroup.yaml"), WORKGROUP)?;
    std::fs::write(files.templates.join("knapsack.yaml"), TEMPLATE)?;
    let store = Arc::new(InMemoryRunStore::default());
    let payloads: Arc<dyn PayloadStore> = Arc::new(nexus_payload::InMemoryPayloadStore::default());
    let stores = SharedStores {
        store: store.clone(),
        payloads: Some(payloads),
    };
    let tally = Arc::new(Tally::default());
    #[allow(clippy::cast_precision_loss)] // at most 16 receivers
    let per_receiver = b / o.receivers as f64;
    let mut receivers = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..o.receivers {
        let http = port0().await?;
        let url = format!("http://{}", http.local_addr()?);
        let mut c = ReceiverProcess {
            shard: SHARD.into(),
            public_url: Some(url),
            signing_key_file: Some(files.key.clone()),
            grpc: files.grpc.clone(),
            work_dir: dir.join(format!("receiver-{i}")),
            drain_grace: Duration::from_secs(1),
            runtime: Runtime::Kubernetes,
            kubernetes: KubeClientConfig {
                kubeconfig: Some(receiver_kubeconfig.to_path_buf()),
                namespace: Some(ns.to_owned()),
                api_budget: budget(per_receiver, o.burst_secs),
                ..KubeClientConfig::default()
            },
            ..ReceiverProcess::default()
        };
        // The receiver's safety net sits above its share of the budget: the schedulers' shard
        // budget and the API budget are what is measured, not this limiter.
        c.receiver.launch_limit = budget(per_receiver * 2.0, 1.0);
        let make = distributed::kube_executor(&c).await?;
        let t = tally.clone();
        let h = distributed::start_receiver_with(
            c,
            http,
            port0().await?,
            stores.clone(),
            move |rc, events, p, stop| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(forward_events(rx, events, t.clone()));
                Arc::new(Counting {
                    inner: make(rc, tx, p, stop),
                    tally: t,
                })
            },
        )
        .await?;
        endpoints.push(format!("http://{}", h.grpc_addr));
        receivers.push(h);
    }
    let mut shards = BTreeMap::new();
    shards.insert(SHARD.to_owned(), ShardEntry { endpoints });
    let mut schedulers = Vec::new();
    for _ in 0..o.schedulers {
        let mut c = SchedulerProcess {
            templates_dir: files.templates.clone(),
            signing_key_file: Some(files.key.clone()),
            grpc: files.grpc.clone(),
            shards: shards.clone(),
            catalog: CatalogSource::Directory,
            ..SchedulerProcess::default()
        };
        c.scheduler.queue_bound = 1_000_000;
        c.scheduler.drain_grace = Duration::from_millis(100);
        c.scheduler.shard_budget = budget(b, o.burst_secs);
        if dispatch_concurrency > 0 {
            c.scheduler.dispatch_concurrency = dispatch_concurrency;
        }
        schedulers
            .push(distributed::start_scheduler_with(c, port0().await?, stores.clone()).await?);
    }
    Ok(Deployment {
        schedulers,
        receivers,
        store,
        tally,
    })
}

async fn stop(d: Deployment) {
    for s in d.schedulers {
        s.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.wait()).await;
    }
    for r in d.receivers {
        r.http.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.http.wait()).await;
    }
}

/// Submits `n` runs round-robin to `urls`; returns the accepted run ids and the time the last
/// one was accepted (from `t0`).
async fn submit(
    urls: &[String],
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<RunId>> {
    let client = load_client(concurrency)?;
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Arc<Vec<String>> = Arc::new(
        urls.iter()
            .map(|u| format!("{u}/algorithm/v1/run/{ALGORITHM}"))
            .collect(),
    );
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, urls) = (client.clone(), next.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids: Vec<RunId> = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let body = format!("{{\"algorithmParameters\":{{\"i\":{i}}}}}");
                let r = client
                    .post(&urls[i % urls.len()])
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let id = match r {
                    Ok(r) if r.status().as_u16() == 202 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["requestId"].as_str().and_then(|s| s.parse().ok())),
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if failures == 0 {
                            eprintln!("kube-scale: a submission answered {status}: {text}");
                        }
                        None
                    }
                    Err(e) => {
                        if failures == 0 {
                            eprintln!("kube-scale: a submission failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        None
                    }
                };
                match id {
                    Some(id) => ids.push(id),
                    None => failures += 1,
                }
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.context("submit task panicked")?);
    }
    Ok(ids)
}

#[allow(clippy::too_many_lines)] // one phase, in the order it happens
async fn phase(
    o: &Options,
    admin: &Client,
    b: f64,
    runs: usize,
    dispatch_concurrency: usize,
) -> anyhow::Result<Phase> {
    // The tail of a run id is random (its head is a timestamp).
    let id = RunId::new().to_string();
    let suffix = &id[id.len() - 6..];
    let ns = format!("kscale-{}-{suffix}", f0(b));
    let dir = tempfile::tempdir()?;
    let receiver_kc = prepare_namespace(admin, &o.kubeconfig, &ns, o.identity, dir.path()).await?;
    let d = deploy(o, b, dispatch_concurrency, &ns, &receiver_kc, dir.path()).await?;
    let in_flight = if dispatch_concurrency == 0 {
        nexus_scheduler::SchedulerConfig::default().dispatch_concurrency
    } else {
        dispatch_concurrency
    };
    let urls: Vec<String> = d.schedulers.iter().map(|s| s.url.clone()).collect();
    let http = load_client(4)?;
    let cluster_dir = o
        .kubeconfig
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("/"))
        .to_path_buf();
    let procs = cluster_processes(&cluster_dir);
    settle(&procs).await;
    eprintln!(
        "kube-scale: budget {b}/s, {runs} runs, namespace {ns}: {} scheduler(s) (shard budget {b}/s), {} receiver(s) ({:.0} API requests/s each, as {:?}); watching CPU of {:?}",
        o.schedulers,
        o.receivers,
        b / o.receivers as f64,
        o.identity,
        procs
    );
    // Let the schedulers see each other's leases before the queue fills (each then takes its
    // share) and the receivers' watches start.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = server_counts(admin).await?;
    let nexus_before = nexus_metrics(&http, &urls[0]).await;
    let cpu0 = cpu_snapshot(&procs);
    let t0 = Instant::now();
    let deadline = t0 + o.timeout;

    // AIMD sampler: the rate in force toward the shard, as scheduler 0 exports it.
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (http, url, stop) = (http.clone(), urls[0].clone(), stop_sampling.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.is_cancelled() && Instant::now() < deadline {
                let text = nexus_metrics(&http, &url).await;
                // Absent until the lane's first dispatch sets it.
                let rate = samples(&text)
                    .find(|(n, l, _)| {
                        *n == "nexus_scheduler_shard_budget_rate"
                            && l.get("shard").is_some_and(|s| *s == SHARD)
                    })
                    .map(|(_, _, v)| v);
                if let Some(rate) = rate {
                    out.push((t0.elapsed().as_secs_f64(), rate));
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
            out
        })
    };

    let ids = submit(&urls, runs, o.submit_concurrency, deadline).await?;
    let submit_time = t0.elapsed();
    eprintln!(
        "kube-scale: {} of {runs} runs accepted in {:.1}s; waiting for their Jobs …",
        ids.len(),
        submit_time.as_secs_f64()
    );

    let mut stalled = None;
    // Every accepted run's Job created (or the creations stall / the phase times out).
    let (mut last_n, mut last_progress) = (0usize, Instant::now());
    loop {
        let n = lock(&d.tally.created).len();
        if n >= ids.len() {
            break;
        }
        if n > last_n {
            (last_n, last_progress) = (n, Instant::now());
        }
        if Instant::now() >= deadline || last_progress.elapsed() >= STALL {
            stalled = Some(format!(
                "{n} of {} Jobs created when the wait ended",
                ids.len()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if o.complete && stalled.is_none() {
        let (mut last_n, mut last_progress) = (0usize, Instant::now());
        loop {
            let n = lock(&d.tally.finished).len();
            if n >= ids.len() {
                break;
            }
            if n > last_n {
                (last_n, last_progress) = (n, Instant::now());
            }
            if Instant::now() >= deadline || last_progress.elapsed() >= STALL {
                stalled = Some(format!(
                    "{n} of {} Jobs seen finished when the wait ended{}",
                    ids.len(),
                    if n == 0 {
                        " (none: are the Job controller, kube-scheduler and kwok running? scripts/kube-cluster.sh, scripts/kwok.sh)"
                    } else {
                        ""
                    }
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cpu_wall = t0.elapsed();
    let cpu1 = cpu_snapshot(&procs);
    stop_sampling.cancel();
    let aimd = sampler.await.unwrap_or_default();
    let after = server_counts(admin).await?;
    let nexus_after = nexus_metrics(&http, &urls[0]).await;

    // The state at the end: Jobs in the cluster, runs in the store.
    let jobs = list_jobs(admin, &ns).await?;
    let mut stages: BTreeMap<String, usize> = BTreeMap::new();
    let (mut no_result, mut without_job) = (0, 0);
    for id in &ids {
        if let Some(r) = d.store.get(*id).await.map_err(|e| anyhow::anyhow!("{e}"))? {
            *stages.entry(format!("{:?}", r.stage)).or_default() += 1;
            if r.stage == Stage::Failed && r.failure_cause.as_deref() == Some(NO_RESULT_CAUSE) {
                no_result += 1;
            }
        }
        if !jobs.contains_key(&id.to_string()) {
            without_job += 1;
        }
    }
    let since = |v: &Vec<Instant>| -> Vec<Duration> {
        let mut out: Vec<Duration> = v.iter().map(|t| t.saturating_duration_since(t0)).collect();
        out.sort_unstable();
        out
    };
    let created = since(&lock(&d.tally.created));
    // The gauge is process-wide: until this phase's lane dispatches, it shows the last phase's.
    let mut aimd = aimd;
    if let Some(first) = created.first() {
        aimd.retain(|(t, _)| *t >= first.as_secs_f64());
    }
    let finished = since(&lock(&d.tally.finished));
    let first = lock(&d.tally.first).clone();
    let launch_errors = lock(&d.tally.errors).clone();
    let launch_p50_p99 = {
        let mut l = lock(&d.tally.latency).clone();
        l.sort_unstable();
        (crate::pct(&l, 0.5), crate::pct(&l, 0.99))
    };
    let mut dispatches = BTreeMap::new();
    for (name, l, v) in samples(&nexus_after) {
        if name == "nexus_scheduler_dispatch_total"
            && let Some(r) = l.get("result")
        {
            *dispatches.entry((*r).to_owned()).or_default() += v;
        }
    }
    for (name, l, v) in samples(&nexus_before) {
        if name == "nexus_scheduler_dispatch_total"
            && let Some(r) = l.get("result")
        {
            *dispatches.entry((*r).to_owned()).or_default() -= v;
        }
    }
    dispatches.retain(|_, v: &mut f64| *v > 0.0);
    stop(d).await;
    let baseline = match first {
        Some(src) if o.baseline_jobs > 0 => {
            eprintln!(
                "kube-scale: baseline: {} Jobs created directly, {} in flight …",
                o.baseline_jobs, o.baseline_concurrency
            );
            let until = Instant::now() + o.timeout;
            Some(
                baseline(
                    &receiver_kc,
                    &ns,
                    &src,
                    o.baseline_jobs,
                    o.baseline_concurrency,
                    until,
                )
                .await?,
            )
        }
        _ => None,
    };
    cleanup_namespace(admin, &ns).await;

    let delta = |m: &str, l: Option<(&str, &str)>| {
        nexus_metric(&nexus_after, m, l) - nexus_metric(&nexus_before, m, l)
    };
    let mut job_posts = after.job_posts.clone();
    for (code, v) in &mut job_posts {
        *v -= before.job_posts.get(code).copied().unwrap_or_default();
    }
    job_posts.retain(|_, v| *v > 0.0);
    let mut cpu = Cpu::default();
    for (name, s) in &cpu1 {
        cpu.by_process.insert(
            name.clone(),
            s - cpu0.get(name).copied().unwrap_or_default(),
        );
    }
    Ok(Phase {
        budget: b,
        in_flight,
        runs,
        submitted: ids.len(),
        submit_time,
        created,
        finished,
        server_rate: server_rate(&jobs),
        job_posts,
        apiserver_429: after.all_429 - before.all_429,
        pod_posts: after.pod_posts - before.pod_posts,
        launch_errors,
        slow_downs: delta(
            "nexus_scheduler_dispatch_total",
            Some(("result", "slow_down")),
        ),
        budget_waits: delta("nexus_kube_api_budget_waits_total", None),
        dispatches,
        launch_p50_p99,
        aimd,
        cpu,
        cpu_wall,
        jobs_listed: jobs.len(),
        jobs_complete: jobs.values().filter(|(_, c)| *c).count(),
        stages,
        no_result,
        without_job,
        stalled,
        baseline,
    })
}

/// Runs every phase in turn.
///
/// # Errors
/// Bad options, the cluster unreachable or missing its kwok nodes, a component failing to start;
/// with `check`, any correctness violation.
pub async fn run(o: &Options) -> anyhow::Result<Vec<Phase>> {
    o.validate()?;
    let admin = admin_client(&o.kubeconfig).await?;
    if o.nodes > 0 {
        let ready = ready_kwok_nodes(&admin).await?;
        anyhow::ensure!(
            ready >= o.nodes,
            "{ready} kwok node(s) Ready, --nodes {} asked: start them with `scripts/kwok.sh start --kubeconfig {} --nodes {}`",
            o.nodes,
            o.kubeconfig.display(),
            o.nodes
        );
    }
    let mut out = Vec::new();
    for (i, &b) in o.budgets.iter().enumerate() {
        let p = phase(o, &admin, b, o.runs_for(i), o.dispatch_concurrency_for(i)).await?;
        print_phase_timeline(&p);
        if o.check {
            check(o, &p)?;
        }
        out.push(p);
    }
    Ok(out)
}

/// The correctness assertions of the integration tier (no timing).
///
/// # Errors
/// The first violation, with the counts.
pub fn check(o: &Options, p: &Phase) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.submitted == p.runs,
        "budget {}: {} of {} runs accepted",
        p.budget,
        p.submitted,
        p.runs
    );
    anyhow::ensure!(
        p.without_job == 0 && p.created.len() == p.runs,
        "budget {}: {} run(s) have no Job ({} creates seen, {} Jobs listed; stages {:?}){}",
        p.budget,
        p.without_job,
        p.created.len(),
        p.jobs_listed,
        p.stages,
        p.stalled
            .as_deref()
            .map_or(String::new(), |s| format!("; {s}"))
    );
    if o.complete {
        anyhow::ensure!(
            p.jobs_complete == p.runs,
            "budget {}: {} of {} Jobs Complete{}",
            p.budget,
            p.jobs_complete,
            p.runs,
            p.stalled
                .as_deref()
                .map_or(String::new(), |s| format!("; {s}"))
        );
        anyhow::ensure!(
            p.no_result == p.runs,
            "budget {}: {} of {} runs ended FAILED with '{NO_RESULT_CAUSE}' (a Job kwok completed, no algorithm reporting); stages {:?}",
            p.budget,
            p.no_result,
            p.runs,
            p.stages
        );
    } else {
        let running = p.stages.get("Running").copied().unwrap_or_default();
        anyhow::ensure!(
            running == p.runs,
            "budget {}: {running} of {} runs RUNNING after their Jobs were created; stages {:?}",
            p.budget,
            p.runs,
            p.stages
        );
    }
    eprintln!(
        "kube-scale: check passed for budget {}: {} runs → {} Jobs{}",
        p.budget,
        p.runs,
        p.jobs_listed,
        if o.complete {
            format!(", all Complete, all runs FAILED '{NO_RESULT_CAUSE}'")
        } else {
            ", all runs RUNNING".to_owned()
        }
    );
    Ok(())
}

/// Per-second Jobs created and the AIMD rate, on one line each.
fn print_phase_timeline(p: &Phase) {
    let secs = p
        .created
        .last()
        .map_or(0, |d| usize::try_from(d.as_secs()).unwrap_or(0) + 1);
    let mut per = vec![0usize; secs];
    for d in &p.created {
        if let Some(x) = per.get_mut(usize::try_from(d.as_secs()).unwrap_or(usize::MAX)) {
            *x += 1;
        }
    }
    println!(
        "budget {}: Jobs created per second: {}",
        p.budget,
        per.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut aimd: Vec<String> = Vec::new();
    let mut next = 0.0;
    for (t, r) in &p.aimd {
        if *t >= next {
            aimd.push(f0(*r));
            next += 1.0;
        }
    }
    println!(
        "budget {}: AIMD rate of scheduler 0 per second (runs/s): {}",
        p.budget,
        aimd.join(" ")
    );
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// Prints the figures of every phase.
pub fn print(o: &Options, phases: &[Phase]) {
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let sustained = p.sustained();
            vec![
                f0(p.budget),
                p.in_flight.to_string(),
                format!("{}/{}", p.submitted, p.runs),
                p.created.len().to_string(),
                f0(sustained),
                format!("{:.3}", sustained / p.budget),
                p.server_rate.map_or_else(|| "-".to_owned(), f0),
                format!("{:.1}", p.submit_time.as_secs_f64()),
                secs(p.drain_created()),
                secs(p.drain_complete()),
                format!("{}/{}", p.jobs_complete, p.jobs_listed),
                p.baseline
                    .map_or_else(|| "-".to_owned(), |(n, r)| format!("{} ({n})", f0(r))),
                p.baseline.map_or_else(
                    || "-".to_owned(),
                    |(_, r)| format!("{:.3}", sustained / r.max(1e-9)),
                ),
            ]
        })
        .collect();
    print_table(
        &format!(
            "Jobs at scale: {} scheduler(s) (in flight: dispatches per scheduler), {} receiver(s) as {:?}, budgets split evenly over receivers; baseline: the same Jobs created directly, {} in flight, no budget",
            o.schedulers, o.receivers, o.identity, o.baseline_concurrency
        ),
        &[
            "budget/s",
            "in flight",
            "runs",
            "Jobs created",
            "sustained Jobs/s",
            "÷ budget",
            "server Jobs/s",
            "submit s",
            "→ created s",
            "→ complete s",
            "Complete/Jobs",
            "baseline Jobs/s",
            "÷ baseline",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let errors = if p.launch_errors.is_empty() {
                "0".to_owned()
            } else {
                p.launch_errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            vec![
                f0(p.budget),
                f0(p.apiserver_429),
                p.job_posts
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", f0(*v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                errors,
                f0(p.slow_downs),
                p.lowest_aimd().map_or_else(|| "-".to_owned(), f0),
                f0(p.budget_waits),
                format!(
                    "{}/{}",
                    crate::ms(p.launch_p50_p99.0),
                    crate::ms(p.launch_p50_p99.1)
                ),
                p.dispatches
                    .iter()
                    .map(|(k, v)| format!("{k}={}", f0(*v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                f0(p.pod_posts),
            ]
        })
        .collect();
    print_table(
        "API server answers and the AIMD",
        &[
            "budget/s",
            "429s (API server)",
            "POST jobs by code",
            "launch errors (Nexus)",
            "slow-downs",
            "lowest AIMD rate",
            "API-budget waits",
            "launch p50/p99 ms",
            "dispatches",
            "pods created",
        ],
        &rows,
    );
    let mut names: Vec<String> = phases
        .iter()
        .flat_map(|p| p.cpu.by_process.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let mut header = vec!["budget/s".to_owned(), "wall s".to_owned()];
    header.extend(names.iter().map(|n| format!("{n} CPU s")));
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let wall = p.cpu_wall.as_secs_f64();
            let mut r = vec![f0(p.budget), format!("{wall:.1}")];
            for n in &names {
                r.push(p.cpu.by_process.get(n).map_or_else(
                    || "-".to_owned(),
                    |s| format!("{s:.1} ({:.0}%)", 100.0 * s / wall.max(1e-9)),
                ));
            }
            r
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    print_table(
        "CPU seconds during each phase (first submission → drained; % of one core)",
        &header,
        &rows,
    );
    for p in phases {
        if let Some(s) = &p.stalled {
            println!("budget {}: stopped waiting early: {s}", p.budget);
        }
        println!("budget {}: run stages at the end: {:?}", p.budget, p.stages);
    }
}
