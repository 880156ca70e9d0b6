//! Fan-out and external runs (issue #23) against an in-process standalone: the batch submit
//! (all or none, ids in order, idempotent, child batches), the Rust SDK's `map`, and external
//! runs (registered, reported, uploaded, never executed by Nexus).

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{eventually, get_json, start_standalone, start_standalone_with, wait_terminal};

async fn batch(
    http: &reqwest::Client,
    base: &str,
    alg: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = http
        .post(format!("{base}/algorithm/v1/batch/{alg}"))
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ids(v: &Value) -> Vec<String> {
    v["requestIds"]
        .as_array()
        .unwrap_or_else(|| panic!("no requestIds in {v}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect()
}

async fn tagged(http: &reqwest::Client, base: &str, tag: &str) -> Vec<Value> {
    get_json(http, &format!("{base}/algorithm/v1/results/tags/{tag}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// A batch is stored whole, each run with its own id in request order, each executed; one bad
/// entry (or an over-long batch) stores nothing; a repeated key returns the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing_in_order_and_idempotent() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone_with(data.path(), |c| {
        c.scheduler.max_batch_runs = 5;
    })
    .await;
    let http = reqwest::Client::new();
    let runs: Vec<Value> = (1..=4)
        .map(|n| json!({ "algorithmParameters": { "numbers": [n], "leaf": 10 } }))
        .collect();
    let body = json!({ "runs": runs, "tag": "fan-1" });
    let (status, v) = batch(&http, &h.url, "fanout", &body, Some("k-1")).await;
    assert_eq!(status, 202, "{v}");
    let first = ids(&v);
    assert_eq!(first.len(), 4);
    for (n, id) in first.iter().enumerate() {
        let r = wait_terminal(&http, &h.url, "fanout", id, Duration::from_secs(60)).await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
        let result = get_json(&http, r["resultUri"].as_str().unwrap()).await;
        let n = i64::try_from(n).unwrap() + 1;
        assert_eq!(result["sumOfSquares"], n * n, "run {id} is entry {n}");
    }
    assert_eq!(tagged(&http, &h.url, "fan-1").await.len(), 4);
    // The same key: the same ids, nothing new.
    let (status, v) = batch(&http, &h.url, "fanout", &body, Some("k-1")).await;
    assert_eq!((status, ids(&v)), (202, first.clone()));
    assert_eq!(tagged(&http, &h.url, "fan-1").await.len(), 4);
    // The same key for another batch: 422.
    let other = json!({ "runs": [{ "algorithmParameters": { "numbers": [9] } }], "tag": "fan-1" });
    let (status, v) = batch(&http, &h.url, "fanout", &other, Some("k-1")).await;
    assert_eq!(status, 422, "{v}");

    // One bad entry: 400 naming it, and no run of the batch exists.
    let bad = json!({ "runs": [
        { "algorithmParameters": { "numbers": [1] } },
        { "algorithmParameters": [1, 2] },
    ], "tag": "fan-2" });
    let (status, v) = batch(&http, &h.url, "fanout", &bad, None).await;
    assert_eq!(status, 400);
    assert!(
        v.as_str()
            .unwrap()
            .contains("runs[1].algorithmParameters must be a JSON object"),
        "{v}"
    );
    let long_tag = json!({ "runs": [
        { "algorithmParameters": {} },
        { "algorithmParameters": {}, "tag": "x".repeat(300) },
    ], "tag": "fan-2" });
    let (status, v) = batch(&http, &h.url, "fanout", &long_tag, None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.as_str().unwrap().starts_with("runs[1].tag: "), "{v}");
    let six: Vec<Value> = (0..6)
        .map(|_| json!({ "algorithmParameters": {} }))
        .collect();
    let (status, v) = batch(
        &http,
        &h.url,
        "fanout",
        &json!({ "runs": six, "tag": "fan-2" }),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v.as_str().unwrap().contains("scheduler.max_batch_runs"),
        "{v}"
    );
    for empty in [json!({ "runs": [] }), json!({ "tag": "x" })] {
        let (status, _) = batch(&http, &h.url, "fanout", &empty, None).await;
        assert_eq!(status, 400, "{empty}");
    }
    let (status, _) = batch(&http, &h.url, "nope", &body, None).await;
    assert_eq!(status, 400);
    assert!(tagged(&http, &h.url, "fan-2").await.is_empty());
    h.stop().await;
}

/// A batch under a parent makes children of it (fan-out in an execution tree), counted against
/// the parent's fan-out limit as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_children_respects_the_fan_out_limit() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone_with(data.path(), |c| {
        c.scheduler.max_children_per_run = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let parent = crate::common::submit(
        &http,
        &h.url,
        "chaos",
        json!({ "mode": "sleep", "seconds": 30 }),
    )
    .await;
    let kids = |n: usize| {
        json!({
            "runs": (0..n).map(|i| json!({ "algorithmParameters": { "numbers": [i], "leaf": 10 } })).collect::<Vec<_>>(),
            "parentRequest": { "requestId": parent, "algorithmName": "chaos" },
        })
    };
    let (status, v) = batch(&http, &h.url, "fanout", &kids(4), None).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v.as_str()
            .unwrap()
            .contains("scheduler.max_children_per_run"),
        "{v}"
    );
    let (status, v) = batch(&http, &h.url, "fanout", &kids(3), None).await;
    assert_eq!(status, 202, "{v}");
    let children = get_json(
        &http,
        &format!("{}/algorithm/v1/children/chaos/requests/{parent}", h.url),
    )
    .await;
    let mut listed: Vec<String> = children
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["requestId"].as_str().unwrap().to_owned())
        .collect();
    let mut created = ids(&v);
    listed.sort();
    created.sort();
    assert_eq!(listed, created);
    h.stop().await;
}

/// The Rust SDK's `map`: one run per parameter set, created in batches (here of 7), awaited
/// with bounded concurrency, results in order; a failed entry is reported with its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_maps_in_order() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let sdk = nexus_sdk::Nexus::connect(&h.url, None).await.unwrap();
    let params: Vec<Value> = (0..20)
        .map(|n| json!({ "numbers": [n, 1], "leaf": 10 }))
        .collect();
    let opts = nexus_sdk::MapOptions {
        chunk: 7,
        concurrency: 3,
        tag: "rust-map".into(),
    };
    let results = sdk.map_with("fanout", &params, &opts).await.unwrap();
    let sums: Vec<i64> = results
        .iter()
        .map(|r| r["sumOfSquares"].as_i64().unwrap())
        .collect();
    assert_eq!(sums, (0..20).map(|n| n * n + 1).collect::<Vec<i64>>());
    let http = reqwest::Client::new();
    assert_eq!(tagged(&http, &h.url, "rust-map").await.len(), 20);
    let err = sdk
        .map(
            "fanout",
            &[json!({ "numbers": [1] }), json!({ "numbers": "x" })],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("entry 1"), "{err}");
    let err = sdk
        .map("fanout", &[json!({ "numbers": [1] }), json!([1])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("parameters_json[1]"), "{err}");
    h.stop().await;
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, String) {
    let r = http.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// External runs: registered CREATED, they are never launched, queued again or recovered (the
/// stranded-run pass and recovery run many times meanwhile); stage reports move them along the
/// legal path only; the upload URL takes the result; they read like any run, marked external.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_runs_are_recorded_never_executed_and_reported_legally() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone_with(data.path(), |c| {
        c.scheduler.requeue_interval = Duration::from_millis(100);
        c.supervisor.recovery_interval = Duration::from_millis(100);
    })
    .await;
    let http = reqwest::Client::new();
    let base = format!("{}/algorithm/v1/external", h.url);
    let (status, text) = post(
        &http,
        &format!("{base}/fanout"),
        &json!({ "algorithmParameters": { "numbers": [3] }, "stage": "CREATED", "engine": "spark", "tag": "ext-1" }),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let meta_url = format!("{}/algorithm/v1/metadata/fanout/requests/{id}", h.url);
    // Well past the stranded-run age (2 s) and many recovery passes: still untouched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = get_json(&http, &meta_url).await;
    assert_eq!(m["lifecycle_stage"], "BUFFERED", "{m}");
    assert_eq!(m["attempts"], 0, "{m}");
    assert_eq!(m["external"], true, "{m}");
    assert_eq!(m["job_uid"], "external:spark", "{m}");
    assert!(m.get("owner").is_none(), "{m}");
    // Illegal move, then the legal path.
    let stage = format!("{base}/fanout/requests/{id}/stage");
    let (status, text) = post(&http, &stage, &json!({ "stage": "COMPLETED" })).await;
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("is CREATED; it cannot move to COMPLETED"),
        "{text}"
    );
    let (status, text) = post(&http, &stage, &json!({ "stage": "RUNNING" })).await;
    assert_eq!(
        (status, text.contains("now RUNNING")),
        (200, true),
        "{text}"
    );
    let (status, _) = post(&http, &stage, &json!({ "stage": "RUNNING" })).await;
    assert_eq!(status, 200, "a repeated report is a no-op");
    let (status, text) = post(&http, &stage, &json!({ "stage": "FAILED" })).await;
    assert_eq!(status, 400, "{text}");
    // The result through the upload URL.
    let r = http
        .post(format!("{base}/fanout/requests/{id}/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["method"], "PUT");
    let put = http
        .put(up["resultUploadUrl"].as_str().unwrap())
        .body(r#"{"sumOfSquares": 9}"#)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let (status, text) = post(&http, &stage, &json!({ "stage": "COMPLETED" })).await;
    assert_eq!(status, 200, "{text}");
    let r = wait_terminal(&http, &h.url, "fanout", &id, Duration::from_secs(5)).await;
    assert_eq!(r["status"], "COMPLETED");
    let result = get_json(&http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(result, json!({ "sumOfSquares": 9 }));
    // Finished: no more reports, no more uploads.
    let (status, _) = post(
        &http,
        &stage,
        &json!({ "stage": "FAILED", "errorCause": "x" }),
    )
    .await;
    assert_eq!(status, 409);
    let r = http
        .post(format!("{base}/fanout/requests/{id}/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Listed, tagged, in the timeline.
    let page = get_json(&http, &format!("{}/algorithm/v1/runs?tag=ext-1", h.url)).await;
    assert_eq!(page["runs"][0]["external"], true, "{page}");
    assert_eq!(tagged(&http, &h.url, "ext-1").await.len(), 1);
    let t = get_json(
        &http,
        &format!("{}/algorithm/v1/timeline/fanout/requests/{id}", h.url),
    )
    .await;
    let by: Vec<&str> = t["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["by"].as_str().unwrap())
        .collect();
    assert!(by.iter().all(|b| b.starts_with("external")), "{t}");
    // A run Nexus executes takes no report.
    let ordinary = crate::common::submit(&http, &h.url, "fanout", json!({ "numbers": [1] })).await;
    let (status, text) = post(
        &http,
        &format!("{base}/fanout/requests/{ordinary}/stage"),
        &json!({ "stage": "RUNNING" }),
    )
    .await;
    assert_eq!(status, 409, "{text}");
    eventually(
        Duration::from_secs(30),
        "the ordinary run completes",
        || {
            let http = http.clone();
            let url = format!("{}/algorithm/v1/results/fanout/requests/{ordinary}", h.url);
            async move { get_json(&http, &url).await["status"] == "COMPLETED" }
        },
    )
    .await;
    h.stop().await;
}

/// Registration validates what it is told and who may tell it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_registrations_are_validated() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/algorithm/v1/external/fanout", h.url);
    let p = json!({ "numbers": [1] });
    for (body, want) in [
        (
            json!({ "stage": "COMPLETED" }),
            "algorithmParameters is required",
        ),
        (
            json!({ "algorithmParameters": [1], "stage": "COMPLETED" }),
            "must be a JSON object",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "QUEUED" }),
            "not one of CREATED",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "FAILED" }),
            "errorCause: required",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "errorCause": "x" }),
            "only a FAILED run",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "RUNNING", "result": 1 }),
            "only a COMPLETED run has a result",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "receivedAt": "yesterday" }),
            "receivedAt: 'yesterday' is not an RFC 3339 time",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "receivedAt": "2026-01-02T00:00:00Z", "startedAt": "2026-01-01T00:00:00Z" }),
            "startedAt: earlier than receivedAt",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "finishedAt": "2999-01-01T00:00:00Z" }),
            "finishedAt: in the future",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "engine": "" }),
            "engine: 1 to 64",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "unknown": 1 }),
            "unknown field",
        ),
        (
            json!({ "algorithmParameters": p, "stage": "COMPLETED", "tag": "a\nb" }),
            "tag: must not contain control characters",
        ),
    ] {
        let (status, text) = post(&http, &url, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let (status, _) = post(
        &http,
        &format!("{}/algorithm/v1/external/nope", h.url),
        &json!({ "algorithmParameters": p, "stage": "COMPLETED" }),
    )
    .await;
    assert_eq!(status, 400);
    // A COMPLETED registration with its times and an inline result.
    let (status, text) = post(
        &http,
        &url,
        &json!({ "algorithmParameters": p, "stage": "COMPLETED", "result": { "sumOfSquares": 1 },
                 "receivedAt": "2026-01-01T00:00:00Z", "startedAt": "2026-01-01T00:01:00Z",
                 "finishedAt": "2026-01-01T00:02:00Z" }),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = get_json(
        &http,
        &format!("{}/algorithm/v1/metadata/fanout/requests/{id}", h.url),
    )
    .await;
    assert_eq!(m["received_at"], "2026-01-01T00:00:00.000Z", "{m}");
    assert_eq!(m["started_at"], "2026-01-01T00:01:00.000Z", "{m}");
    assert_eq!(m["finished_at"], "2026-01-01T00:02:00.000Z", "{m}");
    let r = wait_terminal(&http, &h.url, "fanout", &id, Duration::from_secs(5)).await;
    assert_eq!(
        get_json(&http, r["resultUri"].as_str().unwrap()).await,
        json!({ "sumOfSquares": 1 })
    );
    h.stop().await;
}
