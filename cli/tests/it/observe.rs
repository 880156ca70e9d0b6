//! Watching runs on a standalone Nexus (issue #22): listing, timeline, explanation, live logs
//! and results, over HTTP and through the `nexus run` commands.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{get_json, start_standalone, submit, templates, wait_terminal};

/// Runs `nexus run <args>` against `server`; returns (success, stdout, stderr).
fn nexus(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("run")
        .args(args)
        .env("NEXUS_SERVER", server)
        .env_remove("NEXUS_TOKEN")
        .output()
        .expect("run the nexus binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_are_listed_explained_followed_and_fetched() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    scenario(h).await;
}

/// The same on a real Cassandra node (integration tier: feature `cassandra-tests`,
/// `NEXUS_TEST_CASSANDRA=host:port`): the listing reads the index tables of migration 3.
#[cfg(feature = "cassandra-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_are_listed_explained_followed_and_fetched_on_cassandra() {
    let node = std::env::var("NEXUS_TEST_CASSANDRA").expect(
        "NEXUS_TEST_CASSANDRA=host:port is not set: start a node with scripts/cassandra.sh start \
         (scripts/integration.sh does it)",
    );
    let ks = format!(
        "t_observe_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let data = tempfile::tempdir().unwrap();
    let h = crate::common::start_standalone_with(data.path(), |c| {
        c.store = format!("cassandra://{node}/{ks}");
    })
    .await;
    scenario(h).await;
}

/// Three runs (one followed while it runs), then listing, timeline, explanation, logs and result
/// over HTTP and through the CLI.
async fn scenario(h: nexus_cli::standalone::Handle) {
    let http = reqwest::Client::new();
    let base = h.url.clone();

    // A run that prints, sleeps 3 s, prints again: its output is followed while it runs.
    let slow = submit(
        &http,
        &base,
        "chaos",
        json!({"mode": "sleep", "seconds": 3}),
    )
    .await;
    let mut resp = http
        .get(format!(
            "{base}/algorithm/v1/logs/chaos/requests/{slow}?follow=true"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut followed = String::new();
    let mut seen_while_running = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), resp.chunk())
        .await
        .expect("the follow ends once the run finished")
        .unwrap()
    {
        followed.push_str(&String::from_utf8_lossy(&chunk));
        if followed.contains("sleeping 3s") && !followed.contains("woke up") {
            let r = get_json(
                &http,
                &format!("{base}/algorithm/v1/results/chaos/requests/{slow}"),
            )
            .await;
            if r["status"] == "RUNNING" && !seen_while_running {
                seen_while_running = true;
                // Meanwhile, explain says where it runs and what its shard says.
                let e = get_json(
                    &http,
                    &format!("{base}/algorithm/v1/explain/chaos/requests/{slow}"),
                )
                .await;
                let summary = e["summary"].as_str().unwrap_or_default();
                assert!(summary.starts_with("running"), "{e}");
                let facts: Vec<&str> = e["shardFacts"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
                    .unwrap_or_default();
                assert!(
                    facts.contains(&"its process runs on this receiver (local executor)"),
                    "{e}"
                );
                assert!(facts.iter().any(|f| f.contains("launch limiter")), "{e}");
            }
        }
    }
    assert!(
        seen_while_running,
        "output did not arrive while the run ran: {followed}"
    );
    assert!(followed.contains("woke up after 3s"), "{followed}");
    let done = wait_terminal(&http, &base, "chaos", &slow, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    // Its timeline: accepted, launched, started, completed, each by whom.
    let t = get_json(
        &http,
        &format!("{base}/algorithm/v1/timeline/chaos/requests/{slow}"),
    )
    .await;
    let changes: Vec<(String, String, String)> = t["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{}->{}",
                    c["from"].as_str().unwrap(),
                    c["to"].as_str().unwrap()
                ),
                c["by"].as_str().unwrap().to_owned(),
                c["cause"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(changes[0].0, "NEW->BUFFERED", "{t}");
    assert_eq!(changes[0].1, "scheduler", "{t}");
    assert!(changes.iter().any(|c| c.0 == "BUFFERED->RUNNING"), "{t}");
    let last = changes.last().unwrap();
    assert_eq!(last.0, "RUNNING->COMPLETED", "{t}");
    assert_eq!(last.1, "receiver", "{t}");
    assert!(last.2.contains("reported its result"), "{t}");

    // Two more runs, then the listing: newest first, page by page, filtered.
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(templates().join("../payloads/knapsack.json")).unwrap(),
    )
    .unwrap();
    let k1 = submit(&http, &base, "knapsack", params.clone()).await;
    let k2 = submit(&http, &base, "knapsack", params).await;
    for k in [&k1, &k2] {
        wait_terminal(&http, &base, "knapsack", k, Duration::from_secs(60)).await;
    }
    let mut ids = Vec::new();
    let mut url = format!("{base}/algorithm/v1/runs?limit=1");
    loop {
        let page = get_json(&http, &url).await;
        for r in page["runs"].as_array().unwrap() {
            ids.push(r["requestId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => url = format!("{base}/algorithm/v1/runs?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids, vec![k2.clone(), k1.clone(), slow.clone()]);
    let knapsacks = get_json(
        &http,
        &format!("{base}/algorithm/v1/runs?algorithm=knapsack&stage=COMPLETED"),
    )
    .await;
    assert_eq!(
        knapsacks["runs"].as_array().unwrap().len(),
        2,
        "{knapsacks}"
    );
    assert!(knapsacks.get("nextCursor").is_none(), "{knapsacks}");
    let bad = http
        .get(format!("{base}/algorithm/v1/runs?limit=100000"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("limit: must be a whole number from 1 to 1000")
    );

    // The same through the CLI.
    let server = base.clone();
    let (cli_ok, out, err) = tokio::task::spawn_blocking(move || {
        nexus(
            &server,
            &["list", "--algorithm", "knapsack", "--all", "--json"],
        )
    })
    .await
    .unwrap();
    assert!(cli_ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{out}");

    let (server, id) = (base.clone(), slow.clone());
    let (cli_ok, out, err) =
        tokio::task::spawn_blocking(move || nexus(&server, &["result", "chaos", &id]))
            .await
            .unwrap();
    assert!(cli_ok, "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["slept"], 3, "{out}");

    let (server, id) = (base.clone(), slow.clone());
    let (cli_ok, out, err) =
        tokio::task::spawn_blocking(move || nexus(&server, &["explain", "chaos", &id]))
            .await
            .unwrap();
    assert!(cli_ok, "{err}");
    assert!(out.contains(": COMPLETED since"), "{out}");
    assert!(out.contains("RUNNING -> COMPLETED"), "{out}");

    let (server, id) = (base.clone(), slow.clone());
    let (cli_ok, out, err) =
        tokio::task::spawn_blocking(move || nexus(&server, &["logs", "chaos", &id, "-f"]))
            .await
            .unwrap();
    assert!(cli_ok, "{err}");
    assert!(out.contains("woke up after 3s"), "{out}");

    // A run addressed under another algorithm is not found, and the CLI says so.
    let (server, id) = (base.clone(), k1.clone());
    let (cli_ok, _, err) =
        tokio::task::spawn_blocking(move || nexus(&server, &["result", "chaos", &id]))
            .await
            .unwrap();
    assert!(!cli_ok);
    assert!(err.contains("not found for algorithm 'chaos'"), "{err}");
    h.stop().await;
}
