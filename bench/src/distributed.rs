//! `distributed`: the `e2e` scenario in distributed mode, against standalone on the same stores in
//! the same run (the ratio is what this machine can say; absolute numbers move with its load).
//!
//! Distributed: two schedulers, one shard served by two receivers (runs balanced across them),
//! and a supervisor, wired as `nexus scheduler|receiver|supervisor` wire them, talking gRPC over
//! loopback with a shared secret; the closed-loop clients alternate between the two schedulers, as
//! behind a round-robin load balancer. Both set-ups use the instant in-process algorithm
//! ([`crate::instant::InstantExecutor`]: uploads its result to the presigned URL and reports
//! completion over HTTP, as an algorithm does) and a fresh scratch keyspace each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_cli::distributed::{
    self, ReceiverProcess, SchedulerProcess, ShardEntry, SharedStores, SupervisorProcess,
};
use nexus_link::grpc::GrpcLinkConfig;
use nexus_payload::PayloadStore;
use nexus_store::RunStore;

use crate::e2e::E2e;
use crate::{cassandra, e2e, instant, load_client};

const KEY: &str = "bench-signing-key-0123456789abcdef0123456789";
const SECRET: &str = "bench-grpc-shared-secret";

/// The files every component of a bench deployment reads: the templates directory (the bench
/// knapsack template and its workgroup), the signing key, and the gRPC link with its secret.
pub(crate) struct DeploymentFiles {
    pub templates: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub grpc: GrpcLinkConfig,
}

impl DeploymentFiles {
    /// Writes them under `dir`.
    pub(crate) fn write(dir: &std::path::Path) -> anyhow::Result<Self> {
        let templates = dir.join("templates");
        std::fs::create_dir_all(&templates)?;
        std::fs::write(templates.join("workgroup.yaml"), crate::WORKGROUP)?;
        std::fs::write(templates.join("knapsack.yaml"), crate::TEMPLATE)?;
        let key = dir.join("signing.key");
        std::fs::write(&key, KEY)?;
        let secret = dir.join("grpc.secret");
        std::fs::write(&secret, SECRET)?;
        Ok(Self {
            templates,
            key,
            grpc: GrpcLinkConfig {
                secret_file: Some(secret),
                ..GrpcLinkConfig::default()
            },
        })
    }
}

/// The two measurements.
#[derive(Debug)]
pub struct Distributed {
    /// Standalone on the same stores.
    pub standalone: E2e,
    /// Two schedulers, two receivers, a supervisor.
    pub distributed: E2e,
}

async fn port0() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

/// Runs both phases.
///
/// # Errors
/// Stores unreachable, components failing to start.
pub async fn run(
    store: &str,
    payloads: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Distributed> {
    let scratch = cassandra::Scratch::new(store).await?;
    let standalone = {
        let http = load_client(256)?;
        let (s, p) = (scratch.url.clone(), payloads.to_owned());
        let nexus = crate::start_nexus(
            move |c| {
                c.store = s;
                c.payloads = p;
                c.scheduler.shard_budget = nexus_scheduler::BudgetConfig {
                    rate: 100_000.0,
                    burst: 1_000,
                };
            },
            move |tx, _| Arc::new(instant::InstantExecutor::new(tx, http)),
        )
        .await?;
        eprintln!(
            "distributed: baseline, standalone on {} …",
            nexus.handle.url
        );
        let r = e2e::drive(
            &nexus.handle.url,
            "knapsack",
            concurrency,
            duration,
            e2e::Wait::LongPoll,
        )
        .await;
        nexus.stop().await;
        r?
    };
    scratch.drop().await;

    let scratch = cassandra::Scratch::new(store).await?;
    let run_store: Arc<dyn RunStore> = scratch.store.clone();
    let payload_store = distributed::open_payloads(payloads).await?;
    let r = distributed_phase(run_store, payload_store, concurrency, duration).await;
    scratch.drop().await;
    Ok(Distributed {
        standalone,
        distributed: r?,
    })
}

async fn distributed_phase(
    store: Arc<dyn RunStore>,
    payloads: Arc<dyn PayloadStore>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<E2e> {
    let dir = tempfile::tempdir()?;
    let DeploymentFiles {
        templates,
        key,
        grpc,
    } = DeploymentFiles::write(dir.path())?;
    let stores = SharedStores {
        store: store.clone(),
        payloads: Some(payloads),
    };
    let mut receivers = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..2 {
        let c = ReceiverProcess {
            shard: "local".into(),
            signing_key_file: Some(key.clone()),
            grpc: grpc.clone(),
            work_dir: dir.path().join(format!("receiver-{i}")),
            ..ReceiverProcess::default()
        };
        let http = load_client(256)?;
        let h = distributed::start_receiver_with(
            c,
            port0().await?,
            port0().await?,
            stores.clone(),
            move |_, tx, _, _| Arc::new(instant::InstantExecutor::new(tx, http)),
        )
        .await?;
        endpoints.push(format!("http://{}", h.grpc_addr));
        receivers.push(h);
    }
    let mut shards = BTreeMap::new();
    shards.insert("local".to_owned(), ShardEntry { endpoints });
    let mut schedulers = Vec::new();
    for _ in 0..2 {
        let mut c = SchedulerProcess {
            templates_dir: templates.clone(),
            signing_key_file: Some(key.clone()),
            grpc: grpc.clone(),
            shards: shards.clone(),
            ..SchedulerProcess::default()
        };
        c.scheduler.queue_bound = 2_000_000;
        c.scheduler.drain_grace = Duration::from_millis(100);
        c.scheduler.shard_budget = nexus_scheduler::BudgetConfig {
            rate: 100_000.0,
            burst: 1_000,
        };
        schedulers
            .push(distributed::start_scheduler_with(c, port0().await?, stores.clone()).await?);
    }
    let supervisor = distributed::start_supervisor_with(
        SupervisorProcess {
            scheduler_url: schedulers[0].url.clone(),
            templates_dir: templates.clone(),
            signing_key_file: Some(key.clone()),
            grpc: grpc.clone(),
            shards,
            ..SupervisorProcess::default()
        },
        port0().await?,
        store,
    )
    .await?;
    eprintln!(
        "distributed: 2 schedulers ({}, {}), 2 receivers of one shard, 1 supervisor, gRPC with a shared secret …",
        schedulers[0].url, schedulers[1].url
    );
    let half = (concurrency / 2).max(1);
    let (a, b) = tokio::join!(
        e2e::drive(
            &schedulers[0].url,
            "knapsack",
            half,
            duration,
            e2e::Wait::LongPoll
        ),
        e2e::drive(
            &schedulers[1].url,
            "knapsack",
            concurrency - half,
            duration,
            e2e::Wait::LongPoll
        ),
    );
    let r = e2e::merge(a?, b?);
    for s in schedulers {
        s.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.wait()).await;
    }
    supervisor.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), supervisor.wait()).await;
    for r in receivers {
        r.http.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.http.wait()).await;
    }
    Ok(r)
}

/// Prints both phases and their ratio.
pub fn print(d: &Distributed) {
    e2e::print_labeled(&d.standalone, "e2e standalone (Cassandra + S3)");
    e2e::print_labeled(
        &d.distributed,
        "e2e distributed (2 sched, 2 recv, 1 sup, gRPC)",
    );
    let ratio = d.distributed.throughput() / d.standalone.throughput().max(1e-9);
    println!(
        "distributed / standalone e2e throughput on the same stores: {ratio:.2} ({:.0} vs {:.0} completions/s)",
        d.distributed.throughput(),
        d.standalone.throughput()
    );
}
