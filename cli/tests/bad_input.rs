//! The bad-input table: every malformed request gets its status and a message a person can act
//! on, nothing changes, and the process stays healthy.

mod common;

use std::time::Duration;

use common::*;
use nexus_core::run::RunId;
use nexus_core::sign::{Signer, now_secs};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let data = tempfile::tempdir().unwrap();
    let h =
        start_standalone_with(data.path(), |c| c.scheduler.max_request_bytes = 1024 * 1024).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let run_url = format!("{base}/algorithm/v1/run/knapsack");

    struct Case {
        name: &'static str,
        req: reqwest::RequestBuilder,
        status: u16,
        text: &'static str,
    }
    let json_post = |url: &str, body: &str| {
        http.post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let cases = vec![
        Case {
            name: "malformed json",
            req: json_post(&run_url, "{nope"),
            status: 400,
            text: "Algorithm payload is invalid",
        },
        Case {
            name: "wrong type",
            req: json_post(&run_url, r#"{"algorithmParameters": {}, "tag": 5}"#),
            status: 400,
            text: "invalid type",
        },
        Case {
            name: "missing parameters",
            req: json_post(&run_url, r#"{"tag": "t"}"#),
            status: 400,
            text: "algorithmParameters is required",
        },
        Case {
            name: "unknown algorithm",
            req: json_post(
                &format!("{base}/algorithm/v1/run/nope"),
                r#"{"algorithmParameters": {}}"#,
            ),
            status: 400,
            text: "No valid configuration found for: nope",
        },
        Case {
            name: "wrong content type",
            req: http
                .post(&run_url)
                .header("content-type", "text/plain")
                .body("{}"),
            status: 415,
            text: "expected Content-Type: application/json",
        },
        Case {
            name: "bad duration",
            req: json_post(
                &run_url,
                r#"{"algorithmParameters": {}, "payloadValidFor": "soon"}"#,
            ),
            status: 400,
            text: "'soon' is not a valid duration",
        },
        Case {
            name: "invalid workgroup name",
            req: json_post(
                &run_url,
                r#"{"algorithmParameters": {}, "customConfiguration": {"workgroupRef": {"name": "Bad_Name"}}}"#,
            ),
            status: 400,
            text: "customConfiguration.workgroupRef.name",
        },
        Case {
            name: "bad quantity",
            req: json_post(
                &run_url,
                r#"{"algorithmParameters": {}, "customConfiguration": {"computeResources": {"cpuLimit": "lots"}}}"#,
            ),
            status: 400,
            text: "'lots' is not a valid quantity",
        },
        Case {
            name: "non-overridable field",
            req: json_post(
                &run_url,
                r#"{"algorithmParameters": {}, "customConfiguration": {"command": "rm"}}"#,
            ),
            status: 400,
            text: "cannot be overridden per run",
        },
        Case {
            name: "unknown workgroup",
            req: json_post(
                &run_url,
                r#"{"algorithmParameters": {}, "customConfiguration": {"workgroupRef": {"name": "elsewhere"}}}"#,
            ),
            status: 400,
            text: "Cannot assign requested workgroup elsewhere",
        },
        Case {
            name: "unknown parent",
            req: json_post(
                &run_url,
                &format!(
                    r#"{{"algorithmParameters": {{}}, "parentRequest": {{"requestId": "{}", "algorithmName": "knapsack"}}}}"#,
                    RunId::new()
                ),
            ),
            status: 400,
            text: "parentRequest",
        },
        Case {
            name: "invalid request id",
            req: http.get(format!(
                "{base}/algorithm/v1/results/knapsack/requests/not-a-uuid"
            )),
            status: 400,
            text: "not a valid request id",
        },
        Case {
            name: "unknown run",
            req: http.get(format!(
                "{base}/algorithm/v1/results/knapsack/requests/{}",
                RunId::new()
            )),
            status: 404,
            text: "not found",
        },
        Case {
            name: "unknown run metadata",
            req: http.get(format!(
                "{base}/algorithm/v1/metadata/knapsack/requests/{}",
                RunId::new()
            )),
            status: 404,
            text: "not found",
        },
        Case {
            name: "unknown run buffer",
            req: http.get(format!(
                "{base}/algorithm/v1/buffer/knapsack/requests/{}",
                RunId::new()
            )),
            status: 404,
            text: "not found",
        },
        Case {
            name: "unknown run payload",
            req: http.get(format!(
                "{base}/algorithm/v1/payload/knapsack/requests/{}",
                RunId::new()
            )),
            status: 404,
            text: "not found",
        },
        Case {
            name: "unknown run cancel",
            req: json_post(
                &format!(
                    "{base}/algorithm/v1/cancel/knapsack/requests/{}",
                    RunId::new()
                ),
                "{}",
            ),
            status: 404,
            text: "not found",
        },
    ];
    for c in cases {
        let r = c.req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = r.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert!(
            ct.starts_with("text/plain"),
            "{}: content-type {ct}",
            c.name
        );
        assert!(
            body.contains(c.text),
            "{}: body '{body}' lacks '{}'",
            c.name,
            c.text
        );
    }

    // Oversize body: the client that sends all of it reads a 413 (the server reads and drops a
    // moderately oversized body before answering, instead of closing on a client still sending).
    {
        let big = format!(
            r#"{{"algorithmParameters": {{"blob": "{}"}}}}"#,
            "x".repeat(2 * 1024 * 1024)
        );
        for chunked in [false, true] {
            let req = http
                .post(&run_url)
                .header("content-type", "application/json");
            let req = if chunked {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
                    .as_bytes()
                    .chunks(64 * 1024)
                    .map(|c| Ok(c.to_vec()))
                    .collect();
                req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            } else {
                req.body(big.clone())
            };
            let r = req.send().await.expect("the 413 reaches the client");
            assert_eq!(r.status(), 413, "chunked: {chunked}");
            let b = r.text().await.unwrap();
            assert!(b.contains("scheduler.max_request_bytes"), "{b}");
        }
    }

    // Errors as problem+json when the client asks for JSON.
    let r = json_post(
        &format!("{base}/algorithm/v1/run/nope"),
        r#"{"algorithmParameters": {}}"#,
    )
    .header("accept", "application/json")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["status"], 400);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("No valid configuration found for: nope")
    );

    // Cancellation policy message matches the reference.
    let id = submit(
        &http,
        &base,
        "chaos",
        json!({"mode": "sleep", "seconds": 2}),
    )
    .await;
    let r = json_post(
        &format!("{base}/algorithm/v1/cancel/chaos/requests/{id}"),
        r#"{"cancellationPolicy": "Sideways"}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains(
        "invalid CancellationPolicy: 'Sideways', accepted values: Orphan, Foreground or Background"
    ));

    // Completion tokens.
    let key = std::fs::read(data.path().join("signing.key")).unwrap();
    let signer = Signer::new(&key);
    let other = Signer::new(b"another key, another key, 32 bytes!!");
    let dry: serde_json::Value = http
        .post(format!("{run_url}?dryRun=true"))
        .json(&json!({"algorithmParameters": {"capacity": 1, "items": []}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done_id: RunId = dry["requestId"].as_str().unwrap().parse().unwrap();
    let complete_url =
        |alg: &str, id: &RunId| format!("{base}/algorithm/v1/complete/{alg}/requests/{id}");
    let unknown = RunId::new();
    let token_cases = vec![
        (
            "missing token",
            None,
            done_id,
            r#"{"resultUri": "x"}"#,
            401,
            "missing run token",
        ),
        (
            "forged token",
            Some(other.run_token(done_id, now_secs() + 600)),
            done_id,
            r#"{"resultUri": "x"}"#,
            401,
            "run token refused",
        ),
        (
            "expired token",
            Some(signer.run_token(done_id, now_secs() - 5)),
            done_id,
            r#"{"resultUri": "x"}"#,
            401,
            "expired",
        ),
        (
            "token of another run",
            Some(signer.run_token(unknown, now_secs() + 600)),
            done_id,
            r#"{"resultUri": "x"}"#,
            401,
            "run token refused",
        ),
        (
            "garbage token",
            Some("v1.abc.def".to_owned()),
            done_id,
            r#"{"resultUri": "x"}"#,
            401,
            "run token refused",
        ),
        (
            "unknown run",
            Some(signer.run_token(unknown, now_secs() + 600)),
            unknown,
            r#"{"resultUri": "x"}"#,
            404,
            "not found",
        ),
        (
            "terminal run",
            Some(signer.run_token(done_id, now_secs() + 600)),
            done_id,
            r#"{"resultUri": "x"}"#,
            409,
            "already finished as COMPLETED",
        ),
        (
            "malformed result",
            Some(signer.run_token(done_id, now_secs() + 600)),
            done_id,
            r#"{"resultUri": 5}"#,
            400,
            "Submitted result is invalid",
        ),
    ];
    for (name, token, id, body, status, text) in token_cases {
        let mut req = http
            .post(complete_url("knapsack", &id))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let b = r.text().await.unwrap();
        assert_eq!(got, status, "{name}: {b}");
        assert!(b.contains(text), "{name}: '{b}' lacks '{text}'");
    }
    // Nothing changed on the finished run.
    let r = wait_terminal(
        &http,
        &base,
        "knapsack",
        &done_id.to_string(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r["status"], "COMPLETED");

    // Forged and expired URL signatures.
    let r = http
        .get(format!(
            "{base}/algorithm/v1/payload/knapsack/requests/{done_id}"
        ))
        .send()
        .await
        .unwrap();
    let signed = r.url().to_string();
    assert_eq!(
        r.status(),
        200,
        "the payload redirect is followed to the signed URL"
    );
    let forged = signed.replace(&done_id.to_string(), &RunId::new().to_string());
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    let path = format!("/data/v1/payloads/knapsack/{done_id}");
    let expired = format!(
        "{base}{path}?{}",
        signer.sign_url("GET", &path, now_secs() - 1)
    );
    let r = http.get(&expired).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("expired"));
    let unsigned = format!("{base}/data/v1/objects/results/knapsack/{done_id}");
    assert_eq!(
        http.put(&unsigned).body("x").send().await.unwrap().status(),
        403
    );

    // The OpenAPI document is served and describes every route.
    let doc: serde_json::Value = get_json(&http, &format!("{base}/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/algorithm/v1/run/{algorithmName}",
        "/algorithm/v1/results/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/results/tags/{requestTag}",
        "/algorithm/v1/metadata/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/metadata/tags/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/buffer/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/payload/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/cancel/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/children/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/complete/{algorithmName}/requests/{requestId}",
        "/data/v1/objects/{key}",
        "/data/v1/payloads/{algorithmName}/{requestId}",
        "/health/livez",
        "/health/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "openapi.json lacks {path}"
        );
    }

    // Still healthy.
    assert_eq!(
        http.get(format!("{base}/health/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/health/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("nexus_scheduler_requests_rejected_total"), "{m}");
    h.stop().await;
}

/// With `rate_limit` on, a client past its burst gets 429 with `Retry-After` (the server is
/// served with connect info, so the peer key works), and probes and metrics stay reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_client_gets_429() {
    let data = tempfile::tempdir().unwrap();
    // 1 per second, bursts of 2: the third request within a second is refused.
    let h = start_standalone_with(data.path(), |c| {
        c.rate_limit.enabled = true;
        c.rate_limit.per_second = 1;
        c.rate_limit.burst = 2;
    })
    .await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let url = format!(
        "{base}/algorithm/v1/results/knapsack/requests/{}",
        RunId::new()
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(http.get(&url).send().await.unwrap());
    }
    let statuses: Vec<u16> = got.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [404, 404, 429]);
    let r = got.pop().unwrap();
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1);
    let b = r.text().await.unwrap();
    assert!(b.contains("too many requests from this client"), "{b}");
    for path in ["/health/livez", "/health/readyz", "/metrics"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        if path == "/metrics" {
            let m = r.text().await.unwrap();
            assert!(
                m.contains(r#"nexus_scheduler_requests_rejected_total{reason="rate_limited"}"#),
                "{m}"
            );
        }
    }
    h.stop().await;
}
