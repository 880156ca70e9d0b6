//! kill -9 a standalone process holding accepted runs, restart it on the same data directory, and
//! see every accepted run reach a terminal stage: on the embedded store, and (integration tier,
//! feature `cassandra-tests`, `NEXUS_TEST_CASSANDRA=host:port`) on a real Cassandra node, where
//! the restarted process takes the runs over once the killed one's lease lapses.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

pub(crate) fn spawn_nexus(data: &std::path::Path, port: u16, store: Option<&str>) -> Child {
    spawn_nexus_with(data, port, store, &templates())
}

fn spawn_nexus_with(
    data: &std::path::Path,
    port: u16,
    store: Option<&str>,
    templates: &std::path::Path,
) -> Child {
    let cfg = data.join("nexus.yaml");
    std::fs::write(
        &cfg,
        format!("executor:\n  extra_path: [\"{}\"]\n", demo_dir().display()),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "standalone",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
        ])
        .arg(data)
        .arg("--templates")
        .arg(templates)
        .arg("--config")
        .arg(&cfg)
        .args(store.map(|s| format!("--store={s}")))
        .env(
            "NEXUS_LOG",
            std::env::var("NEXUS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexus")
}

pub(crate) async fn ready(http: &reqwest::Client, base: &str) {
    eventually(Duration::from_secs(30), "nexus ready", || {
        let http = http.clone();
        let u = format!("{base}/health/readyz");
        async move { http.get(&u).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_run() {
    kill_9_scenario(None).await;
}

#[cfg(feature = "cassandra-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_run_on_cassandra() {
    let node = std::env::var("NEXUS_TEST_CASSANDRA").expect(
        "NEXUS_TEST_CASSANDRA=host:port is not set: start a node with scripts/cassandra.sh start \
         (scripts/integration.sh does it)",
    );
    let ks = format!(
        "t_kill9_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    kill_9_scenario(Some(&format!("cassandra://{node}/{ks}"))).await;
}

async fn kill_9_scenario(store: Option<&str>) {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut nexus = spawn_nexus(data.path(), port, store);
    ready(&http, &base).await;
    let mut ids = Vec::new();
    // The workgroup runs 4 at once: most of these wait BUFFERED, a few are RUNNING at the kill.
    for i in 0..24 {
        let params = if i % 2 == 0 {
            json!({"mode": "sleep", "seconds": 1})
        } else {
            json!({"capacity": 10, "items": [{"name": "a", "weight": 5, "value": 10}, {"name": "b", "weight": 4, "value": 40}]})
        };
        let alg = if i % 2 == 0 { "chaos" } else { "knapsack" };
        ids.push((alg, submit(&http, &base, alg, params).await));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(nexus.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nexus.wait().unwrap();

    let mut nexus = spawn_nexus(data.path(), port, store);
    ready(&http, &base).await;
    let mut completed = 0;
    for (alg, id) in &ids {
        let r = wait_terminal(&http, &base, alg, id, Duration::from_secs(90)).await;
        if r["status"] == "COMPLETED" {
            completed += 1;
        } else {
            // Only runs whose process was lost with the killed nexus may fail, and they say so.
            assert_eq!(r["status"], "FAILED", "{r}");
            assert!(
                r["runErrorMessage"].as_str().unwrap().contains("lost"),
                "{r}"
            );
        }
    }
    assert!(
        completed >= ids.len() - 4,
        "runs waiting in the queue are recovered and completed: {completed}/{}",
        ids.len()
    );
    nexus.kill().unwrap();
    nexus.wait().unwrap();
}

/// The chaos test: ten `kill -9`s of a standalone under a steady stream of submissions. Every run
/// that was answered 202 completes: none is lost, none is left BUFFERED, and none is FAILED by a
/// kill (a lost attempt is relaunched while the template's retries allow, and the attempts of
/// the killed process are stopped before anything is launched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_under_load_lose_nothing_and_fail_nothing() {
    let data = tempfile::tempdir().unwrap();
    let tdir = tempfile::tempdir().unwrap();
    std::fs::write(
        tdir.path().join("workgroup.yaml"),
        "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmWorkgroup\n\
         metadata:\n  name: local\nspec:\n  description: chaos\n  cluster: local\n  maxConcurrentRuns: 16\n",
    )
    .unwrap();
    std::fs::write(
        tdir.path().join("sturdy.yaml"),
        r"apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: sturdy
spec:
  container: {image: nexus-demo, registry: local, versionTag: latest}
  computeResources: {cpuLimit: '1', memoryLimit: 256Mi}
  workgroupRef: {name: local, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: nexus-demo
  args: [chaos, --sas-uri=%s, --request-id=%s]
  runtimeEnvironment: {deadlineSeconds: 120, maximumRetries: 40}
",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients submitting steadily through the kills (bounded: 400 submissions each, one
    // every 25 ms; a sixth of the runs sleep a second, so some are RUNNING at every kill).
    let mut clients = Vec::new();
    for c in 0..2 {
        let (http, base, accepted, stop) =
            (http.clone(), base.clone(), accepted.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..400u32 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                let params = if (i + c) % 6 == 0 {
                    json!({"mode": "sleep", "seconds": 1})
                } else {
                    json!({"mode": "succeed"})
                };
                let r = http
                    .post(format!("{base}/algorithm/v1/run/sturdy"))
                    .json(&json!({ "algorithmParameters": params }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        if let Ok(v) = r.json::<serde_json::Value>().await
                            && let Some(id) = v["requestId"].as_str()
                        {
                            accepted.lock().unwrap().push(id.to_owned());
                        }
                    }
                    // The server is down (between a kill and its restart): try again shortly.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let mut nexus = Killed(spawn_nexus_with(data.path(), port, None, tdir.path()));
    for kill in 0..10 {
        ready(&http, &base).await;
        tokio::time::sleep(Duration::from_millis(1200 + 150 * (kill % 3))).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(nexus.0.id()).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        nexus.0.wait().unwrap();
        nexus = Killed(spawn_nexus_with(data.path(), port, None, tdir.path()));
    }
    ready(&http, &base).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let ids = accepted.lock().unwrap().clone();
    assert!(
        ids.len() >= 50,
        "the load reached the server: {} runs accepted",
        ids.len()
    );
    for id in &ids {
        let r = wait_terminal(&http, &base, "sturdy", id, Duration::from_secs(180)).await;
        assert_eq!(r["status"], "COMPLETED", "run {id} after 10 kills: {r}");
    }
    eprintln!(
        "chaos: {} accepted runs, all COMPLETED after 10 kills",
        ids.len()
    );
    drop(nexus);
}

/// A nexus process that is killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
