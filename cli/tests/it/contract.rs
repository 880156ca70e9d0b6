//! Wire contract with the Go Nexus v1 API (issue 17): one test per v1 route and status, each run
//! against standalone Nexus and against the distributed components (a scheduler, a receiver of
//! shard `local` and a supervisor in this process, on an in-memory run store and an HTTP-served
//! file payload store, with real gRPC between them and real algorithm processes).
//!
//! Every answer is checked against `tests/fixtures/contract/`: `responses.json` gives the status,
//! content type and body kind of each case; the other files give the JSON shapes written from the
//! reference (§1, §2.1): required keys and their types, optional keys, whether other keys are
//! allowed. No key of any JSON answer may be `null`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_cli::distributed::{
    ReceiverProcess, SchedulerProcess, ShardEntry, SharedStores, SupervisorProcess,
};
use nexus_link::grpc::{GrpcLinkConfig, LinkAuth};
use nexus_model::run::RunId;
use nexus_model::sign::{Signer, now_secs};
use nexus_store::{InMemoryRunStore, RunStore};
use serde_json::{Value, json};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-contract-test";
/// Body limit of `POST /run` in both deployments, so that 413 needs no huge request.
const MAX_REQUEST: usize = 64 * 1024;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contract")
}

fn fixture(name: &str) -> Value {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}

/// A deployment under test: where its scheduler, receiver and (distributed) supervisor answer,
/// and the key its run tokens and URLs are signed with.
struct Target {
    scheduler: String,
    receiver: String,
    supervisor: Option<String>,
    signer: Signer,
    handles: Vec<nexus_cli::standalone::Handle>,
    _data: tempfile::TempDir,
}

impl Target {
    async fn standalone() -> Self {
        let data = tempfile::tempdir().unwrap();
        let h = crate::common::start_standalone_with(data.path(), |c| {
            c.scheduler.max_request_bytes = MAX_REQUEST;
            c.scheduler.retry_base_delay = Duration::from_millis(20);
            c.scheduler.drain_grace = Duration::from_millis(200);
        })
        .await;
        let key = std::fs::read(data.path().join("signing.key")).unwrap();
        Self {
            scheduler: h.url.clone(),
            receiver: h.url.clone(),
            supervisor: None,
            signer: Signer::new(&key),
            handles: vec![h],
            _data: data,
        }
    }

    async fn distributed() -> Self {
        let demo = crate::common::demo_dir();
        let tmp = tempfile::tempdir().unwrap();
        let key_file = tmp.path().join("signing.key");
        std::fs::write(&key_file, KEY).unwrap();
        let secret_file = tmp.path().join("grpc.secret");
        std::fs::write(&secret_file, "a-shared-grpc-secret-for-contract-tests").unwrap();
        let link = GrpcLinkConfig {
            auth: LinkAuth::SharedSecret,
            secret_file: Some(secret_file),
            ..GrpcLinkConfig::default()
        };
        let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
        let stores = SharedStores {
            store: store.clone(),
            payloads: Some(crate::common::http_payloads(tmp.path(), KEY, store.clone()).await),
        };
        let mut rc = ReceiverProcess {
            shard: "local".into(),
            signing_key_file: Some(key_file.clone()),
            grpc: link.clone(),
            work_dir: tmp.path().join("receiver"),
            lease_ttl: Duration::from_secs(3),
            drain_grace: Duration::from_millis(200),
            ..ReceiverProcess::default()
        };
        rc.executor.extra_path = vec![demo];
        let receiver = nexus_cli::distributed::start_receiver_with(
            rc,
            crate::common::port0().await,
            crate::common::port0().await,
            stores.clone(),
            |c, tx, p, _stop| {
                let cfg = nexus_executor::LocalExecutorConfig {
                    extra_path: c.executor.extra_path.clone(),
                    work_root: c.work_dir.join("work"),
                    default_max_concurrent: 8,
                    max_log_bytes: 1 << 20,
                    ..nexus_executor::LocalExecutorConfig::default()
                };
                Arc::new(nexus_executor::LocalProcessExecutor::new(cfg, p, tx))
            },
        )
        .await
        .expect("receiver starts");
        let shards: BTreeMap<String, ShardEntry> = [(
            "local".to_owned(),
            ShardEntry {
                endpoints: vec![format!("http://{}", receiver.grpc_addr)],
            },
        )]
        .into();
        let mut sc = SchedulerProcess {
            templates_dir: crate::common::templates(),
            signing_key_file: Some(key_file.clone()),
            grpc: link.clone(),
            shards: shards.clone(),
            ..SchedulerProcess::default()
        };
        sc.scheduler.max_request_bytes = MAX_REQUEST;
        sc.scheduler.retry_base_delay = Duration::from_millis(20);
        sc.scheduler.drain_grace = Duration::from_millis(200);
        let scheduler = nexus_cli::distributed::start_scheduler_with(
            sc,
            crate::common::port0().await,
            stores.clone(),
        )
        .await
        .expect("scheduler starts");
        let supervisor = nexus_cli::distributed::start_supervisor_with(
            SupervisorProcess {
                scheduler_url: scheduler.url.clone(),
                templates_dir: crate::common::templates(),
                signing_key_file: Some(key_file),
                grpc: link,
                shards,
                ..SupervisorProcess::default()
            },
            crate::common::port0().await,
            store,
        )
        .await
        .expect("supervisor starts");
        Self {
            scheduler: scheduler.url.clone(),
            receiver: receiver.http.url.clone(),
            supervisor: Some(supervisor.url.clone()),
            signer: Signer::new(KEY),
            handles: vec![scheduler, supervisor, receiver.http],
            _data: tmp,
        }
    }

    /// Stops the components in order: schedulers first, the receiver last.
    async fn stop(self) {
        for h in self.handles {
            h.stop().await;
        }
    }
}

/// Checks that `v` has the JSON type `ty` of a fixture (`string`, `uuid`, `stage`, `url`,
/// `rfc3339`, `go-duration`, `integer`, `object`, `array`, `boolean`, or `run-ref`).
fn check_type(what: &str, v: &Value, ty: &str) {
    let s = v.as_str();
    let ok = match ty {
        "string" => s.is_some(),
        "uuid" => s.is_some_and(|s| s.parse::<RunId>().is_ok()),
        "stage" => s.is_some_and(|s| s.parse::<nexus_model::run::Stage>().is_ok()),
        "url" => s.is_some_and(|s| s.starts_with("http://") || s.starts_with("https://")),
        "rfc3339" => s.is_some_and(|s| humantime::parse_rfc3339(s).is_ok()),
        "go-duration" => s.is_some_and(is_go_duration),
        "integer" => v.is_u64() || v.is_i64(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "boolean" => v.is_boolean(),
        "run-ref" => {
            check_shape(what, v, &fixture("run_ref"));
            true
        }
        other => panic!("fixture type {other} of {what} is unknown"),
    };
    assert!(ok, "{what}: {v} is not a {ty}");
}

/// A Go `time.Duration` string: `24h0m0s`, `1m30s`, `45s`, `1.5s`, `500ms`.
fn is_go_duration(s: &str) -> bool {
    if let Some(ms) = s.strip_suffix("ms") {
        return !ms.is_empty() && ms.chars().all(|c| c.is_ascii_digit());
    }
    let Some(rest) = s.strip_suffix('s') else {
        return false;
    };
    let rest = rest.split_once('h').map_or(rest, |(h, r)| {
        if h.chars().all(|c| c.is_ascii_digit()) {
            r
        } else {
            "x"
        }
    });
    let rest = rest.split_once('m').map_or(rest, |(m, r)| {
        if m.chars().all(|c| c.is_ascii_digit()) {
            r
        } else {
            "x"
        }
    });
    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Fails when any member or element of `v`, at any depth, is `null`.
fn assert_no_null(what: &str, v: &Value) {
    match v {
        Value::Null => panic!("{what} is null"),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| assert_no_null(&format!("{what}.{k}"), x)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| assert_no_null(&format!("{what}[{i}]"), x)),
        _ => {}
    }
}

/// Checks `doc` against a shape fixture: required keys present with their types, optional and
/// extension keys typed when present, no other key when the fixture is closed, fixed values.
fn check_shape(what: &str, doc: &Value, shape: &Value) {
    assert_no_null(what, doc);
    let o = doc
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {doc} is not an object"));
    let group = |k: &str| {
        shape[k]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, t)| (k, t.as_str().unwrap_or_default().to_owned()))
            .collect::<BTreeMap<String, String>>()
    };
    let (required, optional, extensions) =
        (group("required"), group("optional"), group("extensions"));
    for (k, ty) in &required {
        let v = o
            .get(k)
            .unwrap_or_else(|| panic!("{what}: required key `{k}` missing in {doc}"));
        check_type(&format!("{what}.{k}"), v, ty);
    }
    for (k, v) in o {
        match required
            .get(k)
            .or_else(|| optional.get(k))
            .or_else(|| extensions.get(k))
        {
            Some(ty) => check_type(&format!("{what}.{k}"), v, ty),
            None => assert!(
                shape["closed"] != true,
                "{what}: key `{k}` is not in the contract (fixture: {})",
                shape["source"]
            ),
        }
    }
    if let Some(values) = shape["values"].as_object() {
        for (k, want) in values {
            assert_eq!(&doc[k], want, "{what}.{k}");
        }
    }
}

/// Checks an answer against the case `name` of `responses.json`; returns its body text.
async fn expect(name: &str, resp: reqwest::Response) -> String {
    let all = fixture("responses");
    let case = &all["responses"][name];
    assert!(case.is_object(), "responses.json has no case {name}");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = resp.text().await.unwrap();
    assert_eq!(
        Some(u64::from(status)),
        case["status"].as_u64(),
        "{name}: status (body: {body})"
    );
    match case["content_type"].as_str() {
        None => assert!(ct.is_none(), "{name}: unexpected content type {ct:?}"),
        Some(kind) => {
            let want = all[kind].as_str().unwrap();
            let norm = |s: &str| s.replace(' ', "").to_ascii_lowercase();
            assert_eq!(
                ct.as_deref().map(norm),
                Some(norm(want)),
                "{name}: content type"
            );
        }
    }
    match case["body"].as_str().unwrap() {
        "empty" => assert!(body.is_empty(), "{name}: body {body:?} should be empty"),
        "text" => assert!(!body.trim().is_empty(), "{name}: empty text body"),
        "json" => {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_no_null(name, &v);
        }
        shape => {
            let (text, shape) = match shape.strip_prefix("text:") {
                Some(s) => (true, s),
                None => (false, shape),
            };
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{name}: body is not JSON ({e}): {body}"));
            assert!(text || !body.is_empty());
            match shape.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(element) => {
                    let shape = fixture(element);
                    let items = v
                        .as_array()
                        .unwrap_or_else(|| panic!("{name}: not an array"));
                    for (i, item) in items.iter().enumerate() {
                        check_shape(&format!("{name}[{i}]"), item, &shape);
                    }
                }
                None => check_shape(name, &v, &fixture(shape)),
            }
        }
    }
    body
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn submit(t: &Target, alg: &str, body: Value) -> String {
    let r = http()
        .post(format!("{}/algorithm/v1/run/{alg}", t.scheduler))
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = expect("submit_202", r).await;
    serde_json::from_str::<Value>(&text).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn knapsack_params() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payloads/knapsack.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A run of `knapsack` that has COMPLETED.
async fn completed_run(t: &Target) -> String {
    let id = submit(
        t,
        "knapsack",
        json!({"algorithmParameters": knapsack_params()}),
    )
    .await;
    let r = crate::common::wait_terminal(
        &http(),
        &t.scheduler,
        "knapsack",
        &id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    id
}

/// A run of `chaos` that sleeps (deadline 5 s), so it stays BUFFERED or RUNNING for a while.
async fn sleeping_run(t: &Target) -> String {
    submit(
        t,
        "chaos",
        json!({"algorithmParameters": {"mode": "sleep", "seconds": 30}}),
    )
    .await
}

async fn result(t: &Target, alg: &str, id: &str) -> Value {
    crate::common::get_json(
        &http(),
        &format!("{}/algorithm/v1/results/{alg}/requests/{id}", t.scheduler),
    )
    .await
}

fn token(t: &Target, id: &str) -> String {
    t.signer.run_token(id.parse().unwrap(), now_secs() + 600)
}

async fn get(url: String) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

/// The cases, each a function of a deployment.
mod cases {
    use super::*;

    pub async fn submit_202(t: &Target) {
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params()}),
        )
        .await;
        assert!(id.parse::<RunId>().is_ok());
    }

    pub async fn submit_400_invalid_body(t: &Target) {
        let r = http()
            .post(format!("{}/algorithm/v1/run/knapsack", t.scheduler))
            .header("content-type", "application/json")
            .body("{\"algorithmParameters\": ")
            .send()
            .await
            .unwrap();
        assert!(
            expect("submit_400", r)
                .await
                .contains("Algorithm payload is invalid")
        );
    }

    pub async fn submit_400_unknown_algorithm(t: &Target) {
        let r = http()
            .post(format!(
                "{}/algorithm/v1/run/no-such-algorithm",
                t.scheduler
            ))
            .json(&json!({"algorithmParameters": {}}))
            .send()
            .await
            .unwrap();
        assert!(
            expect("submit_400", r)
                .await
                .contains("No valid configuration found for: no-such-algorithm")
        );
    }

    pub async fn submit_413(t: &Target) {
        let big = json!({"algorithmParameters": {"blob": "x".repeat(MAX_REQUEST * 2)}});
        let r = http()
            .post(format!("{}/algorithm/v1/run/knapsack", t.scheduler))
            .json(&big)
            .send()
            .await
            .unwrap();
        expect("submit_413", r).await;
    }

    pub async fn submit_415(t: &Target) {
        let r = http()
            .post(format!("{}/algorithm/v1/run/knapsack", t.scheduler))
            .header("content-type", "text/plain")
            .body("{\"algorithmParameters\": {}}")
            .send()
            .await
            .unwrap();
        expect("submit_415", r).await;
    }

    pub async fn results_200(t: &Target) {
        let id = completed_run(t).await;
        let r = get(format!(
            "{}/algorithm/v1/results/knapsack/requests/{id}",
            t.scheduler
        ))
        .await;
        let v: Value = serde_json::from_str(&expect("results_200", r).await).unwrap();
        assert_eq!(v["status"], "COMPLETED");
        assert!(v["resultUri"].as_str().unwrap().starts_with("http"));
    }

    /// `?wait=`: a read of a running run is held until the run ends and answered with its end;
    /// a wait that runs out answers with the status then; bad waits are 400 with the limit.
    pub async fn results_wait_answers_when_the_run_ends(t: &Target) {
        let id = sleeping_run(t).await;
        let status = format!("{}/algorithm/v1/results/chaos/requests/{id}", t.scheduler);
        // A short wait on a run that goes on: its status then.
        let r = get(format!("{status}?wait=200ms")).await;
        let v: Value = serde_json::from_str(&expect("results_200", r).await).unwrap();
        assert!(
            ["BUFFERED", "RUNNING"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
        for bad in ["0s", "61s", "soon", "-1s"] {
            let r = get(format!("{status}?wait={bad}")).await;
            assert_eq!(r.status(), 400, "wait={bad}");
            let text = r.text().await.unwrap();
            assert!(
                text.contains("wait") && text.contains("60s"),
                "{bad}: {text}"
            );
        }
        // A held read, then the run ends (its algorithm reports a failure): the held read
        // answers with the end, not with the stage it had when it was asked.
        let held = tokio::spawn(get(format!("{status}?wait=30s")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "a read of a running run is held");
        let done = format!("{}/algorithm/v1/complete/chaos/requests/{id}", t.receiver);
        let r = complete(
            done,
            Some(token(t, &id)),
            json!({"resultUri": "", "errorCause": "ended while a client waited"}),
        )
        .await;
        expect("complete_202", r).await;
        let v: Value =
            serde_json::from_str(&expect("results_200", held.await.unwrap()).await).unwrap();
        assert_eq!(v["status"], "FAILED", "{v}");
        assert_eq!(v["runErrorMessage"], "ended while a client waited");
        // A finished run is answered at once, wait or not.
        let r = get(format!("{status}?wait=30s")).await;
        let v: Value = serde_json::from_str(&expect("results_200", r).await).unwrap();
        assert_eq!(v["status"], "FAILED");
    }

    pub async fn results_404(t: &Target) {
        let r = get(format!(
            "{}/algorithm/v1/results/knapsack/requests/{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        expect("results_404", r).await;
    }

    pub async fn tags_200(t: &Target) {
        let tag = format!("contract-{}", RunId::new());
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params(), "tag": tag}),
        )
        .await;
        let r = get(format!("{}/algorithm/v1/results/tags/{tag}", t.scheduler)).await;
        let v: Value = serde_json::from_str(&expect("tags_200", r).await).unwrap();
        assert_eq!(v[0]["requestId"], id.as_str());
        let r = get(format!(
            "{}/algorithm/v1/results/tags/no-such-tag-{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        assert_eq!(expect("tags_200", r).await, "[]");
    }

    pub async fn metadata_200(t: &Target) {
        let id = completed_run(t).await;
        let r = get(format!(
            "{}/algorithm/v1/metadata/knapsack/requests/{id}",
            t.scheduler
        ))
        .await;
        let md: Value = serde_json::from_str(&expect("metadata_200", r).await).unwrap();
        assert_eq!(md["id"], id.as_str());
        assert_eq!(md["algorithm"], "knapsack");
        assert_eq!(md["lifecycle_stage"], "COMPLETED");
        assert!(
            md["result_uri"].as_str().unwrap().starts_with("http"),
            "{md}"
        );
        assert!(md.get("parent").is_none(), "no parent: the key is left out");
        assert_eq!(md["payload_valid_for"], "24h0m0s");
        assert_eq!(md["applied_configuration"]["command"], "nexus-demo");
        // A child run (dry run): `parent` is Go's object, `job_uid` the dry-run marker.
        // Overrides and the client's API version are Go's `configuration_overrides` and
        // `api_version`.
        let child = submit(
            t,
            "knapsack",
            json!({
                "algorithmParameters": knapsack_params(),
                "customConfiguration": {"runtimeEnvironment": {"deadlineSeconds": 60}},
                "requestApiVersion": "1.2",
            }),
        )
        .await;
        let r = get(format!(
            "{}/algorithm/v1/metadata/knapsack/requests/{child}",
            t.scheduler
        ))
        .await;
        let md: Value = serde_json::from_str(&expect("metadata_200", r).await).unwrap();
        assert_eq!(
            md["configuration_overrides"],
            json!({"runtimeEnvironment": {"deadlineSeconds": 60}})
        );
        assert_eq!(
            md["applied_configuration"]["runtimeEnvironment"]["deadlineSeconds"],
            60
        );
        assert_eq!(md["api_version"], "1.2");
        // A finished run takes no children: the parent is a run that is still going.
        let parent = submit(
            t,
            "chaos",
            json!({"algorithmParameters": {"mode": "sleep", "seconds": 3}}),
        )
        .await;
        let dry = http()
            .post(format!(
                "{}/algorithm/v1/run/knapsack?dryRun=true",
                t.scheduler
            ))
            .json(&json!({
                "algorithmParameters": knapsack_params(),
                "parentRequest": {"requestId": parent, "algorithmName": "chaos"},
                "tag": "contract",
            }))
            .send()
            .await
            .unwrap();
        let dry: Value = serde_json::from_str(&expect("submit_202", dry).await).unwrap();
        let dry = dry["requestId"].as_str().unwrap();
        let r = get(format!(
            "{}/algorithm/v1/metadata/knapsack/requests/{dry}",
            t.scheduler
        ))
        .await;
        let md: Value = serde_json::from_str(&expect("metadata_200", r).await).unwrap();
        assert_eq!(
            md["parent"],
            json!({"requestId": parent, "algorithmName": "chaos"})
        );
        assert_eq!(md["job_uid"], "dry-run");
        assert_eq!(md["tag"], "contract");
        assert_eq!(md["root"], parent.as_str());
        assert_eq!(md["depth"], 1);
    }

    pub async fn metadata_404(t: &Target) {
        let r = get(format!(
            "{}/algorithm/v1/metadata/knapsack/requests/{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        expect("metadata_404", r).await;
    }

    pub async fn buffer_200(t: &Target) {
        let id = completed_run(t).await;
        let r = get(format!(
            "{}/algorithm/v1/buffer/knapsack/requests/{id}",
            t.scheduler
        ))
        .await;
        let text = expect("buffer_200", r).await;
        let job: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(job["metadata"]["name"], id.as_str());
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], id.as_str());
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args[0], "knapsack");
        assert!(args[1].starts_with("--sas-uri=http"), "{args:?}");
        assert_eq!(args[2], format!("--request-id={id}"));
        // What is minted at launch is not revealed.
        assert!(text.contains("<minted at launch>"), "{text}");
    }

    pub async fn buffer_404(t: &Target) {
        let r = get(format!(
            "{}/algorithm/v1/buffer/knapsack/requests/{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        expect("buffer_404", r).await;
    }

    pub async fn payload_302(t: &Target) {
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params()}),
        )
        .await;
        let r = get(format!(
            "{}/algorithm/v1/payload/knapsack/requests/{id}",
            t.scheduler
        ))
        .await;
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        expect("payload_302", r).await;
        assert!(
            location.contains(&format!("/data/v1/payloads/knapsack/{id}?")),
            "{location}"
        );
        let payload: Value = http()
            .get(&location)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(payload, knapsack_params());
    }

    pub async fn payload_404(t: &Target) {
        let r = get(format!(
            "{}/algorithm/v1/payload/knapsack/requests/{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        expect("payload_404", r).await;
    }

    pub async fn data_payload_200(t: &Target) {
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params()}),
        )
        .await;
        let url = format!("{}/data/v1/payloads/knapsack/requests/{id}", t.scheduler);
        let body = expect("data_payload_200", get(url.clone()).await).await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            knapsack_params()
        );
        // The signature of the run's signed payload URL is accepted too.
        let path = format!("/data/v1/payloads/knapsack/{id}");
        let signed = format!("{url}?{}", t.signer.sign_url("GET", &path, now_secs() + 60));
        let body = expect("data_payload_200", get(signed).await).await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            knapsack_params()
        );
    }

    pub async fn data_payload_403(t: &Target) {
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params()}),
        )
        .await;
        let url = format!("{}/data/v1/payloads/knapsack/requests/{id}", t.scheduler);
        // Signed for another run, expired, or half a signature: refused, not ignored.
        let other = format!("/data/v1/payloads/knapsack/{}", RunId::new());
        let forged = format!(
            "{url}?{}",
            t.signer.sign_url("GET", &other, now_secs() + 60)
        );
        expect("data_payload_403", get(forged).await).await;
        let path = format!("/data/v1/payloads/knapsack/{id}");
        let expired = format!("{url}?{}", t.signer.sign_url("GET", &path, now_secs() - 1));
        assert!(
            expect("data_payload_403", get(expired).await)
                .await
                .contains("expired")
        );
        expect("data_payload_403", get(format!("{url}?sig=abc")).await).await;
    }

    pub async fn data_payload_404(t: &Target) {
        let r = get(format!(
            "{}/data/v1/payloads/knapsack/requests/{}",
            t.scheduler,
            RunId::new()
        ))
        .await;
        expect("data_payload_404", r).await;
    }

    pub async fn cancel_200_running(t: &Target) {
        let id = sleeping_run(t).await;
        let r = http()
            .post(format!("{}/algorithm/v1/cancel/chaos/requests/{id}", t.scheduler))
            .json(&json!({"reason": "contract", "initiator": "tester", "cancellationPolicy": "Foreground"}))
            .send()
            .await
            .unwrap();
        assert!(expect("cancel_200", r).await.contains("cancelled"));
        let r = result(t, "chaos", &id).await;
        assert_eq!(r["status"], "CANCELLED");
        assert_eq!(r["runErrorMessage"], "Cancelled by 'tester'");
    }

    pub async fn cancel_200_already_finished(t: &Target) {
        let id = completed_run(t).await;
        let r = http()
            .post(format!(
                "{}/algorithm/v1/cancel/knapsack/requests/{id}",
                t.scheduler
            ))
            .json(&json!({"reason": "late", "initiator": "tester"}))
            .send()
            .await
            .unwrap();
        let body = expect("cancel_200", r).await;
        assert!(body.contains("had already finished as COMPLETED"), "{body}");
        assert!(body.contains("nothing was changed"), "{body}");
        assert_eq!(result(t, "knapsack", &id).await["status"], "COMPLETED");
    }

    pub async fn cancel_400_bad_policy(t: &Target) {
        let id = sleeping_run(t).await;
        let r = http()
            .post(format!(
                "{}/algorithm/v1/cancel/chaos/requests/{id}",
                t.scheduler
            ))
            .json(&json!({"reason": "r", "initiator": "i", "cancellationPolicy": "Sideways"}))
            .send()
            .await
            .unwrap();
        let body = expect("cancel_400", r).await;
        assert!(
            body.contains("Invalid cancellation request: invalid CancellationPolicy: 'Sideways'"),
            "{body}"
        );
    }

    pub async fn cancel_404(t: &Target) {
        let r = http()
            .post(format!(
                "{}/algorithm/v1/cancel/chaos/requests/{}",
                t.scheduler,
                RunId::new()
            ))
            .json(&json!({"reason": "r", "initiator": "i"}))
            .send()
            .await
            .unwrap();
        expect("cancel_404", r).await;
    }

    pub async fn tag_update_200(t: &Target) {
        let id = submit(
            t,
            "knapsack",
            json!({"algorithmParameters": knapsack_params()}),
        )
        .await;
        let tag = format!("retagged-{}", RunId::new());
        let r = http()
            .post(format!(
                "{}/algorithm/v1/metadata/tags/knapsack/requests/{id}",
                t.scheduler
            ))
            .header("content-type", "text/plain")
            .body(tag.clone())
            .send()
            .await
            .unwrap();
        assert!(expect("tag_update_200", r).await.contains(&tag));
        let r = get(format!("{}/algorithm/v1/results/tags/{tag}", t.scheduler)).await;
        let v: Value = serde_json::from_str(&expect("tags_200", r).await).unwrap();
        assert_eq!(v[0]["requestId"], id.as_str());
    }

    /// Completes the sleeping run `id` through `url` (with `bearer` as header when given).
    async fn complete(url: String, bearer: Option<String>, body: Value) -> reqwest::Response {
        let mut req = http().post(url).json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send().await.unwrap()
    }

    pub async fn complete_202_bearer(t: &Target) {
        let id = sleeping_run(t).await;
        let url = format!("{}/algorithm/v1/complete/chaos/requests/{id}", t.receiver);
        let r = complete(
            url,
            Some(token(t, &id)),
            json!({"resultUri": "https://results.example/1"}),
        )
        .await;
        assert_eq!(expect("complete_202", r).await, "{}");
        let r = result(t, "chaos", &id).await;
        assert_eq!(r["status"], "COMPLETED");
        assert_eq!(r["resultUri"], "https://results.example/1");
    }

    pub async fn complete_202_through_the_receiver_url(t: &Target) {
        // The receiver URL handed to the run carries its token: no header needed.
        let id = sleeping_run(t).await;
        let url = format!(
            "{}/run-token/{}/algorithm/v1/complete/chaos/requests/{id}",
            t.receiver,
            token(t, &id)
        );
        let r = complete(
            url,
            None,
            json!({"resultUri": "", "errorCause": "boom", "errorDetails": "trace"}),
        )
        .await;
        expect("complete_202", r).await;
        let r = result(t, "chaos", &id).await;
        assert_eq!(r["status"], "FAILED");
        assert_eq!(r["runErrorMessage"], "boom");
    }

    /// A running algorithm's progress: recorded in place, shown in metadata and listings, at
    /// most once a second, refused with a reason when malformed, unauthenticated or too late.
    pub async fn progress_202_shown_in_metadata_and_listing(t: &Target) {
        let id = sleeping_run(t).await;
        let url = format!(
            "{}/run-token/{}/algorithm/v1/progress/chaos/requests/{id}",
            t.receiver,
            token(t, &id)
        );
        let post = |body: Value| http().post(url.clone()).json(&body).send();
        let r = post(json!({"fraction": 0.25, "message": "epoch 1 of 4"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let meta = crate::common::get_json(
            &http(),
            &format!("{}/algorithm/v1/metadata/chaos/requests/{id}", t.scheduler),
        )
        .await;
        assert_eq!(meta["progress"]["fraction"], 0.25, "{meta}");
        assert_eq!(meta["progress"]["message"], "epoch 1 of 4");
        assert!(meta["progress"]["reported_at"].is_string(), "{meta}");
        let page = crate::common::get_json(
            &http(),
            &format!(
                "{}/algorithm/v1/runs?algorithm=chaos&limit=1000",
                t.scheduler
            ),
        )
        .await;
        let listed = page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["requestId"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {page}"));
        assert_eq!(listed["progress"]["fraction"], 0.25, "{listed}");
        // Within a second of the previous report: 429, not kept.
        let r = post(json!({"fraction": 0.5})).await.unwrap();
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert!(r.text().await.unwrap().contains("at most once a second"));
        // Malformed reports name what is wrong.
        for (body, says) in [
            (json!({}), "needs 'fraction'"),
            (json!({"fraction": 1.5}), "from 0 to 1"),
            (json!({"progress": 0.5}), "unknown field"),
            (json!({"message": "x".repeat(513)}), "at most 512"),
        ] {
            let r = post(body.clone()).await.unwrap();
            assert_eq!(r.status(), 400, "{body}");
            let text = r.text().await.unwrap();
            assert!(text.contains(says), "{body}: {text}");
        }
        let plain = http().post(url.clone()).body("0.5").send().await.unwrap();
        assert_eq!(plain.status(), 415);
        let bare = format!("{}/algorithm/v1/progress/chaos/requests/{id}", t.receiver);
        let r = http()
            .post(&bare)
            .json(&json!({"fraction": 0.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let other = token(t, &RunId::new().to_string());
        let r = http()
            .post(&bare)
            .bearer_auth(other)
            .json(&json!({"fraction": 0.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "another run's token opens nothing");
        // A finished run takes no more reports.
        let done = format!("{}/algorithm/v1/complete/chaos/requests/{id}", t.receiver);
        let r = complete(
            done,
            Some(token(t, &id)),
            json!({"resultUri": "https://r.example/p"}),
        )
        .await;
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = post(json!({"fraction": 1.0})).await.unwrap();
        assert_eq!(r.status(), 409);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("already finished as COMPLETED")
        );
    }

    pub async fn complete_202_v12_alias(t: &Target) {
        let id = sleeping_run(t).await;
        let url = format!("{}/algorithm/v1.2/complete/chaos/requests/{id}", t.receiver);
        let r = complete(
            url,
            Some(token(t, &id)),
            json!({"resultUri": "https://r.example/a"}),
        )
        .await;
        expect("complete_202", r).await;
        assert_eq!(result(t, "chaos", &id).await["status"], "COMPLETED");
        let id = sleeping_run(t).await;
        let url = format!(
            "{}/run-token/{}/algorithm/v1.2/complete/chaos/requests/{id}",
            t.receiver,
            token(t, &id)
        );
        let r = complete(url, None, json!({"resultUri": "https://r.example/b"})).await;
        expect("complete_202", r).await;
        assert_eq!(
            result(t, "chaos", &id).await["resultUri"],
            "https://r.example/b"
        );
    }

    pub async fn complete_401(t: &Target) {
        let id = sleeping_run(t).await;
        let body = json!({"resultUri": "x"});
        let url = format!("{}/algorithm/v1/complete/chaos/requests/{id}", t.receiver);
        let r = complete(url.clone(), None, body.clone()).await;
        assert!(
            expect("complete_401", r)
                .await
                .contains("missing run token")
        );
        // Another run's token, in the header or in the path.
        let other = token(t, &RunId::new().to_string());
        let r = complete(url, Some(other.clone()), body.clone()).await;
        assert!(
            expect("complete_401", r)
                .await
                .contains("run token refused")
        );
        let url = format!(
            "{}/run-token/{other}/algorithm/v1/complete/chaos/requests/{id}",
            t.receiver
        );
        expect("complete_401", complete(url, None, body).await).await;
        assert_ne!(result(t, "chaos", &id).await["status"], "COMPLETED");
    }

    pub async fn complete_404(t: &Target) {
        let unknown = RunId::new().to_string();
        let url = format!(
            "{}/algorithm/v1/complete/chaos/requests/{unknown}",
            t.receiver
        );
        let r = complete(url, Some(token(t, &unknown)), json!({"resultUri": "x"})).await;
        expect("complete_404", r).await;
    }

    pub async fn complete_409(t: &Target) {
        let id = completed_run(t).await;
        let url = format!(
            "{}/algorithm/v1/complete/knapsack/requests/{id}",
            t.receiver
        );
        let r = complete(
            url,
            Some(token(t, &id)),
            json!({"resultUri": "https://x.example"}),
        )
        .await;
        assert!(
            expect("complete_409", r)
                .await
                .contains("already finished as COMPLETED")
        );
    }

    pub async fn unknown_path_404(t: &Target) {
        let mut apps = vec![t.scheduler.clone(), t.receiver.clone()];
        apps.extend(t.supervisor.clone());
        for base in &apps {
            for path in [
                "/nope",
                "/algorithm/v1/nope/x",
                "/nexus.v1.RunService/GetRun",
            ] {
                let r = get(format!("{base}{path}")).await;
                expect("unknown_path_404", r).await;
                let r = http()
                    .post(format!("{base}{path}"))
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                expect("unknown_path_404", r).await;
            }
        }
        // A known path with another method stays 405.
        let r = get(format!("{}/algorithm/v1/run/knapsack", t.scheduler)).await;
        expect("wrong_method_405", r).await;
        let r = get(format!(
            "{}/algorithm/v1/complete/chaos/requests/{}",
            t.receiver,
            RunId::new()
        ))
        .await;
        expect("wrong_method_405", r).await;
        // A gRPC request for an unknown service gets gRPC's UNIMPLEMENTED, as from a gRPC server.
        let r = http()
            .post(format!("{}/nexus.v1.NoSuchService/Call", t.scheduler))
            .header("content-type", "application/grpc")
            .body(Vec::<u8>::new())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "12");
    }

    pub async fn hello_world_completes_as_on_go_nexus(t: &Target) {
        let id = submit(
            t,
            "hello",
            json!({"algorithmParameters": {"name": "Nexus"}}),
        )
        .await;
        let r = crate::common::wait_terminal(
            &http(),
            &t.scheduler,
            "hello",
            &id,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(r["status"], "COMPLETED", "{r}");
        assert_eq!(
            r["resultUri"],
            "data:text/plain;charset=utf-8,Hello%2C%20Nexus%21"
        );
        assert_eq!(r["runErrorMessage"], "");
    }

    pub async fn hello_world_fails_as_on_go_nexus(t: &Target) {
        let id = submit(
            t,
            "hello",
            json!({"algorithmParameters": {"greeting": "no name"}}),
        )
        .await;
        let r = crate::common::wait_terminal(
            &http(),
            &t.scheduler,
            "hello",
            &id,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(r["status"], "FAILED", "{r}");
        assert!(
            r["runErrorMessage"]
                .as_str()
                .unwrap()
                .starts_with("invalid payload: expected {\"name\""),
            "{r}"
        );
        let md = crate::common::get_json(
            &http(),
            &format!("{}/algorithm/v1/metadata/hello/requests/{id}", t.scheduler),
        )
        .await;
        assert!(
            md["algorithm_failure_details"]
                .as_str()
                .unwrap()
                .contains("no non-empty string field `name`"),
            "{md}"
        );
    }

    pub async fn openapi_describes_the_served_shapes(t: &Target) {
        let r = get(format!("{}/openapi.json", t.scheduler)).await;
        let doc: Value = serde_json::from_str(&expect("openapi_200", r).await).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        // CheckpointedRequest: exactly the fixture's keys, the same required ones.
        let schema = &doc["components"]["schemas"]["CheckpointedRequest"];
        let fx = fixture("checkpointed_request");
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let mut all: Vec<String> = ["required", "optional", "extensions"]
            .iter()
            .flat_map(|g| keys(&fx[*g]))
            .collect();
        all.sort();
        assert_eq!(keys(&schema["properties"]), all);
        let mut required: Vec<String> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        required.sort();
        let mut want: Vec<String> = keys(&fx["required"]);
        for k in [
            "workgroup",
            "shard",
            "root",
            "depth",
            "attempts",
            "payload_size",
        ] {
            want.push(k.to_owned());
        }
        want.sort();
        assert_eq!(required, want);
        let paths = &doc["paths"];
        let op = |p: &str, m: &str| &paths[p][m];
        let ct = |p: &str, m: &str, status: &str| -> Vec<String> {
            op(p, m)["responses"][status]["content"]
                .as_object()
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default()
        };
        let id = "{algorithmName}/requests/{requestId}";
        assert_eq!(
            ct(&format!("/algorithm/v1/buffer/{id}"), "get", "200"),
            ["text/plain"]
        );
        assert_eq!(
            ct(&format!("/algorithm/v1/cancel/{id}"), "post", "200"),
            ["text/plain"]
        );
        assert_eq!(
            ct(&format!("/algorithm/v1/metadata/tags/{id}"), "post", "200"),
            ["text/plain"]
        );
        assert!(op(&format!("/algorithm/v1/payload/{id}"), "get")["responses"]["302"].is_object());
        assert!(op(&format!("/data/v1/payloads/{id}"), "get")["responses"]["200"].is_object());
        for p in [
            format!("/algorithm/v1/complete/{id}"),
            format!("/algorithm/v1.2/complete/{id}"),
            format!("/run-token/{{token}}/algorithm/v1/complete/{id}"),
            format!("/run-token/{{token}}/algorithm/v1.2/complete/{id}"),
            format!("/algorithm/v1/progress/{id}"),
            format!("/run-token/{{token}}/algorithm/v1/progress/{id}"),
        ] {
            assert!(op(&p, "post")["responses"]["202"].is_object(), "{p}");
        }
        // Every error answer is documented as text (or problem+json).
        for (p, item) in paths.as_object().unwrap() {
            for (m, o) in item.as_object().unwrap() {
                for (status, r) in o["responses"].as_object().unwrap() {
                    if status.as_str() >= "400" {
                        let r = match r["$ref"].as_str() {
                            Some(name) => {
                                &doc["components"]["responses"]
                                    [name.trim_start_matches("#/components/responses/")]
                            }
                            None => r,
                        };
                        assert!(
                            r["content"]["text/plain"].is_object(),
                            "{m} {p} {status}: error not documented as text/plain"
                        );
                    }
                }
            }
        }
    }
}

/// One test per case and deployment.
macro_rules! contract_tests {
    ($($case:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = super::Target::standalone().await;
                    super::cases::$case(&t).await;
                    t.stop().await;
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = super::Target::distributed().await;
                    super::cases::$case(&t).await;
                    t.stop().await;
                }
            )*
        }
    };
}

contract_tests!(
    submit_202,
    progress_202_shown_in_metadata_and_listing,
    submit_400_invalid_body,
    submit_400_unknown_algorithm,
    submit_413,
    submit_415,
    results_200,
    results_wait_answers_when_the_run_ends,
    results_404,
    tags_200,
    metadata_200,
    metadata_404,
    buffer_200,
    buffer_404,
    payload_302,
    payload_404,
    data_payload_200,
    data_payload_403,
    data_payload_404,
    cancel_200_running,
    cancel_200_already_finished,
    cancel_400_bad_policy,
    cancel_404,
    tag_update_200,
    complete_202_bearer,
    complete_202_through_the_receiver_url,
    complete_202_v12_alias,
    complete_401,
    complete_404,
    complete_409,
    unknown_path_404,
    hello_world_completes_as_on_go_nexus,
    hello_world_fails_as_on_go_nexus,
    openapi_describes_the_served_shapes,
);
