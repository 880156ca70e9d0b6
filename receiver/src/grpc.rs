//! The receiver's gRPC server: `nexus.v1.ShardService` (schedulers and the supervisor hand runs
//! over), `nexus.v1.CompletionService` (the twin of the HTTP completion endpoint) and
//! `grpc.health.v1`.
//!
//! Invariants: every ShardService call is authorized with the component credential before
//! anything else; the safety-net limiter is taken only for valid runs of this shard, one token
//! per run, and its lock is never held across an `.await`. Completions share their logic with
//! the HTTP endpoint ([`Receiver::authorize_completion`], [`Receiver::apply_completion`]); only
//! the status mapping lives here.

use std::sync::Arc;
use std::time::Duration;

use nexus_http::Readiness;
use nexus_link::grpc::{
    LinkCredentials, authorize_component, bearer_token, code_of, dispatch_from_wire, parse_policy,
};
use nexus_model::error::ErrorKind;
use nexus_model::run::RunId;
use nexus_proto::grpc::completion_service_server::{CompletionService, CompletionServiceServer};
use nexus_proto::grpc::shard_service_server::{ShardService, ShardServiceServer};
use nexus_proto::grpc::{
    CancelRequest, CancelResponse, CapacityRequest, CapacityResponse, Code, CompleteRequest,
    CompleteResponse, DescribeRequest, DescribeResponse, LogsChunk, LogsRequest, RETRY_AFTER_MS,
    SubmitRequest, SubmitResponse, SubmitResult,
};
use nexus_proto::v1::AlgorithmResult;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Receiver;
use crate::api::CompletionError;

/// Most runs accepted in one `Submit` call.
pub const MAX_BATCH: usize = 1024;

/// How often the health service follows the readiness flag.
const HEALTH_POLL: Duration = Duration::from_millis(200);

fn submitted(outcome: &'static str, n: usize) {
    crate::metrics::submitted(outcome, n);
}

fn result(run_id: String, code: Code, message: impl Into<String>) -> SubmitResult {
    SubmitResult {
        run_id,
        code: code as i32,
        message: message.into(),
        retry_after_ms: 0,
    }
}

fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `nexus.v1.ShardService` over a [`Receiver`].
#[derive(Debug, Clone)]
pub struct ShardServer {
    receiver: Arc<Receiver>,
    creds: LinkCredentials,
    readiness: Readiness,
    stop: CancellationToken,
}

impl ShardServer {
    /// Builds the service; submissions are refused as UNAVAILABLE while `readiness` is off.
    #[must_use]
    pub fn new(receiver: Arc<Receiver>, creds: LinkCredentials, readiness: Readiness) -> Self {
        Self {
            receiver,
            creds,
            readiness,
            stop: CancellationToken::new(),
        }
    }

    /// Ends every `Logs` stream when `stop` is cancelled (the server's shutdown): a follow must
    /// not hold the graceful shutdown, whatever the executor does.
    #[must_use]
    pub fn stopping_on(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }
}

/// Most bytes in one `LogsChunk` (an executor's chunks are split to fit).
pub const MAX_LOG_CHUNK: usize = 64 * 1024;

/// The answer stream of `Logs`.
pub type LogsStream = futures::stream::BoxStream<'static, Result<LogsChunk, Status>>;

#[tonic::async_trait]
impl ShardService for ShardServer {
    type LogsStream = LogsStream;

    #[tracing::instrument(skip_all, fields(run_id = %request.get_ref().run_id, follow = request.get_ref().follow))]
    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogsStream>, Status> {
        use futures::StreamExt as _;
        authorize_component(&self.creds, &request)?;
        let req = request.into_inner();
        let id: RunId = req.run_id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "'{}' is not a valid request id (expected a UUID)",
                req.run_id.escape_default()
            ))
        })?;
        let Some(stream) = self
            .receiver
            .logs(id, req.follow)
            .await
            .map_err(|e| Status::new(e.kind.grpc_code(), e.message))?
        else {
            return Err(Status::not_found(format!(
                "receiver {} has no output of run {id} to read",
                self.receiver.instance_id
            )));
        };
        let chunks = stream
            .take_until(self.stop.clone().cancelled_owned())
            .flat_map(|b| {
                let pieces: Vec<Result<LogsChunk, Status>> = (0..b.len())
                    .step_by(MAX_LOG_CHUNK)
                    .map(|at| {
                        Ok(LogsChunk {
                            data: b.slice(at..b.len().min(at + MAX_LOG_CHUNK)),
                        })
                    })
                    .collect();
                futures::stream::iter(pieces)
            })
            .boxed();
        Ok(Response::new(chunks))
    }

    #[tracing::instrument(skip_all, fields(runs = request.get_ref().runs.len()))]
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        authorize_component(&self.creds, &request)?;
        let runs = request.into_inner().runs;
        if runs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} runs in one Submit; send at most {MAX_BATCH}",
                runs.len()
            )));
        }
        let n = runs.len();
        if !self.readiness.is_ready() {
            submitted("unavailable", n);
            let results = runs
                .into_iter()
                .map(|w| result(w.run_id, Code::Unavailable, "receiver is shutting down"))
                .collect();
            return Ok(Response::new(SubmitResponse { results }));
        }
        let r = &self.receiver;
        let mut results: Vec<Option<SubmitResult>> = vec![None; n];
        let mut admitted = Vec::new();
        let mut limited = 0usize;
        let mut max_wait = Duration::ZERO;
        for (k, w) in runs.into_iter().enumerate() {
            let run_id = w.run_id.clone();
            if !r.shard.is_empty() && w.shard != r.shard {
                submitted("invalid", 1);
                results[k] = Some(result(
                    run_id,
                    Code::InvalidInput,
                    format!(
                        "run was routed to shard '{}' but this receiver serves shard '{}'",
                        w.shard, r.shard
                    ),
                ));
                continue;
            }
            let d = match dispatch_from_wire(w) {
                Ok(d) => d,
                Err(msg) => {
                    submitted("invalid", 1);
                    results[k] = Some(result(run_id, Code::InvalidInput, msg));
                    continue;
                }
            };
            let taken = r
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .try_acquire(tokio::time::Instant::now());
            match taken {
                Ok(()) => admitted.push((k, d)),
                Err(wait) => {
                    limited += 1;
                    max_wait = max_wait.max(wait);
                    submitted("resource_exhausted", 1);
                    results[k] = Some(SubmitResult {
                        retry_after_ms: millis_ceil(wait),
                        ..result(
                            run_id,
                            Code::ResourceExhausted,
                            "over the receiver's launch limit (receiver.launch_limit); retry later",
                        )
                    });
                }
            }
        }
        if limited == n && n > 0 {
            let mut status = Status::resource_exhausted(
                "every run of the batch is over the receiver's launch limit (receiver.launch_limit); retry later",
            );
            if let Ok(v) = millis_ceil(max_wait).to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS, v);
            }
            return Err(status);
        }
        let launches = admitted.into_iter().map(|(k, d)| async move {
            let run_id = d.run.id.to_string();
            (k, run_id, r.submit(d).await)
        });
        for (k, run_id, res) in futures::future::join_all(launches).await {
            results[k] = Some(match res {
                Ok(()) => {
                    submitted("accepted", 1);
                    result(run_id, Code::Ok, "")
                }
                Err(e) => {
                    submitted("error", 1);
                    let mut out = result(run_id, code_of(e.kind), e.message);
                    if let Some(d) = e.retry_after {
                        out.retry_after_ms = millis_ceil(d);
                    }
                    out
                }
            });
        }
        // Every slot was filled above: refused runs in the loop, admitted ones by join_all.
        let results = results.into_iter().flatten().collect();
        Ok(Response::new(SubmitResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        authorize_component(&self.creds, &request)?;
        let req = request.into_inner();
        let id: RunId = req.run_id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "'{}' is not a valid request id (expected a UUID)",
                req.run_id
            ))
        })?;
        let policy = parse_policy(&req.policy).map_err(Status::invalid_argument)?;
        self.receiver
            .cancel(id, policy)
            .await
            .map_err(|e| Status::new(e.kind.grpc_code(), e.message))?;
        Ok(Response::new(CancelResponse {}))
    }

    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        authorize_component(&self.creds, &request)?;
        let req = request.into_inner();
        let id: RunId = req.run_id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "'{}' is not a valid request id (expected a UUID)",
                req.run_id.escape_default()
            ))
        })?;
        Ok(Response::new(DescribeResponse {
            receiver_id: self.receiver.instance_id.clone(),
            facts: self.receiver.describe(id).await,
        }))
    }

    async fn capacity(
        &self,
        request: Request<CapacityRequest>,
    ) -> Result<Response<CapacityResponse>, Status> {
        authorize_component(&self.creds, &request)?;
        let r = &self.receiver;
        let active = r.executor.active().await.len();
        let (rate, available) = {
            let mut l = r
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (l.rate(), l.available(tokio::time::Instant::now()))
        };
        Ok(Response::new(CapacityResponse {
            shard: r.shard.clone(),
            receiver_id: r.instance_id.clone(),
            ready: self.readiness.is_ready(),
            active_runs: u32::try_from(active).unwrap_or(u32::MAX),
            rate_per_second: rate,
            burst: f64::from(r.config.launch_limit.burst),
            tokens_available: available,
        }))
    }
}

/// `nexus.v1.CompletionService` over a [`Receiver`]: authenticated by the run token, not the
/// component credential (algorithms have only their run token).
#[derive(Debug, Clone)]
pub struct CompletionServer {
    receiver: Arc<Receiver>,
}

impl CompletionServer {
    /// Builds the service.
    #[must_use]
    pub fn new(receiver: Arc<Receiver>) -> Self {
        Self { receiver }
    }
}

/// Maps a completion refusal to its gRPC status (already finished is FAILED_PRECONDITION).
#[must_use]
pub fn completion_status(e: &CompletionError) -> Status {
    let code = match e.kind() {
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        k => k.grpc_code(),
    };
    Status::new(code, e.to_string())
}

#[tonic::async_trait]
impl CompletionService for CompletionServer {
    #[tracing::instrument(skip_all, fields(alg = %request.get_ref().algorithm, run_id = %request.get_ref().run_id))]
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let r = &self.receiver;
        let rid = r
            .authorize_completion(&request.get_ref().run_id, bearer_token(request.metadata()))
            .map_err(|e| completion_status(&e))?;
        let req = request.into_inner();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let result = AlgorithmResult {
            result_uri: req.result_uri,
            error_cause: non_empty(req.error_cause),
            error_details: non_empty(req.error_details),
        };
        let stage = r
            .apply_completion(&req.algorithm, rid, &result)
            .await
            .map_err(|e| completion_status(&e))?;
        Ok(Response::new(CompleteResponse {
            stage: stage.to_string(),
        }))
    }
}

/// Serves the receiver's gRPC services on `listener` until `shutdown`: TLS when configured,
/// `grpc.health.v1` (SERVING while `readiness` is on, NOT_SERVING once shutdown starts), the
/// ShardService and the CompletionService.
///
/// # Errors
/// A TLS configuration the server cannot use, or a transport failure.
pub async fn serve(
    receiver: Arc<Receiver>,
    creds: LinkCredentials,
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = creds.server_tls()? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("grpc TLS configuration refused: {e}"))?;
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    let shard = ShardServiceServer::new(
        ShardServer::new(receiver.clone(), creds, readiness.clone()).stopping_on(shutdown.clone()),
    );
    let completion = CompletionServiceServer::new(CompletionServer::new(receiver.clone()))
        .max_decoding_message_size(receiver.config.max_completion_bytes);

    // Follows the readiness flag until shutdown (or until the server stops for another reason).
    let watch = shutdown.child_token();
    let stop_watch = watch.clone().drop_guard();
    let health_task = tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = !watch.is_cancelled() && readiness.is_ready();
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in [
                    "",
                    <ShardServiceServer<ShardServer> as tonic::server::NamedService>::NAME,
                    <CompletionServiceServer<CompletionServer> as tonic::server::NamedService>::NAME,
                ] {
                    reporter.set_service_status(name, status).await;
                }
                last = Some(ready);
            }
            if watch.is_cancelled() {
                return;
            }
            tokio::select! {
                () = watch.cancelled() => {}
                () = tokio::time::sleep(HEALTH_POLL) => {}
            }
        }
    });

    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let res = builder
        .add_service(health)
        .add_service(shard)
        .add_service(completion)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(|e| format!("grpc server failed: {e}"));
    drop(stop_watch);
    let _ = health_task.await;
    res
}
