//! kill -9 a standalone process holding accepted runs, restart it on the same data directory, and
//! see every accepted run reach a terminal stage: on the embedded store, and (integration tier,
//! feature `cassandra-tests`, `NEXUS_TEST_CASSANDRA=host:port`) on a real Cassandra node, where
//! the restarted process takes the runs over once the killed one's lease lapses.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn spawn_nexus(data: &std::path::Path, port: u16, store: Option<&str>) -> Child {
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
        .arg(templates())
        .arg("--config")
        .arg(&cfg)
        .args(store.map(|s| format!("--store={s}")))
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexus")
}

async fn ready(http: &reqwest::Client, base: &str) {
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
