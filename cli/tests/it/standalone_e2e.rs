//! End to end in-process: the demo algorithms run as real local processes under standalone Nexus.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knapsack_completes_and_result_is_downloadable() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(templates().join("../payloads/knapsack.json")).unwrap(),
    )
    .unwrap();
    let id = submit(&http, &h.url, "knapsack", params).await;
    let r = wait_terminal(&http, &h.url, "knapsack", &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let uri = r["resultUri"].as_str().unwrap();
    assert!(uri.contains("/data/v1/objects/results/knapsack/"), "{uri}");
    let result: serde_json::Value = get_json(&http, uri).await;
    assert_eq!(result["totalValue"], 90, "{result}");
    // The signed URL is refused once tampered with.
    let tampered = uri.replace("sig=", "sig=A");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    // Metadata links the captured logs (written when the process exits, just after it reported).
    let md_url = format!("{}/algorithm/v1/metadata/knapsack/requests/{id}", h.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let md: serde_json::Value = loop {
        let md: serde_json::Value = get_json(&http, &md_url).await;
        if md["logs_uri"].is_string() {
            break md;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs never linked: {md}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(md["attempts"], 1);
    let logs_uri = md["logs_uri"].as_str().unwrap();
    let logs = http
        .get(logs_uri)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!logs.is_empty());
    // The queue and dispatcher report what they did (issue #3's metrics).
    let m = http
        .get(format!("{}/metrics", h.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "nexus_scheduler_runs_accepted_total",
        "nexus_scheduler_dispatch_total{result=\"ok\"}",
        "nexus_scheduler_queue_depth{shard=",
        "nexus_scheduler_time_in_queue_seconds",
        "nexus_scheduler_shard_budget_rate{shard=",
        "nexus_scheduler_accept_seconds",
    ] {
        assert!(
            m.contains(name),
            "metric {name} missing from /metrics:\n{m}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_demos_end_with_their_causes() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let cases = [
        (
            json!({"mode": "exit", "code": 2}),
            "FAILED",
            "fatalExitCodes",
        ),
        (
            json!({"mode": "exit", "code": 3}),
            "FAILED",
            "exited with code 3",
        ),
        (
            json!({"mode": "sleep", "seconds": 30}),
            "DEADLINE_EXCEEDED",
            "max allowed run time",
        ),
        (json!({"mode": "crash"}), "FAILED", "SIGABRT"),
        (json!({"mode": "error"}), "FAILED", "demo failure requested"),
        (
            json!({"mode": "no-complete"}),
            "FAILED",
            "without reporting a result",
        ),
    ];
    let mut ids = Vec::new();
    for (p, _, _) in &cases {
        ids.push(submit(&http, &h.url, "chaos", p.clone()).await);
    }
    for ((p, stage, text), id) in cases.iter().zip(&ids) {
        let r = wait_terminal(&http, &h.url, "chaos", id, Duration::from_secs(60)).await;
        assert_eq!(r["status"], *stage, "{p}: {r}");
        let md: serde_json::Value = get_json(
            &http,
            &format!("{}/algorithm/v1/metadata/chaos/requests/{id}", h.url),
        )
        .await;
        let cause = format!(
            "{} {}",
            md["algorithm_failure_cause"], md["algorithm_failure_details"]
        );
        assert!(cause.contains(text), "{p}: cause {cause} lacks '{text}'");
        assert!(!r["runErrorMessage"].as_str().unwrap().is_empty());
    }
    // Retries: flaky succeeds on its third attempt.
    let id = submit(
        &http,
        &h.url,
        "chaos",
        json!({"mode": "flaky", "failUntilAttempt": 3}),
    )
    .await;
    let r = wait_terminal(&http, &h.url, "chaos", &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_kills_it() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let id = submit(
        &http,
        &h.url,
        "chaos",
        json!({"mode": "sleep", "seconds": 4}),
    )
    .await;
    let md_url = format!("{}/algorithm/v1/metadata/chaos/requests/{id}", h.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let md: serde_json::Value = get_json(&http, &md_url).await;
        if md["lifecycle_stage"] == "RUNNING" {
            break md["job_uid"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run never started: {md}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = http
        .post(format!("{}/algorithm/v1/cancel/chaos/requests/{id}", h.url))
        .json(&json!({"reason": "test", "initiator": "e2e"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = wait_terminal(&http, &h.url, "chaos", &id, Duration::from_secs(5)).await;
    assert_eq!(r["status"], "CANCELLED");
    assert_eq!(r["runErrorMessage"], "Cancelled by 'e2e'");
    eventually(Duration::from_secs(2), "process killed", || {
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
        async move { gone }
    })
    .await;
    // A second cancel of the finished run answers 200, as the reference does, says so and
    // changes nothing.
    let r = http
        .post(format!("{}/algorithm/v1/cancel/chaos/requests/{id}", h.url))
        .json(&json!({"reason": "again", "initiator": "someone-else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("had already finished as CANCELLED")
    );
    let r = wait_terminal(&http, &h.url, "chaos", &id, Duration::from_secs(5)).await;
    assert_eq!(r["runErrorMessage"], "Cancelled by 'e2e'");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_go_through_the_payload_store() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    // Over the 256 KiB inline limit: stored as an object, served through the signed payload URL.
    let params = json!({
        "capacity": 10,
        "items": [{"name": "a", "weight": 5, "value": 10}, {"name": "x".repeat(400 * 1024), "weight": 4, "value": 40}],
    });
    let id = submit(&http, &h.url, "knapsack", params).await;
    let md: serde_json::Value = get_json(
        &http,
        &format!("{}/algorithm/v1/metadata/knapsack/requests/{id}", h.url),
    )
    .await;
    assert!(md["payload_size"].as_u64().unwrap() > 400 * 1024);
    let r = wait_terminal(&http, &h.url, "knapsack", &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let result: serde_json::Value = get_json(&http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(result["totalValue"], 50, "{result}");
    assert!(
        data.path()
            .join(format!("objects/payloads/knapsack/{id}"))
            .exists()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_without_length_is_spooled_and_reaches_the_algorithm_intact() {
    use sha2::Digest as _;
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    // 3 MiB, sent chunked (no Content-Length): spooled to disk, split, validated, hashed and
    // streamed to the payload store; the algorithm reports the size and hash it received.
    let payload = format!(r#"{{"mode": "digest", "blob": "{}"}}"#, "y".repeat(3 << 20));
    let expected = sha2::Sha256::digest(payload.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let body = format!(r#"{{"tag": "big", "algorithmParameters": {payload}}}"#);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = http
        .post(format!("{}/algorithm/v1/run/chaos", h.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let md = get_json(
        &http,
        &format!("{}/algorithm/v1/metadata/chaos/requests/{id}", h.url),
    )
    .await;
    assert_eq!(
        md["payload_size"].as_u64(),
        Some(payload.len() as u64),
        "{md}"
    );
    assert_eq!(md["tag"], "big", "{md}");
    let r = wait_terminal(&http, &h.url, "chaos", &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let result = get_json(&http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(
        result["bytes"].as_u64(),
        Some(payload.len() as u64),
        "{result}"
    );
    assert_eq!(
        result["sha256"].as_str(),
        Some(expected.as_str()),
        "{result}"
    );
    // A malformed large payload is refused with a message naming the field.
    let bad = format!(
        r#"{{"algorithmParameters": {{"blob": "{}", "x": tru}}}}"#,
        "z".repeat(2 << 20)
    );
    let resp = http
        .post(format!("{}/algorithm/v1/run/chaos", h.url))
        .header("content-type", "application/json")
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let msg = resp.text().await.unwrap();
    assert!(msg.contains("algorithmParameters"), "{msg}");
    h.stop().await;
}

/// Clients that send a submission and close their connection at once (without reading the
/// answer) must not strand their runs: whatever became durable is queued and runs. A retry with
/// the same `Idempotency-Key` answers the same run, and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_clients_that_hang_up_are_not_stranded() {
    use tokio::io::AsyncWriteExt as _;
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let tag = format!("abort-{}", uuid::Uuid::new_v4().simple());
    let body = json!({
        "algorithmParameters": {"mode": "succeed"},
        "tag": tag,
    })
    .to_string();
    let n = 60;
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let req = format!(
            "POST /algorithm/v1/run/chaos HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             idempotency-key: abort-{tag}-{i}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Hang up without reading the answer (drop closes the socket).
        drop(s);
    }
    // Every run that was stored reaches a terminal stage; none waits BUFFERED for a restart.
    let tagged = format!("{}/algorithm/v1/results/tags/{tag}", h.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let runs: Vec<serde_json::Value> = get_json(&http, &tagged)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !runs.is_empty() && runs.iter().all(|r| r["status"] == "COMPLETED") {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runs of hung-up clients not all COMPLETED: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!stored.is_empty(), "some hung-up submissions were stored");
    // A retry of the last one (same key, same body) answers the run its first try stored, if it
    // was stored, and that run completes.
    let key = format!("abort-{tag}-{}", n - 1);
    let r = http
        .post(format!("{}/algorithm/v1/run/chaos", h.url))
        .header("idempotency-key", &key)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = wait_terminal(&http, &h.url, "chaos", &id, Duration::from_secs(30)).await;
    assert_eq!(again["status"], "COMPLETED", "{again}");
    h.stop().await;
}
