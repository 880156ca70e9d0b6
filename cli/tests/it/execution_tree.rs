//! Execution trees through the HTTP v1 API (`parentRequest`) in standalone: depth and fan-out
//! limits with clear errors, and cancelling a run cancels every descendant with a cause naming
//! the cancelled ancestor.

use std::time::Duration;

use crate::common::*;
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
    let h = start_standalone_with(data.path(), |c| {
        c.scheduler.max_tree_depth = 2;
        c.scheduler.max_children_per_run = 3;
    })
    .await;
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

/// The fan-out demo solves a problem over a three-level tree (root → 2 children → 4
/// grandchildren), each level created, awaited and read with the SDK over gRPC; the combined
/// answer is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_level_fanout_tree_completes_with_the_combined_answer() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let numbers: Vec<i64> = (1..=40).collect();
    let root = submit(
        &http,
        &h.url,
        "fanout",
        json!({ "numbers": numbers, "leaf": 10 }),
    )
    .await;
    let r = wait_terminal(&http, &h.url, "fanout", &root, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let result = get_json(&http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(
        result,
        json!({ "sumOfSquares": 22140, "runs": 7, "depth": 2 }),
        "1² + … + 40² over 7 runs"
    );
    // The tree is in the store: 2 children, 2 grandchildren each, all COMPLETED.
    let kids = get_json(
        &http,
        &format!("{}/algorithm/v1/children/fanout/requests/{root}", h.url),
    )
    .await;
    let kids = kids.as_array().unwrap();
    assert_eq!(kids.len(), 2, "{kids:?}");
    h.stop().await;
}

/// A run acts as itself only: its children are its own (the parent is never taken from the
/// request), it cannot cancel a run outside its subtree, and another run's token does not work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cannot_act_as_another_run() {
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let http = reqwest::Client::new();
    let a = created(&http, &h.url, None).await;
    let b = created(&http, &h.url, None).await;
    let key = std::fs::read(data.path().join("signing.key")).unwrap();
    let signer = nexus_model::sign::Signer::new(&key);
    let exp = nexus_model::sign::now_secs() + 600;
    let token = |id: &str| signer.run_token(id.parse().unwrap(), exp);
    let as_run = |id: &str, token: String| {
        let url = h.url.clone();
        let id = id.to_owned();
        async move {
            nexus_sdk::Nexus::connect(
                &url,
                Some(nexus_sdk::RunIdentity {
                    request_id: id,
                    token,
                }),
            )
            .await
            .unwrap()
            .with_retry_for(Duration::from_secs(2))
        }
    };
    let sdk_a = as_run(&a, token(&a)).await;
    let child = sdk_a
        .create("chaos", &json!({ "mode": "sleep", "seconds": 30 }))
        .await
        .unwrap();
    let st = sdk_a.get(&child).await.unwrap();
    assert_eq!(st.parent_request_id, a, "the caller is the parent");
    assert_eq!(st.depth, 1);
    let b_ref = nexus_sdk::RunRef {
        request_id: b.clone(),
        algorithm: "chaos".into(),
    };
    let err = sdk_a.cancel(&b_ref, "not mine").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    // A's id with B's token: refused.
    let forged = as_run(&a, token(&b)).await;
    let err = forged.get(&b_ref).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    // Its own subtree: fine, and the child's descendants go with it.
    assert_eq!(sdk_a.cancel(&child, "done").await.unwrap(), 0);
    let r = wait_terminal(
        &http,
        &h.url,
        "chaos",
        &child.request_id,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r["status"], "CANCELLED");
    // B is untouched.
    let r = get_json(
        &http,
        &format!("{}/algorithm/v1/results/chaos/requests/{b}", h.url),
    )
    .await;
    assert_ne!(r["status"], "CANCELLED");
    h.stop().await;
}
