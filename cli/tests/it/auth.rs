//! Authentication and authorization of the public API (issue #21) on a standalone Nexus with API
//! keys: the table of allowed and refused calls for two teams on two algorithms, over HTTP v1 and
//! gRPC; run tokens over HTTP; listings filtered; TLS with the CLI binary (`https://`,
//! `--ca-file`, `--token`). The OIDC path against a real identity provider is in `auth_dex`
//! (integration tier).

use std::time::Duration;

use nexus_auth::apikey;
use nexus_model::sign::Signer;
use serde_json::json;

use crate::common::*;

/// Keys of the two teams and a read-only operator, and the `auth` section granting them.
pub struct Keys {
    pub alice: String,
    pub bob: String,
    pub olga: String,
}

pub fn keys() -> Keys {
    Keys {
        alice: apikey::generate(),
        bob: apikey::generate(),
        olga: apikey::generate(),
    }
}

/// Team A (alice) owns `knapsack`, team B (bob) owns `hello`, ops (olga) reads everything.
pub fn auth_section(k: &Keys) -> nexus_auth::AuthConfig {
    serde_yaml::from_str(&format!(
        r#"
mode: required
api_keys:
  keys:
    - {{name: alice, sha256: {}, groups: [team-a]}}
    - {{name: bob, sha256: {}, groups: [team-b]}}
    - {{name: olga, sha256: {}, groups: [ops]}}
rules:
  - {{groups: [team-a], actions: [submit, read, cancel], algorithms: [knapsack]}}
  - {{groups: [team-b], actions: [submit, read, cancel], algorithms: [hello]}}
  - {{groups: [ops], actions: [read], workgroups: ["*"]}}
"#,
        apikey::hash(&k.alice),
        apikey::hash(&k.bob),
        apikey::hash(&k.olga),
    ))
    .expect("auth section")
}

const KNAPSACK: &str = r#"{"algorithmParameters": {"capacity": 5, "items": [{"weight": 2, "value": 3}]}, "tag": "shared-tag"}"#;
const HELLO: &str = r#"{"algorithmParameters": {"name": "x"}, "tag": "shared-tag"}"#;

/// One call: who (a bearer, or none), what, and the status and message expected.
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut r = match method {
        "POST" => http.post(url),
        _ => http.get(url),
    };
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = r.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, resp.text().await.unwrap(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_teams_on_two_algorithms() {
    let data = tempfile::tempdir().unwrap();
    let k = keys();
    let section = auth_section(&k);
    let h = start_standalone_with(data.path(), move |c| c.auth = section).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let run = |alg: &str| format!("{base}/algorithm/v1/run/{alg}");

    // Submissions: each team on its own algorithm only.
    let (st, body, _) = call(
        &http,
        "POST",
        &run("knapsack"),
        Some(&k.alice),
        Some(KNAPSACK),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let a_run = serde_json::from_str::<serde_json::Value>(&body).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, body, _) = call(&http, "POST", &run("hello"), Some(&k.bob), Some(HELLO)).await;
    assert_eq!(st, 202, "{body}");
    let b_run = serde_json::from_str::<serde_json::Value>(&body).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = |alg: &str, id: &str| format!("{base}/algorithm/v1/results/{alg}/requests/{id}");
    let meta = |alg: &str, id: &str| format!("{base}/algorithm/v1/metadata/{alg}/requests/{id}");
    let cancel = |alg: &str, id: &str| format!("{base}/algorithm/v1/cancel/{alg}/requests/{id}");
    // (case, method, url, bearer, body, status, text of the answer)
    type Row<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let table: Vec<Row> = vec![
        (
            "no credential",
            "POST",
            run("knapsack"),
            None,
            Some(KNAPSACK),
            401,
            "authentication required: send `Authorization: Bearer <token>`",
        ),
        (
            "unknown key",
            "POST",
            run("knapsack"),
            Some("nxk_not-a-key"),
            Some(KNAPSACK),
            401,
            "not configured here",
        ),
        (
            "alice submits hello",
            "POST",
            run("hello"),
            Some(&k.alice),
            Some(HELLO),
            403,
            "API key 'alice' (groups: team-a) may not submit runs of algorithm 'hello'",
        ),
        (
            "bob submits knapsack",
            "POST",
            run("knapsack"),
            Some(&k.bob),
            Some(KNAPSACK),
            403,
            "may not submit runs of algorithm 'knapsack'",
        ),
        (
            "olga submits",
            "POST",
            run("knapsack"),
            Some(&k.olga),
            Some(KNAPSACK),
            403,
            "may not submit",
        ),
        (
            "alice reads hers",
            "GET",
            res("knapsack", &a_run),
            Some(&k.alice),
            None,
            200,
            "requestId",
        ),
        (
            "bob reads alice's",
            "GET",
            res("knapsack", &a_run),
            Some(&k.bob),
            None,
            403,
            "may not read runs of algorithm 'knapsack'",
        ),
        (
            "bob reads alice's metadata",
            "GET",
            meta("knapsack", &a_run),
            Some(&k.bob),
            None,
            403,
            "may not read",
        ),
        (
            "olga reads both",
            "GET",
            res("hello", &b_run),
            Some(&k.olga),
            None,
            200,
            "requestId",
        ),
        (
            "anonymous reads",
            "GET",
            res("hello", &b_run),
            None,
            None,
            401,
            "authentication required",
        ),
        (
            "alice cancels bob's",
            "POST",
            cancel("hello", &b_run),
            Some(&k.alice),
            None,
            403,
            "may not cancel runs of algorithm 'hello'",
        ),
        (
            "olga cancels",
            "POST",
            cancel("hello", &b_run),
            Some(&k.olga),
            None,
            403,
            "may not cancel",
        ),
        (
            "bob cancels his",
            "POST",
            cancel("hello", &b_run),
            Some(&k.bob),
            None,
            200,
            // hello finishes at once: the cancel may find it done (allowed all the same).
            "cancelled|had already finished",
        ),
    ];
    for (name, method, url, bearer, body, status, text) in table {
        let (st, got, headers) = call(&http, method, &url, bearer, body).await;
        assert_eq!(st, status, "{name}: {got}");
        assert!(
            text.split('|').any(|t| got.contains(t)),
            "{name}: {got:?} lacks {text:?}"
        );
        if st == 401 {
            assert_eq!(
                headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
                Some("Bearer realm=\"nexus\""),
                "{name}"
            );
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );
        }
    }
    // The cancel recorded who did it.
    let (_, m, _) = call(&http, "GET", &meta("hello", &b_run), Some(&k.bob), None).await;
    assert!(m.contains("API key 'bob'"), "{m}");

    // Listing by tag: each caller sees only what it may read.
    let tag = format!("{base}/algorithm/v1/results/tags/shared-tag");
    let ids = |body: &str| {
        let mut v: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap()
            .iter()
            .map(|r| r["requestId"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let (_, a, _) = call(&http, "GET", &tag, Some(&k.alice), None).await;
    assert_eq!(ids(&a), vec![a_run.clone()]);
    let (_, b, _) = call(&http, "GET", &tag, Some(&k.bob), None).await;
    assert_eq!(ids(&b), vec![b_run.clone()]);
    let (_, o, _) = call(&http, "GET", &tag, Some(&k.olga), None).await;
    let mut both = vec![a_run.clone(), b_run.clone()];
    both.sort();
    assert_eq!(ids(&o), both);

    // Open routes: probes, the OpenAPI document.
    for path in ["/health/readyz", "/openapi.json"] {
        let (st, _, _) = call(&http, "GET", &format!("{base}{path}"), None, None).await;
        assert_eq!(st, 200, "{path}");
    }

    // gRPC RunService: the same rules.
    let sdk = |token: Option<&str>| {
        let token = token.map(str::to_owned);
        let base = base.clone();
        async move {
            nexus_sdk::Nexus::connect_with(
                &base,
                None,
                nexus_sdk::ConnectOptions {
                    token,
                    ca_file: None,
                },
            )
            .await
            .unwrap()
            .with_retry_for(Duration::from_secs(5))
        }
    };
    let alice = sdk(Some(&k.alice)).await;
    let created = alice
        .create("knapsack", &json!({"capacity": 1, "items": []}))
        .await
        .unwrap();
    let e = alice.create("hello", &json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    let bob = sdk(Some(&k.bob)).await;
    let e = bob.get(&created).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    assert!(
        e.to_string()
            .contains("may not read runs of algorithm 'knapsack'"),
        "{e}"
    );
    let e = sdk(None).await.get(&created).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");
    let e = sdk(Some("nxk_wrong"))
        .await
        .get(&created)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");
    assert_eq!(
        alice.get(&created).await.unwrap().request_id,
        created.request_id
    );

    // A run acts as itself over HTTP: reads its subtree, creates its own children, nothing else.
    let key = std::fs::read(data.path().join("signing.key")).unwrap();
    let signer = Signer::new(&key);
    let a_id: nexus_model::run::RunId = a_run.parse().unwrap();
    let token = signer.run_token(a_id, nexus_model::sign::now_secs() + 600);
    let as_run =
        |r: reqwest::RequestBuilder| r.header("x-nexus-run-id", &a_run).bearer_auth(&token);
    let st = as_run(http.get(res("knapsack", &a_run)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 200);
    let r = as_run(http.get(res("hello", &b_run))).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("only itself and its descendants")
    );
    let r = as_run(http.post(run("hello")))
        .header("content-type", "application/json")
        .body(HELLO)
        .send()
        .await
        .unwrap();
    let (st, body) = (r.status(), r.text().await.unwrap());
    // A run that already finished takes no children; otherwise the child is its own.
    if st == 202 {
        let child = serde_json::from_str::<serde_json::Value>(&body).unwrap()["requestId"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, m, _) = call(&http, "GET", &meta("hello", &child), Some(&k.olga), None).await;
        assert!(m.contains(&a_run), "child's parent: {m}");
    } else {
        assert_eq!(st, 409, "{body}");
    }
    let wrong = signer.run_token(b_run.parse().unwrap(), nexus_model::sign::now_secs() + 600);
    let r = http
        .get(res("knapsack", &a_run))
        .header("x-nexus-run-id", &a_run)
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("run token of run"));
    h.stop().await;
}

/// Writes a self-signed certificate for 127.0.0.1; returns (cert, key) paths.
fn cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_https_with_a_token() {
    let data = tempfile::tempdir().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let (crt, key) = cert(tls.path());
    let k = keys();
    let section = auth_section(&k);
    let (c2, k2) = (crt.clone(), key.clone());
    let h = start_standalone_with(data.path(), move |c| {
        c.auth = section;
        c.server.tls.cert_file = Some(c2.clone());
        c.server.tls.key_file = Some(k2);
        // The algorithm trusts the server's certificate through NEXUS_CA_FILE.
        c.executor.ca_file = Some(c2);
    })
    .await;
    assert!(h.url.starts_with("https://"), "{}", h.url);
    let nexus = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"));
        cmd.args(["run", "--server", &h.url, "--ca-file"])
            .arg(&crt)
            .args(args)
            .env_remove("NEXUS_TOKEN");
        if let Some(t) = token {
            cmd.env("NEXUS_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let params = tls.path().join("params.json");
    std::fs::write(
        &params,
        r#"{"capacity": 3, "items": [{"name": "a", "weight": 1, "value": 2}]}"#,
    )
    .unwrap();
    let empty = tls.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let (params, empty) = (params.to_str().unwrap(), empty.to_str().unwrap());
    // Submitted, run and read back over https: the demo algorithm fetches its payload, uploads
    // its result and completes over https too, trusting the CA it is handed.
    let args = ["submit", "knapsack", "--params", params];
    let (ok, out, err) = nexus(
        &[
            "submit",
            "knapsack",
            "--params",
            params,
            "--wait",
            "--timeout",
            "60s",
        ],
        Some(&k.alice),
    );
    assert!(ok, "stdout: {out}\nstderr: {err}");
    let id = out.lines().next().unwrap_or_default().trim().to_owned();
    let (ok, out, err) = nexus(&["get", "knapsack", &id, "--json"], Some(&k.alice));
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("COMPLETED"), "{out}");
    assert!(
        out.contains("https://"),
        "the result URI is served over https: {out}"
    );
    let (ok, _, err) = nexus(&args, None);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("pass --token or set NEXUS_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = nexus(&["submit", "hello", "--params", empty], Some(&k.alice));
    assert!(!ok);
    assert!(
        err.contains("403") && err.contains("may not submit runs of algorithm 'hello'"),
        "{err}"
    );
    // Without the CA the server's certificate is not trusted.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "run",
            "--server",
            &h.url,
            "get",
            "knapsack",
            "00000000-0000-0000-0000-000000000000",
        ])
        .env("NEXUS_TOKEN", &k.alice)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--ca-file"), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_needs_auth_written() {
    let mut c = nexus_cli::config::StandaloneConfig {
        listen: "0.0.0.0:8090".parse().unwrap(),
        ..nexus_cli::config::StandaloneConfig::default()
    };
    let e = c.validate().unwrap_err();
    assert!(
        e.contains("auth: listen 0.0.0.0:8090 is reachable from other machines"),
        "{e}"
    );
    assert!(e.contains("write auth.mode: none"), "{e}");
    c.auth.mode = Some(nexus_auth::AuthMode::None);
    c.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_algorithm_ca_and_the_listener_key_are_checked_at_start() {
    let data = tempfile::tempdir().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let (crt, key) = cert(tls.path());
    let start = |tune: Box<dyn FnOnce(&mut nexus_cli::config::StandaloneConfig) + Send>| {
        let data = data.path().to_path_buf();
        async move {
            let mut c = nexus_cli::config::StandaloneConfig {
                data_dir: data,
                templates_dir: templates(),
                ..nexus_cli::config::StandaloneConfig::default()
            };
            c.executor.launcher = Some(env!("CARGO_BIN_EXE_nexus").into());
            tune(&mut c);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            nexus_cli::standalone::start(c, l).await
        }
    };
    // Not a certificate: refused, naming the key and the file.
    let (k2, c2) = (key.clone(), crt.clone());
    let e = start(Box::new(move |c| {
        c.server.tls.cert_file = Some(c2);
        c.server.tls.key_file = Some(k2.clone());
        c.executor.ca_file = Some(k2);
    }))
    .await;
    let Err(e) = e else {
        panic!("a key file is not a CA certificate")
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("executor.ca_file") && e.contains("tls.key"),
        "{e}"
    );
    // The listener's key may not be granted to algorithms.
    let (k2, c2) = (key.clone(), crt.clone());
    let e = start(Box::new(move |c| {
        c.server.tls.cert_file = Some(c2);
        c.server.tls.key_file = Some(k2);
        c.executor.read_only_paths = vec![tls_dir_of(&key)];
    }))
    .await;
    let Err(e) = e else {
        panic!("granting the key's directory is refused")
    };
    let e = format!("{e:#}");
    assert!(e.contains("holds the server's keys"), "{e}");
}

fn tls_dir_of(p: &std::path::Path) -> std::path::PathBuf {
    p.parent().unwrap().to_path_buf()
}
