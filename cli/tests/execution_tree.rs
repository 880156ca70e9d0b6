//! Execution trees through the HTTP v1 API (`parentRequest`) in standalone: depth and fan-out
//! limits with clear errors, and cancelling a run cancels every descendant with a cause naming
//! the cancelled ancestor.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn child(http: &reqwest::Client, base: &str, parent: Option<&str>) -> reqwest::Response {
    let mut body = json!({ "algorithmParameters": { "mode": "sleep", "seconds": 30 } });
    if let Some(p) = parent {
        body["parentRequest"] = json!({ "requestId": p, "algorithmName": "chaos" });
    }
    http.post(format!("{base}/algorithm/v1/run/chaos"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn created(http: &reqwest::Client, base: &str, parent: Option<&str>) -> String {
    let r = child(http, base, parent).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.json::<serde_json::Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_cascading_cancel() {
    let data = tempfile::tempdir().unwrap();
    let mut c = nexus_cli::config::StandaloneConfig {
        data_dir: data.path().to_path_buf(),
        templates_dir: templates(),
        ..Default::default()
    };
    c.executor.extra_path = vec![demo_dir()];
    c.scheduler.max_tree_depth = 2;
    c.scheduler.max_children_per_run = 3;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = nexus_cli::standalone::start(c, l).await.unwrap();
    let base = h.url.clone();
    let http = reqwest::Client::new();

    // root → 3 children → one grandchild each (depth 2, the limit).
    let root = created(&http, &base, None).await;
    let mut children = Vec::new();
    let mut grandchildren = Vec::new();
    for _ in 0..3 {
        let c = created(&http, &base, Some(&root)).await;
        grandchildren.push(created(&http, &base, Some(&c)).await);
        children.push(c);
    }
    // A fourth child, and a great-grandchild, are refused with the limit named.
    let r = child(&http, &base, Some(&root)).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("already has 3 children"), "{text}");
    assert!(text.contains("scheduler.max_children_per_run"), "{text}");
    let r = child(&http, &base, Some(&grandchildren[0])).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("depth 3"), "{text}");
    assert!(text.contains("scheduler.max_tree_depth"), "{text}");

    // Cancelling the root cancels all six descendants; each says which ancestor.
    let r = http
        .post(format!("{base}/algorithm/v1/cancel/chaos/requests/{root}"))
        .json(&json!({ "initiator": "tree-test", "reason": "enough" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for id in children.iter().chain(&grandchildren) {
        let r = wait_terminal(&http, &base, "chaos", id, Duration::from_secs(20)).await;
        assert_eq!(r["status"], "CANCELLED", "{id}: {r}");
        let meta = get_json(
            &http,
            &format!("{base}/algorithm/v1/metadata/chaos/requests/{id}"),
        )
        .await;
        let details = meta.to_string();
        assert!(
            details.contains("Cancelled with its ancestor") && details.contains(&root),
            "{id}: {meta}"
        );
    }
    // A cancelled run takes no new children.
    let r = child(&http, &base, Some(&children[0])).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("was cancelled"));
    h.stop().await;
}
