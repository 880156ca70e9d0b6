//! `auth-accept`: the accept throughput of one standalone Nexus without authentication, with
//! OIDC bearer tokens and with API keys, in the same process run (issue #21: authenticated
//! accept within 10 % of unauthenticated accept).
//!
//! The OIDC issuer is served in-process on loopback (discovery + a JWKS of one ES256 key, the
//! tokens signed here): what is measured is Nexus' side — header parsing, the verified-token cache
//! (one token per client, as a client reuses its token), rule evaluation and the audit line.
//! Phases alternate (none, oidc, api key, twice) so drift of a shared machine hits all three.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::json;

use crate::{Load, MAX_REQUESTS, PHASE_LIMIT, accept_body, instant, load_client, start_nexus};

/// A loopback OIDC issuer with one ES256 key; returns its URL and a token minter.
async fn issuer() -> anyhow::Result<(String, impl Fn(&str) -> String + Clone)> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let raw = kp.public_key_raw().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "bench",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    let l = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}/idp", l.local_addr()?);
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
    let keys = json!({"keys": [jwk]});
    let app = axum::Router::new()
        .route(
            "/idp/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/idp/keys",
            axum::routing::get(move || async move { axum::Json(keys) }),
        );
    tokio::spawn(async move { axum::serve(l, app).await });
    let enc = Arc::new(jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()));
    let iss = url.clone();
    let mint = move |sub: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("bench".into());
        let claims = json!({"iss": iss, "aud": "nexus", "sub": sub, "groups": ["bench"],
            "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(&h, &claims, &enc).unwrap_or_default()
    };
    Ok((url, mint))
}

/// Closed loop as `crate::drive`, each client with its own `Authorization` value.
async fn drive_as(
    name: &str,
    url: &str,
    concurrency: usize,
    duration: Duration,
    bearer: &(dyn Fn(usize) -> Option<String> + Sync),
) -> anyhow::Result<Load> {
    let client = load_client(concurrency)?;
    let body = Arc::new(accept_body());
    let url = Arc::new(url.to_owned());
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration.min(PHASE_LIMIT);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, body, url, sent) = (client.clone(), body.clone(), url.clone(), sent.clone());
        let auth = bearer(i);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut non_202, mut errors) = (Vec::with_capacity(1 << 14), 0usize, 0usize);
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let t0 = Instant::now();
                let mut req = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_bytes().to_vec());
                if let Some(a) = &auth {
                    req = req.header("authorization", a.as_str());
                }
                match req.send().await {
                    Ok(resp) => {
                        let st = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        if st == 202 {
                            lat.push(t0.elapsed());
                        } else {
                            non_202 += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, non_202, errors)
        }));
    }
    let (mut latencies, mut non_202, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, n, e) = t.await.context("load task panicked")?;
        latencies.extend(l);
        non_202 += n;
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Load {
        name: name.to_owned(),
        concurrency,
        ok: latencies.len(),
        non_202,
        errors,
        elapsed,
        latencies,
        cpu: crate::cpu::Used::default(),
    })
}

/// Runs the three configurations in alternation, `rounds` times each; returns every phase.
pub(crate) async fn bench_auth_accept(
    concurrency: usize,
    duration: Duration,
    rounds: usize,
) -> anyhow::Result<Vec<Load>> {
    anyhow::ensure!(
        (1..=4096).contains(&concurrency),
        "--concurrency must be between 1 and 4096"
    );
    let (iss, mint) = issuer().await?;
    let key = nexus_auth::apikey::generate();
    let section: nexus_auth::AuthConfig = serde_json::from_value(json!({
        "mode": "required",
        "oidc": {"issuer": iss, "audiences": ["nexus"]},
        "api_keys": {"keys": [{"name": "bench-key", "sha256": nexus_auth::apikey::hash(&key), "groups": ["bench"]}]},
        "rules": [{"groups": ["bench"], "actions": ["submit"], "algorithms": ["knapsack"]}],
    }))?;
    let parked =
        |tx, _| -> Arc<dyn nexus_executor::Executor> { Arc::new(instant::ParkedExecutor::new(tx)) };
    let open = start_nexus(|_| {}, parked).await?;
    let guarded = start_nexus(move |c| c.auth = section, parked).await?;
    let target = |n: &crate::Nexus| format!("{}/algorithm/v1/run/knapsack", n.handle.url);
    // Wait until the issuer's keys are loaded (503 before).
    let probe = load_client(1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = probe
            .post(target(&guarded))
            .header("authorization", format!("Bearer {}", mint("probe")))
            .header("content-type", "application/json")
            .body(accept_body())
            .send()
            .await?
            .status()
            .as_u16();
        if st == 202 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "issuer keys never loaded ({st})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens: Vec<String> = (0..concurrency)
        .map(|i| format!("Bearer {}", mint(&format!("client-{i}"))))
        .collect();
    let api_key = format!("Bearer {key}");
    let mut out = Vec::new();
    for round in 1..=rounds {
        eprintln!(
            "auth-accept: round {round}/{rounds}, concurrency {concurrency}, {duration:?} per phase …"
        );
        out.push(
            drive_as(
                "accept, auth none",
                &target(&open),
                concurrency,
                duration,
                &|_| None,
            )
            .await?,
        );
        out.push(
            drive_as(
                "accept, OIDC token",
                &target(&guarded),
                concurrency,
                duration,
                &|i| Some(tokens[i].clone()),
            )
            .await?,
        );
        out.push(
            drive_as(
                "accept, API key",
                &target(&guarded),
                concurrency,
                duration,
                &|_| Some(api_key.clone()),
            )
            .await?,
        );
    }
    open.stop().await;
    guarded.stop().await;
    Ok(out)
}

/// Sum of accepted runs over the phases named `name`, per second.
pub(crate) fn rate_of(loads: &[Load], name: &str) -> f64 {
    let (ok, secs) = loads
        .iter()
        .filter(|l| l.name == name)
        .fold((0usize, 0f64), |(o, s), l| {
            (o + l.ok, s + l.elapsed.as_secs_f64())
        });
    ok as f64 / secs.max(1e-9)
}
