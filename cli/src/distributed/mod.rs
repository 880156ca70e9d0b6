//! Distributed mode: `nexus scheduler`, `nexus receiver` and `nexus supervisor` as separate
//! processes sharing a Cassandra / ScyllaDB run store, an S3 payload store and a signing key, and
//! talking gRPC (`nexus.v1.ShardService`) with shared-secret or mutual-TLS authentication.
//!
//! Each `start_*` builds the real backends of one component from its configuration (stores,
//! signing key, gRPC credentials, catalog, executor) and calls that component's `serve`
//! (`nexus_scheduler::serve`, `nexus_receiver::serve`, `nexus_supervisor::serve`), which owns its
//! routers, lease and ordered drain. The `*_with` variants take the stores (tests pass in-memory
//! ones, shared by the components of one process).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use nexus_executor::{Executor, ExecutorEvent, LocalProcessExecutor};
use nexus_http::Readiness;
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_kube::executor::KubeExecutor;
use nexus_kube::leader::KubeLease;
use nexus_link::grpc::{GrpcLinkConfig, GrpcShard, GrpcShardOptions, LinkCredentials};
use nexus_link::shard::Shard;
use nexus_model::catalog::{Catalog, Snapshot, load_dir, watch_dir};
use nexus_model::sign::Signer;
use nexus_payload::{PayloadStore, S3PayloadStore};
use nexus_scheduler::{Deps, ShardMap};
use nexus_store::cassandra::CassandraConfig;
use nexus_store::leader::StoreLeadership;
use nexus_store::{CassandraRunStore, RunStore};
use nexus_supervisor::recovery::{LEADER, Leading, Policy, ShardHandoff};

/// The Lease supervisors elect their leader on (`supervisor.leader_election: kubernetes`), in the
/// namespace of the `kubernetes` section.
pub const SUPERVISOR_LEASE: &str = "nexus-supervisor";
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod config;

pub use config::{
    CatalogSource, DistOverrides, LeaderElection, ReceiverProcess, ResubmitSection, Runtime,
    SchedulerProcess, ShardEntry, SupervisorProcess,
};

use crate::standalone::{Handle, instance_id, prometheus};

/// The stores every component of a deployment shares.
#[derive(Debug, Clone)]
pub struct SharedStores {
    /// Run records.
    pub store: Arc<dyn RunStore>,
    /// Payloads, results and logs (receivers and schedulers; the supervisor does not need it).
    pub payloads: Option<Arc<dyn PayloadStore>>,
}

/// Opens the Cassandra run store named by `url`.
///
/// # Errors
/// Bad URL, unreachable or misconfigured cluster.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn RunStore>> {
    let c = CassandraConfig::from_url(url.trim()).map_err(|e| anyhow::anyhow!("store: {e}"))?;
    tracing::info!(keyspace = %c.keyspace, nodes = %c.contact_points.join(","), "opening the Cassandra run store");
    Ok(Arc::new(
        CassandraRunStore::open(&c)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot open the Cassandra run store")?,
    ))
}

/// Opens the S3 payload store named by `url`.
///
/// # Errors
/// Bad URL, unreachable endpoint, missing bucket, credentials.
pub async fn open_payloads(url: &str) -> anyhow::Result<Arc<dyn PayloadStore>> {
    let c = nexus_payload::S3Config::from_url(url.trim())
        .map_err(|e| anyhow::anyhow!("payloads: {e}"))?;
    tracing::info!(bucket = %c.bucket, "payloads, results and logs in S3");
    Ok(Arc::new(
        S3PayloadStore::open(&c)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot open the S3 payload store")?,
    ))
}

/// Loads the signing key every component shares: `NEXUS_SIGNING_KEY` (the key itself) or the
/// file `path`; at least 32 bytes. Schedulers sign payload URLs with it, receivers run tokens.
///
/// # Errors
/// No key configured, unreadable file, key too short.
pub fn load_signing_key(path: Option<&Path>) -> anyhow::Result<Signer> {
    let key = if let Ok(k) = std::env::var("NEXUS_SIGNING_KEY") {
        k.trim().as_bytes().to_vec()
    } else if let Some(p) = path {
        std::fs::read(p).with_context(|| {
            format!(
                "cannot read the signing key file {} (signing_key_file)",
                p.display()
            )
        })?
    } else {
        anyhow::bail!(
            "no signing key: set signing_key_file (a file of at least 32 random bytes, the same for every component) or NEXUS_SIGNING_KEY; e.g. `head -c 48 /dev/urandom | base64 > signing.key`"
        );
    };
    let trimmed: Vec<u8> = key.trim_ascii().to_vec();
    anyhow::ensure!(
        trimmed.len() >= 32,
        "the signing key is {} bytes; use at least 32 random bytes",
        trimmed.len()
    );
    Ok(Signer::new(&trimmed))
}

fn credentials(grpc: &GrpcLinkConfig) -> anyhow::Result<LinkCredentials> {
    grpc.load().map_err(|e| anyhow::anyhow!("grpc: {e}"))
}

/// Builds the gRPC clients of every configured shard; endpoints named by DNS are resolved
/// again every `resolve_interval`.
///
/// # Errors
/// A bad endpoint.
pub fn shard_clients(
    shards: &std::collections::BTreeMap<String, ShardEntry>,
    creds: &LinkCredentials,
    resolve_interval: std::time::Duration,
) -> anyhow::Result<HashMap<String, Arc<dyn Shard>>> {
    let opts = GrpcShardOptions {
        resolve_interval,
        ..GrpcShardOptions::default()
    };
    let mut out: HashMap<String, Arc<dyn Shard>> = HashMap::new();
    for (name, entry) in shards {
        let s = GrpcShard::new(name, &entry.endpoints, creds, opts)
            .map_err(|e| anyhow::anyhow!("shards.{name}: {e}"))?;
        out.insert(name.clone(), Arc::new(s));
    }
    Ok(out)
}

/// The process's `/metrics` route, served next to each component's own routes.
pub(crate) fn metrics_route() -> Router {
    let prom = prometheus().clone();
    Router::new().route(
        "/metrics",
        get(move || std::future::ready(crate::standalone::render_metrics(&prom))),
    )
}

/// How long a component waits for its first list of templates from the cluster.
const CATALOG_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The client of the cluster `c` names, with its own API budget.
async fn kube_client(c: &KubeClientConfig) -> anyhow::Result<kube::Client> {
    nexus_kube::client::client(c, &ApiBudget::new(c.api_budget))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The catalog of templates and workgroups, kept current until `stop` by a task on `tasks`: a
/// directory checked every `interval`, or the cluster's resources followed by watch (returned once
/// both have been listed) through `kube`, the process' one client of the cluster.
async fn start_catalog(
    source: CatalogSource,
    dir: &Path,
    interval: Duration,
    kube: Option<&kube::Client>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Catalog> {
    match source {
        CatalogSource::Directory => {
            let snap = load_dir(dir)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot load templates from {}", dir.display()))?;
            tracing::info!(templates = snap.templates.len(), workgroups = snap.workgroups.len(), dir = %dir.display(), "templates loaded");
            let catalog = Catalog::new(snap);
            tasks.spawn(watch_dir(
                catalog.clone(),
                dir.to_path_buf(),
                interval,
                stop.clone(),
            ));
            Ok(catalog)
        }
        CatalogSource::Kubernetes => {
            let client = kube
                .cloned()
                .context("catalog: kubernetes needs a client of the cluster")?;
            let ns = client.default_namespace().to_owned();
            let catalog = Catalog::new(Snapshot::default());
            let synced = CancellationToken::new();
            tasks.spawn(nexus_kube::catalog::watch_cluster(
                catalog.clone(),
                client,
                Some(ns.clone()),
                synced.clone(),
                stop.clone(),
            ));
            if tokio::time::timeout(CATALOG_SYNC_TIMEOUT, synced.cancelled())
                .await
                .is_err()
            {
                stop.cancel();
                anyhow::bail!(
                    "templates and workgroups could not be listed from namespace '{ns}' within {}s: are the CRDs installed (`nexus crd | kubectl apply -f -`) and may this service account list them? (see the warnings above)",
                    CATALOG_SYNC_TIMEOUT.as_secs()
                );
            }
            let snap = catalog.snapshot();
            tracing::info!(templates = snap.templates.len(), workgroups = snap.workgroups.len(), namespace = %ns, "templates followed in the cluster");
            Ok(catalog)
        }
    }
}

/// Starts `nexus scheduler`, opening the stores from its configuration.
///
/// # Errors
/// Stores, templates, signing key, gRPC credentials, shard endpoints.
pub async fn start_scheduler(c: SchedulerProcess, listener: TcpListener) -> anyhow::Result<Handle> {
    let stores = SharedStores {
        store: open_store(&c.store).await?,
        payloads: Some(open_payloads(&c.payloads).await?),
    };
    start_scheduler_with(c, listener, stores).await
}

/// Starts a scheduler on the given stores.
///
/// # Errors
/// As [`start_scheduler`].
pub async fn start_scheduler_with(
    mut c: SchedulerProcess,
    listener: TcpListener,
    stores: SharedStores,
) -> anyhow::Result<Handle> {
    prometheus(); // before anything describes or counts (see standalone::start_with_executor)
    let addr = listener.local_addr()?;
    nexus_http::tls::ServerTls::load(&c.server.tls)
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
    let url = c
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{}://{addr}", scheme(&c.server)));
    c.scheduler.public_url.clone_from(&url);
    let signer = load_signing_key(c.signing_key_file.as_deref())?;
    let creds = credentials(&c.grpc)?;
    let payloads = stores
        .payloads
        .clone()
        .context("the scheduler needs a payload store")?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let kube = match c.catalog {
        CatalogSource::Kubernetes => Some(kube_client(&c.kubernetes).await?),
        CatalogSource::Directory => None,
    };
    let catalog = start_catalog(
        c.catalog,
        &c.templates_dir,
        c.reload_interval,
        kube.as_ref(),
        &tasks,
        &shutdown,
    )
    .await?;
    let id = c.instance_id.clone().unwrap_or_else(instance_id);
    anyhow::ensure!(
        nexus_scheduler::is_scheduler_lease(&id),
        "instance_id '{id}' must not start with receiver/ or supervisor/"
    );
    let shards = c.shards.len();
    crate::config::warn_if_open(&c.auth, addr);
    let auth =
        nexus_auth::Authenticator::start(&c.auth, &shutdown).map_err(|e| anyhow::anyhow!("{e}"))?;
    let h = nexus_scheduler::serve(
        nexus_scheduler::ServeConfig {
            scheduler: c.scheduler,
            rate_limit: c.rate_limit,
            server: c.server,
            auth,
        },
        Deps {
            store: stores.store,
            payloads,
            catalog,
            shards: ShardMap {
                shards: shard_clients(&c.shards, &creds, c.shard_resolve_interval)?,
                fallback: None,
            },
            signer,
            instance_id: id.clone(),
            readiness: Readiness::default(),
        },
        nexus_scheduler::Listeners {
            http: Some(listener),
            telemetry: metrics_route(),
        },
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(async move { h.wait().await });
    tracing::info!(%url, instance = %id, shards, "nexus scheduler is ready");
    Ok(Handle::new(addr, url, shutdown, tasks))
}

/// A running receiver: its HTTP handle plus the gRPC address.
#[derive(Debug)]
pub struct ReceiverHandle {
    /// HTTP address, URL, shutdown and tasks.
    pub http: Handle,
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// Owner id (`receiver/<shard>/<instance>`).
    pub id: String,
}

/// Starts `nexus receiver` with the executor of its `runtime`, opening the stores from its
/// configuration.
///
/// # Errors
/// Stores, signing key, gRPC credentials, Kubernetes configuration.
pub async fn start_receiver(
    c: ReceiverProcess,
    http: TcpListener,
    grpc: TcpListener,
) -> anyhow::Result<ReceiverHandle> {
    let stores = SharedStores {
        store: open_store(&c.store).await?,
        payloads: Some(open_payloads(&c.payloads).await?),
    };
    match c.runtime {
        Runtime::Local => {
            let make = local_executor(&c).await?;
            start_receiver_with(c, http, grpc, stores, make).await
        }
        Runtime::Kubernetes => {
            let make = kube_executor(&c).await?;
            start_receiver_with(c, http, grpc, stores, make).await
        }
    }
}

/// The maker of a Kubernetes executor for the receiver `c`: its cluster client (with the API
/// budget) and Job options in the client's namespace.
///
/// # Errors
/// Kubernetes configuration.
pub async fn kube_executor(
    c: &ReceiverProcess,
) -> anyhow::Result<
    impl FnOnce(
        &ReceiverProcess,
        UnboundedSender<ExecutorEvent>,
        Arc<dyn PayloadStore>,
        CancellationToken,
    ) -> Arc<dyn Executor>
    + use<>,
> {
    let client = kube_client(&c.kubernetes).await?;
    let mut opts = c.job.clone();
    client.default_namespace().clone_into(&mut opts.namespace);
    env!("CARGO_PKG_VERSION").clone_into(&mut opts.nexus_version);
    let failures = c.failures.clone();
    let logs = c.pod_logs.clone();
    tracing::info!(namespace = %opts.namespace, keep_pod_logs = logs.keep, "runs execute as Kubernetes Jobs");
    Ok(
        move |_: &ReceiverProcess, events, payloads, stop| -> Arc<dyn Executor> {
            Arc::new(KubeExecutor::with_logs(
                client,
                opts,
                failures,
                (logs, Some(payloads)),
                events,
                stop,
            ))
        },
    )
}

/// The maker of a local-process executor for the receiver `c`, isolated as its `executor`
/// section says (see [`crate::sandbox::local_executor_config`]).
///
/// # Errors
/// Algorithm isolation (`run_as` without root, unknown user, Landlock required but missing).
async fn local_executor(
    c: &ReceiverProcess,
) -> anyhow::Result<
    impl FnOnce(
        &ReceiverProcess,
        UnboundedSender<ExecutorEvent>,
        Arc<dyn PayloadStore>,
        CancellationToken,
    ) -> Arc<dyn Executor>
    + use<>,
> {
    // The receiver's secrets: algorithms must never be granted a path holding one.
    let protected: Vec<PathBuf> = std::iter::once(c.work_dir.clone())
        .chain(c.signing_key_file.clone())
        .chain(c.grpc.secret_file.clone())
        .chain(c.grpc.tls_key.clone())
        .chain(c.server.tls.key_file.clone())
        .collect();
    let cfg = crate::sandbox::local_executor_config(&c.executor, &protected).await?;
    Ok(
        move |_: &ReceiverProcess, events, payloads, _stop| -> Arc<dyn Executor> {
            Arc::new(LocalProcessExecutor::new(cfg, payloads, events))
        },
    )
}

/// Starts a receiver on the given stores, with the executor `make` builds (given the executor
/// event channel, the payload store and a token cancelled once the receiver has drained).
///
/// # Errors
/// As [`start_receiver`].
pub async fn start_receiver_with(
    mut c: ReceiverProcess,
    http: TcpListener,
    grpc: TcpListener,
    stores: SharedStores,
    make: impl FnOnce(
        &ReceiverProcess,
        UnboundedSender<ExecutorEvent>,
        Arc<dyn PayloadStore>,
        CancellationToken,
    ) -> Arc<dyn Executor>,
) -> anyhow::Result<ReceiverHandle> {
    prometheus(); // before anything describes or counts (see standalone::start_with_executor)
    let addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    nexus_http::tls::ServerTls::load(&c.server.tls)
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
    let url = c
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{}://{addr}", scheme(&c.server)));
    c.receiver.public_url.clone_from(&url);
    let signer = load_signing_key(c.signing_key_file.as_deref())?;
    let creds = credentials(&c.grpc)?;
    let payloads = stores
        .payloads
        .clone()
        .context("the receiver needs a payload store")?;
    nexus_model::private_fs::create_dir_all(&c.work_dir)
        .with_context(|| format!("cannot create work_dir {}", c.work_dir.display()))?;
    let id = format!(
        "{}{}/{}",
        nexus_supervisor::recovery::RECEIVER_PREFIX,
        c.shard,
        c.instance_id.clone().unwrap_or_else(instance_id)
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let executor_stop = CancellationToken::new();
    let executor = make(&c, tx, payloads.clone(), executor_stop.clone());
    let shutdown = CancellationToken::new();
    let watcher = Arc::new(nexus_supervisor::Supervisor {
        store: stores.store.clone(),
        executor: executor.clone(),
        instance_id: id.clone(),
    });
    let h = nexus_receiver::serve(
        nexus_receiver::ServeConfig {
            receiver: c.receiver.clone(),
            shard: c.shard.clone(),
            instance_id: id.clone(),
            lease_ttl: c.lease_ttl,
            drain_grace: c.drain_grace,
            server: c.server.clone(),
        },
        nexus_receiver::Deps {
            store: stores.store,
            payloads,
            executor,
            events: Some((rx, watcher)),
            executor_stop,
            signer,
            credentials: Some(creds),
            readiness: Readiness::default(),
        },
        nexus_receiver::Listeners {
            http: Some(http),
            grpc: Some(grpc),
            telemetry: metrics_route(),
        },
        shutdown.clone(),
    )
    .await?;
    let tasks = TaskTracker::new();
    tasks.spawn(async move { h.wait().await });
    tracing::info!(%url, grpc = %grpc_addr, shard = %c.shard, id = %id, "nexus receiver is ready");
    Ok(ReceiverHandle {
        http: Handle::new(addr, url, shutdown, tasks),
        grpc_addr,
        id,
    })
}

/// Starts `nexus supervisor`, opening the run store from its configuration.
///
/// # Errors
/// Store, templates, signing key, gRPC credentials, shard endpoints.
pub async fn start_supervisor(
    c: SupervisorProcess,
    listener: TcpListener,
) -> anyhow::Result<Handle> {
    let store = open_store(&c.store).await?;
    start_supervisor_with(c, listener, store).await
}

/// Starts a supervisor on the given run store.
///
/// # Errors
/// As [`start_supervisor`].
pub async fn start_supervisor_with(
    c: SupervisorProcess,
    listener: TcpListener,
    store: Arc<dyn RunStore>,
) -> anyhow::Result<Handle> {
    prometheus(); // before anything describes or counts (see standalone::start_with_executor)
    let addr = listener.local_addr()?;
    nexus_http::tls::ServerTls::load(&c.server.tls)
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
    let signer = load_signing_key(c.signing_key_file.as_deref())?;
    let creds = credentials(&c.grpc)?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // One client (and so one API budget) for the catalog and the leadership Lease.
    let kube = if c.catalog == CatalogSource::Kubernetes
        || c.supervisor.leader_election == LeaderElection::Kubernetes
    {
        Some(kube_client(&c.kubernetes).await?)
    } else {
        None
    };
    let catalog = start_catalog(
        c.catalog,
        &c.templates_dir,
        c.reload_interval,
        kube.as_ref(),
        &tasks,
        &shutdown,
    )
    .await?;
    let id = format!(
        "supervisor/{}",
        c.instance_id.clone().unwrap_or_else(instance_id)
    );
    let shards = shard_clients(&c.shards, &creds, c.shard_resolve_interval)?;
    let route_to = shards.clone();
    let leadership: Arc<dyn nexus_store::leader::Leadership> = match c.supervisor.leader_election {
        LeaderElection::Store => Arc::new(StoreLeadership::new(store.clone(), LEADER)),
        LeaderElection::Kubernetes => Arc::new(KubeLease::new(
            kube::Api::default_namespaced(
                kube.context("leader_election: kubernetes needs a client of the cluster")?,
            ),
            SUPERVISOR_LEASE,
        )),
    };
    let s = &c.supervisor;
    let h = nexus_supervisor::serve(
        nexus_supervisor::ServeConfig {
            instance_id: id.clone(),
            recovery_interval: s.recovery_interval,
            recovery_rate: s.recovery_rate,
            gc_interval: s.gc_interval,
            retention: Duration::from_secs(7 * 24 * 3600),
            on_parent_failure: s.on_parent_failure,
            max_children_per_run: s.max_children_per_run,
            release_other_leases: false,
            server: c.server.clone(),
        },
        nexus_supervisor::Deps {
            store,
            payloads: None,
            policy: Policy::Shards {
                max_relaunches: s.max_relaunches,
            },
            handoff: Arc::new(ShardHandoff {
                catalog,
                shards,
                signer,
                payload_base: c.scheduler_url.clone(),
                submit_timeout: s.submit_timeout,
            }),
            leading: Some(Leading {
                leadership,
                lease_ttl: s.lease_ttl,
            }),
            route: Arc::new(move |name| route_to.get(name).cloned()),
            events: None,
            readiness: Readiness::default(),
        },
        nexus_supervisor::Listeners {
            http: Some(listener),
            telemetry: metrics_route(),
        },
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(async move { h.wait().await });
    let url = format!("{}://{addr}", scheme(&c.server));
    tracing::info!(%url, id = %id, shards = c.shards.len(), "nexus supervisor is ready");
    Ok(Handle::new(addr, url, shutdown, tasks))
}

/// `https` when the listener serves TLS, else `http`.
fn scheme(server: &nexus_http::server::ServerConfig) -> &'static str {
    if server.tls.enabled() {
        "https"
    } else {
        "http"
    }
}

/// Binds `addr` with an error that says what to do.
///
/// # Errors
/// The address is taken or not local.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}
