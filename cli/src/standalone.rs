//! `nexus standalone`: scheduler, receiver and supervisor in one process, with the embedded run
//! store, the tiered payload store (small objects in `objects.db`, big ones under `objects/`) and
//! the local-process executor.
//!
//! [`start`] opens the embedded backends and wires the same three components as distributed mode
//! (each its own `serve`), joined by the in-process shard ([`LocalShard`]) and one HTTP port (the
//! listener it is given, port 0 in tests); `main` only parses flags and waits for signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_embedded::{SqliteObjectStore, SqliteRunStore, TieredPayloadStore};
use nexus_executor::{Executor, ExecutorEvent, LocalProcessExecutor};
use nexus_http::server::ServerConfig;
use nexus_http::{Readiness, health_routes, negotiate_errors};
use nexus_model::catalog::{Catalog, load_dir, watch_dir};
use nexus_model::sign::Signer;
use nexus_payload::{FsPayloadStore, PayloadStore, S3PayloadStore};
use nexus_receiver::LocalShard;
use nexus_scheduler::{Deps, ShardMap};
use nexus_store::{CassandraRunStore, RunStore};
use nexus_supervisor::recovery::{Policy, QueueHandoff};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PayloadsKind, StandaloneConfig, StoreKind};
use crate::objects;

/// A running standalone instance.
#[derive(Debug)]
pub struct Handle {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its public URL.
    pub url: String,
    /// Cancel to shut it down gracefully.
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Handle {
    pub(crate) fn new(
        addr: SocketAddr,
        url: String,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            addr,
            url,
            shutdown,
            tasks,
        }
    }

    /// Shuts down gracefully and waits until everything stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the instance stopped (after `shutdown` was cancelled).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Buckets of every latency histogram (seconds): sub-millisecond accepts to minutes-long
/// queue waits.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];
/// Buckets of size histograms (counts: batch sizes).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The `/metrics` answer: the recorder's metrics, then the process's own (CPU, memory, file
/// descriptors, start time).
pub(crate) fn render_metrics(prom: &PrometheusHandle) -> String {
    let mut out = prom.render();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&nexus_http::telemetry::process_metrics());
    out
}

pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        // Histograms, not summaries: bucket counts aggregate across replicas (quantiles do not).
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Only the first instance in a process installs the global recorder (tests start several).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Reads the signing key at `path`, or creates it: written to a temporary file created `0600`
/// (never readable by others, not even for a moment), synced, then renamed into place.
fn load_or_create_secret(path: &Path) -> anyhow::Result<Signer> {
    use std::io::Write as _;
    if let Ok(bytes) = std::fs::read(path) {
        anyhow::ensure!(
            bytes.len() >= 32,
            "signing key {} is shorter than 32 bytes; delete it to create a new one",
            path.display()
        );
        // A key an older version left readable by others is made private.
        nexus_model::private_fs::tighten(path)
            .with_context(|| format!("cannot make {} private", path.display()))?;
        return Ok(Signer::new(&bytes));
    }
    let key: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let write = || -> std::io::Result<()> {
        let mut f = nexus_model::private_fs::create_new_file(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write the signing key {}", path.display()));
    }
    Ok(Signer::new(&key))
}

/// Serves `app` on `listener` until `stop`, with the connection limit and timeouts of `server`
/// (see [`nexus_http::server`]); handlers see the peer address (the rate limiter keys on it).
pub(crate) fn serve_http(
    tasks: &TaskTracker,
    listener: TcpListener,
    app: Router,
    server: ServerConfig,
    stop: CancellationToken,
) {
    tasks.spawn(nexus_http::server::serve(listener, app, server, stop));
}

pub(crate) fn instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Starts standalone Nexus on `listener`, with the local-process executor.
///
/// # Errors
/// Data directory, run store (e.g. locked by another process), templates (every invalid
/// manifest is listed), signing key, algorithm isolation (`executor.run_as` without root, an
/// unknown user, `executor.confine: landlock` where the kernel has none).
pub async fn start(config: StandaloneConfig, listener: TcpListener) -> anyhow::Result<Handle> {
    // The server's private paths: algorithms must never be granted one.
    let protected: Vec<PathBuf> = std::iter::once(config.data_dir.clone())
        .chain(config.server.tls.key_file.clone())
        .collect();
    let mut exec_config =
        crate::sandbox::local_executor_config(&config.executor, &protected).await?;
    // Attempts a killed predecessor left running go before anything new starts (their runs are
    // launched again by recovery while their retries allow).
    let state_dir = config.data_dir.join("attempts");
    nexus_model::private_fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let stopped = LocalProcessExecutor::reap_previous(&state_dir);
    if stopped > 0 {
        tracing::warn!(
            stopped,
            "stopped algorithm processes left running by a previous nexus process"
        );
    }
    exec_config.state_dir = Some(state_dir);
    start_with_executor(config, listener, move |events, payloads| {
        Arc::new(LocalProcessExecutor::new(exec_config, payloads, events))
    })
    .await
}

/// Starts standalone Nexus on `listener` with the executor `make` builds from the event channel
/// (read by the supervisor) and the payload store (benchmarks plug an in-process executor here).
///
/// # Errors
/// As [`start`].
pub async fn start_with_executor(
    config: StandaloneConfig,
    listener: TcpListener,
    make: impl FnOnce(UnboundedSender<ExecutorEvent>, Arc<dyn PayloadStore>) -> Arc<dyn Executor>,
) -> anyhow::Result<Handle> {
    start_with_parts(config, listener, None, make).await
}

/// [`start_with_executor`] on `store` instead of the one `config.store` names: for benchmarks
/// that compare the accept path with a store that keeps runs in memory only (never for a
/// deployment: such runs do not survive the process).
///
/// # Errors
/// As [`start`].
#[doc(hidden)]
pub async fn start_with_parts(
    mut config: StandaloneConfig,
    listener: TcpListener,
    store: Option<Arc<dyn RunStore>>,
    make: impl FnOnce(UnboundedSender<ExecutorEvent>, Arc<dyn PayloadStore>) -> Arc<dyn Executor>,
) -> anyhow::Result<Handle> {
    // The metrics recorder first: whatever starts below describes and counts into it (a counter
    // or description recorded before it is installed is lost).
    prometheus();
    let addr = listener.local_addr()?;
    // TLS material is read once here so that a bad file stops start-up with its name.
    nexus_http::tls::ServerTls::load(&config.server.tls)
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
    let scheme = if config.server.tls.enabled() {
        "https"
    } else {
        "http"
    };
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    config.scheduler.public_url.clone_from(&url);
    config.receiver.public_url.clone_from(&url);
    if config.receiver.scheduler_url.is_empty() {
        // One process: algorithms create child runs on this same URL.
        config.receiver.scheduler_url.clone_from(&url);
    }
    let data = config.data_dir.clone();
    // Private from the start (0700), and made private if an older version left it open: it holds
    // the signing key and every run's payload and result.
    nexus_model::private_fs::create_dir_all(&data)
        .with_context(|| format!("cannot create data directory {}", data.display()))?;
    nexus_model::private_fs::tighten(&data)
        .with_context(|| format!("cannot make the data directory {} private", data.display()))?;

    let store: Arc<dyn RunStore> = match (
        store,
        config.store_kind().map_err(|e| anyhow::anyhow!("{e}"))?,
    ) {
        (Some(store), _) => store,
        (None, StoreKind::Embedded) => {
            let db = data.join("runs.db");
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteRunStore::open(&db))
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("cannot open the run store")?,
            )
        }
        (None, StoreKind::Cassandra(c)) => {
            // A shared store: other processes may own runs in it, so only lapsed leases are
            // recovered at start (not every owner but this one, as with the locked SQLite file).
            config.supervisor.exclusive_store = false;
            tracing::info!(keyspace = %c.keyspace, nodes = %c.contact_points.join(","), migrate = c.migrate, "opening the Cassandra run store");
            Arc::new(
                CassandraRunStore::open(&c)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("cannot open the Cassandra run store")?,
            )
        }
    };
    let signer = load_or_create_secret(&data.join("signing.key"))?;
    let fs = Arc::new(
        FsPayloadStore::open(data.join("objects"), url.clone(), signer.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the payload store: {e}"))?,
    );
    let objects_db = data.join("objects.db");
    let small = tokio::task::spawn_blocking(move || SqliteObjectStore::open(&objects_db))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("cannot open the object store")?;
    // Small objects in SQLite (one fsync per batch), big ones and the signed URLs the file store's.
    let tiered = Arc::new(TieredPayloadStore::new(small, fs));
    let payloads: Arc<dyn PayloadStore> =
        match config.payloads_kind().map_err(|e| anyhow::anyhow!("{e}"))? {
            PayloadsKind::Embedded => tiered.clone(),
            PayloadsKind::S3(c) => {
                tracing::info!(bucket = %c.bucket, "payloads, results and logs in S3");
                Arc::new(
                    S3PayloadStore::open(&c)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .context("cannot open the S3 payload store")?,
                )
            }
        };
    let templates = config.templates_dir.clone();
    let snap = load_dir(&templates)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot load templates from {}", templates.display()))?;
    tracing::info!(templates = snap.templates.len(), workgroups = snap.workgroups.len(), dir = %templates.display(), "templates loaded");
    let catalog = Catalog::new(snap);

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let executor = make(tx, payloads.clone());
    let id = instance_id();
    // One readiness for the three components: whichever stops first turns it off.
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(watch_dir(
        catalog.clone(),
        templates,
        config.reload_interval,
        shutdown.clone(),
    ));
    // The receiver: no listeners (its routes join the shared port), no lease of its own (the
    // scheduler holds the process's), no drain grace (as before: local processes are reaped by
    // the next start), and its executor's events go to the supervisor, which also needs them to
    // tell live local runs from lost ones.
    let receiver = nexus_receiver::serve(
        nexus_receiver::ServeConfig {
            receiver: config.receiver.clone(),
            shard: String::new(),
            instance_id: String::new(),
            lease_ttl: config.scheduler.lease_ttl,
            drain_grace: std::time::Duration::ZERO,
            server: config.server.clone(),
        },
        nexus_receiver::Deps {
            store: store.clone(),
            payloads: payloads.clone(),
            executor: executor.clone(),
            events: None,
            executor_stop: CancellationToken::new(),
            signer: signer.clone(),
            credentials: None,
            readiness: readiness.clone(),
        },
        nexus_receiver::Listeners::default(),
        CancellationToken::new(),
    )
    .await?;
    let local: Arc<dyn nexus_link::shard::Shard> = Arc::new(LocalShard(receiver.receiver.clone()));
    crate::config::warn_if_open(&config.auth, addr);
    let auth = nexus_auth::Authenticator::start(&config.auth, &shutdown)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut scheduler = nexus_scheduler::serve(
        nexus_scheduler::ServeConfig {
            scheduler: config.scheduler.clone(),
            rate_limit: config.rate_limit.clone(),
            server: config.server.clone(),
            auth,
        },
        Deps {
            store: store.clone(),
            payloads: payloads.clone(),
            catalog,
            shards: ShardMap {
                fallback: Some(local.clone()),
                ..ShardMap::default()
            },
            signer: signer.clone(),
            instance_id: id.clone(),
            readiness: readiness.clone(),
        },
        nexus_scheduler::Listeners::default(),
        CancellationToken::new(),
    )
    .await?;
    // Runs left by a previous process are recovered in the background (the first pass starts at
    // once): new runs are accepted meanwhile, and readiness says so.
    let queue = scheduler.scheduler.clone();
    let supervisor = nexus_supervisor::serve(
        nexus_supervisor::ServeConfig {
            instance_id: id.clone(),
            recovery_interval: config.supervisor.recovery_interval,
            recovery_rate: config.supervisor.recovery_rate,
            gc_interval: config.supervisor.gc_interval,
            retention: config.supervisor.retention,
            on_parent_failure: config.supervisor.on_parent_failure,
            max_children_per_run: config.scheduler.max_children_per_run,
            release_other_leases: config.supervisor.exclusive_store,
            server: config.server.clone(),
        },
        nexus_supervisor::Deps {
            store: store.clone(),
            payloads: Some(payloads.clone()),
            policy: Policy::Local {
                exclusive_store: config.supervisor.exclusive_store,
                executor: executor.clone(),
            },
            handoff: Arc::new(QueueHandoff(Arc::new(move |r: &nexus_model::run::Run| {
                queue.enqueue_recovered(r);
            }))),
            leading: None,
            route: Arc::new(move |_| Some(local.clone())),
            events: Some((executor, rx)),
            readiness: readiness.clone(),
        },
        nexus_supervisor::Listeners::default(),
        CancellationToken::new(),
    )
    .await?;

    let prom = prometheus().clone();
    let app = Router::new()
        // The scheduler API (rate-limited alone) and gRPC, with the app's fallback: 404 text.
        .merge(scheduler.routes.take().unwrap_or_default())
        .merge(nexus_receiver::api::router(receiver.receiver.clone()))
        .merge(nexus_http::telemetry::track(
            "nexus_scheduler",
            objects::router(tiered, store.clone(), config.max_result_bytes),
        ))
        .merge(health_routes(readiness.clone()))
        .route(
            "/metrics",
            get(move || std::future::ready(render_metrics(&prom))),
        )
        .layer(axum::middleware::from_fn(negotiate_errors));
    let http_stop = CancellationToken::new();
    serve_http(
        &tasks,
        listener,
        app,
        config.server.clone(),
        http_stop.clone(),
    );
    // Ordered shutdown: readiness off and queue drained (scheduler), then HTTP (completions keep
    // arriving while the queue drains), then the receiver and the supervisor.
    let sd = shutdown.clone();
    let r2 = readiness.clone();
    tasks.spawn(async move {
        sd.cancelled().await;
        r2.set(false);
        // Recovery stops feeding the queue while it drains.
        supervisor.stop_recovery.cancel();
        scheduler.shutdown.cancel();
        scheduler.wait().await;
        http_stop.cancel();
        receiver.shutdown.cancel();
        supervisor.shutdown.cancel();
        receiver.wait().await;
        supervisor.wait().await;
    });
    readiness.set(true);
    tracing::info!(%url, instance = %id, "nexus standalone is ready");
    Ok(Handle {
        addr,
        url,
        shutdown,
        tasks,
    })
}
