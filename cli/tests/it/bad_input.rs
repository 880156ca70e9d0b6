//! The bad-input table: every malformed request gets its status and a message a person can act
//! on, nothing changes, and the process stays healthy.

use std::time::Duration;

use crate::common::*;
use nexus_model::run::RunId;
use nexus_model::sign::{Signer, now_secs};
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
        "/algorithm/v1/batch/{algorithmName}",
        "/algorithm/v1/external/{algorithmName}",
        "/algorithm/v1/external/{algorithmName}/requests/{requestId}/stage",
        "/algorithm/v1/external/{algorithmName}/requests/{requestId}/upload",
        "/algorithm/v1/results/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/results/tags/{requestTag}",
        "/algorithm/v1/metadata/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/metadata/tags/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/buffer/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/payload/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/cancel/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/children/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/runs",
        "/algorithm/v1/timeline/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/explain/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/logs/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/algorithms",
        "/algorithm/v1/shards",
        "/console/",
        "/algorithm/v1/complete/{algorithmName}/requests/{requestId}",
        "/algorithm/v1/progress/{algorithmName}/requests/{requestId}",
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
    // Every metric family says what it counts.
    assert!(
        m.contains("# HELP nexus_scheduler_requests_rejected_total Submissions refused"),
        "{m}"
    );
    for family in m.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap_or_default();
        assert!(
            m.contains(&format!("# HELP {name} ")),
            "metric {name} has no HELP text:\n{m}"
        );
    }
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

/// One row of the route table: a request, the status it must get and a phrase its message must
/// hold.
struct Row {
    name: String,
    method: reqwest::Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    status: u16,
    text: &'static str,
}

fn row(
    name: impl Into<String>,
    method: &str,
    path: impl Into<String>,
    status: u16,
    text: &'static str,
) -> Row {
    Row {
        name: name.into(),
        method: method.parse().unwrap(),
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status,
        text,
    }
}

impl Row {
    fn json(mut self, body: impl Into<String>) -> Self {
        self.headers
            .push(("content-type", b"application/json".to_vec()));
        self.body = Some(body.into().into_bytes());
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// The bad-input table over every route: each malformed request gets its 4xx with a message a
/// person can act on (as text/plain), and the server stays healthy after each, with no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table_over_every_route() {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let data = tempfile::tempdir().unwrap();
    let h = start_standalone(data.path()).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    // A finished run (dry run) and a run that waits (to cancel, to hang children on).
    let done: serde_json::Value = http
        .post(format!("{base}/algorithm/v1/run/knapsack?dryRun=true"))
        .json(&json!({"algorithmParameters": {"capacity": 1, "items": []}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done = done["requestId"].as_str().unwrap().to_owned();
    let unknown = RunId::new().to_string();
    // One accepted submission under an idempotency key, reused below with another body.
    let r = http
        .post(format!("{base}/algorithm/v1/run/knapsack?dryRun=true"))
        .header("idempotency-key", "table-key")
        .json(&json!({"algorithmParameters": {"capacity": 1, "items": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let run = "/algorithm/v1/run/knapsack";
    let obj = |params: &str| format!(r#"{{"algorithmParameters": {params}}}"#);
    let with = |extra: &str| format!(r#"{{"algorithmParameters": {{}}, {extra}}}"#);
    let mut rows = Vec::new();
    // Submission: the body.
    for (what, params, text) in [
        ("number", "5", "must be a JSON object, got a number"),
        ("float", "1.5", "must be a JSON object, got a number"),
        (
            "string",
            r#""hello""#,
            "must be a JSON object, got a string",
        ),
        ("boolean", "true", "must be a JSON object, got a boolean"),
        ("array", "[1, 2]", "must be a JSON object, got an array"),
        ("null", "null", "algorithmParameters is required"),
        ("negative", "-3", "must be a JSON object, got a number"),
    ] {
        rows.push(
            row(
                format!("algorithmParameters {what}"),
                "POST",
                run,
                400,
                text,
            )
            .json(obj(params)),
        );
    }
    for (what, body, status, text) in [
        ("malformed", "{nope", 400, "Algorithm payload is invalid"),
        ("empty object", "{}", 400, "algorithmParameters is required"),
        ("array body", "[]", 400, "Algorithm payload is invalid"),
        ("empty body", "", 400, "Algorithm payload is invalid"),
        ("string body", r#""x""#, 400, "Algorithm payload is invalid"),
        (
            "truncated",
            r#"{"algorithmParameters": {"a": 1}"#,
            400,
            "Algorithm payload is invalid",
        ),
        (
            "trailing garbage",
            r#"{"algorithmParameters": {}} x"#,
            400,
            "Algorithm payload is invalid",
        ),
        ("tag number", &with(r#""tag": 5"#), 400, "invalid type"),
        (
            "tag too long",
            &with(&format!(r#""tag": "{}""#, "é".repeat(257))),
            400,
            "257 characters",
        ),
        (
            "tag newline",
            &with(r#""tag": "a\nb""#),
            400,
            "control characters",
        ),
        (
            "tag tab",
            &with(r#""tag": "a\tb""#),
            400,
            "control characters",
        ),
        (
            "api version object",
            &with(r#""requestApiVersion": {}"#),
            400,
            "invalid type",
        ),
        (
            "overrides number",
            &with(r#""customConfiguration": 5"#),
            400,
            "Algorithm payload is invalid",
        ),
        (
            "overrides command",
            &with(r#""customConfiguration": {"command": "rm"}"#),
            400,
            "cannot be overridden per run",
        ),
        (
            "overrides bad cpu",
            &with(r#""customConfiguration": {"computeResources": {"cpuLimit": "lots"}}"#),
            400,
            "'lots' is not a valid quantity",
        ),
        (
            "overrides bad workgroup",
            &with(r#""customConfiguration": {"workgroupRef": {"name": "Bad_Name"}}"#),
            400,
            "workgroupRef.name",
        ),
        (
            "overrides unknown workgroup",
            &with(r#""customConfiguration": {"workgroupRef": {"name": "elsewhere"}}"#),
            400,
            "Cannot assign requested workgroup",
        ),
        (
            "retries over the limit",
            &with(r#""customConfiguration": {"runtimeEnvironment": {"maximumRetries": 101}}"#),
            400,
            "scheduler.max_retries",
        ),
        (
            "retries u32::MAX",
            &with(
                r#""customConfiguration": {"runtimeEnvironment": {"maximumRetries": 4294967295}}"#,
            ),
            400,
            "scheduler.max_retries",
        ),
        (
            "retries negative",
            &with(r#""customConfiguration": {"runtimeEnvironment": {"maximumRetries": -1}}"#),
            400,
            "Algorithm payload is invalid",
        ),
        (
            "deadline u32::MAX",
            &with(
                r#""customConfiguration": {"runtimeEnvironment": {"deadlineSeconds": 4294967295}}"#,
            ),
            400,
            "scheduler.max_deadline",
        ),
        (
            "deadline 8 days",
            &with(r#""customConfiguration": {"runtimeEnvironment": {"deadlineSeconds": 691200}}"#),
            400,
            "scheduler.max_deadline",
        ),
        (
            "payloadValidFor huge",
            &with(r#""payloadValidFor": "1000000h""#),
            400,
            "scheduler.max_payload_valid_for",
        ),
        (
            "payloadValidFor 31d",
            &with(r#""payloadValidFor": "31days""#),
            400,
            "scheduler.max_payload_valid_for",
        ),
        (
            "payloadValidFor zero",
            &with(r#""payloadValidFor": "0s""#),
            400,
            "longer than zero",
        ),
        (
            "payloadValidFor words",
            &with(r#""payloadValidFor": "soon""#),
            400,
            "is not a valid duration",
        ),
        (
            "payloadValidFor negative",
            &with(r#""payloadValidFor": "-5h""#),
            400,
            "is not a valid duration",
        ),
        (
            "payloadValidFor number",
            &with(r#""payloadValidFor": 5"#),
            400,
            "invalid type",
        ),
        (
            "parent without id",
            &with(r#""parentRequest": {"algorithmName": "knapsack"}"#),
            400,
            "requestId",
        ),
        (
            "parent bad id",
            &with(r#""parentRequest": {"requestId": "x", "algorithmName": "knapsack"}"#),
            400,
            "not a valid request id",
        ),
        (
            "parent unknown",
            &with(&format!(
                r#""parentRequest": {{"requestId": "{unknown}", "algorithmName": "knapsack"}}"#
            )),
            400,
            "parentRequest",
        ),
        (
            "parent finished",
            &with(&format!(
                r#""parentRequest": {{"requestId": "{done}", "algorithmName": "knapsack"}}"#
            )),
            409,
            "already finished",
        ),
        (
            "parent of another algorithm",
            &with(&format!(
                r#""parentRequest": {{"requestId": "{done}", "algorithmName": "chaos"}}"#
            )),
            400,
            "not found",
        ),
    ] {
        rows.push(row(format!("submit: {what}"), "POST", run, status, text).json(body));
    }
    // Nesting, on the in-memory path and on the spooled path (no length: spooled).
    // (600,000 levels are over 1 MiB: that body is spooled to disk and split there.)
    for n in [129, 1_000, 100_000, 600_000] {
        let deep = obj(&format!("{}1{}", "[".repeat(n), "]".repeat(n)));
        rows.push(
            row(
                format!("nested {n} deep"),
                "POST",
                run,
                400,
                "scheduler.max_json_depth",
            )
            .json(deep.clone()),
        );
    }
    rows.push(
        row(
            "nested object 200 deep",
            "POST",
            run,
            400,
            "scheduler.max_json_depth",
        )
        .json(obj(&format!(
            "{}1{}",
            r#"{"a":"#.repeat(200),
            "}".repeat(200)
        ))),
    );
    for q in [
        "maybe",
        "1",
        "0",
        "TRUE",
        "True",
        "%ZZ",
        "",
        "yes",
        "true%00",
        "false&dryRun=true",
    ] {
        rows.push(
            row(
                format!("dryRun={q}"),
                "POST",
                format!("{run}?dryRun={q}"),
                400,
                "dryRun",
            )
            .json(obj("{}")),
        );
    }
    for (what, key) in [
        ("non-ASCII", "ключ".as_bytes().to_vec()),
        ("latin-1 byte", vec![b'k', 0xe9, b'y']),
        ("too long", vec![b'k'; 257]),
        ("inner space", b"two words".to_vec()),
        ("empty", Vec::new()),
    ] {
        rows.push(
            row(
                format!("Idempotency-Key {what}"),
                "POST",
                run,
                400,
                "Idempotency-Key",
            )
            .json(obj("{}"))
            .header("idempotency-key", key),
        );
    }
    rows.push(
        row(
            "Idempotency-Key reused with another body",
            "POST",
            format!("{run}?dryRun=true"),
            422,
            "was already used for run",
        )
        .json(obj(r#"{"capacity": 2, "items": []}"#))
        .header("idempotency-key", "table-key"),
    );
    rows.push(
        row(
            "no content type",
            "POST",
            run,
            415,
            "expected Content-Type: application/json",
        )
        .raw(obj("{}")),
    );
    rows.push(
        row(
            "text content type",
            "POST",
            run,
            415,
            "expected Content-Type: application/json",
        )
        .raw(obj("{}"))
        .header("content-type", "text/plain"),
    );
    rows.push(
        row(
            "form content type",
            "POST",
            run,
            415,
            "expected Content-Type: application/json",
        )
        .raw("a=b")
        .header("content-type", "application/x-www-form-urlencoded"),
    );
    rows.push(
        row(
            "unknown algorithm",
            "POST",
            "/algorithm/v1/run/nope",
            400,
            "No valid configuration found for: nope",
        )
        .json(obj("{}")),
    );
    rows.push(
        row(
            "algorithm with dots",
            "POST",
            "/algorithm/v1/run/..%2F..%2Fetc",
            400,
            "No valid configuration found",
        )
        .json(obj("{}")),
    );
    // Per-run routes: a malformed id is 400, an unknown run 404, a run under another algorithm 404.
    for (route, method) in [
        ("results", "GET"),
        ("metadata", "GET"),
        ("buffer", "GET"),
        ("payload", "GET"),
        ("children", "GET"),
        ("cancel", "POST"),
        ("metadata/tags", "POST"),
    ] {
        // A tag update carries its tag; a cancel may have no body.
        let body = |r: Row| {
            if route == "metadata/tags" {
                r.raw("t")
            } else {
                r
            }
        };
        rows.push(body(row(
            format!("{route}: malformed id"),
            method,
            format!("/algorithm/v1/{route}/knapsack/requests/not-a-uuid"),
            400,
            "is not a valid request id",
        )));
        rows.push(body(row(
            format!("{route}: unknown run"),
            method,
            format!("/algorithm/v1/{route}/knapsack/requests/{unknown}"),
            404,
            "not found",
        )));
        rows.push(body(row(
            format!("{route}: another algorithm"),
            method,
            format!("/algorithm/v1/{route}/chaos/requests/{done}"),
            404,
            "not found",
        )));
    }
    // Tags.
    rows.push(row(
        "tag lookup of 10,000 characters",
        "GET",
        format!("/algorithm/v1/results/tags/{}", "t".repeat(10_000)),
        400,
        "at most 256 characters",
    ));
    rows.push(row(
        "tag lookup with a newline",
        "GET",
        "/algorithm/v1/results/tags/a%0Ab",
        400,
        "control characters",
    ));
    rows.push(
        row(
            "tag update too long",
            "POST",
            format!("/algorithm/v1/metadata/tags/knapsack/requests/{done}"),
            400,
            "at most 256 characters",
        )
        .raw("é".repeat(300)),
    );
    rows.push(
        row(
            "tag update not UTF-8",
            "POST",
            format!("/algorithm/v1/metadata/tags/knapsack/requests/{done}"),
            400,
            "UTF-8",
        )
        .raw(vec![0xff, 0xfe]),
    );
    rows.push(
        row(
            "tag update control character",
            "POST",
            format!("/algorithm/v1/metadata/tags/knapsack/requests/{done}"),
            400,
            "control characters",
        )
        .raw("a\u{7}b"),
    );
    // Cancel bodies.
    let cancel = format!("/algorithm/v1/cancel/knapsack/requests/{done}");
    rows.push(
        row(
            "cancel: bad policy",
            "POST",
            cancel.clone(),
            400,
            "accepted values: Orphan, Foreground or Background",
        )
        .json(r#"{"cancellationPolicy": "Sideways"}"#),
    );
    rows.push(
        row(
            "cancel: malformed",
            "POST",
            cancel.clone(),
            400,
            "Cancellation payload is invalid",
        )
        .json("{nope"),
    );
    rows.push(
        row(
            "cancel: wrong types",
            "POST",
            cancel.clone(),
            400,
            "Cancellation payload is invalid",
        )
        .json(r#"{"reason": 5}"#),
    );
    rows.push(
        row(
            "cancel: text body",
            "POST",
            cancel.clone(),
            415,
            "expected Content-Type",
        )
        .raw("stop")
        .header("content-type", "text/plain"),
    );
    // Completion (receiver): identity first, then the body.
    let complete = format!("/algorithm/v1/complete/knapsack/requests/{done}");
    rows.push(
        row(
            "complete: no token",
            "POST",
            complete.clone(),
            401,
            "missing run token",
        )
        .json(r#"{"resultUri": "x"}"#),
    );
    rows.push(
        row(
            "complete: garbage token",
            "POST",
            complete.clone(),
            401,
            "run token refused",
        )
        .json(r#"{"resultUri": "x"}"#)
        .header("authorization", "Bearer v1.abc.def"),
    );
    rows.push(
        row(
            "complete: not bearer",
            "POST",
            complete.clone(),
            401,
            "run token",
        )
        .json(r#"{"resultUri": "x"}"#)
        .header("authorization", "Basic YTpi"),
    );
    rows.push(
        row(
            "complete: malformed id",
            "POST",
            "/algorithm/v1/complete/knapsack/requests/nope",
            400,
            "is not a valid request id",
        )
        .json(r#"{"resultUri": "x"}"#),
    );
    // Signed data routes.
    for (what, q) in [
        ("no signature", ""),
        ("forged", "?exp=99999999999&sig=AAAA"),
        ("malformed expiry", "?exp=soon&sig=AAAA"),
        ("expired", "?exp=1&sig=AAAA"),
    ] {
        rows.push(row(
            format!("object GET {what}"),
            "GET",
            format!("/data/v1/objects/results/knapsack/{done}{q}"),
            403,
            "",
        ));
        rows.push(
            row(
                format!("object PUT {what}"),
                "PUT",
                format!("/data/v1/objects/results/knapsack/{done}{q}"),
                403,
                "",
            )
            .raw("x"),
        );
        rows.push(row(
            format!("payload {what}"),
            "GET",
            format!("/data/v1/payloads/knapsack/{done}{q}"),
            403,
            "",
        ));
    }
    // Unknown paths are 404, wrong methods 405 — never 200.
    for p in [
        "/healthz",
        "/health/ready",
        "/health/readyz/x",
        "/metrics2",
        "/algorithm/v2/run/knapsack",
        "/algorithm/v1/nothing",
        "/algorithm/v1/results",
        "/openapi.yaml",
        "/favicon.ico",
        "/nexus.v1.RunService",
        "/console/nothing.js",
    ] {
        rows.push(row(format!("unknown path {p}"), "GET", p, 404, ""));
    }
    // The root leads to the web console.
    let root = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.url().path(), "/console/");
    assert_eq!(root.status(), 200);
    assert!(root.text().await.unwrap().contains("<title>Nexus</title>"));
    rows.push(
        row(
            "unknown POST path",
            "POST",
            "/algorithm/v1/runs/knapsack",
            404,
            "",
        )
        .json(obj("{}")),
    );
    for (method, p) in [
        ("GET", run.to_owned()),
        ("PUT", run.to_owned()),
        (
            "DELETE",
            format!("/algorithm/v1/results/knapsack/requests/{done}"),
        ),
        ("GET", cancel.clone()),
        ("GET", complete.clone()),
        ("POST", "/health/readyz".to_owned()),
    ] {
        rows.push(row(format!("{method} {p}"), method, p, 405, ""));
    }

    assert!(rows.len() >= 100, "the table has {} rows", rows.len());
    let ready = format!("{base}/health/readyz");
    for r in rows {
        let mut req = http.request(r.method.clone(), format!("{base}{}", r.path));
        for (k, v) in &r.headers {
            req = req.header(
                *k,
                reqwest::header::HeaderValue::from_bytes(v)
                    .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("x")),
            );
        }
        if let Some(b) = &r.body {
            req = req.body(b.clone());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", r.name));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let body = resp.text().await.unwrap();
        assert_eq!(status, r.status, "{}: {body}", r.name);
        assert!(
            ct.starts_with("text/plain"),
            "{}: content-type '{ct}' ({body})",
            r.name
        );
        assert!(!body.trim().is_empty(), "{}: an empty message", r.name);
        assert!(
            body.contains(r.text),
            "{}: '{body}' lacks '{}'",
            r.name,
            r.text
        );
        let ok = http.get(&ready).send().await.unwrap().status();
        assert_eq!(ok, 200, "unhealthy after {}", r.name);
    }
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a handler panicked"
    );
    h.stop().await;
}

/// The bad-credential table: every malformed or missing credential gets 401 with a `text/plain`
/// message saying what to send (problem+json when asked), nothing is written, the process stays
/// healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_table() {
    let data = tempfile::tempdir().unwrap();
    let k = crate::auth::keys();
    let section = crate::auth::auth_section(&k);
    let h = start_standalone_with(data.path(), move |c| c.auth = section).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let run_url = format!("{base}/algorithm/v1/run/knapsack");
    let body = r#"{"algorithmParameters": {}, "tag": "bad-credentials"}"#;
    let post = || {
        http.post(&run_url)
            .header("content-type", "application/json")
            .body(body)
    };
    let some_run = RunId::new().to_string();
    let cases: Vec<(&str, reqwest::RequestBuilder, &str)> = vec![
        (
            "no authorization",
            post(),
            "authentication required: send `Authorization: Bearer <token>` with an API key",
        ),
        (
            "basic scheme",
            post().header("authorization", "Basic YWxpY2U6cHc="),
            "must be `Bearer <token>`, got scheme 'Basic'",
        ),
        (
            "empty bearer",
            post().header("authorization", "Bearer "),
            "must be `Bearer <token>`",
        ),
        (
            "unknown api key",
            post().bearer_auth("nxk_0000"),
            "the API key is not configured here",
        ),
        (
            "a JWT without OIDC",
            post().bearer_auth("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
            "accepts no OIDC tokens: auth.oidc is not set",
        ),
        (
            "run id without token",
            post().header("x-nexus-run-id", &some_run),
            "no run token came with it",
        ),
        (
            "run id not a uuid",
            post()
                .header("x-nexus-run-id", "run-1")
                .bearer_auth("v1.1.x"),
            "'run-1' is not a request id",
        ),
        (
            "forged run token",
            post()
                .header("x-nexus-run-id", &some_run)
                .bearer_auth("v1.99999999999.AAAA"),
            "run token of run",
        ),
    ];
    for (name, req, text) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{name}"
        );
        let got = r.text().await.unwrap();
        assert!(got.contains(text), "{name}: {got:?} lacks {text:?}");
    }
    // JSON clients get the same message as problem+json.
    let r = post()
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("authentication required"),
        "{p}"
    );
    // Nothing was written; the server is healthy.
    let tagged: serde_json::Value = http
        .get(format!("{base}/algorithm/v1/results/tags/bad-credentials"))
        .bearer_auth(&k.olga)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tagged, json!([]));
    let ready = http
        .get(format!("{base}/health/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    h.stop().await;
}
