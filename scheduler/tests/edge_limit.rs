//! Edge rate limiting over real sockets (the peer address comes from the connection): a client
//! past its burst gets 429 with `Retry-After` and an error body in the API's shape; probes and
//! `/metrics` are never limited; a disabled limiter never refuses.
//!
//! The limit is 1 per second with bursts of 2, so a third request within a second is refused:
//! three requests on loopback take milliseconds, and nothing asserts on time.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use nexus_http::{Readiness, health_routes, negotiate_errors};
use nexus_scheduler::edge::{EdgeLimitConfig, EdgeLimitKey, apply};
use tokio_util::sync::CancellationToken;

/// Serves an API route under the limiter, plus probes and `/metrics`, composed as standalone
/// composes them; returns the base URL. The server stops when `stop` is cancelled.
async fn serve(config: &EdgeLimitConfig, stop: &CancellationToken) -> String {
    let api = Router::new()
        .route(
            "/algorithm/v1/run/{alg}",
            post(|| async { StatusCode::ACCEPTED }),
        )
        .route("/algorithm/v1/results/{alg}", get(|| async { "{}" }));
    let ready = Readiness::default();
    ready.set(true);
    let app = Router::new()
        .merge(apply(config, api, stop.clone()))
        .merge(health_routes(ready))
        .route("/metrics", get(|| async { "# metrics" }))
        .layer(axum::middleware::from_fn(negotiate_errors));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn limited(key: EdgeLimitKey) -> EdgeLimitConfig {
    EdgeLimitConfig {
        enabled: true,
        per_second: 1,
        burst: 2,
        key,
    }
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

#[tokio::test]
async fn a_client_past_its_burst_gets_429_with_retry_after() {
    let stop = CancellationToken::new();
    let base = serve(&limited(EdgeLimitKey::PeerIp), &stop).await;
    let http = reqwest::Client::new();
    let run = format!("{base}/algorithm/v1/run/knapsack");

    assert_eq!(http.post(&run).send().await.unwrap().status(), 202);
    assert_eq!(
        http.get(format!("{base}/algorithm/v1/results/knapsack"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Refused, as text by default…
    let r = http.post(&run).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("too many requests from this client"),
        "{text}"
    );
    assert!(text.contains("retry after"), "{text}");

    // …and as a problem when the client asks for JSON.
    let r = http
        .post(&run)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["status"], 429);
    assert_eq!(p["title"], "Too Many Requests");
    assert_eq!(p["instance"], "/algorithm/v1/run/knapsack");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("limit: 1 per second, bursts of 2"),
        "{p}"
    );

    // Probes and metrics stay reachable while the client is limited.
    for path in ["/health/livez", "/health/readyz", "/metrics"] {
        for _ in 0..5 {
            let s = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 200, "{path}");
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn peer_ip_ignores_forwarded_headers() {
    let stop = CancellationToken::new();
    let base = serve(&limited(EdgeLimitKey::PeerIp), &stop).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/algorithm/v1/results/a");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = http
            .get(&url)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "a spoofed header buys no budget");
    stop.cancel();
}

#[tokio::test]
async fn forwarded_key_gives_each_forwarded_client_its_own_budget() {
    let stop = CancellationToken::new();
    let base = serve(&limited(EdgeLimitKey::Forwarded), &stop).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/algorithm/v1/results/a");
    let get = |client: &'static str| {
        let r = http.get(&url).header("x-forwarded-for", client).send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(get("203.0.113.1").await, 200);
    assert_eq!(get("203.0.113.1").await, 200);
    assert_eq!(get("203.0.113.1").await, 429);
    // Same peer, another forwarded client: a fresh budget.
    assert_eq!(get("203.0.113.2").await, 200);
    stop.cancel();
}

#[tokio::test]
async fn disabled_never_refuses() {
    let stop = CancellationToken::new();
    let config = EdgeLimitConfig {
        enabled: false,
        ..limited(EdgeLimitKey::PeerIp)
    };
    let base = serve(&config, &stop).await;
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let s = http
            .post(format!("{base}/algorithm/v1/run/knapsack"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 202);
    }
    stop.cancel();
}
