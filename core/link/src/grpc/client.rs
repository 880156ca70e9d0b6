//! [`GrpcShard`]: the client side of the [`Shard`] seam over gRPC: batching submits per endpoint,
//! health of each endpoint, bearer credentials on every call, and the endpoint set of a shard
//! kept current by re-resolving DNS names ([`super::resolve`]).
//!
//! Invariants: the endpoint set is a snapshot (`Arc<[Arc<EndpointState>]>`) replaced whole by a
//! resolution; an address that disappears is no longer picked, and its channel closes when the
//! last call that holds it ends; an address that stays keeps its health. A failed or empty
//! resolution never shrinks the set.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use nexus_proto::grpc::shard_service_client::ShardServiceClient;
use nexus_proto::grpc::{
    CancelRequest, CapacityRequest, CapacityResponse, Code, DescribeRequest, LogsRequest,
    RunDispatch, SubmitRequest, SubmitResult,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::config::*;
use super::resolve::{RESOLVE_INTERVAL_MAX, RESOLVE_INTERVAL_MIN, Resolver, Target};
use super::wire::*;
use crate::shard::{Dispatch, LogStream, Shard, ShardError};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};

/// Longest wait for one receiver's answer to a describe (explain must answer promptly).
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one receiver to start answering a logs call (it looks the run's pods up
/// first); the stream itself lasts as long as the receiver sends.
pub const LOGS_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Tuning of a [`GrpcShard`].
#[derive(Debug, Clone, Copy)]
pub struct GrpcShardOptions {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one call, connection excluded.
    pub request_timeout: Duration,
    /// Most runs in one `Submit` call.
    pub batch_max: usize,
    /// How long a batch waits for more runs, only when more were already queued.
    pub batch_linger: Duration,
    /// Submit calls in flight at once (further batches wait, and grow meanwhile).
    pub max_in_flight: usize,
    /// How long a failing endpoint is left alone (doubles while it keeps failing).
    pub down_for: Duration,
    /// Longest time an endpoint is left alone.
    pub down_max: Duration,
    /// How often an endpoint whose host is a DNS name is resolved again (kept within
    /// [`RESOLVE_INTERVAL_MIN`]..=[`RESOLVE_INTERVAL_MAX`]); IP literals are never resolved.
    pub resolve_interval: Duration,
}

impl Default for GrpcShardOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            batch_max: 64,
            batch_linger: Duration::from_millis(2),
            max_in_flight: 8,
            down_for: Duration::from_secs(2),
            down_max: Duration::from_secs(30),
            resolve_interval: Duration::from_secs(10),
        }
    }
}

/// Adds `authorization: Bearer <secret>` to every call (shared-secret mode).
#[derive(Clone)]
pub(crate) struct BearerInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(crate) type Client = ShardServiceClient<InterceptedService<Channel, BearerInterceptor>>;

pub(crate) struct EndpointState {
    url: String,
    client: Client,
    health: std::sync::Mutex<Health>,
}

#[derive(Default)]
pub(crate) struct Health {
    /// Left alone until then.
    down_until: Option<Instant>,
    /// The last down period (zero after a success).
    backoff: Duration,
}

impl EndpointState {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Each critical section assigns two fields: a poisoned lock still holds consistent data.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_down(&self, now: Instant) -> bool {
        self.health().down_until.is_some_and(|t| t > now)
    }

    fn mark_up(&self) {
        let mut h = self.health();
        h.down_until = None;
        h.backoff = Duration::ZERO;
    }
}

/// One configured endpoint URL: an IP literal (one fixed endpoint) or a DNS name (one endpoint
/// per resolved address).
struct Source {
    target: Target,
    /// TLS of its endpoints (`https://`), verifying the configured host name.
    tls: Option<ClientTlsConfig>,
}

/// The endpoints of every source, replaced whole when a resolution changes them.
#[derive(Clone, Default)]
struct EndpointSet {
    /// Every endpoint, the order `pick` rotates through.
    all: Arc<[Arc<EndpointState>]>,
    /// Per source (same order as `Inner::sources`): its endpoints.
    by_source: Vec<Vec<Arc<EndpointState>>>,
    /// Per source: the last resolution error, for the message when it has no address.
    last_error: Vec<Option<String>>,
}

pub(crate) struct Inner {
    shard: String,
    sources: Vec<Source>,
    set: std::sync::RwLock<EndpointSet>,
    resolver: Resolver,
    /// Serialises resolutions (the periodic task, tests calling `refresh`).
    refreshing: tokio::sync::Mutex<()>,
    /// True once every DNS name had its first resolution (whatever the answer).
    resolved: watch::Sender<bool>,
    interceptor: BearerInterceptor,
    next: AtomicUsize,
    opts: GrpcShardOptions,
    in_flight: Arc<Semaphore>,
    /// `Submit` calls attempted (every endpoint tried counts).
    submit_calls: AtomicU64,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcShard")
            .field("shard", &self.shard)
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(|s| &s.target.url)
                    .collect::<Vec<_>>(),
            )
            .field("endpoints", &self.endpoint_urls())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Pending {
    wire: RunDispatch,
    reply: oneshot::Sender<Result<(), ShardError>>,
}

/// The [`Shard`] of a remote shard cluster: its receivers' `nexus.v1.ShardService` endpoints.
///
/// Concurrent submits are gathered into `Submit` batches by a background task; batches are
/// balanced round robin across the endpoints, and an endpoint that fails at the transport level
/// (or answers UNAVAILABLE) is left alone for a while and the batch is retried at once on the
/// next one. Cancels go to every live endpoint (each receiver only knows its own runs).
#[derive(Debug, Clone)]
pub struct GrpcShard {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Pending>,
}

impl GrpcShard {
    /// Builds the client of one shard, resolving DNS names with the system resolver. Channels
    /// connect lazily; must be called inside a tokio runtime (it spawns the batching task, and
    /// the resolving task when an endpoint's host is a DNS name; both end when the last clone is
    /// dropped).
    ///
    /// # Errors
    /// No endpoints, an endpoint that is not an `http://` / `https://` URL, or an `http://`
    /// endpoint while TLS is configured.
    pub fn new(
        shard_name: &str,
        endpoints: &[String],
        creds: &LinkCredentials,
        opts: GrpcShardOptions,
    ) -> Result<Self, String> {
        Self::with_resolver(shard_name, endpoints, creds, opts, Resolver::dns())
    }

    /// [`GrpcShard::new`] with the resolver of DNS names given.
    ///
    /// An endpoint whose host is a DNS name stands for one endpoint per address it resolves to
    /// (same scheme and port; TLS still verifies the DNS name), resolved at once and again every
    /// `resolve_interval`. An IP-literal endpoint is used as written.
    ///
    /// # Errors
    /// As [`GrpcShard::new`].
    pub fn with_resolver(
        shard_name: &str,
        endpoints: &[String],
        creds: &LinkCredentials,
        opts: GrpcShardOptions,
        resolver: Resolver,
    ) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err(format!(
                "shard {shard_name}: no gRPC endpoints; list the receivers' addresses (http://host:port or https://host:port)"
            ));
        }
        let opts = GrpcShardOptions {
            batch_max: opts.batch_max.max(1),
            max_in_flight: opts.max_in_flight.max(1),
            resolve_interval: opts
                .resolve_interval
                .clamp(RESOLVE_INTERVAL_MIN, RESOLVE_INTERVAL_MAX),
            ..opts
        };
        let interceptor = BearerInterceptor(creds.bearer());
        let mut sources = Vec::with_capacity(endpoints.len());
        let mut set = EndpointSet::default();
        for url in endpoints {
            let https = url.starts_with("https://");
            if !(https || url.starts_with("http://")) {
                return Err(format!(
                    "shard {shard_name}: endpoint '{url}' must start with http:// or https://"
                ));
            }
            if !https && creds.tls_enabled() {
                return Err(format!(
                    "shard {shard_name}: endpoint '{url}' is http:// but grpc TLS is configured; use https://"
                ));
            }
            let target = Target::parse(url)
                .map_err(|e| format!("shard {shard_name}: endpoint '{url}' {e}"))?;
            let tls = https.then(|| match target.ip {
                // As before resolution existed: the URL's host (or grpc.tls_server_name).
                Some(_) => creds.client_tls(),
                // The certificate names the Service, not a pod address.
                None => creds.client_tls_for(&target.host),
            });
            let source = Source { target, tls };
            // Checks the URL and the TLS config now, whatever DNS will answer later.
            let first = endpoint_state(shard_name, &source, url.clone(), &opts, &interceptor)?;
            set.by_source.push(if source.target.ip.is_some() {
                vec![Arc::new(first)]
            } else {
                Vec::new()
            });
            set.last_error.push(None);
            sources.push(source);
        }
        set.all = set.by_source.iter().flatten().cloned().collect();
        let dns = sources.iter().any(|s| s.target.ip.is_none());
        let inner = Arc::new(Inner {
            shard: shard_name.to_owned(),
            sources,
            set: std::sync::RwLock::new(set),
            resolver,
            refreshing: tokio::sync::Mutex::new(()),
            resolved: watch::Sender::new(!dns),
            interceptor,
            next: AtomicUsize::new(0),
            opts,
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight)),
            submit_calls: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(opts.batch_max * opts.max_in_flight * 4);
        tokio::spawn(batcher(inner.clone(), rx));
        if dns {
            tokio::spawn(resolve_loop(Arc::downgrade(&inner), opts.resolve_interval));
        }
        Ok(Self { inner, queue: tx })
    }

    /// Returns the URLs of the endpoints in use now (DNS names resolved to addresses).
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoint_urls()
    }

    /// Resolves every DNS name of the shard now, outside the periodic schedule, and updates the
    /// endpoint set (a failed or empty answer keeps the last known addresses).
    pub async fn resolve_now(&self) {
        self.inner.refresh().await;
    }

    /// Returns the shard's name.
    #[must_use]
    pub fn shard(&self) -> &str {
        &self.inner.shard
    }

    /// Returns how many `Submit` calls were attempted so far (each endpoint tried counts): with
    /// batching, fewer than the runs submitted under load.
    #[must_use]
    pub fn submit_calls(&self) -> u64 {
        self.inner.submit_calls.load(Ordering::Relaxed)
    }

    /// Asks every endpoint for its capacity, concurrently; one answer per endpoint, in order.
    pub async fn capacity(&self) -> Vec<(String, Result<CapacityResponse, ShardError>)> {
        let endpoints = self.inner.snapshot();
        let calls = endpoints.iter().map(|ep| async move {
            let mut client = ep.client.clone();
            let res = client
                .capacity(CapacityRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| error_of_status(&self.inner.shard, &ep.url, &s));
            (ep.url.clone(), res)
        });
        futures::future::join_all(calls).await
    }
}

#[async_trait]
impl Shard for GrpcShard {
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            wire: dispatch_to_wire(&dispatch),
            reply: tx,
        };
        let stopped = || {
            ShardError::new(
                ErrorKind::Unavailable,
                format!("shard {}: the gRPC client is stopping", self.inner.shard),
            )
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    fn receivers(&self) -> Vec<crate::shard::ReceiverHealth> {
        let now = Instant::now();
        self.inner
            .snapshot()
            .iter()
            .map(|ep| crate::shard::ReceiverHealth {
                endpoint: ep.url.clone(),
                down_for: ep
                    .health()
                    .down_until
                    .filter(|t| *t > now)
                    .map(|t| t.duration_since(now)),
            })
            .collect()
    }

    async fn describe(&self, run_id: RunId) -> Vec<String> {
        self.inner.await_first_resolution().await;
        let endpoints = self.inner.snapshot();
        let calls = endpoints.iter().map(|ep| async move {
            let mut client = ep.client.clone();
            let asked = client.describe(DescribeRequest {
                run_id: run_id.to_string(),
            });
            match tokio::time::timeout(DESCRIBE_TIMEOUT, asked).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    r.facts
                        .into_iter()
                        .map(|f| format!("receiver {}: {f}", r.receiver_id))
                        .collect()
                }
                // A receiver older than this call has nothing to say.
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Vec::new(),
                Ok(Err(s)) => vec![format!(
                    "receiver at {} did not answer: {}",
                    ep.url,
                    error_of_status(&self.inner.shard, &ep.url, &s)
                )],
                Err(_) => vec![format!(
                    "receiver at {} did not answer within {DESCRIBE_TIMEOUT:?}",
                    ep.url
                )],
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Asks the shard's receivers one after the other (each receiver of a shard reads the same
    /// cluster, so the first that has the run's output answers for all); a receiver that does
    /// not know the run (NOT_FOUND) or the call (an older receiver: UNIMPLEMENTED) passes to the
    /// next. A failure of the stream after it started ends it with a line saying so.
    async fn logs(&self, run_id: RunId, follow: bool) -> Result<Option<LogStream>, ShardError> {
        self.inner.await_first_resolution().await;
        let endpoints = self.inner.snapshot();
        let mut failed: Option<ShardError> = None;
        for ep in endpoints.iter() {
            let mut client = ep.client.clone();
            let asked = client.logs(LogsRequest {
                run_id: run_id.to_string(),
                follow,
            });
            match tokio::time::timeout(LOGS_OPEN_TIMEOUT, asked).await {
                Ok(Ok(resp)) => return Ok(Some(log_chunks(ep.url.clone(), resp.into_inner()))),
                Ok(Err(s))
                    if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {}
                Ok(Err(s)) => {
                    tracing::debug!(shard = %self.inner.shard, endpoint = %ep.url, error = %s.message(), "logs: the receiver refused; trying the next");
                    failed = Some(error_of_status(&self.inner.shard, &ep.url, &s));
                }
                Err(_) => {
                    failed = Some(ShardError::new(
                        ErrorKind::Timeout,
                        format!(
                            "shard {}: receiver at {} did not start sending the run's output within {LOGS_OPEN_TIMEOUT:?}",
                            self.inner.shard, ep.url
                        ),
                    ));
                }
            }
        }
        failed.map_or(Ok(None), Err)
    }

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError> {
        let inner = &self.inner;
        inner.await_first_resolution().await;
        let endpoints = inner.snapshot();
        let now = Instant::now();
        let live: Vec<&Arc<EndpointState>> = endpoints.iter().filter(|e| !e.is_down(now)).collect();
        // When every endpoint is marked down, try them all anyway: a cancel is rare and worth it.
        let targets = if live.is_empty() {
            endpoints.iter().collect()
        } else {
            live
        };
        let req = CancelRequest {
            run_id: run_id.to_string(),
            policy: policy_to_wire(policy).to_owned(),
        };
        let calls = targets.into_iter().map(|ep| {
            let req = req.clone();
            async move {
                let mut client = ep.client.clone();
                match client.cancel(req).await {
                    Ok(_) => {
                        ep.mark_up();
                        Ok(true)
                    }
                    Err(s) if is_endpoint_failure(&s) => {
                        inner.mark_down(ep);
                        Ok(false)
                    }
                    Err(s) => Err(error_of_status(&inner.shard, &ep.url, &s)),
                }
            }
        });
        let mut reached = false;
        for r in futures::future::join_all(calls).await {
            reached |= r?;
        }
        if reached {
            Ok(())
        } else {
            Err(inner.all_down_error())
        }
    }
}

/// True when the endpoint itself failed (connection refused, reset, TLS handshake, receiver
/// stopping): the call may be retried elsewhere at once.
pub(crate) fn is_endpoint_failure(s: &tonic::Status) -> bool {
    // `Unknown`: tonic's code for a call cut off by a broken connection ("transport error").
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
}

/// Builds the state of one endpoint of `source` at `url` (its channel connects lazily).
fn endpoint_state(
    shard: &str,
    source: &Source,
    url: String,
    opts: &GrpcShardOptions,
    interceptor: &BearerInterceptor,
) -> Result<EndpointState, String> {
    let configured = &source.target.url;
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("shard {shard}: endpoint '{configured}' is not a URL: {e}"))?
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.request_timeout)
        .tcp_nodelay(true);
    if source.target.ip.is_none() {
        // Requests name the configured host (`:authority`), not the pod address dialled.
        ep = ep.origin(source.target.uri.clone());
    }
    if let Some(tls) = &source.tls {
        ep = ep.tls_config(tls.clone()).map_err(|e| {
            format!("shard {shard}: endpoint '{configured}': TLS configuration refused: {e}")
        })?;
    }
    Ok(EndpointState {
        url,
        client: ShardServiceClient::with_interceptor(ep.connect_lazy(), interceptor.clone()),
        health: std::sync::Mutex::new(Health::default()),
    })
}

/// Resolves the shard's DNS names at once, then every `every`, until the shard is dropped.
async fn resolve_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            inner.refresh().await;
        }
        tokio::time::sleep(every).await;
    }
}

impl Inner {
    /// Returns the endpoints in use now.
    fn snapshot(&self) -> Arc<[Arc<EndpointState>]> {
        // Written whole under the lock: a poisoned lock still holds a consistent set.
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .all
            .clone()
    }

    fn endpoint_urls(&self) -> Vec<String> {
        self.snapshot().iter().map(|e| e.url.clone()).collect()
    }

    /// Waits (at most `connect_timeout`) for the first resolution of the shard's DNS names, so
    /// calls made right after start do not fail for want of an address.
    async fn await_first_resolution(&self) {
        if *self.resolved.borrow() {
            return;
        }
        let mut rx = self.resolved.subscribe();
        let _ = tokio::time::timeout(self.opts.connect_timeout, rx.wait_for(|done| *done)).await;
    }

    /// Resolves every DNS name and replaces the endpoint set: one endpoint per address, reusing
    /// (with its health) the endpoint of an address that stays. A failed or empty answer keeps
    /// the source's last known endpoints.
    pub(crate) async fn refresh(&self) {
        let _serial = self.refreshing.lock().await;
        let lookups = self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.target.ip.is_none())
            .map(|(i, s)| async move { (i, self.resolver.resolve(&s.target.host).await) });
        let answers = futures::future::join_all(lookups).await;
        let mut set = self
            .set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (i, answer) in answers {
            let source = &self.sources[i];
            let host = source.target.host.as_str();
            let known = set.by_source[i].len();
            let ips = match answer {
                Err(e) => {
                    tracing::warn!(shard = %self.shard, host, known, error = %e, "resolving the shard's receivers failed; keeping the last known addresses");
                    crate::metrics::resolve_failure(&self.shard, "error");
                    set.last_error[i] = Some(e.to_string());
                    continue;
                }
                Ok(ips) if ips.is_empty() => {
                    tracing::warn!(shard = %self.shard, host, known, "the shard's receivers resolved to no address; keeping the last known addresses");
                    crate::metrics::resolve_failure(&self.shard, "empty");
                    set.last_error[i] = Some("no address".into());
                    continue;
                }
                Ok(ips) => ips,
            };
            set.last_error[i] = None;
            let old = std::mem::take(&mut set.by_source[i]);
            let mut now = Vec::with_capacity(ips.len());
            for ip in ips {
                let url = source.target.url_for(ip);
                if let Some(kept) = old.iter().find(|e| e.url == url) {
                    now.push(kept.clone());
                    continue;
                }
                match endpoint_state(&self.shard, source, url, &self.opts, &self.interceptor) {
                    Ok(ep) => now.push(Arc::new(ep)),
                    // Unreachable in practice: the same URL shape was accepted at start.
                    Err(e) => {
                        tracing::warn!(shard = %self.shard, host, error = %e, "skipping a resolved receiver address")
                    }
                }
            }
            let added: Vec<&str> = now
                .iter()
                .filter(|e| !old.iter().any(|o| o.url == e.url))
                .map(|e| e.url.as_str())
                .collect();
            let removed: Vec<&str> = old
                .iter()
                .filter(|o| !now.iter().any(|e| e.url == o.url))
                .map(|e| e.url.as_str())
                .collect();
            if !added.is_empty() || !removed.is_empty() {
                tracing::info!(shard = %self.shard, host, added = ?added, removed = ?removed, endpoints = now.len(), "the shard's receivers changed");
            }
            set.by_source[i] = now;
        }
        set.all = set.by_source.iter().flatten().cloned().collect();
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        self.resolved.send_replace(true);
    }

    /// Returns the next live endpoint not in `tried` (round robin over the current set, so an
    /// address removed meanwhile is not picked).
    fn pick(&self, tried: &[Arc<EndpointState>]) -> Option<Arc<EndpointState>> {
        let endpoints = self.snapshot();
        let n = endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|k| &endpoints[(start + k) % n])
            .find(|e| !tried.iter().any(|t| Arc::ptr_eq(t, e)) && !e.is_down(now))
            .cloned()
    }

    fn mark_down(&self, ep: &EndpointState) {
        let mut h = ep.health();
        let now = Instant::now();
        if h.down_until.is_some_and(|t| t > now) {
            // Already down: other batches in flight when it failed do not grow the back-off;
            // only a failed probe after the pause does.
            return;
        }
        h.backoff = if h.backoff.is_zero() {
            self.opts.down_for
        } else {
            (h.backoff * 2).min(self.opts.down_max)
        };
        h.down_until = Some(now + h.backoff);
        drop(h);
        tracing::warn!(shard = %self.shard, endpoint = %ep.url, "grpc endpoint marked down");
        crate::metrics::endpoint_down(&self.shard);
    }

    fn all_down_error(&self) -> ShardError {
        let set = self
            .set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if set.all.is_empty() {
            // Only DNS names can leave a shard without addresses, and only before any answer.
            let names: Vec<String> = self
                .sources
                .iter()
                .zip(&set.last_error)
                .map(|(s, e)| {
                    format!(
                        "{} ({})",
                        s.target.host,
                        e.as_deref().unwrap_or("not resolved yet")
                    )
                })
                .collect();
            return ShardError::new(
                ErrorKind::Unavailable,
                format!(
                    "shard {}: no receiver address: {} resolved to no address so far; retry later",
                    self.shard,
                    names.join(", ")
                ),
            );
        }
        let urls: Vec<&str> = set.all.iter().map(|e| e.url.as_str()).collect();
        ShardError::new(
            ErrorKind::Unavailable,
            format!(
                "shard {}: no receiver reachable (endpoints {}); retry later",
                self.shard,
                urls.join(", ")
            ),
        )
    }

    /// Sends one batch, failing over across endpoints, and answers every waiting submit.
    async fn send_batch(&self, batch: Vec<Pending>) {
        crate::metrics::submit_batch(&self.shard, batch.len());
        let (wires, replies): (Vec<RunDispatch>, Vec<_>) =
            batch.into_iter().map(|p| (p.wire, p.reply)).unzip();
        let req = SubmitRequest { runs: wires };
        self.await_first_resolution().await;
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let outcome: Result<Vec<SubmitResult>, ShardError> = loop {
            let Some(ep) = self.pick(&tried) else {
                break Err(self.all_down_error());
            };
            tried.push(ep.clone());
            let ep = &*ep;
            let mut client = ep.client.clone();
            self.submit_calls.fetch_add(1, Ordering::Relaxed);
            match client.submit(req.clone()).await {
                Ok(resp) => {
                    let results = resp.into_inner().results;
                    // A receiver that is shutting down refuses every run as UNAVAILABLE: the
                    // batch goes to the next endpoint instead.
                    if !results.is_empty()
                        && results.iter().all(|r| r.code == Code::Unavailable as i32)
                    {
                        self.mark_down(ep);
                        continue;
                    }
                    ep.mark_up();
                    break Ok(results);
                }
                Err(s) if is_endpoint_failure(&s) => {
                    tracing::debug!(shard = %self.shard, endpoint = %ep.url, error = %s.message(), "submit failed; trying the next endpoint");
                    self.mark_down(ep);
                }
                Err(s) => break Err(error_of_status(&self.shard, &ep.url, &s)),
            }
        };
        match outcome {
            Ok(results) => {
                for (k, reply) in replies.into_iter().enumerate() {
                    let res = match results.get(k) {
                        Some(r) if r.run_id == req.runs[k].run_id => {
                            outcome_of_result(&self.shard, r)
                        }
                        _ => Err(ShardError::new(
                            ErrorKind::Internal,
                            format!(
                                "shard {}: the receiver's answer does not match the batch (run {})",
                                self.shard, req.runs[k].run_id
                            ),
                        )),
                    };
                    // The submitter may have given up (dropped its future): nothing to answer.
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The chunks of a receiver's `Logs` answer; an error status ends them with a line saying so.
fn log_chunks(url: String, stream: tonic::Streaming<nexus_proto::grpc::LogsChunk>) -> LogStream {
    use futures::StreamExt as _;
    futures::stream::unfold(Some(stream), move |state| {
        let url = url.clone();
        async move {
            let mut stream = state?;
            match stream.message().await {
                Ok(Some(chunk)) => Some((chunk.data, Some(stream))),
                Ok(None) => None,
                Err(s) => Some((
                    bytes::Bytes::from(format!(
                        "\n[nexus: the output stream from the receiver at {url} broke: {}]\n",
                        s.message()
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// Gathers queued submits into batches and sends them, at most `max_in_flight` at once.
async fn batcher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let max = inner.opts.batch_max;
    loop {
        // Waiting for a slot first lets the queue grow meanwhile: batches get bigger under load.
        let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Linger only when others were already queued: a lone submit goes at once.
        if batch.len() > 1 && batch.len() < max {
            let deadline = Instant::now() + inner.opts.batch_linger;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            inner.send_batch(batch).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_left_alone_longer_each_time_up_to_the_cap() {
        let creds = LinkCredentials::none();
        let s = GrpcShard::new(
            "s",
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            &creds,
            GrpcShardOptions::default(),
        )
        .unwrap();
        let inner = &s.inner;
        let endpoints = inner.snapshot();
        let ep = &endpoints[0];
        let mut seen = Vec::new();
        for _ in 0..6 {
            inner.mark_down(ep);
            // Failures of batches in flight while it is down do not grow the back-off.
            inner.mark_down(ep);
            inner.mark_down(ep);
            seen.push(ep.health().backoff.as_secs());
            // The pause ends; the next probe fails again.
            let left = ep.health().down_until.unwrap() - Instant::now();
            tokio::time::advance(left + Duration::from_millis(1)).await;
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 30, 30]);
        inner.mark_down(ep);
        assert!(ep.is_down(Instant::now()));
        // What the shards page shows: the first paused for its back-off, the second in use.
        let seen: Vec<_> = s
            .receivers()
            .into_iter()
            .map(|r| (r.endpoint, r.down_for))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "http://127.0.0.1:1".to_owned(),
                    Some(Duration::from_secs(30))
                ),
                ("http://127.0.0.1:2".to_owned(), None),
            ]
        );
        // Only the other endpoint is picked while the first is down.
        let picked = inner.pick(&[]).map(|e| e.url.clone());
        assert_eq!(picked.as_deref(), Some("http://127.0.0.1:2"));
        assert!(inner.pick(&[endpoints[1].clone()]).is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!ep.is_down(Instant::now()));
        ep.mark_up();
        inner.mark_down(ep);
        assert_eq!(ep.health().backoff, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_stays_keeps_its_endpoint_and_health() {
        let answer = Arc::new(std::sync::Mutex::new(vec!["10.0.0.1"]));
        let a = answer.clone();
        let resolver = Resolver::from_fn(move |_| {
            let ips = a
                .lock()
                .unwrap()
                .iter()
                .map(|ip| ip.parse().unwrap())
                .collect();
            async move { Ok(ips) }
        });
        let s = GrpcShard::with_resolver(
            "s",
            &["http://receivers.test:9091".into()],
            &LinkCredentials::none(),
            GrpcShardOptions::default(),
            resolver,
        )
        .unwrap();
        s.resolve_now().await;
        let first = s.inner.snapshot()[0].clone();
        s.inner.mark_down(&first);
        *answer.lock().unwrap() = vec!["10.0.0.2", "10.0.0.1"];
        s.resolve_now().await;
        let now = s.inner.snapshot();
        assert_eq!(now.len(), 2);
        let kept = now
            .iter()
            .find(|e| e.url == "http://10.0.0.1:9091")
            .unwrap();
        assert!(Arc::ptr_eq(kept, &first));
        assert!(kept.is_down(Instant::now()));
        // Only the new address is picked while the kept one is down.
        let picked = s.inner.pick(&[]).unwrap();
        assert_eq!(picked.url, "http://10.0.0.2:9091");
        // A removed address is dropped once nothing holds it (no call in flight).
        *answer.lock().unwrap() = vec!["10.0.0.2"];
        s.resolve_now().await;
        let weak = Arc::downgrade(&first);
        drop((first, now, picked));
        assert!(
            weak.upgrade().is_none(),
            "a removed endpoint outlived its calls"
        );
    }
}
