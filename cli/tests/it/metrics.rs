//! `/metrics` as an operator scrapes it (issue #25): a freshly started `nexus standalone` process
//! (its own recorder, not the test process's) answers with every component's metrics already
//! present, HELP and TYPE included, latencies as histograms in seconds, the process's own
//! metrics, and after a run its HTTP requests by route template and its stage changes.

use std::time::Duration;

use serde_json::json;

use crate::common::{submit, wait_terminal};
use crate::kill9::{ready, spawn_nexus};

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample line starting with `series` (name and labels as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_there_from_the_start_and_count_what_happens() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut nexus = spawn_nexus(data.path(), port, None);
    ready(&http, &base).await;

    // Right after the start, before any run: every component's counters, at zero, with HELP.
    let m = scrape(&http, &base).await;
    for (name, kind) in [
        ("nexus_scheduler_runs_accepted_total", "counter"),
        ("nexus_scheduler_requests_rejected_total", "counter"),
        ("nexus_scheduler_dispatch_total", "counter"),
        ("nexus_receiver_completions_total", "counter"),
        ("nexus_receiver_submitted_total", "counter"),
        ("nexus_supervisor_passes_total", "counter"),
        ("nexus_supervisor_gc_runs_purged_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            m.contains(&format!("# HELP {name} ")),
            "HELP of {name}:\n{m}"
        );
        assert!(
            m.contains(&format!("# TYPE {name} {kind}")),
            "TYPE of {name}:\n{m}"
        );
    }
    assert_eq!(
        value(
            &m,
            "nexus_scheduler_runs_accepted_total{outcome=\"accepted\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert!(value(&m, "process_resident_memory_bytes").unwrap() > 1e6);

    // A run, a refused request and a few reads.
    let id = submit(
        &http,
        &base,
        "knapsack",
        json!({"capacity": 10, "items": [{"name": "a", "weight": 5, "value": 10}]}),
    )
    .await;
    let r = wait_terminal(&http, &base, "knapsack", &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let bad = http
        .post(format!("{base}/algorithm/v1/run/knapsack"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let m = scrape(&http, &base).await;
    // Latencies are histograms in seconds (buckets aggregate across replicas; quantiles do not).
    for name in [
        "nexus_scheduler_accept_seconds",
        "nexus_scheduler_time_in_queue_seconds",
        "nexus_scheduler_http_request_duration_seconds",
        "nexus_receiver_http_request_duration_seconds",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} histogram")),
            "{name}:\n{m}"
        );
        assert!(
            m.contains(&format!("{name}_bucket{{")),
            "{name} buckets:\n{m}"
        );
    }
    assert!(!m.contains("quantile="), "no summaries:\n{m}");
    assert!(!m.contains("microseconds"), "units are seconds:\n{m}");
    // HTTP requests by route template (never an id), method and status.
    let submits = "nexus_scheduler_http_requests_total{route=\"/algorithm/v1/run/{alg}\",method=\"POST\",status=";
    assert!(m.contains(&format!("{submits}\"202\"}}")), "{m}");
    assert!(m.contains(&format!("{submits}\"400\"}}")), "{m}");
    assert!(!m.contains(&id), "a run id is a label value:\n{m}");
    assert!(
        m.contains("nexus_receiver_http_requests_total{route=\"/run-token/{token}/algorithm/v1/complete/{alg}/requests/{id}\",method=\"POST\",status=\"202\"}"),
        "{m}"
    );
    // Stage changes, by the component that made them.
    assert!(m.contains("# HELP nexus_run_stage_changes_total "), "{m}");
    for series in [
        "nexus_run_stage_changes_total{from=\"BUFFERED\",to=\"RUNNING\",by=",
        "nexus_run_stage_changes_total{from=\"RUNNING\",to=\"COMPLETED\",by=\"receiver\"}",
    ] {
        assert!(value(&m, series).unwrap_or(0.0) >= 1.0, "{series}:\n{m}");
    }
    assert_eq!(
        value(
            &m,
            "nexus_scheduler_runs_accepted_total{outcome=\"accepted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "nexus_scheduler_requests_rejected_total{reason=\"invalid_body\"}"
        ),
        Some(1.0),
        "{m}"
    );
    nexus.kill().unwrap();
    nexus.wait().unwrap();
}
