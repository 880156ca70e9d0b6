//! OIDC against a real identity provider (integration tier): Dex started by `scripts/dex.sh`,
//! tokens from its password grant. Two teams (alice@example.com owns `knapsack`,
//! bob@example.com owns `hello`) on a standalone Nexus whose subject claim is `email`: the table
//! of allowed and refused calls over HTTP and gRPC, a token for another audience, an expired
//! token, and the provider rotating its signing key.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const ENV: &str = "NEXUS_TEST_DEX_ISSUER";

fn issuer() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: these tests need a real OIDC provider. Start Dex with \
             `scripts/dex.sh start` (it prints the issuer URL) and run them with {ENV}=<that URL> \
             (scripts/integration.sh does both)"
        )
    })
}

/// An ID token from Dex's password grant for `user`, minted for `client`.
async fn token(http: &reqwest::Client, user: &str, client: &str) -> String {
    let secret = if client == "nexus" {
        "nexus-secret"
    } else {
        "other-secret"
    };
    let body = format!(
        "grant_type=password&username={}&password=password&scope=openid%20email%20profile",
        user.replace('@', "%40")
    );
    let r = http
        .post(format!("{}/token", issuer()))
        .basic_auth(client, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("Dex answers");
    let status = r.status();
    let v: Value = r.json().await.expect("token answer is JSON");
    assert!(status.is_success(), "password grant refused: {v}");
    v["id_token"].as_str().expect("an id_token").to_owned()
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let h = token.split('.').next().unwrap();
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .unwrap();
    serde_json::from_slice::<Value>(&h).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn auth_section() -> nexus_auth::AuthConfig {
    serde_yaml::from_str(&format!(
        r#"
oidc:
  issuer: "{}"
  audiences: [nexus]
  claims: {{subject: email}}
  clock_skew: 1s
  min_refresh_interval: 1s
rules:
  - {{subjects: [alice@example.com], actions: [submit, read, cancel], algorithms: [knapsack]}}
  - {{subjects: [bob@example.com], actions: [submit, read, cancel], algorithms: [hello]}}
"#,
        issuer()
    ))
    .unwrap()
}

async fn start(data: &std::path::Path) -> nexus_cli::standalone::Handle {
    let section = auth_section();
    let h = start_standalone_with(data, move |c| c.auth = section).await;
    // The keys are fetched in the background at start: wait until a token is accepted (a 503
    // says they are not loaded yet).
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = token(&http, "alice@example.com", "nexus").await;
        let r = http
            .get(format!("{}/algorithm/v1/results/tags/warm-up", h.url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
        assert!(Instant::now() < deadline, "the issuer's keys never loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h
}

async fn call(
    http: &reqwest::Client,
    post: bool,
    url: &str,
    bearer: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut r = if post { http.post(url) } else { http.get(url) }.bearer_auth(bearer);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tokens_two_teams_two_algorithms() {
    let data = tempfile::tempdir().unwrap();
    let h = start(data.path()).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let alice = token(&http, "alice@example.com", "nexus").await;
    let bob = token(&http, "bob@example.com", "nexus").await;
    let foreign = token(&http, "alice@example.com", "other-app").await;
    let run = |alg: &str| format!("{base}/algorithm/v1/run/{alg}");
    let knapsack = r#"{"algorithmParameters": {"capacity": 2, "items": []}}"#;
    let hello = r#"{"algorithmParameters": {}}"#;

    let (st, body) = call(&http, true, &run("knapsack"), &alice, Some(knapsack)).await;
    assert_eq!(st, 202, "{body}");
    let a_run = serde_json::from_str::<Value>(&body).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, body) = call(&http, true, &run("hello"), &bob, Some(hello)).await;
    assert_eq!(st, 202, "{body}");
    let b_run = serde_json::from_str::<Value>(&body).unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = |alg: &str, id: &str| format!("{base}/algorithm/v1/results/{alg}/requests/{id}");
    let cancel = |alg: &str, id: &str| format!("{base}/algorithm/v1/cancel/{alg}/requests/{id}");
    // (case, POST?, url, bearer, body, status, text of the answer)
    type Row<'a> = (
        &'a str,
        bool,
        String,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let table: Vec<Row> = vec![
        (
            "alice submits hello",
            true,
            run("hello"),
            &alice,
            Some(hello),
            403,
            "user 'alice@example.com' (no groups) may not submit runs of algorithm 'hello'",
        ),
        (
            "bob submits knapsack",
            true,
            run("knapsack"),
            &bob,
            Some(knapsack),
            403,
            "user 'bob@example.com' (no groups) may not submit runs of algorithm 'knapsack'",
        ),
        (
            "alice reads hers",
            false,
            res("knapsack", &a_run),
            &alice,
            None,
            200,
            "requestId",
        ),
        (
            "alice reads bob's",
            false,
            res("hello", &b_run),
            &alice,
            None,
            403,
            "may not read runs of algorithm 'hello'",
        ),
        (
            "bob reads his",
            false,
            res("hello", &b_run),
            &bob,
            None,
            200,
            "requestId",
        ),
        (
            "bob reads alice's",
            false,
            res("knapsack", &a_run),
            &bob,
            None,
            403,
            "may not read runs of algorithm 'knapsack'",
        ),
        (
            "bob cancels alice's",
            true,
            cancel("knapsack", &a_run),
            &bob,
            None,
            403,
            "may not cancel",
        ),
        (
            "token for another audience",
            false,
            res("knapsack", &a_run),
            &foreign,
            None,
            401,
            "the token is for audience \"other-app\", not for this API: expected one of [nexus]",
        ),
        (
            "not a token",
            false,
            res("knapsack", &a_run),
            "garbage",
            None,
            401,
            "neither a configured API key nor a JWT",
        ),
        (
            "alice cancels hers",
            true,
            cancel("knapsack", &a_run),
            &alice,
            None,
            200,
            "",
        ),
    ];
    for (name, post, url, bearer, body, status, text) in table {
        let (st, got) = call(&http, post, &url, bearer, body).await;
        assert_eq!(st, status, "{name}: {got}");
        assert!(got.contains(text), "{name}: {got:?} lacks {text:?}");
    }
    // gRPC with the same tokens.
    let sdk = |t: &str| {
        let (base, t) = (base.clone(), t.to_owned());
        async move {
            nexus_sdk::Nexus::connect_with(
                &base,
                None,
                nexus_sdk::ConnectOptions {
                    token: Some(t),
                    ca_file: None,
                },
            )
            .await
            .unwrap()
            .with_retry_for(Duration::from_secs(5))
        }
    };
    let created = sdk(&alice)
        .await
        .create("knapsack", &json!({"capacity": 1, "items": []}))
        .await
        .unwrap();
    let e = sdk(&bob).await.get(&created).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    let e = sdk(&foreign).await.get(&created).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_its_expiry() {
    let data = tempfile::tempdir().unwrap();
    let h = start(data.path()).await;
    let http = reqwest::Client::new();
    let t = token(&http, "alice@example.com", "nexus").await;
    let url = format!("{}/algorithm/v1/results/tags/expiry", h.url);
    assert_eq!(call(&http, false, &url, &t, None).await.0, 200);
    // Dex's ID tokens live NEXUS_DEX_ID_TOKENS (8 s in scripts/dex.sh); the skew is 1 s. The
    // verified token is cached, and the cache honours the expiry too.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (st, body) = call(&http, false, &url, &t, None).await;
        if st == 401 {
            assert!(body.contains("the token expired at"), "{body}");
            assert!(
                body.contains(&format!("get a new one from {}", issuer())),
                "{body}"
            );
            break;
        }
        assert_eq!(st, 200, "{body}");
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_picked_up() {
    let data = tempfile::tempdir().unwrap();
    let h = start(data.path()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/algorithm/v1/results/tags/rotation", h.url);
    let first = token(&http, "alice@example.com", "nexus").await;
    assert_eq!(call(&http, false, &url, &first, None).await.0, 200);
    let old_kid = kid(&first);
    // Dex rotates its signing key every 30 s (signingKeys 10s, checked every 30 s): wait for a
    // token signed by a key the scheduler has not seen.
    let deadline = Instant::now() + Duration::from_secs(120);
    let rotated = loop {
        let t = token(&http, "alice@example.com", "nexus").await;
        if kid(&t) != old_kid {
            break t;
        }
        assert!(Instant::now() < deadline, "Dex never rotated its key");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (st, body) = call(&http, false, &url, &rotated, None).await;
    assert_eq!(st, 200, "a token of the new key: {body}");
    h.stop().await;
}
