//! Configuration of `nexus scheduler`, `nexus receiver` and `nexus supervisor`: defaults in code →
//! YAML file (`--config`) → `NEXUS__SECTION__KEY` environment variables → flags, then `validate`.
//!
//! Every component of one deployment shares the run store (Cassandra / ScyllaDB), the payload
//! store (S3), the signing key and the gRPC credentials; each has its own listen addresses and
//! its own section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_http::server::ServerConfig;
use nexus_kube::classify::FailureConfig;
use nexus_kube::client::KubeClientConfig;
use nexus_kube::job::JobOptions;
use nexus_kube::logs::PodLogOptions;
use nexus_link::grpc::{GrpcLinkConfig, RESOLVE_INTERVAL_MAX, RESOLVE_INTERVAL_MIN};
use nexus_receiver::ReceiverConfig;
use nexus_scheduler::SchedulerConfig;
use nexus_scheduler::edge::EdgeLimitConfig;
use serde::{Deserialize, Serialize};

use crate::config::{ExecutorSection, Layered, load};

/// Default `shard_resolve_interval`.
pub const DEFAULT_SHARD_RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

/// The receivers of one shard (section `shards.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// gRPC endpoints of the shard's receivers (`http://host:port`, or `https://` with TLS); runs
    /// are balanced across them, and a receiver that does not answer is skipped for a while.
    /// A host that is a DNS name (e.g. the receivers' headless Service) stands for every address
    /// it resolves to, resolved again every `shard_resolve_interval`, so scaling the receivers
    /// needs no config change; an IP literal is used as written.
    pub endpoints: Vec<String>,
}

/// Where the scheduler and the supervisor read templates and workgroups from (`catalog`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogSource {
    /// YAML manifests in `templates_dir`, checked every `reload_interval`.
    #[default]
    Directory,
    /// `NexusAlgorithmTemplate` / `NexusAlgorithmWorkgroup` resources in the namespace of the
    /// `kubernetes` section, followed by watch (install the CRDs with `nexus crd`).
    Kubernetes,
}

/// Where supervisors elect their leader (`supervisor.leader_election`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaderElection {
    /// A compare-and-set row in the run store (works in every deployment).
    #[default]
    Store,
    /// The `coordination.k8s.io/v1` Lease `nexus-supervisor` in the namespace of the `kubernetes`
    /// section (needs `get`, `create`, `update` on `leases` there).
    Kubernetes,
}

/// Where a receiver runs algorithms (`runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Local processes on the receiver's machine (section `executor`).
    #[default]
    Local,
    /// Kubernetes Jobs in the namespace of the `kubernetes` section (section `job`).
    Kubernetes,
}

/// Configuration of `nexus scheduler`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerProcess {
    /// HTTP v1 API, `/data/v1/payloads`, health probes and `/metrics`.
    pub listen: SocketAddr,
    /// URL algorithms use to reach the schedulers (the load balancer); payload URLs point here.
    /// Default `http://<listen>`.
    pub public_url: Option<String>,
    /// Owner id of this scheduler (its lease). Default: `<hostname>-<pid>-<random>`; set a stable
    /// one (e.g. the pod name of a StatefulSet) to pick up this scheduler's own queue on restart.
    pub instance_id: Option<String>,
    /// Run store URL (`cassandra://…`), shared by every component.
    pub store: String,
    /// Payload store URL (`s3://bucket/prefix?…`), shared by every component.
    pub payloads: String,
    /// Where templates and workgroups come from: `directory` or `kubernetes`.
    pub catalog: CatalogSource,
    /// Directory of template / workgroup manifests (`catalog: directory`).
    pub templates_dir: PathBuf,
    /// How often the templates directory is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The cluster holding the template resources (`catalog: kubernetes`).
    pub kubernetes: KubeClientConfig,
    /// File holding the signing key shared by every component (≥ 32 bytes). `NEXUS_SIGNING_KEY`
    /// (the key itself) takes precedence.
    pub signing_key_file: Option<PathBuf>,
    /// `text` or `json` logs.
    pub log_format: String,
    /// How components authenticate each other over gRPC.
    pub grpc: GrpcLinkConfig,
    /// Shard name (a workgroup's `spec.cluster`) → its receivers.
    pub shards: BTreeMap<String, ShardEntry>,
    /// How often shard endpoints whose host is a DNS name are resolved again (1s..10m; default
    /// 10s). A failed or empty answer keeps the last known receivers.
    #[serde(with = "humantime_serde")]
    pub shard_resolve_interval: Duration,
    /// Scheduler settings (queue, budgets, retries, lease).
    pub scheduler: SchedulerConfig,
    /// Per-client rate limiting of the API.
    pub rate_limit: EdgeLimitConfig,
    /// Connection limit, timeouts and TLS of the HTTP server (the API and gRPC port).
    pub server: ServerConfig,
    /// Who may call the API (authentication, rules); see `docs/AUTH.md`.
    pub auth: nexus_auth::AuthConfig,
}

impl Default for SchedulerProcess {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            instance_id: None,
            store: String::new(),
            payloads: String::new(),
            catalog: CatalogSource::Directory,
            templates_dir: PathBuf::from("examples/templates"),
            reload_interval: Duration::from_secs(2),
            kubernetes: KubeClientConfig::default(),
            signing_key_file: None,
            log_format: "text".into(),
            grpc: GrpcLinkConfig::default(),
            shards: BTreeMap::new(),
            shard_resolve_interval: DEFAULT_SHARD_RESOLVE_INTERVAL,
            scheduler: SchedulerConfig::default(),
            rate_limit: EdgeLimitConfig::default(),
            server: ServerConfig::default(),
            auth: nexus_auth::AuthConfig::default(),
        }
    }
}

/// Configuration of `nexus receiver`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverProcess {
    /// HTTP completion endpoint, health probes and `/metrics`.
    pub listen: SocketAddr,
    /// gRPC `nexus.v1.ShardService` and `CompletionService`.
    pub grpc_listen: SocketAddr,
    /// URL algorithms use to reach this receiver's HTTP completion endpoint. Default
    /// `http://<listen>` with `runtime: local`; required with `runtime: kubernetes` (the
    /// Service's cluster DNS name: Jobs run in other pods).
    pub public_url: Option<String>,
    /// The shard this receiver serves (required): the `spec.cluster` of its workgroups.
    pub shard: String,
    /// Instance part of the owner id `receiver/<shard>/<instance>`. Default:
    /// `<hostname>-<pid>-<random>`.
    pub instance_id: Option<String>,
    /// Run store URL (`cassandra://…`).
    pub store: String,
    /// Payload store URL (`s3://…`).
    pub payloads: String,
    /// Working directories of local algorithm processes.
    pub work_dir: PathBuf,
    /// File holding the shared signing key (or `NEXUS_SIGNING_KEY`).
    pub signing_key_file: Option<PathBuf>,
    /// `text` or `json` logs.
    pub log_format: String,
    /// How schedulers and the supervisor authenticate to this receiver.
    pub grpc: GrpcLinkConfig,
    /// Lease time-to-live: when this receiver stops renewing it (killed, lost), the supervisor
    /// launches its RUNNING runs again after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// On shutdown, how long running runs get to finish before the receiver leaves (the
    /// supervisor launches the rest again elsewhere).
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Receiver settings (token validity, completion size, launch limit).
    pub receiver: ReceiverConfig,
    /// Where algorithms run: `local` processes or `kubernetes` Jobs.
    pub runtime: Runtime,
    /// Local-process executor settings (`runtime: local`).
    pub executor: ExecutorSection,
    /// The shard's cluster and the API budget toward it (`runtime: kubernetes`).
    pub kubernetes: KubeClientConfig,
    /// How runs are rendered into Jobs (`runtime: kubernetes`).
    pub job: JobOptions,
    /// How long a pod may be stuck before its container runs (image pull, unschedulable,
    /// configuration) before the run is given up as SCHEDULING_FAILED (`runtime: kubernetes`).
    pub failures: FailureConfig,
    /// Runs' pod logs: read live for the logs route, and a copy kept in the payload store when
    /// a run's Job finishes (`runtime: kubernetes`).
    pub pod_logs: PodLogOptions,
    /// Connection limit and timeouts of the HTTP server (completions, probes).
    pub server: ServerConfig,
}

impl Default for ReceiverProcess {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            public_url: None,
            shard: String::new(),
            instance_id: None,
            store: String::new(),
            payloads: String::new(),
            work_dir: PathBuf::from(".nexus-receiver"),
            signing_key_file: None,
            log_format: "text".into(),
            grpc: GrpcLinkConfig::default(),
            lease_ttl: Duration::from_secs(15),
            drain_grace: Duration::from_secs(30),
            receiver: ReceiverConfig::default(),
            runtime: Runtime::Local,
            executor: ExecutorSection::default(),
            kubernetes: KubeClientConfig::default(),
            job: JobOptions::default(),
            failures: FailureConfig::default(),
            pod_logs: PodLogOptions::default(),
            server: ServerConfig::default(),
        }
    }
}

/// The supervisor's recovery settings (section `supervisor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResubmitSection {
    /// How often to look for orphaned runs.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
    /// Most orphaned runs settled (claimed and handed over) per second: a large backlog is worked
    /// off at this pace, leaving the store room for new submissions.
    pub recovery_rate: u32,
    /// The supervisor's own lease and its leadership period: several supervisors may run, one
    /// leads and the others stand by; a standby takes over (with the leader's pending claims) at
    /// once when the leader stops, within ~1.1 × this (~1.2 × on a Kubernetes Lease) when it is
    /// lost.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Where the leader is elected: `store` (default, the run store) or `kubernetes` (a Lease
    /// in the namespace of the `kubernetes` section).
    pub leader_election: LeaderElection,
    /// Launches of a run beyond its algorithm's retries after its receiver was lost.
    pub max_relaunches: u32,
    /// Longest wait for a shard to answer one resubmission.
    #[serde(with = "humantime_serde")]
    pub submit_timeout: Duration,
    /// How often stale lookup rows are swept (finished runs expire by the store's retention TTL
    /// and objects by the bucket's lifecycle rule, `nexus payloads lifecycle`).
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// What a run that ends FAILED, SCHEDULING_FAILED or DEADLINE_EXCEEDED does to its running
    /// descendants: `cancel` (default) or `keep`. A cancelled run always cancels them.
    pub on_parent_failure: nexus_link::tree::OnParentFailure,
    /// How many children of one run the tree sweep reads when it cancels descendants: keep it at
    /// least the schedulers' `scheduler.max_children_per_run` (same default), or children beyond
    /// it are not cancelled by the sweep.
    pub max_children_per_run: usize,
}

impl Default for ResubmitSection {
    fn default() -> Self {
        Self {
            recovery_interval: Duration::from_secs(5),
            recovery_rate: 1_000,
            lease_ttl: Duration::from_secs(15),
            leader_election: LeaderElection::Store,
            max_relaunches: 3,
            submit_timeout: Duration::from_secs(30),
            gc_interval: Duration::from_secs(600),
            on_parent_failure: nexus_link::tree::OnParentFailure::Cancel,
            max_children_per_run: 10_000,
        }
    }
}

/// Configuration of `nexus supervisor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorProcess {
    /// Health probes and `/metrics`.
    pub listen: SocketAddr,
    /// Base URL of the schedulers (their load balancer): payload URLs of resubmitted runs point
    /// to its `/data/v1/payloads` route.
    pub scheduler_url: String,
    /// Instance part of the owner id `supervisor/<instance>`.
    pub instance_id: Option<String>,
    /// Run store URL (`cassandra://…`).
    pub store: String,
    /// Where templates and workgroups come from: `directory` or `kubernetes`.
    pub catalog: CatalogSource,
    /// Directory of template / workgroup manifests (`catalog: directory`).
    pub templates_dir: PathBuf,
    /// How often the templates directory is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The cluster holding the template resources (`catalog: kubernetes`).
    pub kubernetes: KubeClientConfig,
    /// File holding the shared signing key (or `NEXUS_SIGNING_KEY`).
    pub signing_key_file: Option<PathBuf>,
    /// `text` or `json` logs.
    pub log_format: String,
    /// How the supervisor authenticates to receivers.
    pub grpc: GrpcLinkConfig,
    /// Shard name → its receivers.
    pub shards: BTreeMap<String, ShardEntry>,
    /// How often shard endpoints whose host is a DNS name are resolved again (1s..10m; default
    /// 10s).
    #[serde(with = "humantime_serde")]
    pub shard_resolve_interval: Duration,
    /// Recovery settings.
    pub supervisor: ResubmitSection,
    /// Connection limit and timeouts of the HTTP server (probes, metrics).
    pub server: ServerConfig,
}

impl Default for SupervisorProcess {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8095)),
            scheduler_url: "http://127.0.0.1:8080".into(),
            instance_id: None,
            store: String::new(),
            catalog: CatalogSource::Directory,
            templates_dir: PathBuf::from("examples/templates"),
            reload_interval: Duration::from_secs(2),
            kubernetes: KubeClientConfig::default(),
            signing_key_file: None,
            log_format: "text".into(),
            grpc: GrpcLinkConfig::default(),
            shards: BTreeMap::new(),
            shard_resolve_interval: DEFAULT_SHARD_RESOLVE_INTERVAL,
            supervisor: ResubmitSection::default(),
            server: ServerConfig::default(),
        }
    }
}

/// Flag overrides of the distributed commands (only the ones given; each command exposes its own).
#[derive(Debug, Default, Serialize)]
pub struct DistOverrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--grpc-listen` (receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// `--shard` (receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// `--store`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// `--payloads` (scheduler, receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payloads: Option<String>,
    /// `--templates` (scheduler, supervisor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates_dir: Option<PathBuf>,
    /// `--public-url` (scheduler, receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `--scheduler-url` (supervisor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_url: Option<String>,
}

fn check_store(url: &str, e: &mut Vec<String>) {
    let s = url.trim();
    if s.is_empty() || s == "embedded" {
        e.push(
            "store: distributed components share one run store; set a cassandra://host:9042/keyspace URL \
             (the embedded store is a file locked by one process: use `nexus standalone` for that)"
                .into(),
        );
    } else if s.starts_with("cassandra://") || s.starts_with("scylla://") {
        if let Err(m) = nexus_store::cassandra::CassandraConfig::from_url(s) {
            e.push(format!("store: {m}"));
        }
    } else {
        e.push(format!(
            "store: '{s}' is not a cassandra://host:9042/keyspace URL"
        ));
    }
}

fn check_payloads(url: &str, e: &mut Vec<String>) {
    let s = url.trim();
    if s.starts_with("s3://") || s.starts_with("s3a://") {
        if let Err(m) = nexus_payload::S3Config::from_url(s) {
            e.push(format!("payloads: {m}"));
        }
    } else {
        e.push(format!(
            "payloads: distributed components share one payload store; set an s3://bucket/prefix URL (got '{s}')"
        ));
    }
}

fn check_common(
    log_format: &str,
    grpc: &GrpcLinkConfig,
    signing_key_file: Option<&Path>,
    server: &ServerConfig,
    e: &mut Vec<String>,
) {
    if let Err(m) = server.validate("server") {
        e.push(m);
    }
    let env_key = std::env::var_os("NEXUS_SIGNING_KEY").is_some_and(|v| !v.is_empty());
    if signing_key_file.is_none() && !env_key {
        e.push(
            "signing_key_file: required (a file of at least 32 random bytes, the same for every component), \
             or set NEXUS_SIGNING_KEY; e.g. `head -c 48 /dev/urandom | base64 > signing.key`"
                .into(),
        );
    }
    if !matches!(log_format, "text" | "json") {
        e.push(format!("log_format: '{log_format}' must be text or json"));
    }
    if let Err(m) = grpc.validate() {
        e.push(format!("grpc: {m}"));
    }
}

fn check_url(key: &str, u: &str, e: &mut Vec<String>) {
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        e.push(format!("{key}: '{u}' must start with http:// or https://"));
    }
}

fn check_shards(shards: &BTreeMap<String, ShardEntry>, resolve: Duration, e: &mut Vec<String>) {
    if !(RESOLVE_INTERVAL_MIN..=RESOLVE_INTERVAL_MAX).contains(&resolve) {
        e.push(format!(
            "shard_resolve_interval: {} is out of range; use 1s to 10m",
            humantime::format_duration(resolve)
        ));
    }
    if shards.is_empty() {
        e.push(
            "shards: no shard configured; add `shards: {<cluster name>: {endpoints: [http://receiver:9091]}}`"
                .into(),
        );
    }
    for (name, s) in shards {
        if s.endpoints.is_empty() {
            e.push(format!(
                "shards.{name}.endpoints: list at least one receiver"
            ));
        }
        for ep in &s.endpoints {
            check_url(&format!("shards.{name}.endpoints"), ep, e);
        }
    }
}

/// Checks the `kubernetes` section when something of the process uses it.
fn check_kubernetes(used: bool, kube: &KubeClientConfig, e: &mut Vec<String>) {
    if used && let Err(m) = kube.validate() {
        e.push(m);
    }
}

fn done(e: Vec<String>) -> Result<(), String> {
    if e.is_empty() {
        Ok(())
    } else {
        Err(e.join("; "))
    }
}

impl Layered for SchedulerProcess {
    fn validate(&self) -> Result<(), String> {
        SchedulerProcess::validate(self)
    }
}

impl SchedulerProcess {
    /// Loads the layered configuration.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, wrong types, invalid values, each naming the key.
    pub fn load(file: Option<&Path>, o: &DistOverrides) -> Result<Self, String> {
        load(file, o)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// All problems, each naming its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        check_common(
            &self.log_format,
            &self.grpc,
            self.signing_key_file.as_deref(),
            &self.server,
            &mut e,
        );
        check_store(&self.store, &mut e);
        check_payloads(&self.payloads, &mut e);
        check_shards(&self.shards, self.shard_resolve_interval, &mut e);
        check_kubernetes(
            self.catalog == CatalogSource::Kubernetes,
            &self.kubernetes,
            &mut e,
        );
        if let Some(u) = &self.public_url {
            check_url("public_url", u, &mut e);
        }
        if let Err(m) = crate::config::check_auth_listen(&self.auth, self.listen) {
            e.push(m);
        }
        for r in [
            self.scheduler.validate(),
            self.rate_limit.validate(),
            self.auth.validate(),
        ] {
            if let Err(m) = r {
                e.push(m);
            }
        }
        done(e)
    }
}

impl Layered for ReceiverProcess {
    fn validate(&self) -> Result<(), String> {
        ReceiverProcess::validate(self)
    }
}

impl ReceiverProcess {
    /// Loads the layered configuration.
    ///
    /// # Errors
    /// As [`SchedulerProcess::load`].
    pub fn load(file: Option<&Path>, o: &DistOverrides) -> Result<Self, String> {
        load(file, o)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// All problems, each naming its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        check_common(
            &self.log_format,
            &self.grpc,
            self.signing_key_file.as_deref(),
            &self.server,
            &mut e,
        );
        check_store(&self.store, &mut e);
        check_payloads(&self.payloads, &mut e);
        if let Err(m) = nexus_model::spec::validate_dns1123_subdomain(&self.shard) {
            e.push(format!(
                "shard: {m} (the shard is the spec.cluster of the workgroups it runs)"
            ));
        }
        if let Some(u) = &self.public_url {
            check_url("public_url", u, &mut e);
        }
        if self.lease_ttl < Duration::from_secs(1) {
            e.push("lease_ttl: must be at least 1s".into());
        }
        if self.executor.default_max_concurrent == 0 {
            e.push("executor.default_max_concurrent: must be at least 1".into());
        }
        if self.listen == self.grpc_listen && self.listen.port() != 0 {
            e.push(format!(
                "grpc_listen: {} is also `listen`; give gRPC its own port",
                self.grpc_listen
            ));
        }
        if let Err(m) = self.receiver.validate() {
            e.push(m);
        }
        if self.runtime == Runtime::Kubernetes {
            for r in [
                self.kubernetes.validate(),
                self.job.validate(),
                self.pod_logs.validate(),
            ] {
                if let Err(m) = r {
                    e.push(m);
                }
            }
            // Jobs run in pods: the default `http://<listen>` (loopback by default) would hand
            // every run a URL that leads nowhere.
            if self.public_url.is_none() {
                e.push(
                    "public_url: required with runtime: kubernetes (the URL Jobs complete through), \
                     e.g. http://nexus-receiver-shard-1.nexus.svc.cluster.local:8091; the default \
                     http://<listen> is only reachable from this machine"
                        .into(),
                );
            }
        }
        done(e)
    }
}

impl Layered for SupervisorProcess {
    fn validate(&self) -> Result<(), String> {
        SupervisorProcess::validate(self)
    }
}

impl SupervisorProcess {
    /// Loads the layered configuration.
    ///
    /// # Errors
    /// As [`SchedulerProcess::load`].
    pub fn load(file: Option<&Path>, o: &DistOverrides) -> Result<Self, String> {
        load(file, o)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// All problems, each naming its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        check_common(
            &self.log_format,
            &self.grpc,
            self.signing_key_file.as_deref(),
            &self.server,
            &mut e,
        );
        check_store(&self.store, &mut e);
        check_shards(&self.shards, self.shard_resolve_interval, &mut e);
        check_kubernetes(
            self.catalog == CatalogSource::Kubernetes
                || self.supervisor.leader_election == LeaderElection::Kubernetes,
            &self.kubernetes,
            &mut e,
        );
        check_url("scheduler_url", &self.scheduler_url, &mut e);
        let s = &self.supervisor;
        if s.recovery_interval < Duration::from_millis(100) {
            e.push("supervisor.recovery_interval: must be at least 100ms".into());
        }
        if !(10..=100_000).contains(&s.recovery_rate) {
            e.push(format!(
                "supervisor.recovery_rate: {} runs/s is out of range; give 10 to 100000 (default 1000)",
                s.recovery_rate
            ));
        }
        if s.lease_ttl < Duration::from_secs(1) {
            e.push("supervisor.lease_ttl: must be at least 1s".into());
        }
        if s.submit_timeout < Duration::from_millis(100) {
            e.push("supervisor.submit_timeout: must be at least 100ms".into());
        }
        if s.gc_interval < Duration::from_secs(1) {
            e.push("supervisor.gc_interval: must be at least 1s".into());
        }
        if s.max_children_per_run == 0 {
            e.push("supervisor.max_children_per_run: must be at least 1".into());
        }
        done(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, text).unwrap();
        (d, f)
    }

    const COMMON: &str = "signing_key_file: /etc/nexus/signing.key\nstore: cassandra://127.0.0.1:9042/nexus\npayloads: s3://bkt/p?endpoint=http://127.0.0.1:8333&region=us-east-1\ngrpc:\n  auth: none\n";

    #[test]
    fn a_complete_scheduler_config_loads_and_flags_win() {
        let (_d, f) = yaml(&format!(
            "{COMMON}shards:\n  shard-a:\n    endpoints: [http://127.0.0.1:9091]\nscheduler:\n  queue_bound: 9\n"
        ));
        let o = DistOverrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..DistOverrides::default()
        };
        let c = SchedulerProcess::load(Some(&f), &o).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.scheduler.queue_bound, 9);
        assert_eq!(c.shards["shard-a"].endpoints.len(), 1);
        assert_eq!(c.shard_resolve_interval, Duration::from_secs(10));
    }

    #[test]
    fn the_shard_resolve_interval_is_read_and_bounded() {
        let (_d, f) = yaml(&format!(
            "{COMMON}shards:\n  a:\n    endpoints: [http://receivers.nexus.svc:9091]\nshard_resolve_interval: 30s\n"
        ));
        let c = SchedulerProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        assert_eq!(c.shard_resolve_interval, Duration::from_secs(30));
        for bad in ["500ms", "11m"] {
            let (_d, f) = yaml(&format!(
                "{COMMON}shards:\n  a:\n    endpoints: [http://r:1]\nshard_resolve_interval: {bad}\n"
            ));
            let e = SchedulerProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
            assert!(e.to_string().contains("shard_resolve_interval"), "{e}");
        }
        let (_d, f) = yaml(&format!("{SUPERVISOR}shard_resolve_interval: 0s\n"));
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("1s to 10m"), "{e}");
    }

    #[test]
    fn missing_shared_stores_and_shards_are_named() {
        let (_d, f) = yaml("grpc:\n  auth: none\n");
        let e = SchedulerProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("store: distributed components share one run store"),
            "{e}"
        );
        assert!(e.contains("payloads: distributed components"), "{e}");
        assert!(e.contains("shards: no shard configured"), "{e}");
        let (_d, f) = yaml(
            "store: cassandra://127.0.0.1:9042/nexus\ngrpc:\n  auth: none\nshards:\n  a:\n    endpoints: [grpc://x]\n",
        );
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("shards.a.endpoints: 'grpc://x' must start with http://"),
            "{e}"
        );
    }

    #[test]
    fn receiver_needs_a_valid_shard_name_and_distinct_ports() {
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: Shard_A\nlisten: 127.0.0.1:9000\ngrpc_listen: 127.0.0.1:9000\n"
        ));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("shard: 'Shard_A'"), "{e}");
        assert!(e.contains("give gRPC its own port"), "{e}");
        let o = DistOverrides {
            shard: Some("shard-a".into()),
            grpc_listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..DistOverrides::default()
        };
        let c = ReceiverProcess::load(Some(&f), &o).unwrap();
        assert_eq!(c.shard, "shard-a");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let (_d, f) = yaml(&format!("{COMMON}shard: a\nqueue_bound: 3\n"));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("queue_bound"), "{e}");
    }

    #[test]
    fn server_section_is_shared_and_checked() {
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nserver:\n  max_connections: 64\n  idle_timeout: 5s\n"
        ));
        let c = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        assert_eq!(c.server.max_connections, 64);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(5));
        let (_d, f) = yaml(&format!("{COMMON}server:\n  header_read_timeout: 0s\n"));
        let e = SchedulerProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("server.header_read_timeout: 0s must be"), "{e}");
    }

    #[test]
    fn kubernetes_sections_are_checked_only_when_used() {
        // Local runtime: the kubernetes and job sections are not looked at.
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nkubernetes:\n  kubeconfig: /nonexistent/kubeconfig\njob:\n  image_pull_policy: Sometimes\n"
        ));
        ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nruntime: kubernetes\nkubernetes:\n  kubeconfig: /nonexistent/kubeconfig\njob:\n  image_pull_policy: Sometimes\n  ttl_seconds_after_finished: -5\n"
        ));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("kubernetes.kubeconfig: /nonexistent/kubeconfig does not exist"),
            "{e}"
        );
        assert!(e.contains("job.ttl_seconds_after_finished: -5"), "{e}");
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nruntime: kubernetes\njob:\n  image_pull_policy: Sometimes\n"
        ));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("job.image_pull_policy: 'Sometimes'"), "{e}");
        // Jobs run in pods: a Kubernetes receiver must say where they reach it.
        assert!(
            e.contains("public_url: required with runtime: kubernetes"),
            "{e}"
        );
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nruntime: kubernetes\npublic_url: http://nexus-receiver-a.nexus.svc:8091\n"
        ));
        ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        let (_d, f) = yaml(&format!("{COMMON}shard: a\nruntime: docker\n"));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("docker"), "{e}");
        // The namespace and version are not configuration.
        let (_d, f) = yaml(&format!(
            "{COMMON}shard: a\nruntime: kubernetes\njob:\n  namespace: x\n"
        ));
        let e = ReceiverProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("namespace"), "{e}");
        let (_d, f) = yaml(
            "store: cassandra://127.0.0.1:9042/nexus\ngrpc:\n  auth: none\nshards:\n  a:\n    endpoints: [http://x:1]\ncatalog: kubernetes\nkubernetes:\n  namespace: Not_A_Namespace\n",
        );
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(e.contains("kubernetes.namespace"), "{e}");
    }

    /// A valid supervisor configuration, for tests to add a section to.
    const SUPERVISOR: &str = "signing_key_file: /etc/nexus/signing.key\nstore: cassandra://127.0.0.1:9042/nexus\ngrpc:\n  auth: none\nshards:\n  a:\n    endpoints: [http://x:1]\n";

    #[test]
    fn supervisor_limits_are_checked() {
        let (_d, f) = yaml(&format!(
            "{SUPERVISOR}supervisor:\n  max_children_per_run: 0\n  gc_interval: 10ms\n"
        ));
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("supervisor.max_children_per_run: must be at least 1"),
            "{e}"
        );
        assert!(e.contains("supervisor.gc_interval"), "{e}");
        let (_d, f) = yaml(&format!(
            "{SUPERVISOR}supervisor:\n  max_children_per_run: 50000\n"
        ));
        let c = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        assert_eq!(c.supervisor.max_children_per_run, 50_000);
        assert_eq!(c.supervisor.leader_election, LeaderElection::Store);
    }

    #[test]
    fn leader_election_on_kubernetes_needs_a_usable_kubernetes_section() {
        let (_d, f) = yaml(&format!(
            "{SUPERVISOR}supervisor:\n  leader_election: kubernetes\nkubernetes:\n  kubeconfig: /nonexistent/kubeconfig\n"
        ));
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("kubernetes.kubeconfig: /nonexistent/kubeconfig does not exist"),
            "{e}"
        );
        let (_d, f) = yaml(&format!(
            "{SUPERVISOR}supervisor:\n  leader_election: etcd\n"
        ));
        let e = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap_err();
        assert!(
            e.contains("leader_election") && e.contains("kubernetes"),
            "{e}"
        );
        let (_d, f) = yaml(&format!(
            "{SUPERVISOR}supervisor:\n  leader_election: kubernetes\n"
        ));
        let c = SupervisorProcess::load(Some(&f), &DistOverrides::default()).unwrap();
        assert_eq!(c.supervisor.leader_election, LeaderElection::Kubernetes);
    }
}
