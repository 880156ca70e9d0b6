//! `orphans`: a scheduler holding N BUFFERED runs is killed (-9); how long until the survivors
//! have dispatched every one of them?
//!
//! The state a `kill -9` leaves is exactly: the scheduler's BUFFERED run records naming it as
//! owner, and its lease, renewed for the last time just before the kill, lapsing `lease_ttl`
//! later. The scenario writes that state into the run store (N runs through `RunStore::insert`,
//! then the last heartbeat = the kill), with the survivors already running: a supervisor
//! (`nexus supervisor` wiring, default recovery interval and lease) and two receivers of the
//! runs' shard (real gRPC with a shared secret; their executor records launches, so a run counts
//! as dispatched when a receiver has launched it and recorded it RUNNING). It reports the time
//! from the kill to the last dispatch, and that time minus the lease TTL (the target: ≤ 10 s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use nexus_cli::distributed::{self, ReceiverProcess, ShardEntry, SharedStores, SupervisorProcess};
use nexus_model::limiter::BudgetConfig;
use nexus_model::run::{Stage, now_millis};
use nexus_store::RunStore;

/// The measurement.
#[derive(Debug)]
pub struct Orphans {
    /// Runs orphaned.
    pub runs: usize,
    /// Lease TTL of the killed scheduler.
    pub lease_ttl: Duration,
    /// Supervisor recovery interval.
    pub interval: Duration,
    /// Receivers' launch limit (per receiver).
    pub launch_limit: BudgetConfig,
    /// Writing the orphaned state (not part of the recovery).
    pub setup: Duration,
    /// Kill → the first run dispatched.
    pub first: Duration,
    /// Kill → every run dispatched.
    pub all: Duration,
}

async fn port0() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

/// BUFFERED runs still waiting, over every owner.
async fn buffered(store: &dyn RunStore) -> anyhow::Result<usize> {
    let mut n = 0;
    for owner in store
        .owners_in_stage(Stage::Buffered)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        n += store
            .by_owner_stage(&owner, Stage::Buffered, 1_000_000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .len();
    }
    Ok(n)
}

/// Runs the scenario on `store` (a fresh store: every BUFFERED run in it is the killed
/// scheduler's).
///
/// # Errors
/// Store failures, components failing to start, runs not dispatched within 5 minutes.
pub async fn run(
    store: Arc<dyn RunStore>,
    runs: usize,
    lease_ttl: Duration,
    launch_limit: BudgetConfig,
) -> anyhow::Result<Orphans> {
    let dir = tempfile::tempdir()?;
    let crate::distributed::DeploymentFiles {
        templates,
        key,
        grpc,
    } = crate::distributed::DeploymentFiles::write(dir.path())?;
    let stores = SharedStores {
        store: store.clone(),
        payloads: Some(Arc::new(nexus_payload::InMemoryPayloadStore::default())),
    };

    // The survivors: two receivers of shard `local` and a supervisor.
    let mut receivers = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..2 {
        let mut c = ReceiverProcess {
            shard: "local".into(),
            signing_key_file: Some(key.clone()),
            grpc: grpc.clone(),
            work_dir: dir.path().join(format!("receiver-{i}")),
            ..ReceiverProcess::default()
        };
        c.receiver.launch_limit = launch_limit;
        let h = distributed::start_receiver_with(
            c,
            port0().await?,
            port0().await?,
            stores.clone(),
            |_, tx, _, _| Arc::new(nexus_executor::RecordingExecutor::new(tx)),
        )
        .await?;
        endpoints.push(format!("http://{}", h.grpc_addr));
        receivers.push(h);
    }
    let mut shards = BTreeMap::new();
    shards.insert("local".to_owned(), ShardEntry { endpoints });
    let sc = SupervisorProcess {
        templates_dir: templates.clone(),
        signing_key_file: Some(key.clone()),
        grpc: grpc.clone(),
        shards,
        ..SupervisorProcess::default()
    };
    let interval = sc.supervisor.recovery_interval;
    let supervisor = distributed::start_supervisor_with(sc, port0().await?, store.clone()).await?;

    // The killed scheduler's state: alive (its lease) while its BUFFERED runs are written, then
    // its last heartbeat, the moment of the kill.
    let t = Instant::now();
    let dead = "scheduler-killed-9";
    let ttl_ms = i64::try_from(lease_ttl.as_millis())?;
    store
        .heartbeat(dead, now_millis(), 600_000)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot =
        nexus_model::catalog::load_dir(&templates).map_err(|e| anyhow::anyhow!("{e}"))?;
    let template = snapshot
        .templates
        .get("knapsack")
        .context("the bench template")?
        .clone();
    let mut inserts = futures::stream::iter((0..runs).map(|_| {
        let mut r = nexus_store::test_suite::sample_run("knapsack");
        r.workgroup = "local".into();
        r.shard = "local".into();
        r.owner = Some(dead.into());
        r.applied_configuration = template.spec.clone();
        let s = store.clone();
        async move { s.insert(r).await }
    }))
    .buffer_unordered(64);
    let mut written = 0;
    while let Some(r) = inserts.next().await {
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
        written += 1;
        if written % 2_000 == 0 {
            eprintln!("orphans: {written}/{runs} BUFFERED runs written …");
        }
    }
    let setup = t.elapsed();
    store
        .heartbeat(dead, now_millis(), ttl_ms)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let killed = Instant::now();
    eprintln!(
        "orphans: scheduler {dead} killed holding {runs} BUFFERED runs (lease TTL {lease_ttl:?}, supervisor interval {interval:?}) …"
    );
    let mut first = None;
    loop {
        let left = buffered(store.as_ref()).await?;
        if left < runs && first.is_none() {
            first = Some(killed.elapsed());
        }
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(300),
            "{left} runs still BUFFERED after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = killed.elapsed();

    supervisor.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), supervisor.wait()).await;
    for r in receivers {
        r.http.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.http.wait()).await;
    }
    Ok(Orphans {
        runs,
        lease_ttl,
        interval,
        launch_limit,
        setup,
        first: first.unwrap_or(all),
        all,
    })
}

/// Prints the measurement against the target.
pub fn print(o: &Orphans) {
    let after = o.all.saturating_sub(o.lease_ttl);
    println!(
        "orphan recovery: {} BUFFERED runs of a killed scheduler (lease TTL {:?}, recovery interval {:?}, receiver launch limit {}/s burst {} ×2)",
        o.runs, o.lease_ttl, o.interval, o.launch_limit.rate, o.launch_limit.burst
    );
    println!(
        "  kill → first dispatched {:.1}s, kill → all dispatched {:.1}s = lease TTL + {:.1}s (target ≤ TTL + 10 s: {}); {:.0} runs/s once started (setup {:.1}s, not counted)",
        o.first.as_secs_f64(),
        o.all.as_secs_f64(),
        after.as_secs_f64(),
        if after <= Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        },
        o.runs as f64 / (o.all - o.first).as_secs_f64().max(1e-3),
        o.setup.as_secs_f64()
    );
}
