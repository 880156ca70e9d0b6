//! Edge rate limiting: a per-client token bucket (tower-governor) in front of the HTTP API.
//!
//! Owns [`EdgeLimitConfig`] (section `rate_limit`) and [`apply`], which wraps a router in the
//! limiter. A client is keyed on its peer IP, or, behind a trusted proxy, on the address the proxy
//! forwards. A refused request answers 429 with `Retry-After` as an [`ApiError`], so the
//! `negotiate_errors` middleware renders it like every other error (text/plain or
//! problem+json), and is counted in `nexus_scheduler_requests_rejected_total{reason="rate_limited"}`.
//!
//! Invariants: disabled, [`apply`] returns the router untouched; the keyed state is pruned on an
//! interval so memory stays bounded however many clients come and go. It must not be applied to
//! health probes or `/metrics`: the caller applies it to the API router before merging those.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use nexus_http::ApiError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::{KeyExtractor, PeerIpKeyExtractor, SmartIpKeyExtractor};

use crate::metrics;

/// How often buckets of clients that have been idle long enough to be full again are dropped.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// What identifies a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeLimitKey {
    /// The TCP peer's IP address. Behind a reverse proxy every client shares the proxy's address,
    /// hence one budget.
    #[default]
    PeerIp,
    /// The first address in `X-Forwarded-For`, else `X-Real-IP`, else `Forwarded: for=`, else the
    /// peer IP. **Only behind a trusted proxy that overwrites these headers**: anyone reaching
    /// the port directly can put any address there and so get a fresh budget per request.
    Forwarded,
}

/// Edge rate limiting per client (section `rate_limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeLimitConfig {
    /// Limit requests per client; off by default (standalone binds to loopback, one user).
    pub enabled: bool,
    /// Sustained requests per second per client.
    pub per_second: u64,
    /// Requests a client may make at once before the sustained rate applies.
    pub burst: u32,
    /// What identifies a client: `peer_ip` or `forwarded` (only behind a trusted proxy).
    pub key: EdgeLimitKey,
}

impl Default for EdgeLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            per_second: 50,
            burst: 100,
            key: EdgeLimitKey::PeerIp,
        }
    }
}

impl EdgeLimitConfig {
    /// Checks the values (also when disabled, so turning it on cannot reveal a bad value late).
    ///
    /// # Errors
    /// A message naming each bad key and what would be valid.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if self.per_second == 0 {
            e.push("rate_limit.per_second: must be at least 1".to_owned());
        } else if self.per_second > 1_000_000_000 {
            e.push("rate_limit.per_second: must be at most 1000000000".to_owned());
        }
        if self.burst == 0 {
            e.push("rate_limit.burst: must be at least 1".to_owned());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// Returns `router` with the per-client limiter in front of every route it has now (routes merged
/// later are not limited), or `router` unchanged when `config.enabled` is false.
///
/// Spawns a task that prunes idle clients' state every minute; it ends when `shutdown` is
/// cancelled or the router is dropped. Must be called inside a Tokio runtime. The server must
/// be started with `into_make_service_with_connect_info::<SocketAddr>()`, otherwise the peer
/// address is unknown and requests are refused with 500 saying so.
///
/// # Panics
/// When `config` does not pass [`EdgeLimitConfig::validate`].
pub fn apply(config: &EdgeLimitConfig, router: Router, shutdown: CancellationToken) -> Router {
    if !config.enabled {
        return router;
    }
    match config.key {
        EdgeLimitKey::PeerIp => layer(config, PeerIpKeyExtractor, router, shutdown),
        EdgeLimitKey::Forwarded => layer(config, SmartIpKeyExtractor, router, shutdown),
    }
}

fn layer<K>(config: &EdgeLimitConfig, key: K, router: Router, shutdown: CancellationToken) -> Router
where
    K: KeyExtractor + Send + Sync + 'static,
    K::Key: Send + Sync + 'static,
{
    let governor = GovernorConfigBuilder::default()
        // `per_second` here is requests per second; governor wants the interval between two.
        .period(Duration::from_nanos(
            1_000_000_000 / config.per_second.max(1),
        ))
        .burst_size(config.burst)
        .key_extractor(key)
        .finish()
        .expect("validate() ensures per_second and burst are at least 1");
    // Weak: the router owns the limiter; the cleanup task must not keep it alive.
    let limiter = Arc::downgrade(governor.limiter());
    tokio::spawn(cleanup(
        move || {
            let l = limiter.upgrade()?;
            l.retain_recent();
            l.shrink_to_fit();
            Some(l.len())
        },
        shutdown,
    ));
    let (per_second, burst) = (config.per_second, config.burst);
    router.layer(GovernorLayer::new(governor).error_handler(move |e| refusal(e, per_second, burst)))
}

/// Calls `prune` (which drops the state of clients whose bucket is full again: they are
/// indistinguishable from new ones, as tower-governor recommends) every [`CLEANUP_INTERVAL`], so
/// memory follows the clients active in the last interval. Ends when `stop` is cancelled or
/// `prune` returns `None` (the limiter was dropped with its router).
async fn cleanup(prune: impl Fn() -> Option<usize>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CLEANUP_INTERVAL);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(clients) = prune() else { return };
        tracing::debug!(clients, "rate limiter state pruned");
    }
}

/// Maps the limiter's error to the API's error shape (negotiated by `negotiate_errors`).
fn refusal(e: GovernorError, per_second: u64, burst: u32) -> Response<Body> {
    let err = match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics::rejected("rate_limited");
            // governor truncates the wait to whole seconds; round up so a retry at that time
            // succeeds.
            let after = wait_time.saturating_add(1);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests from this client (limit: {per_second} per second, bursts \
                     of {burst}); retry after {after}s"
                ),
            );
            err.retry_after = Some(after);
            err
        }
        GovernorError::UnableToExtractKey => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate limiting is enabled but the client's address is unknown: the server must be \
             started with connect info",
        ),
        GovernorError::Other { code, msg, .. } => ApiError::new(
            code,
            msg.unwrap_or_else(|| "rate limiting failed".to_owned()),
        ),
    };
    err.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = EdgeLimitConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.key, EdgeLimitKey::PeerIp);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let c = EdgeLimitConfig {
            per_second: 0,
            burst: 0,
            ..EdgeLimitConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("rate_limit.per_second: must be at least 1"),
            "{e}"
        );
        assert!(e.contains("rate_limit.burst: must be at least 1"), "{e}");
    }

    #[test]
    fn keys_and_unknown_fields() {
        let c: EdgeLimitConfig =
            serde_json::from_str(r#"{"enabled": true, "key": "forwarded"}"#).unwrap();
        assert!(c.enabled);
        assert_eq!(c.key, EdgeLimitKey::Forwarded);
        assert_eq!(c.burst, EdgeLimitConfig::default().burst);
        let e = serde_json::from_str::<EdgeLimitConfig>(r#"{"key": "header"}"#).unwrap_err();
        assert!(e.to_string().contains("peer_ip"), "{e}");
        let e = serde_json::from_str::<EdgeLimitConfig>(r#"{"per_secnd": 3}"#).unwrap_err();
        assert!(e.to_string().contains("per_secnd"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_prunes_every_interval_until_stopped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(cleanup(
            move || Some(c.fetch_add(1, Ordering::SeqCst)),
            stop.clone(),
        ));
        tokio::time::sleep(CLEANUP_INTERVAL * 3 + Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_ends_with_the_limiter() {
        // `prune` answers None once the router (and so the limiter) is gone.
        cleanup(|| None, CancellationToken::new()).await;
    }
}
