//! `receiver-memory` (issue #24 item 5): the resident memory of a real `nexus receiver` process
//! whose runs' namespace holds 10,000 Jobs.
//!
//! Per receiver binary given (`--nexus a,b` measures a before and an after in one run), a fresh
//! namespace and a fresh scratch keyspace get their own deployment: a `nexus receiver` process
//! (`runtime: kubernetes`, the kubeconfig's user, the namespace of the phase) and a `nexus
//! scheduler` process sending it the runs of shard `kwok`, both on the shared Cassandra run store
//! and S3 payload store, as `nexus scheduler|receiver` run in production. Then:
//!
//! 1. **idle**: the receiver is ready, the namespace empty; its `VmRSS` after `--settle` is the
//!    baseline.
//! 2. **runs**: `--runs` runs submitted over loopback HTTP to the scheduler become Jobs launched
//!    by the receiver (kwok plays their pods Running then Succeeded, so the runs end).
//! 3. **other Jobs**: the bench fills the namespace up to `--jobs` Jobs: `--foreign` Jobs without
//!    Nexus labels (another application's), the rest copies of a Nexus Job with run ids this
//!    receiver never launched (another receiver's, another installation's). Their
//!    `ttlSecondsAfterFinished` is a day: the namespace stays full while measured.
//! 4. **hold**: `--hold` with every Job in place, long enough for the receiver's Job garbage
//!    collection (every 60 s) to list them all at least twice.
//!
//! `VmRSS` and `VmHWM` of the receiver process are read from `/proc/<pid>/status` every
//! `--sample-every` throughout; reported: the baseline, the peak `VmRSS` in each stage, the final
//! `VmRSS` and `VmHWM`, and peak ÷ baseline.
//!
//! Every wait is bounded (`--timeout` per binary); only loopback, the given API server, Cassandra
//! node and S3 endpoint are contacted. The namespace and the keyspace are deleted at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_model::limiter::BudgetConfig;
use nexus_model::run::RunId;

use crate::{cassandra, load_client, print_table};

const SHARD: &str = "kwok";
const ALGORITHM: &str = "rss";
/// Label of kwok's nodes (scripts/kwok.sh).
const KWOK_NODE_LABEL: &str = "type=kwok";
/// A day: no Job of the measurement is removed by the TTL controller or the receiver's GC.
const TTL_SECONDS: i64 = 86_400;
/// Label selector of the Jobs Nexus launches (`nexus_kube::job`).
const NEXUS_JOBS: &str = "science.sneaksanddata.com/nexus-component=algorithm-run";
/// Page size of the bench's own lists.
const PAGE: u32 = 500;

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
  name: rss
spec:
  container: {image: rss-algorithm, registry: kwok.invalid, versionTag: v1}
  computeResources: {cpuLimit: \"1\", memoryLimit: 64Mi}
  workgroupRef: {name: kwok, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: rss
  args: [--sas-uri=%s, --request-id=%s]
  runtimeEnvironment: {deadlineSeconds: 3600, maximumRetries: 0}
";

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kubeconfig of the cluster; its user creates the namespace and is the receiver's identity.
    pub kubeconfig: PathBuf,
    /// Run store URL (`cassandra://host:9042/keyspace`; a scratch keyspace is derived from it).
    pub store: String,
    /// Payload store URL (`s3://bucket/prefix?endpoint=…`); S3 keys from the environment.
    pub payloads: String,
    /// `nexus` binaries to measure, one phase each (e.g. before and after a change).
    pub nexus: Vec<PathBuf>,
    /// Jobs in the namespace in all.
    pub jobs: usize,
    /// Of them, launched by the receiver for runs submitted to the scheduler.
    pub runs: usize,
    /// Of them, without Nexus labels.
    pub foreign: usize,
    /// kwok nodes that must be Ready (0: do not check).
    pub nodes: usize,
    /// Idle time before the baseline is read.
    pub settle: Duration,
    /// Time held with every Job in place.
    pub hold: Duration,
    /// Sampling period of `/proc/<pid>/status`.
    pub sample_every: Duration,
    /// Bound on each phase.
    pub timeout: Duration,
}

/// One sample of the receiver process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    stage: Stage,
    rss_kib: u64,
    hwm_kib: u64,
}

/// Where a phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Idle,
    Runs,
    Fill,
    Hold,
}

impl Stage {
    const ALL: [Self; 4] = [Self::Idle, Self::Runs, Self::Fill, Self::Hold];

    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle (empty namespace)",
            Self::Runs => "runs → Jobs",
            Self::Fill => "other Jobs created",
            Self::Hold => "hold (all Jobs, GC passes)",
        }
    }
}

/// What one receiver binary measured.
#[derive(Debug)]
pub struct Phase {
    /// The binary.
    pub nexus: PathBuf,
    /// Runs accepted by the scheduler.
    pub accepted: usize,
    /// Jobs in the namespace at the end: all, Nexus-labelled, Complete.
    pub jobs_end: (usize, usize, usize),
    /// Runs of this phase in a final stage at the end.
    pub runs_ended: usize,
    samples: Vec<Sample>,
    /// `VmRSS` (KiB) at the end of the idle stage.
    pub baseline_kib: u64,
    /// Seconds from the first run submitted until every Job was in place.
    pub fill_secs: f64,
    /// Seconds held with every Job in place.
    pub hold_secs: f64,
}

impl Phase {
    fn peak(&self, stage: Option<Stage>) -> u64 {
        self.samples
            .iter()
            .filter(|s| stage.is_none_or(|st| s.stage == st))
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    }

    fn last(&self) -> Option<Sample> {
        self.samples.last().copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `field` (`VmRSS:`, `VmHWM:`) of process `pid`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A child process killed (SIGKILL) when dropped, unless it was stopped before.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(nexus: &Path, role: &'static str, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = Command::new(nexus)
            .arg(role)
            .arg("--config")
            .arg(config)
            .env(
                "NEXUS_LOG",
                std::env::var("NEXUS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {} {role}", nexus.display()))?;
        Ok(Self { name: role, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "receiver-memory: {} did not stop in 10 s, killed",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn admin_client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let c = KubeClientConfig {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        // The bench's own requests (setup, counting, filling) are not what is measured.
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(
    http: &reqwest::Client,
    port: u16,
    proc: &mut Proc,
    within: Duration,
) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/health/readyz");
    let t0 = Instant::now();
    loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if let Ok(Some(s)) = proc.child.try_wait() {
            anyhow::bail!("nexus {} exited ({s}) before it was ready", proc.name);
        }
        anyhow::ensure!(
            t0.elapsed() < within,
            "nexus {} not ready within {within:?}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Jobs of the namespace (paged): all, Nexus-labelled, Complete.
async fn count_jobs(jobs: &Api<Job>) -> anyhow::Result<(usize, usize, usize)> {
    let (mut all, mut nexus, mut complete) = (0, 0, 0);
    let mut lp = ListParams::default().limit(PAGE);
    for _ in 0..10_000 {
        let page = jobs.list(&lp).await.context("cannot list the Jobs")?;
        for j in &page.items {
            all += 1;
            if j.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("science.sneaksanddata.com/nexus-component"))
            {
                nexus += 1;
            }
            if j.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                })
            {
                complete += 1;
            }
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    Ok((all, nexus, complete))
}

/// A Job of another application: no Nexus label, a pod on a kwok node.
fn foreign_job(i: usize) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("foreign-{i}"), "labels": {"app": "foreign", "team": "other"}},
        "spec": {
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "foreign"}},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "nodeSelector": {"type": "kwok"},
                    "containers": [{
                        "name": "work", "image": "kwok.invalid/foreign:v1",
                        "command": ["work", "--item", i.to_string()],
                        "env": [{"name": "ITEM", "value": i.to_string()}],
                        "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}
                    }]
                }
            }
        }
    }))?)
}

/// A copy of the Nexus Job `model` for a run this receiver never launched (run id `id`): what
/// another receiver, or another installation, leaves in the namespace. Server-set fields
/// (selector, controller labels, status, metadata) are left out.
fn other_nexus_job(model: &Job, id: RunId) -> anyhow::Result<Job> {
    let mut v = serde_json::to_value(model)?;
    let name = id.to_string();
    let labels = model.metadata.labels.clone().unwrap_or_default();
    let mut labels = serde_json::to_value(labels)?;
    labels["science.sneaksanddata.com/request-id"] = name.clone().into();
    v["metadata"] = serde_json::json!({"name": name, "labels": labels});
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = v["spec"].as_object_mut() {
        spec.remove("selector");
        spec.remove("manualSelector");
        spec.insert("ttlSecondsAfterFinished".into(), TTL_SECONDS.into());
    }
    if let Some(l) = v["spec"]["template"]["metadata"]["labels"].as_object_mut() {
        l.retain(|k, _| !k.contains("controller-uid") && !k.ends_with("job-name"));
        l.insert(
            "science.sneaksanddata.com/request-id".into(),
            name.clone().into(),
        );
    }
    // The container is named after the run (as the receiver renders it).
    if let Some(cs) = v["spec"]["template"]["spec"]["containers"].as_array_mut() {
        for c in cs {
            c["name"] = name.clone().into();
        }
    }
    Ok(serde_json::from_value(v)?)
}

/// Creates `n` Jobs made by `make(i)`, `concurrency` at a time, until `deadline`; returns how
/// many were created.
async fn create_jobs<F>(
    jobs: &Api<Job>,
    n: usize,
    concurrency: usize,
    deadline: Instant,
    make: F,
) -> usize
where
    F: Fn(usize) -> anyhow::Result<Job> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (jobs, next, created, make) =
            (jobs.clone(), next.clone(), created.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline || errors > 100 {
                    break;
                }
                let ok = match make(i) {
                    Ok(j) => match jobs.create(&PostParams::default(), &j).await {
                        Ok(_) => true,
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("receiver-memory: a Job create failed: {e}");
                            }
                            false
                        }
                    },
                    Err(e) => {
                        eprintln!("receiver-memory: cannot make a Job: {e}");
                        false
                    }
                };
                if ok {
                    created.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    created.load(Ordering::Relaxed)
}

/// Submits `n` runs to the scheduler at `url`; returns their ids.
async fn submit(url: &str, n: usize, deadline: Instant) -> anyhow::Result<Vec<RunId>> {
    let client = load_client(16)?;
    let url = format!("{url}/algorithm/v1/run/{ALGORITHM}");
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, next, url) = (client.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids: Vec<RunId> = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline || failures > 100 {
                    break;
                }
                let r = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!("{{\"algorithmParameters\":{{\"i\":{i}}}}}"))
                    .send()
                    .await;
                let id = match r {
                    Ok(r) if r.status().as_u16() == 202 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["requestId"].as_str().and_then(|s| s.parse().ok())),
                    Ok(r) => {
                        if failures == 0 {
                            let s = r.status();
                            eprintln!(
                                "receiver-memory: a submission answered {s}: {}",
                                r.text().await.unwrap_or_default()
                            );
                        }
                        None
                    }
                    Err(e) => {
                        if failures == 0 {
                            eprintln!("receiver-memory: a submission failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Samples the receiver `pid` every `every` into `out` (stage from `stage`) until `stop`.
fn sampler(
    pid: u32,
    every: Duration,
    t0: Instant,
    stage: Arc<Mutex<Stage>>,
    out: Arc<Mutex<Vec<Sample>>>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded: at most a day of samples.
        for _ in 0..(86_400_000 / every.as_millis().max(1)) {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (Some(rss_kib), Some(hwm_kib)) =
                (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"))
            else {
                return;
            };
            let s = Sample {
                at: t0.elapsed(),
                stage: *lock(&stage),
                rss_kib,
                hwm_kib,
            };
            lock(&out).push(s);
        }
    })
}

/// The configuration files of one phase, written under `dir`.
struct Files {
    receiver: PathBuf,
    scheduler: PathBuf,
    receiver_http: u16,
    scheduler_http: u16,
}

fn write_files(o: &Options, dir: &Path, ns: &str, store: &str) -> anyhow::Result<Files> {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates)?;
    std::fs::write(templates.join("workgroup.yaml"), WORKGROUP)?;
    std::fs::write(templates.join("rss.yaml"), TEMPLATE)?;
    let key = dir.join("signing.key");
    std::fs::write(
        &key,
        format!("{}{}", RunId::new().0.simple(), RunId::new().0.simple()),
    )?;
    let secret = dir.join("grpc.secret");
    std::fs::write(&secret, format!("grpc-{}", RunId::new().0.simple()))?;
    let (r_http, r_grpc, s_http) = (free_port()?, free_port()?, free_port()?);
    let shared = format!(
        "store: \"{store}\"\npayloads: \"{}\"\nsigning_key_file: \"{}\"\n\
         grpc:\n  auth: shared-secret\n  secret_file: \"{}\"\n",
        o.payloads,
        key.display(),
        secret.display()
    );
    let receiver = dir.join("receiver.yaml");
    std::fs::write(
        &receiver,
        format!(
            "{shared}listen: 127.0.0.1:{r_http}\ngrpc_listen: 127.0.0.1:{r_grpc}\n\
             public_url: http://127.0.0.1:{r_http}\nshard: {SHARD}\ninstance_id: rss\n\
             work_dir: \"{}\"\nruntime: kubernetes\n\
             kubernetes:\n  kubeconfig: \"{}\"\n  namespace: {ns}\n  api_budget: {{rate: 200, burst: 50}}\n\
             job:\n  ttl_seconds_after_finished: {TTL_SECONDS}\n",
            dir.join("work").display(),
            o.kubeconfig.display()
        ),
    )?;
    let scheduler = dir.join("scheduler.yaml");
    std::fs::write(
        &scheduler,
        format!(
            "{shared}listen: 127.0.0.1:{s_http}\ninstance_id: rss-scheduler\n\
             templates_dir: \"{}\"\nshards:\n  {SHARD}:\n    endpoints: [\"http://127.0.0.1:{r_grpc}\"]\n\
             scheduler:\n  shard_budget: {{rate: 200, burst: 20}}\n",
            templates.display()
        ),
    )?;
    Ok(Files {
        receiver,
        scheduler,
        receiver_http: r_http,
        scheduler_http: s_http,
    })
}

/// Deletes the namespace's Jobs and the namespace; best effort, bounded.
async fn cleanup_namespace(admin: &Client, ns: &str) {
    let jobs: Api<Job> = Api::namespaced(admin.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let all = ListParams::default();
    let del = jobs.delete_collection(&dp, &all);
    if tokio::time::timeout(Duration::from_secs(60), del)
        .await
        .is_err()
    {
        eprintln!(
            "receiver-memory: deleting the Jobs of {ns} takes over 60s; the API server goes on with it"
        );
    }
    let nss: Api<Namespace> = Api::all(admin.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        nss.delete(ns, &DeleteParams::default()),
    )
    .await;
}

/// Measures one receiver binary; see the module docs.
#[allow(clippy::too_many_lines)] // one phase, in the order it happens
async fn phase(o: &Options, admin: &Client, nexus: &Path, index: usize) -> anyhow::Result<Phase> {
    anyhow::ensure!(
        nexus.is_file(),
        "{} is missing: `cargo build --release -p nexus-cli --bin nexus` (or --nexus PATH)",
        nexus.display()
    );
    let deadline = Instant::now() + o.timeout;
    let ns = format!("rss-{index}-{}", &RunId::new().0.simple().to_string()[24..]);
    let nss: Api<Namespace> = Api::all(admin.clone());
    let n: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"app.kubernetes.io/created-by": "nexus-bench"}}
    }))?;
    nss.create(&PostParams::default(), &n)
        .await
        .with_context(|| format!("cannot create namespace {ns}"))?;
    let scratch = cassandra::Scratch::new(&o.store).await?;
    let dir = tempfile::tempdir()?;
    eprintln!(
        "receiver-memory: {} in namespace {ns}, files in {}",
        nexus.display(),
        dir.path().display()
    );
    let result = measure(o, admin, nexus, &ns, &scratch, dir.path(), deadline).await;
    cleanup_namespace(admin, &ns).await;
    scratch.drop().await;
    if result.is_err() {
        // Keep the processes' logs for a look.
        let kept = dir.keep();
        eprintln!("receiver-memory: logs kept in {}", kept.display());
    }
    result
}

#[allow(clippy::too_many_lines)] // one phase, in the order it happens
async fn measure(
    o: &Options,
    admin: &Client,
    nexus: &Path,
    ns: &str,
    scratch: &cassandra::Scratch,
    dir: &Path,
    deadline: Instant,
) -> anyhow::Result<Phase> {
    let files = write_files(o, dir, ns, &scratch.url)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut receiver = Proc::spawn(
        nexus,
        "receiver",
        &files.receiver,
        &dir.join("receiver.log"),
    )?;
    wait_ready(
        &http,
        files.receiver_http,
        &mut receiver,
        Duration::from_secs(90),
    )
    .await?;
    let mut scheduler = Proc::spawn(
        nexus,
        "scheduler",
        &files.scheduler,
        &dir.join("scheduler.log"),
    )?;
    wait_ready(
        &http,
        files.scheduler_http,
        &mut scheduler,
        Duration::from_secs(90),
    )
    .await?;

    let t0 = Instant::now();
    let stage = Arc::new(Mutex::new(Stage::Idle));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampling = sampler(
        receiver.pid(),
        o.sample_every,
        t0,
        stage.clone(),
        samples.clone(),
        stop.clone(),
    );
    let set = |s: Stage| {
        *lock(&stage) = s;
        eprintln!(
            "receiver-memory: {:>6.1}s {} (VmRSS {} KiB)",
            t0.elapsed().as_secs_f64(),
            s.name(),
            status_kib(receiver.pid(), "VmRSS:").unwrap_or(0)
        );
    };
    set(Stage::Idle);
    tokio::time::sleep(o.settle).await;
    let baseline_kib = status_kib(receiver.pid(), "VmRSS:").context("the receiver exited")?;

    // Runs → Jobs launched by the receiver.
    set(Stage::Runs);
    let fill_t0 = Instant::now();
    let url = format!("http://127.0.0.1:{}", files.scheduler_http);
    let ids = submit(&url, o.runs, deadline).await?;
    eprintln!("receiver-memory: {} runs accepted", ids.len());
    let jobs: Api<Job> = Api::namespaced(admin.clone(), ns);
    let nexus_lp = ListParams::default().labels(NEXUS_JOBS);
    // Until the receiver launched them all (bounded by the deadline).
    let mut model: Option<Job> = None;
    loop {
        let (_, launched, _) = count_jobs(&jobs).await?;
        if model.is_none() {
            model = jobs
                .list(&nexus_lp.clone().limit(1))
                .await?
                .items
                .into_iter()
                .next();
        }
        if launched >= ids.len() || Instant::now() >= deadline {
            eprintln!("receiver-memory: {launched} Jobs launched by the receiver");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let model = model.context("the receiver launched no Job: see its log")?;

    // The rest of the namespace: foreign Jobs and other Nexus Jobs.
    set(Stage::Fill);
    let foreign = o.foreign.min(o.jobs.saturating_sub(ids.len()));
    let others = o.jobs.saturating_sub(ids.len() + foreign);
    let made_foreign = create_jobs(&jobs, foreign, 32, deadline, foreign_job).await;
    let made_others = create_jobs(&jobs, others, 32, deadline, move |_| {
        other_nexus_job(&model, RunId::new())
    })
    .await;
    eprintln!("receiver-memory: created {made_foreign} foreign and {made_others} other Nexus Jobs");
    let fill_secs = fill_t0.elapsed().as_secs_f64();

    // Hold with every Job in place: the receiver's GC lists them all every 60 s.
    set(Stage::Hold);
    let hold_t0 = Instant::now();
    let hold_until = (hold_t0 + o.hold).min(deadline);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_secs(1).min(hold_until - Instant::now())).await;
        if let Ok(Some(s)) = receiver.child.try_wait() {
            anyhow::bail!("the receiver exited during the hold ({s}): see its log");
        }
    }
    let hold_secs = hold_t0.elapsed().as_secs_f64();
    stop.cancel();
    let _ = sampling.await;
    let jobs_end = count_jobs(&jobs).await?;
    let mut runs_ended = 0;
    for id in &ids {
        if let Ok(Some(r)) = nexus_store::RunStore::get(scratch.store.as_ref(), *id).await
            && r.stage.is_terminal()
        {
            runs_ended += 1;
        }
    }
    scheduler.stop().await;
    receiver.stop().await;
    let samples = std::mem::take(&mut *lock(&samples));
    Ok(Phase {
        nexus: nexus.to_path_buf(),
        accepted: ids.len(),
        jobs_end,
        runs_ended,
        samples,
        baseline_kib,
        fill_secs,
        hold_secs,
    })
}

/// Runs the scenario; see the module docs.
///
/// # Errors
/// The cluster, Cassandra or a process cannot be reached or started, or kwok's nodes are not
/// Ready.
pub async fn run(o: &Options) -> anyhow::Result<Vec<Phase>> {
    anyhow::ensure!(
        (1..=50_000).contains(&o.jobs),
        "--jobs must be between 1 and 50000"
    );
    anyhow::ensure!(
        (1..=o.jobs).contains(&o.runs),
        "--runs must be between 1 and --jobs"
    );
    anyhow::ensure!(
        o.sample_every >= Duration::from_millis(50),
        "--sample-every must be at least 50ms"
    );
    let admin = admin_client(&o.kubeconfig).await?;
    if o.nodes > 0 {
        let ready = ready_kwok_nodes(&admin).await?;
        anyhow::ensure!(
            ready >= o.nodes,
            "{ready} kwok nodes Ready, {} wanted: scripts/kwok.sh start --kubeconfig … --nodes {}",
            o.nodes,
            o.nodes
        );
    }
    let mut phases = Vec::new();
    for (i, nexus) in o.nexus.iter().enumerate() {
        let p = phase(o, &admin, nexus, i).await?;
        print_phase(&p);
        phases.push(p);
    }
    Ok(phases)
}

fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // KiB of one process
    let m = kib as f64 / 1024.0;
    format!("{m:.1}")
}

fn ratio(a: u64, b: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let r = a as f64 / (b.max(1)) as f64;
    format!("{r:.2}")
}

/// The samples of one phase, one line every ~10 s: time, stage, `VmRSS`.
fn print_phase(p: &Phase) {
    let mut line = Vec::new();
    let mut next = Duration::ZERO;
    for s in &p.samples {
        if s.at >= next {
            line.push(format!("{:.0}s:{}", s.at.as_secs_f64(), mib(s.rss_kib)));
            next = s.at + Duration::from_secs(10);
        }
    }
    println!(
        "\nreceiver-memory {}: VmRSS MiB over time: {}",
        p.nexus.display(),
        line.join(" ")
    );
}

/// Prints the phases.
pub fn print(o: &Options, phases: &[Phase]) {
    let mut rows = Vec::new();
    for p in phases {
        let last = p.last();
        let mut row = vec![p.nexus.display().to_string(), mib(p.baseline_kib)];
        for st in Stage::ALL.into_iter().skip(1) {
            row.push(mib(p.peak(Some(st))));
        }
        let peak = p.peak(None);
        row.push(mib(peak));
        row.push(ratio(peak, p.baseline_kib));
        row.push(last.map_or_else(String::new, |s| mib(s.rss_kib)));
        row.push(last.map_or_else(String::new, |s| mib(s.hwm_kib)));
        rows.push(row);
    }
    print_table(
        &format!(
            "receiver-memory: nexus receiver VmRSS (MiB) with {} Jobs in its namespace ({} from runs, {} foreign, the rest other Nexus Jobs)",
            o.jobs, o.runs, o.foreign
        ),
        &[
            "binary",
            "baseline (empty ns)",
            "peak: runs",
            "peak: fill",
            "peak: hold",
            "peak",
            "peak ÷ baseline",
            "end VmRSS",
            "end VmHWM",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                p.nexus.display().to_string(),
                p.accepted.to_string(),
                p.runs_ended.to_string(),
                p.jobs_end.0.to_string(),
                p.jobs_end.1.to_string(),
                p.jobs_end.2.to_string(),
                format!("{:.0}", p.fill_secs),
                format!("{:.0}", p.hold_secs),
            ]
        })
        .collect();
    print_table(
        "receiver-memory: what the namespace held",
        &[
            "binary",
            "runs accepted",
            "runs ended",
            "Jobs at end",
            "Nexus Jobs",
            "Complete",
            "fill s",
            "hold s",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_receivers_job_loses_the_server_set_fields() {
        let model: Job = serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "7",
                         "labels": {"science.sneaksanddata.com/request-id": "a", "x": "y"}},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"metadata": {"labels": {
                         "batch.kubernetes.io/controller-uid": "u", "controller-uid": "u",
                         "batch.kubernetes.io/job-name": "a", "job-name": "a", "x": "y"}},
                         "spec": {"containers": [{"name": "a", "image": "i"}]}}},
            "status": {"active": 1}
        }))
        .unwrap();
        let id = RunId::new();
        let j = other_nexus_job(&model, id).unwrap();
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["metadata"]["name"], id.to_string());
        assert_eq!(v["metadata"].get("uid"), None);
        assert_eq!(
            v["metadata"]["labels"]["science.sneaksanddata.com/request-id"],
            id.to_string()
        );
        assert_eq!(v.get("status"), None);
        assert_eq!(v["spec"].get("selector"), None);
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"],
            serde_json::json!({"x": "y", "science.sneaksanddata.com/request-id": id.to_string()})
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["name"],
            id.to_string()
        );
        assert_eq!(v["spec"]["ttlSecondsAfterFinished"], TTL_SECONDS);
    }
}
