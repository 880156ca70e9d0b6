//! `nexus.v1.RunService` on the scheduler (see `proto/nexus/v1/run.proto`): algorithms create,
//! watch and cancel child runs; clients do the same with root runs.
//!
//! CreateRun builds an [`AdmitRequest`] from the message (with the calling run as the parent)
//! and hands it to [`Admission`], as the HTTP v1 submit does, so validation, durability,
//! idempotency and tree limits cannot drift between the two APIs; CancelRun is
//! [`crate::tree::cancel`], as the HTTP cancel. Errors get their code from their kind (the one
//! table, [`nexus_model::error::ErrorKind::grpc_code`]). Served on the scheduler's HTTP port
//! (HTTP/2 cleartext, gRPC content type).

use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::Router;
use futures::Stream;
use nexus_model::run::{CancellationPolicy, Run, RunId};
use nexus_proto::grpc::run_service_server::{RunService, RunServiceServer};
use nexus_proto::grpc::{
    CancelRunRequest, CancelRunResponse, CreateRunRequest, CreateRunsRequest, CreateRunsResponse,
    GetRunRequest, ListRunsRequest, ListRunsResponse, RunRef, RunStatus, WatchRunRequest,
};
use nexus_store::StoreError;
use tonic::Status;

use crate::access::{self, Caller};
use crate::admission::{
    Admission, AdmitError, AdmitRequest, BatchItem, BatchRequest, Parameters, ParentRef,
};
use crate::api::result_uri;
use crate::tree::CancelError;
use crate::{Scheduler, metrics, spool};
use nexus_auth::Action;

/// Metadata key naming the calling run (with its run token as `authorization: Bearer`).
pub const RUN_ID_METADATA: &str = crate::access::RUN_ID_HEADER;

/// Most runs a ListRuns returns.
const LIST_MAX: usize = 10_000;

/// The RunService of one scheduler.
#[derive(Debug, Clone)]
pub struct Runs {
    s: std::sync::Arc<Scheduler>,
}

fn store_status(e: &StoreError) -> Status {
    Status::new(
        e.kind().grpc_code(),
        format!("run store unavailable, try again: {e}"),
    )
}

fn admit_status(e: &AdmitError) -> Status {
    Status::new(e.kind().grpc_code(), e.to_string())
}

fn cancel_status(e: &CancelError) -> Status {
    Status::new(e.kind().grpc_code(), e.to_string())
}

fn parse_id(field: &str, id: &str) -> Result<RunId, Status> {
    id.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: '{id}' is not a valid request id (a UUID)"
        ))
    })
}

impl Runs {
    /// The service over `s`.
    #[must_use]
    pub fn new(s: std::sync::Arc<Scheduler>) -> Self {
        Self { s }
    }

    /// The tonic server, to be served (or merged into an axum router with
    /// `tonic::service::Routes`).
    pub fn server(self) -> RunServiceServer<Self> {
        RunServiceServer::new(self)
    }

    async fn get(&self, id: RunId) -> Result<Run, Status> {
        match self.s.store.get(id).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Status::not_found(format!("run {id} not found"))),
            Err(e) => Err(store_status(&e)),
        }
    }

    /// Authenticates the caller (see [`crate::access`]): with authentication off, a run (its id
    /// and run token) or a client (neither); with it on, a run or a principal (API key, OIDC).
    async fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Caller, Status> {
        let md = req.metadata();
        let id = md.get(RUN_ID_METADATA).and_then(|v| v.to_str().ok());
        let authorization = md.get("authorization").and_then(|v| v.to_str().ok());
        let found = if self.s.auth.enabled() {
            access::identify(&self.s, id, authorization).await
        } else {
            access::identify_legacy(&self.s, id, authorization).await
        };
        found.map_err(Status::from)
    }

    /// Whether `caller` may do `action` to `target`.
    async fn may(&self, caller: &Caller, action: Action, target: &Run) -> Result<(), Status> {
        access::may(&self.s, caller, action, target)
            .await
            .map_err(Status::from)
    }

    /// Builds the admission request of a CreateRun, checking what the message carries as text
    /// as the HTTP v1 submit checks its body: JSON, nesting depth, size, an object payload.
    fn admit_request(
        &self,
        r: CreateRunRequest,
        caller: &Caller,
        received: Instant,
    ) -> Result<AdmitRequest, Status> {
        if r.algorithm.is_empty() || r.algorithm.contains('/') {
            return Err(Status::invalid_argument(
                "algorithm: the template name is required",
            ));
        }
        let params: serde_json::Value = serde_json::from_str(&r.parameters_json)
            .map_err(|e| Status::invalid_argument(format!("parameters_json: not JSON ({e})")))?;
        let custom_configuration = if r.custom_configuration_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<serde_json::Value>(&r.custom_configuration_json).map_err(
                    |e| {
                        Status::invalid_argument(format!(
                            "custom_configuration_json: not JSON ({e})"
                        ))
                    },
                )?,
            )
        };
        // The limits of the HTTP body, which holds both values one level down.
        let config = &self.s.config;
        let nested = config.max_json_depth.saturating_sub(1);
        let depth = |text: &str| crate::request_split::check_depth(text.as_bytes(), nested);
        if depth(&r.parameters_json).is_err() || depth(&r.custom_configuration_json).is_err() {
            return Err(admit_status(&AdmitError::too_deep(config.max_json_depth)));
        }
        let parameters = Parameters::from_json(&params).map_err(|e| admit_status(&e))?;
        let payload_len = match &parameters {
            Parameters::Memory(b) => b.len(),
            Parameters::Spooled(p) => usize::try_from(p.span.len).unwrap_or(usize::MAX),
        };
        let rest = r.custom_configuration_json.len() + r.tag.len();
        if payload_len.saturating_add(rest) > config.max_request_bytes {
            metrics::rejected("too_large");
            return Err(Status::invalid_argument(format!(
                "request body is over the limit of {} bytes (scheduler.max_request_bytes)",
                config.max_request_bytes
            )));
        }
        if rest > spool::MAX_REST {
            return Err(Status::invalid_argument(format!(
                "the request outside algorithmParameters is over {} bytes",
                spool::MAX_REST
            )));
        }
        Ok(AdmitRequest {
            algorithm: r.algorithm,
            parameters,
            tag: (!r.tag.is_empty()).then_some(r.tag),
            custom_configuration,
            api_version: None,
            payload_valid_for: None,
            parent: parent_of(caller),
            idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            dry_run: false,
            received,
            authorize: access::submit_check(&self.s, caller),
        })
    }

    /// Builds the admission request of a CreateRuns, each item checked as CreateRun checks its
    /// payload; the total is bounded by `scheduler.max_batch_bytes`.
    fn batch_request(
        &self,
        r: CreateRunsRequest,
        caller: &Caller,
        received: Instant,
    ) -> Result<BatchRequest, Status> {
        if r.algorithm.is_empty() || r.algorithm.contains('/') {
            return Err(Status::invalid_argument(
                "algorithm: the template name is required",
            ));
        }
        let config = &self.s.config;
        let n = r.parameters_json.len();
        if n == 0 {
            return Err(admit_status(&AdmitError::BatchEmpty));
        }
        if n > config.max_batch_runs {
            return Err(admit_status(&AdmitError::BatchTooLarge {
                runs: n,
                limit: config.max_batch_runs,
            }));
        }
        let total = r
            .parameters_json
            .iter()
            .map(String::len)
            .sum::<usize>()
            .saturating_add(r.custom_configuration_json.len() + r.tag.len());
        if total > config.max_batch_bytes {
            metrics::rejected("too_large");
            return Err(Status::invalid_argument(format!(
                "the batch is over the limit of {} bytes (scheduler.max_batch_bytes)",
                config.max_batch_bytes
            )));
        }
        let custom_configuration = if r.custom_configuration_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<serde_json::Value>(&r.custom_configuration_json).map_err(
                    |e| {
                        Status::invalid_argument(format!(
                            "custom_configuration_json: not JSON ({e})"
                        ))
                    },
                )?,
            )
        };
        let nested = config.max_json_depth.saturating_sub(1);
        let depth = |text: &str| crate::request_split::check_depth(text.as_bytes(), nested);
        if depth(&r.custom_configuration_json).is_err() {
            return Err(admit_status(&AdmitError::too_deep(config.max_json_depth)));
        }
        let tag = (!r.tag.is_empty()).then_some(r.tag);
        let mut items = Vec::with_capacity(n);
        for (i, text) in r.parameters_json.iter().enumerate() {
            if depth(text).is_err() {
                return Err(admit_status(&AdmitError::too_deep(config.max_json_depth)));
            }
            let params: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                Status::invalid_argument(format!("parameters_json[{i}]: not JSON ({e})"))
            })?;
            let parameters = Parameters::from_json(&params)
                .map_err(|e| Status::invalid_argument(format!("parameters_json[{i}]: {e}")))?;
            items.push(BatchItem {
                parameters,
                tag: tag.clone(),
            });
        }
        Ok(BatchRequest {
            algorithm: r.algorithm,
            items,
            custom_configuration,
            api_version: None,
            payload_valid_for: None,
            parent: parent_of(caller),
            batch_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            dry_run: false,
            received,
            authorize: access::submit_check(&self.s, caller),
        })
    }

    async fn status(&self, run: &Run) -> RunStatus {
        RunStatus {
            request_id: run.id.to_string(),
            algorithm: run.algorithm.clone(),
            stage: run.stage.to_string(),
            result_uri: result_uri(&self.s, run).await,
            cause: run.failure_cause.clone().unwrap_or_default(),
            details: run.failure_details.clone().unwrap_or_default(),
            parent_request_id: run
                .parent
                .as_ref()
                .map(|p| p.request_id.to_string())
                .unwrap_or_default(),
            root_request_id: run.root.to_string(),
            depth: run.depth,
            tag: run.tag.clone().unwrap_or_default(),
            terminal: run.stage.is_terminal(),
        }
    }
}

#[tonic::async_trait]
impl RunService for Runs {
    async fn create_run(
        &self,
        request: tonic::Request<CreateRunRequest>,
    ) -> Result<tonic::Response<RunRef>, Status> {
        let received = Instant::now();
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let algorithm = r.algorithm.clone();
        let admitted = Admission::new(self.s.clone())
            .admit(self.admit_request(r, &caller, received)?)
            .await;
        access::audit_submit(&caller, &algorithm, &admitted);
        let admitted = admitted.map_err(|e| admit_status(&e))?;
        Ok(tonic::Response::new(RunRef {
            request_id: admitted.id.to_string(),
            algorithm,
        }))
    }

    async fn create_runs(
        &self,
        request: tonic::Request<CreateRunsRequest>,
    ) -> Result<tonic::Response<CreateRunsResponse>, Status> {
        let received = Instant::now();
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let algorithm = r.algorithm.clone();
        let n = r.parameters_json.len();
        let admitted = Admission::new(self.s.clone())
            .admit_batch(self.batch_request(r, &caller, received)?)
            .await;
        let outcome = match &admitted {
            Ok(a) if a.created => "ok",
            Ok(_) => "ok-existing",
            Err(AdmitError::Forbidden(_)) => "denied",
            Err(_) => "refused",
        };
        access::audit(
            &caller,
            "submit-batch",
            &algorithm,
            &format!("{n} runs"),
            outcome,
        );
        let admitted = admitted.map_err(|e| admit_status(&e))?;
        Ok(tonic::Response::new(CreateRunsResponse {
            runs: admitted
                .ids
                .iter()
                .map(|id| RunRef {
                    request_id: id.to_string(),
                    algorithm: algorithm.clone(),
                })
                .collect(),
        }))
    }

    async fn get_run(
        &self,
        request: tonic::Request<GetRunRequest>,
    ) -> Result<tonic::Response<RunStatus>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("request_id", &request.get_ref().request_id)?;
        let run = self.get(id).await?;
        self.may(&caller, Action::Read, &run).await?;
        Ok(tonic::Response::new(self.status(&run).await))
    }

    type WatchRunStream = Pin<Box<dyn Stream<Item = Result<RunStatus, Status>> + Send + 'static>>;

    async fn watch_run(
        &self,
        request: tonic::Request<WatchRunRequest>,
    ) -> Result<tonic::Response<Self::WatchRunStream>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("request_id", &request.get_ref().request_id)?;
        let first = self.get(id).await?;
        self.may(&caller, Action::Read, &first).await?;
        let me = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // The server follows the run in the store (a change made by another process —
            // a receiver, the supervisor — is seen within a second) and pushes each new stage.
            let mut last = first.stage;
            if tx.send(Ok(me.status(&first).await)).await.is_err() || last.is_terminal() {
                return;
            }
            let mut wait = Duration::from_millis(20);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(1));
                let run = match me.s.store.get(id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::not_found(format!("run {id} is gone"))))
                            .await;
                        return;
                    }
                    // A store hiccup is not the end of the run: keep following.
                    Err(e) => {
                        tracing::debug!(run_id = %id, error = %e, "watch: store unavailable, retrying");
                        continue;
                    }
                };
                if run.stage != last {
                    last = run.stage;
                    wait = Duration::from_millis(20);
                    if tx.send(Ok(me.status(&run).await)).await.is_err() || last.is_terminal() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_run(
        &self,
        request: tonic::Request<CancelRunRequest>,
    ) -> Result<tonic::Response<CancelRunResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.get_ref();
        let target = self.get(parse_id("request_id", &r.request_id)?).await?;
        if let Err(e) = self.may(&caller, Action::Cancel, &target).await {
            access::audit(
                &caller,
                "cancel",
                &target.algorithm,
                &target.id.to_string(),
                "denied",
            );
            return Err(e);
        }
        let policy: CancellationPolicy = if r.cancellation_policy.is_empty() {
            CancellationPolicy::default()
        } else {
            r.cancellation_policy.parse().map_err(|e: String| {
                Status::invalid_argument(format!("cancellation_policy: {e}"))
            })?
        };
        let initiator = match &caller {
            Caller::Anonymous => "grpc client".to_owned(),
            c => c.describe(),
        };
        let (alg, id) = (target.algorithm.clone(), target.id.to_string());
        let outcome = crate::tree::cancel(&self.s, target, policy, &initiator, &r.reason).await;
        access::audit(
            &caller,
            "cancel",
            &alg,
            &id,
            if outcome.is_ok() { "ok" } else { "failed" },
        );
        let cascade = outcome.map_err(|e| cancel_status(&e))?;
        Ok(tonic::Response::new(CancelRunResponse {
            descendants_cancelled: u32::try_from(cascade.cancelled).unwrap_or(u32::MAX),
        }))
    }

    async fn list_runs(
        &self,
        request: tonic::Request<ListRunsRequest>,
    ) -> Result<tonic::Response<ListRunsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.get_ref();
        if is_paged(r) {
            return self.list_page(&caller, r).await;
        }
        let limit = match r.limit {
            0 => LIST_MAX,
            n => (n as usize).min(LIST_MAX),
        };
        let runs = match (r.tag.is_empty(), r.parent_request_id.is_empty()) {
            (false, true) => self.s.store.by_tag(&r.tag, limit).await,
            (true, false) => {
                let p = parse_id("parent_request_id", &r.parent_request_id)?;
                self.s.store.by_parent(p, limit).await
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of `tag` and `parent_request_id`",
                ));
            }
        }
        .map_err(|e| store_status(&e))?;
        let runs = access::readable(&self.s, &caller, runs)
            .await
            .map_err(Status::from)?;
        let mut out = Vec::with_capacity(runs.len());
        for run in &runs {
            out.push(self.status(run).await);
        }
        Ok(tonic::Response::new(ListRunsResponse {
            runs: out,
            next_cursor: String::new(),
        }))
    }
}

/// True when a ListRuns asks for a page (any paging field set).
fn is_paged(r: &ListRunsRequest) -> bool {
    !r.algorithm.is_empty()
        || !r.stage.is_empty()
        || r.from_ms != 0
        || r.to_ms != 0
        || !r.root_request_id.is_empty()
        || !r.shard.is_empty()
        || !r.cursor.is_empty()
        || r.page_size != 0
}

impl Runs {
    /// A paged ListRuns, validated as the HTTP listing is.
    async fn list_page(
        &self,
        caller: &Caller,
        r: &ListRunsRequest,
    ) -> Result<tonic::Response<ListRunsResponse>, Status> {
        let ms = |v: i64| (v != 0).then(|| v.to_string());
        let params = crate::listing::ListParams {
            algorithm: Some(r.algorithm.clone()),
            stage: Some(r.stage.clone()),
            tag: Some(r.tag.clone()),
            from: ms(r.from_ms),
            to: ms(r.to_ms),
            parent: Some(r.parent_request_id.clone()),
            root: Some(r.root_request_id.clone()),
            shard: Some(r.shard.clone()),
            limit: (r.page_size != 0).then(|| r.page_size.to_string()),
            cursor: Some(r.cursor.clone()),
        };
        let listing = params.validate().map_err(Status::invalid_argument)?;
        let (runs, next) = crate::listing::page(&self.s, caller, listing)
            .await
            .map_err(Status::from)?;
        let mut out = Vec::with_capacity(runs.len());
        for run in &runs {
            out.push(self.status(run).await);
        }
        Ok(tonic::Response::new(ListRunsResponse {
            runs: out,
            next_cursor: next.unwrap_or_default(),
        }))
    }
}

/// The RunService as axum routes, to merge into the scheduler's HTTP router (same port; gRPC
/// needs HTTP/2, which the server speaks without TLS by prior knowledge).
///
/// Only requests with `content-type: application/grpc*` reach gRPC. The router's fallback (the
/// app's, once merged) answers such a request for an unknown service `UNIMPLEMENTED`, as a gRPC
/// server does, and any other request for an unknown path `404 text/plain`
/// ([`nexus_http::not_found`]); a plain HTTP request to the RunService path is 404 too.
pub fn routes(s: std::sync::Arc<Scheduler>) -> Router {
    let mut routes = tonic::service::Routes::new(Runs::new(s).server());
    let router = std::mem::take(routes.axum_router_mut());
    router
        .route_layer(axum::middleware::from_fn(grpc_only))
        .fallback(fallback)
}

/// True when the request is gRPC (`application/grpc`, `application/grpc+proto`, …).
fn is_grpc(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Route layer of the gRPC routes: anything but a gRPC request is 404.
async fn grpc_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if is_grpc(&req) {
        next.run(req).await
    } else {
        axum::response::IntoResponse::into_response(nexus_http::not_found().await)
    }
}

/// Fallback of the app: gRPC `UNIMPLEMENTED` for a gRPC request, else 404 text.
async fn fallback(req: axum::extract::Request) -> axum::response::Response {
    if is_grpc(&req) {
        let (parts, ()) = Status::unimplemented("no such gRPC service or method")
            .into_http::<()>()
            .into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::empty())
    } else {
        axum::response::IntoResponse::into_response(nexus_http::not_found().await)
    }
}

/// Runs created over gRPC with a run's credential are that run's children; others are roots.
fn parent_of(caller: &Caller) -> Option<ParentRef> {
    match caller {
        Caller::Run(parent) => Some(ParentRef {
            request_id: parent.id.to_string(),
            algorithm: parent.algorithm.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use nexus_proto::grpc::CreateRunRequest;
    use nexus_proto::grpc::run_service_server::RunService;
    use tonic::Code;
    use tower::ServiceExt as _;

    use super::Runs;
    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler;

    /// The HTTP answer (status, text) to the v1 submit of `body` for `alg`.
    async fn http_submit(
        s: std::sync::Arc<crate::Scheduler>,
        alg: &str,
        body: &str,
    ) -> (u16, String) {
        let req = Request::post(format!("/algorithm/v1/run/{alg}"))
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = crate::api::router(s).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn grpc_submit(
        s: std::sync::Arc<crate::Scheduler>,
        r: CreateRunRequest,
    ) -> Result<String, tonic::Status> {
        Runs::new(s)
            .create_run(tonic::Request::new(r))
            .await
            .map(|r| r.into_inner().request_id)
    }

    #[tokio::test]
    async fn create_run_gets_the_same_errors_as_the_http_submit() {
        let (s, store) = scheduler(SchedulerConfig {
            queue_bound: 1,
            ..SchedulerConfig::default()
        });
        let cases = [
            ("nope", r#"{"a": 1}"#, "", Code::InvalidArgument, 400),
            ("knapsack", "[1]", "", Code::InvalidArgument, 400),
            ("knapsack", "null", "", Code::InvalidArgument, 400),
            (
                "knapsack",
                "{}",
                r#"{"workgroupRef": {"name": "gone"}}"#,
                Code::InvalidArgument,
                400,
            ),
        ];
        for (alg, params, custom, code, http) in cases {
            let mut body = serde_json::json!({
                "algorithmParameters": serde_json::from_str::<serde_json::Value>(params).unwrap()
            });
            if !custom.is_empty() {
                body["customConfiguration"] = serde_json::from_str(custom).unwrap();
            }
            let (status, text) = http_submit(s.clone(), alg, &body.to_string()).await;
            let e = grpc_submit(
                s.clone(),
                CreateRunRequest {
                    algorithm: alg.into(),
                    parameters_json: params.into(),
                    custom_configuration_json: custom.into(),
                    ..CreateRunRequest::default()
                },
            )
            .await
            .unwrap_err();
            assert_eq!((status, e.code()), (http, code), "{alg} {params}");
            assert_eq!(e.message(), text, "{alg} {params}");
        }

        // Accepted: durable; then the queue (bound 1) is full for both front ends.
        let id = grpc_submit(
            s.clone(),
            CreateRunRequest {
                algorithm: "knapsack".into(),
                parameters_json: r#"{"a": 1}"#.into(),
                ..CreateRunRequest::default()
            },
        )
        .await
        .unwrap();
        use nexus_store::RunStore as _;
        assert!(store.get(id.parse().unwrap()).await.unwrap().is_some());
        let (status, text) =
            http_submit(s.clone(), "knapsack", r#"{"algorithmParameters": {}}"#).await;
        let e = grpc_submit(
            s,
            CreateRunRequest {
                algorithm: "knapsack".into(),
                parameters_json: "{}".into(),
                ..CreateRunRequest::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!((status, e.code()), (429, Code::ResourceExhausted));
        assert_eq!(e.message(), text);
    }

    #[tokio::test]
    async fn list_runs_pages_newest_first_and_keeps_the_old_form() {
        use nexus_proto::grpc::ListRunsRequest;
        use nexus_store::RunStore as _;
        let (s, store) = scheduler(SchedulerConfig::default());
        let mut ids = Vec::new();
        for _ in 0..3 {
            let mut run = nexus_store::test_suite::sample_run("knapsack");
            run.tag = Some("t".into());
            ids.push(run.id.to_string());
            store.insert(run).await.unwrap();
        }
        let svc = Runs::new(s);
        let list = |r: ListRunsRequest| {
            let svc = svc.clone();
            async move {
                svc.list_runs(tonic::Request::new(r))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        // The old form: by tag, oldest first, no cursor.
        let old = list(ListRunsRequest {
            tag: "t".into(),
            ..ListRunsRequest::default()
        })
        .await
        .unwrap();
        let got: Vec<String> = old.runs.iter().map(|r| r.request_id.clone()).collect();
        assert_eq!(got, ids);
        assert!(old.next_cursor.is_empty());
        // Paged: newest first, two then one.
        let first = list(ListRunsRequest {
            algorithm: "knapsack".into(),
            page_size: 2,
            ..ListRunsRequest::default()
        })
        .await
        .unwrap();
        assert_eq!(first.runs.len(), 2);
        assert_eq!(first.runs[0].request_id, ids[2]);
        assert!(!first.next_cursor.is_empty());
        let second = list(ListRunsRequest {
            algorithm: "knapsack".into(),
            page_size: 2,
            cursor: first.next_cursor.clone(),
            ..ListRunsRequest::default()
        })
        .await
        .unwrap();
        let got: Vec<&str> = second.runs.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(got, vec![ids[0].as_str()]);
        assert!(second.next_cursor.is_empty());
        // Bad values: INVALID_ARGUMENT with the HTTP listing's message.
        let e = list(ListRunsRequest {
            page_size: 5000,
            ..ListRunsRequest::default()
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("limit: must be a whole number from 1 to 1000"),
            "{e}"
        );
    }
}
