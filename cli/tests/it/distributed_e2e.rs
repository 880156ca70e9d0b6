//! Distributed mode end to end, as separate `nexus` processes on loopback (integration tier,
//! feature `distributed-tests`): two receivers (shards `shard-a` and `shard-b`), two schedulers
//! and a supervisor sharing a real Cassandra node (`NEXUS_TEST_CASSANDRA=host:port`) and a real
//! S3 server (`NEXUS_TEST_S3=s3://bucket[/prefix]?endpoint=…&access_key=…&secret_key=…`).
//!
//! Runs are submitted through both schedulers to templates of both shards; receiver A is killed
//! with SIGKILL a third of the way through and started again (a new process on the same ports)
//! once the outage has been observed. Every run must complete, on its own shard, and shard B's
//! runs must not wait for shard A to come back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use nexus_model::run::RunId;
use nexus_store::cassandra::CassandraConfig;
use nexus_store::{CassandraRunStore, RunStore};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Runs submitted in all.
const RUNS: usize = 120;
/// Receiver A is killed once this many runs are accepted.
const KILL_AFTER: usize = RUNS / 3;
/// Concurrent submitters.
const SUBMITTERS: usize = 4;
/// Shortest outage of receiver A.
const MIN_OUTAGE: Duration = Duration::from_secs(4);
/// Longest outage: shard B's outage-time runs must all complete within it.
const MAX_OUTAGE: Duration = Duration::from_secs(30);
/// Longest wait for every run to complete after receiver A is back.
const COMPLETE_WITHIN: Duration = Duration::from_secs(180);

const TERMINAL: [&str; 5] = [
    "COMPLETED",
    "FAILED",
    "SCHEDULING_FAILED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
];

fn env_or_panic(name: &str, how: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the distributed end-to-end test needs {how} \
             (scripts/integration.sh starts both services and sets NEXUS_TEST_CASSANDRA and \
             NEXUS_TEST_S3)"
        )
    })
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Free loopback ports, all distinct (the listeners are held until every port is picked).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The value of query option `key` in an `s3://…?a=b&…` URL.
fn query_value(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// `url` with `/<sub>` appended to its prefix (before the query).
fn with_prefix(url: &str, sub: &str) -> String {
    let (base, q) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.trim_end_matches('/');
    match q {
        Some(q) => format!("{base}/{sub}?{q}"),
        None => format!("{base}/{sub}"),
    }
}

/// One `nexus` process in its own process group (so that the algorithm processes it launched go
/// with it on cleanup); killed, with its group, when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// SIGKILL to the process alone: its algorithm processes live on, as after a node loss.
    fn kill_9(&mut self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
        self.exited = true;
    }

    /// SIGTERM, then waits up to `within` for the process to exit; returns its exit status.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = true;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {within:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            self.exited = true;
            panic!("{} exited early ({st}); see its log below", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The group outlives its leader while orphaned algorithm processes are in it.
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every process of the deployment, and the temp dir; on panic prints each log's tail and keeps
/// the directory (kept as well with `NEXUS_TEST_KEEP_DIR` set).
struct Cluster {
    procs: Vec<Proc>,
    dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn spawn(&mut self, name: &str, role: &str, config: &Path) -> usize {
        let log = self.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexus"));
        cmd.arg(role)
            .arg("--config")
            .arg(config)
            .env(
                "NEXUS_LOG",
                std::env::var("NEXUS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nexus {role}: {e}"));
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
            exited: false,
        });
        self.procs.len() - 1
    }

    fn check_alive(&mut self) {
        for p in &mut self.procs {
            if !p.exited {
                p.check_alive();
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // Kill first, so the logs are complete.
        let procs = std::mem::take(&mut self.procs);
        let logs: Vec<(String, PathBuf)> = procs
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .collect();
        drop(procs);
        if panicking {
            for (name, log) in &logs {
                eprintln!(
                    "\n===== {name}: last 60 lines of {} =====\n{}",
                    log.display(),
                    tail(log, 60)
                );
            }
        }
        let keep = panicking || std::env::var_os("NEXUS_TEST_KEEP_DIR").is_some();
        if let Some(d) = self.dir.take().filter(|_| keep) {
            let p = d.keep();
            eprintln!("\n(test directory kept: {})", p.display());
        }
    }
}

async fn wait_ready(http: &reqwest::Client, c: &mut Cluster, what: &str, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if http
            .get(format!("{base}/health/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        c.check_alive();
        assert!(
            Instant::now() < deadline,
            "{what} at {base} not ready after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn template(name: &str, workgroup: &str) -> String {
    format!(
        "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: {name}
spec:
  container:
    image: nexus-demo
    registry: ghcr.io/nexus-rs
    versionTag: latest
  computeResources:
    cpuLimit: \"1\"
    memoryLimit: 256Mi
  workgroupRef:
    name: {workgroup}
    group: science.sneaksanddata.com
    kind: NexusAlgorithmWorkgroup
  command: nexus-demo
  args:
    - chaos
    - --sas-uri=%s
    - --request-id=%s
  runtimeEnvironment:
    deadlineSeconds: 60
    maximumRetries: 0
"
    )
}

fn workgroup(name: &str, cluster: &str, max_concurrent: u32) -> String {
    format!(
        "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmWorkgroup
metadata:
  name: {name}
spec:
  description: {cluster} in the distributed end-to-end test
  cluster: {cluster}
  maxConcurrentRuns: {max_concurrent}
"
    )
}

/// A submitted run.
#[derive(Debug, Clone)]
struct Sub {
    alg: &'static str,
    id: String,
    /// Index of the scheduler it was submitted to.
    via: usize,
    /// Submitted while receiver A was down.
    during_outage: bool,
}

async fn submit(http: &reqwest::Client, base: &str, alg: &str) -> String {
    let mut last = String::new();
    // A 429 / 503 is a reason to try again, not a lost run; anything else is a failure.
    for _ in 0..20 {
        let r = http
            .post(format!("{base}/algorithm/v1/run/{alg}"))
            .json(&json!({ "algorithmParameters": {"mode": "sleep", "seconds": 1} }))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {base}/algorithm/v1/run/{alg}: {e}"));
        let st = r.status();
        let body = r.text().await.unwrap_or_default();
        if st == 202 {
            let v: Value = serde_json::from_str(&body).unwrap();
            return v["requestId"]
                .as_str()
                .unwrap_or_else(|| panic!("202 without requestId: {body}"))
                .to_owned();
        }
        assert!(
            st == 429 || st == 503,
            "submit {alg} via {base}: {st} {body}"
        );
        last = format!("{st} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("submit {alg} via {base}: still refused: {last}");
}

async fn submit_range(
    http: &reqwest::Client,
    scheds: &[String],
    range: std::ops::Range<usize>,
    during_outage: bool,
) -> Vec<Sub> {
    futures::stream::iter(range)
        .map(|i| {
            let http = http.clone();
            let via = i % 2;
            let alg = if (i / 2) % 2 == 0 {
                "sleepy-a"
            } else {
                "sleepy-b"
            };
            let base = scheds[via].clone();
            async move {
                Sub {
                    alg,
                    id: submit(&http, &base, alg).await,
                    via,
                    during_outage,
                }
            }
        })
        .buffer_unordered(SUBMITTERS)
        .collect()
        .await
}

async fn status(http: &reqwest::Client, base: &str, s: &Sub) -> Option<Value> {
    let r = http
        .get(format!(
            "{base}/algorithm/v1/results/{}/requests/{}",
            s.alg, s.id
        ))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// Polls the runs not yet known complete (through either scheduler, alternating), records when
/// each was first seen COMPLETED, and panics on any other terminal stage.
async fn poll_round(
    http: &reqwest::Client,
    scheds: &[String],
    subs: &[Sub],
    done: &mut HashMap<String, (Instant, Value)>,
    round: usize,
) {
    let todo: Vec<&Sub> = subs.iter().filter(|s| !done.contains_key(&s.id)).collect();
    let answers: Vec<(String, Option<Value>)> = futures::stream::iter(todo)
        .map(|s| {
            let http = http.clone();
            let base = scheds[(s.via + round) % 2].clone();
            async move { (s.id.clone(), status(&http, &base, s).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (id, v) in answers {
        let Some(v) = v else { continue };
        let st = v["status"].as_str().unwrap_or_default();
        if st == "COMPLETED" {
            done.insert(id, (Instant::now(), v));
        } else if TERMINAL.contains(&st) {
            // Say why before failing: the run's details and its captured output.
            let alg = subs.iter().find(|s| s.id == id).map_or("", |s| s.alg);
            let md: Value = http
                .get(format!(
                    "{}/algorithm/v1/metadata/{alg}/requests/{id}",
                    scheds[0]
                ))
                .send()
                .await
                .map(|r| r.json())
                .unwrap()
                .await
                .unwrap_or_default();
            let logs = match md["logs_uri"].as_str() {
                Some(u) => http
                    .get(u)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap_or_default(),
                None => String::new(),
            };
            panic!("run {id} ended {st} (none may fail): {v}\nmetadata: {md}\nlogs:\n{logs}");
        }
    }
}

/// Two receivers (shards `shard-a`, `shard-b`), two schedulers and a supervisor as processes on
/// one keyspace and one S3 prefix of their own, every one ready.
struct Deployment {
    c: Cluster,
    http: reqwest::Client,
    /// Base URLs of scheduler 1 and scheduler 2.
    scheds: Vec<String>,
    /// Indexes in `c.procs` of receiver A and of the two schedulers.
    a_idx: usize,
    sched_idx: [usize; 2],
    a_http: u16,
    a_grpc: u16,
    store_url: String,
    /// Configuration shared by every process (store, payloads, signing key, gRPC auth).
    shared: String,
    dir: PathBuf,
    demo: PathBuf,
}

impl Deployment {
    /// Starts everything. `tag` names the test in paths and keyspaces; `scheduler` is the
    /// `scheduler:` section of both schedulers' configuration; `max_concurrent` is each
    /// workgroup's `maxConcurrentRuns`.
    async fn start(tag: &str, scheduler: &str, max_concurrent: u32) -> Self {
        let node = env_or_panic(
            "NEXUS_TEST_CASSANDRA",
            "a Cassandra node as host:port (start one with scripts/cassandra.sh start)",
        );
        let s3 = env_or_panic(
            "NEXUS_TEST_S3",
            "an S3 server as s3://bucket[/prefix]?endpoint=http://host:port&access_key=…&secret_key=… \
             (start SeaweedFS with scripts/seaweedfs.sh start; bucket nexus-test)",
        );
        let demo = crate::common::demo_dir();
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let keyspace = format!("t_{tag}_{unique}");
        let store_url = format!("cassandra://{node}/{keyspace}");
        let payloads_url = with_prefix(&s3, &format!("{tag}-{unique}"));

        let mut env = vec![(
            "NEXUS_GRPC_SECRET".to_owned(),
            format!("grpc-secret-{}", uuid::Uuid::new_v4().simple()),
        )];
        for (var, key) in [
            ("NEXUS_S3_ACCESS_KEY_ID", "access_key"),
            ("NEXUS_S3_SECRET_ACCESS_KEY", "secret_key"),
        ] {
            if let Some(v) = std::env::var(var).ok().or_else(|| query_value(&s3, key)) {
                env.push((var.to_owned(), v));
            }
        }
        let c = Cluster {
            procs: Vec::new(),
            dir: Some(tempfile::tempdir().unwrap()),
            env,
        };
        let dir = c.path().to_path_buf();
        eprintln!(
            "{tag}: dir {}, keyspace {keyspace}, payloads {}",
            dir.display(),
            payloads_url.split('?').next().unwrap()
        );

        // Shared files: signing key, templates.
        let key_file = dir.join("signing.key");
        std::fs::write(
            &key_file,
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        )
        .unwrap();
        let templates = dir.join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        for (file, text) in [
            ("wg-a.yaml", workgroup("wg-a", "shard-a", max_concurrent)),
            ("wg-b.yaml", workgroup("wg-b", "shard-b", max_concurrent)),
            ("sleepy-a.yaml", template("sleepy-a", "wg-a")),
            ("sleepy-b.yaml", template("sleepy-b", "wg-b")),
        ] {
            std::fs::write(templates.join(file), text).unwrap();
        }

        let p = free_ports(8);
        let (a_http, a_grpc, b_http, b_grpc, s1, s2, sup) =
            (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
        let scheds = vec![
            format!("http://127.0.0.1:{s1}"),
            format!("http://127.0.0.1:{s2}"),
        ];
        let shared = format!(
            "store: \"{store_url}\"\npayloads: \"{payloads_url}\"\nsigning_key_file: \"{}\"\ngrpc:\n  auth: shared-secret\n",
            key_file.display()
        );
        let shards = format!(
            "shards:\n  shard-a:\n    endpoints: [\"http://127.0.0.1:{a_grpc}\"]\n  shard-b:\n    endpoints: [\"http://127.0.0.1:{b_grpc}\"]\n"
        );
        let sched_cfg = |name: &str, port: u16| {
            let f = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &f,
                format!(
                    "{shared}listen: 127.0.0.1:{port}\ninstance_id: {name}\ntemplates_dir: \"{}\"\n{shards}\
                     scheduler:\n{scheduler}",
                    templates.display()
                ),
            )
            .unwrap();
            f
        };
        let sup_cfg = dir.join("supervisor.yaml");
        std::fs::write(
            &sup_cfg,
            format!(
                "store: \"{store_url}\"\nsigning_key_file: \"{}\"\ngrpc:\n  auth: shared-secret\n\
                 listen: 127.0.0.1:{sup}\nscheduler_url: \"{}\"\ntemplates_dir: \"{}\"\n{shards}\
                 supervisor:\n  recovery_interval: 1s\n  lease_ttl: 3s\n",
                key_file.display(),
                scheds[0],
                templates.display()
            ),
        )
        .unwrap();
        let s1_cfg = sched_cfg("scheduler-1", s1);
        let s2_cfg = sched_cfg("scheduler-2", s2);

        let mut d = Self {
            c,
            http: reqwest::Client::new(),
            scheds,
            a_idx: 0,
            sched_idx: [0, 0],
            a_http,
            a_grpc,
            store_url,
            shared,
            dir,
            demo,
        };
        let t0 = Instant::now();
        // Receiver A first: it creates the keyspace; the others then find the schema in place.
        let a1_cfg = d.receiver_cfg("receiver-a1", "shard-a", a_http, a_grpc);
        d.a_idx = d.c.spawn("receiver-a1", "receiver", &a1_cfg);
        d.wait_ready("receiver A", a_http).await;
        let b_cfg = d.receiver_cfg("receiver-b", "shard-b", b_http, b_grpc);
        d.c.spawn("receiver-b", "receiver", &b_cfg);
        d.sched_idx = [
            d.c.spawn("scheduler-1", "scheduler", &s1_cfg),
            d.c.spawn("scheduler-2", "scheduler", &s2_cfg),
        ];
        d.c.spawn("supervisor", "supervisor", &sup_cfg);
        for (what, port) in [
            ("receiver B", b_http),
            ("scheduler 1", s1),
            ("scheduler 2", s2),
            ("supervisor", sup),
        ] {
            d.wait_ready(what, port).await;
        }
        eprintln!("{tag}: 5 processes ready in {:.1?}", t0.elapsed());
        d
    }

    /// Writes the configuration of receiver `name` of `shard`.
    fn receiver_cfg(&self, name: &str, shard: &str, http: u16, grpc: u16) -> PathBuf {
        let f = self.dir.join(format!("{name}.yaml"));
        let work = self.dir.join(format!("work-{name}"));
        std::fs::write(
            &f,
            format!(
                "{}listen: 127.0.0.1:{http}\ngrpc_listen: 127.0.0.1:{grpc}\nshard: {shard}\n\
                 instance_id: {name}\nwork_dir: \"{}\"\nlease_ttl: 3s\nexecutor:\n  extra_path: [\"{}\"]\n",
                self.shared,
                work.display(),
                self.demo.display()
            ),
        )
        .unwrap();
        f
    }

    async fn wait_ready(&mut self, what: &str, port: u16) {
        wait_ready(
            &self.http,
            &mut self.c,
            what,
            &format!("http://127.0.0.1:{port}"),
        )
        .await;
    }

    /// The run store the processes share, opened by the test.
    async fn store(&self) -> Arc<CassandraRunStore> {
        let mut cfg = CassandraConfig::from_url(&self.store_url).unwrap();
        cfg.migrate = false;
        Arc::new(
            CassandraRunStore::open(&cfg)
                .await
                .unwrap_or_else(|e| panic!("open the run store {}: {e}", self.store_url)),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_runs_survive_a_receiver_kill_9_and_stay_on_their_shard() {
    let mut d = Deployment::start(
        "dist",
        "  lease_ttl: 3s\n  dispatch_timeout: 5s\n  retry_max_delay: 2s\n",
        40,
    )
    .await;
    let (http, scheds, a_idx, a_http, a_grpc) = (
        d.http.clone(),
        d.scheds.clone(),
        d.a_idx,
        d.a_http,
        d.a_grpc,
    );

    // Phase 1: a third of the runs, every process up.
    let t_submit = Instant::now();
    let mut subs = submit_range(&http, &scheds, 0..KILL_AFTER, false).await;

    // Receiver A is lost while it runs some of them (they sleep 1 s each).
    let a_phase1: Vec<Sub> = subs
        .iter()
        .filter(|s| s.alg == "sleepy-a")
        .cloned()
        .collect();
    let mut running_at_kill = 0;
    let wait_running = Instant::now() + Duration::from_secs(20);
    while running_at_kill < 3 {
        assert!(
            Instant::now() < wait_running,
            "no sleepy-a run reached RUNNING on receiver A within 20 s"
        );
        let answers: Vec<Option<Value>> = futures::stream::iter(&a_phase1)
            .map(|s| status(&http, &scheds[s.via], s))
            .buffer_unordered(8)
            .collect()
            .await;
        running_at_kill = answers
            .iter()
            .flatten()
            .filter(|v| v["status"] == "RUNNING")
            .count();
    }
    d.c.procs[a_idx].kill_9();
    let kill_ms = now_ms();
    let t_kill = Instant::now();
    eprintln!(
        "distributed e2e: {KILL_AFTER} runs accepted; receiver A killed (SIGKILL) {:.1?} after \
         the first submission, with {running_at_kill} sleepy-a runs RUNNING",
        t_submit.elapsed()
    );

    // Phase 2: the rest, while A is down.
    let outage = submit_range(&http, &scheds, KILL_AFTER..RUNS, true).await;
    let submitted_all = t_submit.elapsed();
    subs.extend(outage);
    assert_eq!(subs.len(), RUNS);

    // Keep A down at least MIN_OUTAGE, and until shard B has completed every run submitted
    // during the outage: shard A being down must not hold shard B's lane.
    let b_outage: Vec<Sub> = subs
        .iter()
        .filter(|s| s.during_outage && s.alg == "sleepy-b")
        .cloned()
        .collect();
    let mut done: HashMap<String, (Instant, Value)> = HashMap::new();
    let mut round = 0;
    loop {
        d.c.check_alive();
        poll_round(&http, &scheds, &b_outage, &mut done, round).await;
        round += 1;
        let b_done = b_outage.iter().all(|s| done.contains_key(&s.id));
        if b_done && t_kill.elapsed() >= MIN_OUTAGE {
            break;
        }
        assert!(
            t_kill.elapsed() < MAX_OUTAGE,
            "while receiver A was down ({MAX_OUTAGE:?}), only {}/{} of the sleepy-b runs \
             submitted during the outage completed: shard A's outage held up shard B",
            b_outage.iter().filter(|s| done.contains_key(&s.id)).count(),
            b_outage.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b_outage_done = t_kill.elapsed();

    // Receiver A again: a new process (and instance) on the same ports.
    let a2_cfg = d.receiver_cfg("receiver-a2", "shard-a", a_http, a_grpc);
    d.c.spawn("receiver-a2", "receiver", &a2_cfg);
    let restart_ms = now_ms();
    let t_restart = Instant::now();
    d.wait_ready("receiver A (restarted)", a_http).await;
    let outage_len = t_restart - t_kill;
    eprintln!(
        "distributed e2e: all {} sleepy-b runs submitted during the outage completed {:.1?} after \
         the kill; receiver A restarted after {:.1?} down",
        b_outage.len(),
        b_outage_done,
        outage_len
    );

    // Everything completes.
    let deadline = Instant::now() + COMPLETE_WITHIN;
    loop {
        d.c.check_alive();
        poll_round(&http, &scheds, &subs, &mut done, round).await;
        round += 1;
        if done.len() == subs.len() {
            break;
        }
        if Instant::now() >= deadline {
            let mut left = String::new();
            for s in subs.iter().filter(|s| !done.contains_key(&s.id)).take(20) {
                let v = status(&http, &scheds[0], s).await;
                let _ = writeln!(left, "  {} {}: {v:?}", s.alg, s.id);
            }
            panic!(
                "{} of {RUNS} runs not COMPLETED {COMPLETE_WITHIN:?} after receiver A came back; \
                 some of them:\n{left}",
                RUNS - done.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let all_done = t_submit.elapsed();

    // The run records, straight from the store.
    let store = d.store().await;
    let mut relaunched = Vec::new();
    let mut per_shard: HashMap<&str, usize> = HashMap::new();
    let mut a_during_outage_late = 0;
    let mut b_finished_in_outage = 0;
    for s in &subs {
        let id: RunId = s.id.parse().unwrap();
        let run = store
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("run {} ({}) is not in the store", s.id, s.alg));
        let (shard, prefix) = if s.alg == "sleepy-a" {
            ("shard-a", "receiver/shard-a/")
        } else {
            ("shard-b", "receiver/shard-b/")
        };
        assert_eq!(run.shard, shard, "run {} ({}): {run:?}", s.id, s.alg);
        let owner = run.owner.clone().unwrap_or_default();
        assert!(
            owner.starts_with(prefix),
            "run {} ({}) was owned by '{owner}', not a receiver of {shard}",
            s.id,
            s.alg
        );
        *per_shard.entry(shard).or_default() += 1;
        // Relaunched: launched on receiver A before the kill, finished under its successor
        // (the attempt count is shown too).
        if run.attempts > 1 || (!s.during_outage && owner == "receiver/shard-a/receiver-a2") {
            relaunched.push((s.clone(), run.attempts, owner.clone()));
        }
        let finished = run.finished_at.unwrap_or(i64::MAX);
        if s.alg == "sleepy-b" && s.during_outage {
            // Measured by the store's clock (same host) as well as by polling above.
            assert!(
                finished < restart_ms,
                "sleepy-b run {} submitted during the outage finished at {finished}, after \
                 receiver A restarted at {restart_ms}",
                s.id
            );
            b_finished_in_outage += 1;
        }
        if s.alg == "sleepy-a" && s.during_outage && finished > restart_ms {
            a_during_outage_late += 1;
        }
        assert!(
            run.finished_at.is_some(),
            "run {} COMPLETED without finished_at",
            s.id
        );
    }

    // Results through the signed URLs, for a sample: some of each shard, and relaunched runs.
    let mut sample: Vec<&Sub> = subs.iter().step_by(17).collect();
    sample.extend(relaunched.iter().take(3).map(|(s, _, _)| s));
    for s in &sample {
        let v = &done[&s.id].1;
        let uri = v["resultUri"]
            .as_str()
            .unwrap_or_else(|| panic!("run {} COMPLETED without resultUri: {v}", s.id));
        let r = http
            .get(uri)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET result of {}: {e}", s.id));
        assert_eq!(r.status(), 200, "result of {} at {uri}", s.id);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"slept": 1}), "result of {}", s.id);
    }

    eprintln!(
        "distributed e2e summary: {RUNS} runs ({} on shard-a, {} on shard-b) submitted in {:.1?} \
         through 2 schedulers, all COMPLETED {:.1?} after the first submission; none lost, none \
         failed. Receiver A killed after {KILL_AFTER} runs ({running_at_kill} sleepy-a RUNNING), down {:.1?} (kill at {kill_ms} ms, \
         restart at {restart_ms} ms); the {b_finished_in_outage} sleepy-b runs submitted during \
         the outage completed {:.1?} after the kill, before the restart; {a_during_outage_late} \
         sleepy-a runs submitted during the outage finished after it. Relaunched (accepted before the kill, \
         finished on the restarted receiver A, or attempts > 1): \
         {}{}. {} results checked through their signed URLs.",
        per_shard.get("shard-a").copied().unwrap_or(0),
        per_shard.get("shard-b").copied().unwrap_or(0),
        submitted_all,
        all_done,
        outage_len,
        b_outage_done,
        relaunched.len(),
        if relaunched.is_empty() {
            String::new()
        } else {
            format!(
                " (e.g. {})",
                relaunched
                    .iter()
                    .take(3)
                    .map(|(s, n, o)| format!("{} x{n} → {o}", s.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        sample.len()
    );
    drop(d);
}

/// Submits `n` runs one after the other through scheduler `via` (at `base`), alternating between
/// the shards, `gap` apart.
async fn submit_paced(
    http: reqwest::Client,
    base: String,
    via: usize,
    n: usize,
    gap: Duration,
) -> Vec<Sub> {
    let mut subs = Vec::new();
    for i in 0..n {
        let alg = if i.is_multiple_of(2) {
            "sleepy-a"
        } else {
            "sleepy-b"
        };
        subs.push(Sub {
            alg,
            id: submit(&http, &base, alg).await,
            via,
            during_outage: false,
        });
        tokio::time::sleep(gap).await;
    }
    subs
}

/// SIGTERM to a scheduler process under load (issue #8): it stops taking requests, drains its
/// queue for `drain_grace`, releases its lease and exits 0; the supervisor hands the runs still
/// queued in it to their shards at once. The schedulers' lease TTL is 60 s, longer than this
/// test's bound, so the handover cannot come from the lease lapsing. Nothing accepted is lost,
/// and the other scheduler keeps accepting and running work throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_sigterm_under_load_hands_its_runs_over_and_loses_nothing() {
    const LEAVING_RUNS: usize = 40;
    const STAYING_RUNS: usize = 20;
    let lease_ttl = Duration::from_secs(60);
    // Dispatch throttled to 4 runs/s per shard, so most runs are still queued at the signal.
    let mut d = Deployment::start(
        "sigterm",
        "  lease_ttl: 60s\n  drain_grace: 1s\n  shard_budget:\n    rate: 4\n    burst: 1\n",
        40,
    )
    .await;
    let http = d.http.clone();
    // The leaving scheduler is the second: the supervisor's payload URLs point to the first (in
    // production, to the load balancer in front of all of them).
    let (staying, leaving) = (d.scheds[0].clone(), d.scheds[1].clone());
    let mut subs = submit_paced(http.clone(), leaving, 1, LEAVING_RUNS, Duration::ZERO).await;
    // Load on the staying scheduler while the other one leaves.
    let load = tokio::spawn(submit_paced(
        http.clone(),
        staying.clone(),
        0,
        STAYING_RUNS,
        Duration::from_millis(50),
    ));
    let store = d.store().await;
    let scheduler_leases = |leases: Vec<nexus_store::Lease>| {
        leases
            .into_iter()
            .filter(|l| nexus_scheduler::is_scheduler_lease(&l.owner))
            .count()
    };
    assert_eq!(scheduler_leases(store.leases().await.unwrap()), 2);
    let mut queued = 0;
    for s in &subs {
        let run = store.get(s.id.parse().unwrap()).await.unwrap().unwrap();
        if run.stage == nexus_model::run::Stage::Buffered {
            queued += 1;
        }
    }
    assert!(
        queued > 0,
        "the scheduler was signalled with nothing queued: the test proves nothing"
    );

    let t_term = Instant::now();
    let status = d.c.procs[d.sched_idx[1]].terminate(Duration::from_secs(30));
    let exited_after = t_term.elapsed();
    assert!(
        status.success(),
        "scheduler 2 exited with {status} after SIGTERM, not 0"
    );
    assert_eq!(
        scheduler_leases(store.leases().await.unwrap()),
        1,
        "the leaving scheduler released its lease"
    );

    subs.extend(load.await.unwrap());
    let scheds = vec![staying.clone(), staying.clone()];
    let mut done: HashMap<String, (Instant, Value)> = HashMap::new();
    let mut round = 0;
    while done.len() < subs.len() {
        d.c.check_alive();
        assert!(
            t_term.elapsed() < lease_ttl,
            "{} of {} runs not COMPLETED {:.1?} after the SIGTERM: the handover waited for the \
             lease to lapse (or lost runs)",
            subs.len() - done.len(),
            subs.len(),
            t_term.elapsed()
        );
        poll_round(&http, &scheds, &subs, &mut done, round).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_done = t_term.elapsed();
    for s in &subs {
        let run = store.get(s.id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.stage, nexus_model::run::Stage::Completed, "{run:?}");
    }
    eprintln!(
        "sigterm: {queued} of {LEAVING_RUNS} runs were still queued in scheduler 2 at SIGTERM; it \
         exited 0 after {exited_after:.1?} with its lease released; all {} runs ({STAYING_RUNS} \
         submitted to scheduler 1 meanwhile) COMPLETED {all_done:.1?} after the signal (lease TTL \
         {lease_ttl:?}); none lost",
        subs.len()
    );
    drop(d);
}
