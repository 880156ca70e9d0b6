//! [`GrpcShard`]: the client side of the [`Shard`] seam over gRPC: batching submits per endpoint,
//! health of each endpoint, bearer credentials on every call.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nexus_proto::grpc::shard_service_client::ShardServiceClient;
use nexus_proto::grpc::{
    CancelRequest, CapacityRequest, CapacityResponse, Code, RunDispatch, SubmitRequest,
    SubmitResult,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::config::*;
use super::wire::*;
use crate::shard::{Dispatch, Shard, ShardError};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};

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

pub(crate) struct Inner {
    shard: String,
    endpoints: Vec<EndpointState>,
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
                "endpoints",
                &self.endpoints.iter().map(|e| &e.url).collect::<Vec<_>>(),
            )
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
    /// Builds the client of one shard. Channels connect lazily; must be called inside a tokio
    /// runtime (it spawns the batching task, which ends when the last clone is dropped).
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
        if endpoints.is_empty() {
            return Err(format!(
                "shard {shard_name}: no gRPC endpoints; list the receivers' addresses (http://host:port or https://host:port)"
            ));
        }
        let interceptor = BearerInterceptor(creds.bearer());
        let mut states = Vec::with_capacity(endpoints.len());
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
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("shard {shard_name}: endpoint '{url}' is not a URL: {e}"))?
                .connect_timeout(opts.connect_timeout)
                .timeout(opts.request_timeout)
                .tcp_nodelay(true);
            if https {
                ep = ep.tls_config(creds.client_tls()).map_err(|e| {
                    format!("shard {shard_name}: endpoint '{url}': TLS configuration refused: {e}")
                })?;
            }
            let client =
                ShardServiceClient::with_interceptor(ep.connect_lazy(), interceptor.clone());
            states.push(EndpointState {
                url: url.clone(),
                client,
                health: std::sync::Mutex::new(Health::default()),
            });
        }
        let opts = GrpcShardOptions {
            batch_max: opts.batch_max.max(1),
            max_in_flight: opts.max_in_flight.max(1),
            ..opts
        };
        let inner = Arc::new(Inner {
            shard: shard_name.to_owned(),
            endpoints: states,
            next: AtomicUsize::new(0),
            opts,
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight)),
            submit_calls: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(opts.batch_max * opts.max_in_flight * 4);
        tokio::spawn(batcher(inner.clone(), rx));
        Ok(Self { inner, queue: tx })
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
        let calls = self.inner.endpoints.iter().map(|ep| async move {
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

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError> {
        let inner = &self.inner;
        let now = Instant::now();
        let live: Vec<&EndpointState> =
            inner.endpoints.iter().filter(|e| !e.is_down(now)).collect();
        // When every endpoint is marked down, try them all anyway: a cancel is rare and worth it.
        let targets = if live.is_empty() {
            inner.endpoints.iter().collect()
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

impl Inner {
    /// Returns the next live endpoint not tried yet for this batch (round robin).
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !tried[i] && !self.endpoints[i].is_down(now))
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
        let urls: Vec<&str> = self.endpoints.iter().map(|e| e.url.as_str()).collect();
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
        let mut tried = vec![false; self.endpoints.len()];
        let outcome: Result<Vec<SubmitResult>, ShardError> = loop {
            let Some(i) = self.pick(&tried) else {
                break Err(self.all_down_error());
            };
            tried[i] = true;
            let ep = &self.endpoints[i];
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
        let ep = &inner.endpoints[0];
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
        // Only the other endpoint is picked while the first is down.
        assert_eq!(inner.pick(&[false, false]), Some(1));
        assert_eq!(inner.pick(&[false, true]), None);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!ep.is_down(Instant::now()));
        ep.mark_up();
        inner.mark_down(ep);
        assert_eq!(ep.health().backoff, Duration::from_secs(2));
    }
}
