//! Distributed mode in one test process (tier 1): two schedulers, two receivers (shards `shard-a`
//! and `shard-b`) and a supervisor, wired as `nexus scheduler|receiver|supervisor` wire them, but
//! on a shared in-memory run store and an HTTP-served file payload store (the integration tier runs
//! the same topology as separate processes on Cassandra and SeaweedFS). Real gRPC on loopback with
//! a shared secret, real algorithm processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nexus_cli::distributed::{
    self, ReceiverProcess, SchedulerProcess, ShardEntry, SharedStores, SupervisorProcess,
};
use nexus_link::grpc::{GrpcLinkConfig, LinkAuth};
use nexus_model::run::RunId;
use nexus_payload::PayloadStore;
use nexus_store::{InMemoryRunStore, RunStore};
use tokio::net::TcpListener;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-distributed-test";
const SECRET: &str = "a-shared-grpc-secret-for-tests";

fn templates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for shard in ["a", "b"] {
        std::fs::write(
            dir.join(format!("wg-{shard}.yaml")),
            format!(
                "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmWorkgroup\nmetadata:\n  name: wg-{shard}\nspec:\n  cluster: shard-{shard}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("sleeper-{shard}.yaml")),
            format!(
                "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata:\n  name: sleeper-{shard}\nspec:\n  container:\n    image: nexus-demo\n    registry: local\n    versionTag: latest\n  computeResources:\n    cpuLimit: \"1\"\n    memoryLimit: 256Mi\n  workgroupRef:\n    name: wg-{shard}\n    group: science.sneaksanddata.com\n    kind: NexusAlgorithmWorkgroup\n  command: nexus-demo\n  args: [chaos, --sas-uri=%s, --request-id=%s]\n  runtimeEnvironment:\n    deadlineSeconds: 120\n    maximumRetries: 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("fanout-{shard}.yaml")),
            format!(
                "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata:\n  name: fanout-{shard}\nspec:\n  workgroupRef:\n    name: wg-{shard}\n  command: nexus-demo\n  args: [fanout, --sas-uri=%s, --request-id=%s]\n  runtimeEnvironment:\n    deadlineSeconds: 60\n    maximumRetries: 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("knapsack-{shard}.yaml")),
            format!(
                "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata:\n  name: knapsack-{shard}\nspec:\n  container:\n    image: nexus-demo\n    registry: local\n    versionTag: latest\n  computeResources:\n    cpuLimit: \"1\"\n    memoryLimit: 256Mi\n  workgroupRef:\n    name: wg-{shard}\n    group: science.sneaksanddata.com\n    kind: NexusAlgorithmWorkgroup\n  command: nexus-demo\n  args: [knapsack, --sas-uri=%s, --request-id=%s]\n  runtimeEnvironment:\n    deadlineSeconds: 60\n    maximumRetries: 0\n"
            ),
        )
        .unwrap();
    }
}

fn grpc(secret: bool) -> GrpcLinkConfig {
    GrpcLinkConfig {
        auth: if secret {
            LinkAuth::SharedSecret
        } else {
            LinkAuth::None
        },
        ..GrpcLinkConfig::default()
    }
}

async fn port0() -> TcpListener {
    crate::common::port0().await
}

async fn payloads(dir: &Path, runs: Arc<dyn RunStore>) -> Arc<dyn PayloadStore> {
    crate::common::http_payloads(dir, KEY, runs).await
}

/// The components of one in-process deployment.
struct Cluster {
    tmp: tempfile::TempDir,
    store: Arc<dyn RunStore>,
    shards: BTreeMap<String, ShardEntry>,
    receivers: Vec<distributed::ReceiverHandle>,
    schedulers: Vec<nexus_cli::standalone::Handle>,
    supervisor: nexus_cli::standalone::Handle,
}

impl Cluster {
    /// Starts one receiver per shard name (with `limit` as its launch limit), `schedulers`
    /// schedulers (with `budget` as the default shard budget) and a supervisor.
    async fn start(
        shard_names: &[&str],
        limit: nexus_model::limiter::BudgetConfig,
        schedulers: usize,
        budget: nexus_scheduler::BudgetConfig,
    ) -> Self {
        Self::start_with_lease(
            shard_names,
            limit,
            schedulers,
            budget,
            Duration::from_secs(3),
        )
        .await
    }

    /// As [`Cluster::start`], with the schedulers' lease TTL.
    async fn start_with_lease(
        shard_names: &[&str],
        limit: nexus_model::limiter::BudgetConfig,
        schedulers: usize,
        budget: nexus_scheduler::BudgetConfig,
        lease_ttl: Duration,
    ) -> Self {
        let demo = crate::common::demo_dir();
        let tmp = tempfile::tempdir().unwrap();
        let key_file = tmp.path().join("signing.key");
        std::fs::write(&key_file, KEY).unwrap();
        let tpl = tmp.path().join("templates");
        templates(&tpl);
        let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
        let stores = SharedStores {
            store: store.clone(),
            payloads: Some(payloads(tmp.path(), store.clone()).await),
        };
        let secret_file = tmp.path().join("grpc.secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let mut link = grpc(true);
        link.secret_file = Some(secret_file);

        let mut receivers = Vec::new();
        let mut shards = BTreeMap::new();
        for s in shard_names {
            let mut c = ReceiverProcess {
                shard: format!("shard-{s}"),
                signing_key_file: Some(key_file.clone()),
                grpc: link.clone(),
                work_dir: tmp.path().join(format!("recv-{s}")),
                lease_ttl: Duration::from_secs(3),
                drain_grace: Duration::from_secs(5),
                ..ReceiverProcess::default()
            };
            c.receiver.launch_limit = limit;
            c.executor.extra_path = vec![demo.clone()];
            let h = distributed::start_receiver_with(
                c,
                port0().await,
                port0().await,
                stores.clone(),
                |c, tx, p, _stop| {
                    let cfg = nexus_executor::LocalExecutorConfig {
                        extra_path: c.executor.extra_path.clone(),
                        work_root: c.work_dir.join("work"),
                        default_max_concurrent: 8,
                        max_log_bytes: 1 << 20,
                        ..nexus_executor::LocalExecutorConfig::default()
                    };
                    Arc::new(nexus_executor::LocalProcessExecutor::new(cfg, p, tx))
                },
            )
            .await
            .expect("receiver starts");
            shards.insert(
                format!("shard-{s}"),
                ShardEntry {
                    endpoints: vec![format!("http://{}", h.grpc_addr)],
                },
            );
            receivers.push(h);
        }

        let mut scheds = Vec::new();
        for _ in 0..schedulers {
            let mut c = SchedulerProcess {
                templates_dir: tpl.clone(),
                signing_key_file: Some(key_file.clone()),
                grpc: link.clone(),
                shards: shards.clone(),
                ..SchedulerProcess::default()
            };
            c.scheduler.lease_ttl = lease_ttl;
            c.scheduler.retry_base_delay = Duration::from_millis(20);
            c.scheduler.drain_grace = Duration::from_millis(300);
            c.scheduler.shard_budget = budget;
            scheds.push(
                distributed::start_scheduler_with(c, port0().await, stores.clone())
                    .await
                    .expect("scheduler starts"),
            );
        }
        let supervisor = distributed::start_supervisor_with(
            SupervisorProcess {
                scheduler_url: scheds[0].url.clone(),
                templates_dir: tpl.clone(),
                signing_key_file: Some(key_file.clone()),
                grpc: link.clone(),
                shards: shards.clone(),
                ..SupervisorProcess::default()
            },
            port0().await,
            store.clone(),
        )
        .await
        .expect("supervisor starts");
        Self {
            tmp,
            store,
            shards,
            receivers,
            schedulers: scheds,
            supervisor,
        }
    }

    async fn stop(self) {
        for h in self.schedulers {
            h.stop().await;
        }
        self.supervisor.stop().await;
        for r in self.receivers {
            r.http.stop().await;
        }
        drop(self.tmp);
    }
}

fn knapsack_body() -> serde_json::Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payloads/knapsack.json"),
    )
    .unwrap();
    serde_json::json!({ "algorithmParameters": serde_json::from_str::<serde_json::Value>(&text).unwrap() })
}

async fn submit(http: &reqwest::Client, base: &str, alg: &str) -> String {
    let r = http
        .post(format!("{base}/algorithm/v1/run/{alg}"))
        .json(&knapsack_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.json::<serde_json::Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned()
}

const OPEN: nexus_model::limiter::BudgetConfig = nexus_model::limiter::BudgetConfig {
    rate: 500.0,
    burst: 1000,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_two_shards_runs_reach_their_shard_and_complete() {
    let c = Cluster::start(
        &["a", "b"],
        OPEN,
        2,
        nexus_scheduler::BudgetConfig::default(),
    )
    .await;
    let (schedulers, store, shards) = (&c.schedulers, &c.store, &c.shards);
    let http = reqwest::Client::new();
    let mut submitted = Vec::new();
    for i in 0..8 {
        let base = &schedulers[i % 2].url;
        let alg = if i % 4 < 2 {
            "knapsack-a"
        } else {
            "knapsack-b"
        };
        let id = submit(&http, base, alg).await;
        submitted.push((alg, id));
    }
    for (i, (alg, id)) in submitted.iter().enumerate() {
        // Read through the other scheduler: every scheduler answers for every run.
        let base = &schedulers[(i + 1) % 2].url;
        let r = crate::common::wait_terminal(&http, base, alg, id, Duration::from_secs(60)).await;
        assert_eq!(r["status"], "COMPLETED", "{alg} {id}: {r}");
        let result: serde_json::Value = http
            .get(r["resultUri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(result["totalValue"], 90, "{result}");
        let run = store
            .get(id.parse::<RunId>().unwrap())
            .await
            .unwrap()
            .unwrap();
        let shard = alg.trim_start_matches("knapsack-");
        assert!(
            run.owner
                .as_deref()
                .unwrap_or_default()
                .starts_with(&format!("receiver/shard-{shard}/")),
            "{alg} ran on {:?}",
            run.owner
        );
    }

    // A wrong secret is refused: a scheduler configured with it cannot dispatch.
    let bad_file = c.tmp.path().join("bad.secret");
    std::fs::write(&bad_file, "not-the-shared-secret-at-all").unwrap();
    let mut bad = grpc(true);
    bad.secret_file = Some(bad_file);
    let creds = bad.load().unwrap();
    let client = nexus_link::grpc::GrpcShard::new(
        "shard-a",
        &shards["shard-a"].endpoints,
        &creds,
        nexus_link::grpc::GrpcShardOptions::default(),
    )
    .unwrap();
    let err = nexus_link::shard::Shard::cancel(
        &client,
        RunId::new(),
        nexus_model::run::CancellationPolicy::Background,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.kind,
        nexus_model::error::ErrorKind::Unauthorized,
        "{err}"
    );

    c.stop().await;
}

/// The receiver's own launch limit answers RESOURCE_EXHAUSTED with a retry hint; the scheduler
/// slows down (AIMD) and retries without spending attempts, so every run still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_over_its_launch_limit_slows_the_scheduler_down_and_loses_nothing() {
    let tight = nexus_model::limiter::BudgetConfig {
        rate: 4.0,
        burst: 2,
    };
    let generous = nexus_scheduler::BudgetConfig {
        rate: 1000.0,
        burst: 100,
    };
    let c = Cluster::start(&["a"], tight, 1, generous).await;
    let base = &c.schedulers[0].url;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit(&http, base, "knapsack-a").await);
    }
    for id in &ids {
        let r =
            crate::common::wait_terminal(&http, base, "knapsack-a", id, Duration::from_secs(60))
                .await;
        assert_eq!(r["status"], "COMPLETED", "{id}: {r}");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let slowed = metrics
        .lines()
        .find(|l| l.starts_with("nexus_scheduler_dispatch_total{result=\"slow_down\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        slowed >= 1.0,
        "the receiver's RESOURCE_EXHAUSTED reached the dispatcher: {slowed}"
    );
    c.stop().await;
}

/// Graceful shutdown (what SIGTERM triggers) of a scheduler under load: readiness off, its queue
/// drained for `drain_grace`, its lease released; the supervisor hands the runs still queued to
/// their shard at once. The schedulers' lease TTL is 60 s, longer than this test's bound, so the
/// handover cannot come from the lease lapsing. Nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_shut_down_under_load_hands_its_runs_over_without_waiting_for_its_lease() {
    let slow = nexus_scheduler::BudgetConfig {
        rate: 4.0,
        burst: 1,
    };
    let c = Cluster::start_with_lease(&["a"], OPEN, 2, slow, Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    // The leaving scheduler is the second: the supervisor's payload URLs point to the first (in
    // production, to the load balancer in front of all of them).
    let (a, b) = (c.schedulers[1].url.clone(), c.schedulers[0].url.clone());
    // All at once, so that the queue is long when the scheduler leaves however busy the machine
    // is (one by one, a slow machine could take as long to submit them as to dispatch them).
    let mut ids: Vec<String> =
        futures::future::join_all((0..40).map(|_| submit(&http, &a, "knapsack-a"))).await;
    // Load on the other scheduler while the first one leaves.
    let load = {
        let (http, b) = (http.clone(), b.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..20 {
                ids.push(submit(&http, &b, "knapsack-a").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    let scheduler_leases = |leases: Vec<nexus_store::Lease>| {
        leases
            .into_iter()
            .filter(|l| nexus_scheduler::is_scheduler_lease(&l.owner))
            .count()
    };
    assert_eq!(scheduler_leases(c.store.leases().await.unwrap()), 2);
    let mut cluster = c;
    let leaving = cluster.schedulers.remove(1);
    // Counted just before the shutdown: once the lease is released the supervisor hands the
    // queue over at once (a batch at a time), so counting afterwards races with the handover.
    // The drain grace (300 ms at 4 runs/s) dispatches at most a couple of them itself.
    let mut queued = 0;
    for id in &ids {
        let run = cluster
            .store
            .get(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        if run.stage == nexus_model::run::Stage::Buffered {
            queued += 1;
        }
    }
    assert!(
        queued >= 5,
        "the scheduler had only {queued} runs queued when it left: the test proves nothing"
    );
    leaving.stop().await;
    let stopped = std::time::Instant::now();
    assert_eq!(
        scheduler_leases(cluster.store.leases().await.unwrap()),
        1,
        "the leaving scheduler released its lease"
    );
    ids.extend(load.await.unwrap());
    for id in &ids {
        let r = crate::common::wait_terminal(&http, &b, "knapsack-a", id, Duration::from_secs(40))
            .await;
        assert_eq!(r["status"], "COMPLETED", "{id}: {r}");
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(60),
        "handed over only after the lease would have lapsed"
    );
    eprintln!(
        "{queued} runs were still queued at shutdown; all {} completed {:.1}s after it",
        ids.len(),
        stopped.elapsed().as_secs_f64()
    );
    cluster.stop().await;
}

/// Cancelling the root of a tree of 24 descendants spread over two shards (children and
/// grandchildren alternate between them) cancels every one, each with a cause naming the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_root_cancels_its_descendants_on_every_shard() {
    let c = Cluster::start(
        &["a", "b"],
        OPEN,
        2,
        nexus_scheduler::BudgetConfig::default(),
    )
    .await;
    let http = reqwest::Client::new();
    let base = c.schedulers[0].url.clone();
    let create = |alg: String, parent: Option<(String, String)>| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let mut body =
                serde_json::json!({"algorithmParameters": {"mode": "sleep", "seconds": 60}});
            if let Some((pa, pid)) = parent {
                body["parentRequest"] = serde_json::json!({"requestId": pid, "algorithmName": pa});
            }
            let r = http
                .post(format!("{base}/algorithm/v1/run/{alg}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            r.json::<serde_json::Value>().await.unwrap()["requestId"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let shard = |i: usize| {
        if i.is_multiple_of(2) {
            "sleeper-a"
        } else {
            "sleeper-b"
        }
        .to_owned()
    };
    let root = create("sleeper-a".into(), None).await;
    let mut descendants = Vec::new();
    for i in 0..12 {
        let child = create(shard(i), Some(("sleeper-a".into(), root.clone()))).await;
        if i < 6 {
            for j in 0..2 {
                let g = create(shard(i + j + 1), Some((shard(i), child.clone()))).await;
                descendants.push((shard(i + j + 1), g));
            }
        }
        descendants.push((shard(i), child));
    }
    assert_eq!(descendants.len(), 24);
    // Some are running on each shard by now.
    crate::common::eventually(
        Duration::from_secs(20),
        "runs running on both shards",
        || async {
            let mut shards = std::collections::HashSet::new();
            for (_, id) in &descendants {
                let run = c.store.get(id.parse().unwrap()).await.unwrap().unwrap();
                if run.stage == nexus_model::run::Stage::Running {
                    shards.insert(run.shard.clone());
                }
            }
            shards.len() == 2
        },
    )
    .await;

    let cancelled_at = std::time::Instant::now();
    let r = http
        .post(format!(
            "{base}/algorithm/v1/cancel/sleeper-a/requests/{root}"
        ))
        .json(&serde_json::json!({"initiator": "tree-test", "reason": "cascade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let answered = cancelled_at.elapsed();
    let all_cancelled = loop {
        let mut done = true;
        for (_, id) in &descendants {
            let run = c.store.get(id.parse().unwrap()).await.unwrap().unwrap();
            done &= run.stage == nexus_model::run::Stage::Cancelled;
        }
        if done {
            break cancelled_at.elapsed();
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(20),
            "descendants still not CANCELLED after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for (alg, id) in &descendants {
        let r = crate::common::get_json(
            &http,
            &format!("{base}/algorithm/v1/metadata/{alg}/requests/{id}"),
        )
        .await;
        let text = r.to_string();
        assert!(
            text.contains("Cancelled with its ancestor") && text.contains(&root),
            "{r}"
        );
    }
    // The processes are stopped too: no algorithm process of the tree is left.
    let alive = || {
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            n += descendants
                .iter()
                .filter(|(_, id)| cmd.contains(&format!("--request-id={id}")))
                .count();
        }
        n
    };
    crate::common::eventually(
        Duration::from_secs(20),
        "no process of the tree left",
        || std::future::ready(alive() == 0),
    )
    .await;
    eprintln!(
        "cascade: 24 descendants on 2 shards; cancel answered in {:.0} ms, all CANCELLED after {:.0} ms",
        answered.as_secs_f64() * 1000.0,
        all_cancelled.as_secs_f64() * 1000.0
    );
    c.stop().await;
}

/// Receivers configured without `receiver.scheduler_url` (as the README's walk-through starts
/// them) still hand algorithms the schedulers' URL, the one the dispatching scheduler knows: the
/// fan-out demo's tree grows (it used to stay flat, depth 0, without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_runs_work_without_configuring_the_receivers_scheduler_url() {
    let c = Cluster::start(&["a"], OPEN, 1, nexus_scheduler::BudgetConfig::default()).await;
    let http = reqwest::Client::new();
    let base = c.schedulers[0].url.clone();
    let numbers: Vec<i64> = (1..=40).collect();
    let r = http
        .post(format!("{base}/algorithm/v1/run/fanout-a"))
        .json(&serde_json::json!({"algorithmParameters": {"numbers": numbers, "leaf": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let root = r.json::<serde_json::Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let done =
        crate::common::wait_terminal(&http, &base, "fanout-a", &root, Duration::from_secs(90))
            .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let result = crate::common::get_json(&http, done["resultUri"].as_str().unwrap()).await;
    assert_eq!(
        result,
        serde_json::json!({ "sumOfSquares": 22140, "runs": 7, "depth": 2 }),
        "a three-level tree through the receiver"
    );
    c.stop().await;
}
