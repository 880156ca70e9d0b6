//! The scheduler's HTTP v1 API, wire-compatible with the reference (paths, methods, JSON field
//! names, content types, status codes; `/metadata` is Go's snake_case `CheckpointedRequest`,
//! `/buffer` the run's Kubernetes Job as text, cancel and tag answers `text/plain`, `/payload` a
//! 302), with its defects fixed: 202 only once the run is durable, 404 for an unknown run, cancel
//! of queued runs, body limits (413), content-type checks (415), and errors negotiated between
//! text/plain and problem+json. Deliberate differences from Go are listed in `docs/DECISIONS.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use nexus_executor::contract::LaunchContext;
use nexus_http::ApiError;
use nexus_kube::job::{JobOptions, render_job};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, PayloadLocation, Run, RunId, Stage};
use nexus_model::sign::now_secs;
use nexus_payload::Keys;
use nexus_proto::v1;
use nexus_store::StoreError;
use serde::Deserialize;

use crate::access::{self, Caller};
use crate::admission::{
    self, Admission, AdmitError, AdmitRequest, Parameters, ParentRef, check_tag,
};
use crate::{Scheduler, metrics, spool};
use nexus_auth::Action;

type S = State<Arc<Scheduler>>;

type ApiResult<T> = Result<T, ApiError>;

/// Returns the scheduler's routes (v1 API, payload data route, OpenAPI document). The v1
/// routes authenticate their caller ([`access::authenticate`]); the signed payload route, whose
/// signature is its credential, and the OpenAPI document do not.
pub fn router(s: Arc<Scheduler>) -> Router {
    let limit = s.config.max_request_bytes;
    let batch_limit = s.config.max_batch_bytes;
    let open = Router::new()
        .route("/data/v1/payloads/{alg}/{id}", get(serve_payload))
        .route(
            "/data/v1/payloads/{alg}/requests/{id}",
            get(serve_payload_v1),
        )
        .route("/openapi.json", get(openapi))
        .merge(crate::console::router());
    Router::new()
        .route(
            "/algorithm/v1/run/{alg}",
            post(create_run)
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_declared_oversize(limit, "scheduler.max_request_bytes", req, next)
                })),
        )
        .route(
            "/algorithm/v1/batch/{alg}",
            post(crate::fanout::create_runs)
                .layer(DefaultBodyLimit::max(batch_limit))
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_declared_oversize(batch_limit, "scheduler.max_batch_bytes", req, next)
                })),
        )
        .route(
            "/algorithm/v1/external/{alg}",
            post(crate::external::register)
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_declared_oversize(limit, "scheduler.max_request_bytes", req, next)
                })),
        )
        .route(
            "/algorithm/v1/external/{alg}/requests/{id}/stage",
            post(crate::external::report_stage)
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_declared_oversize(limit, "scheduler.max_request_bytes", req, next)
                })),
        )
        .route(
            "/algorithm/v1/external/{alg}/requests/{id}/upload",
            post(crate::external::upload_url),
        )
        .route("/algorithm/v1/results/{alg}/requests/{id}", get(get_result))
        .route("/algorithm/v1/results/tags/{tag}", get(get_by_tag))
        .route(
            "/algorithm/v1/metadata/{alg}/requests/{id}",
            get(get_metadata),
        )
        .route(
            "/algorithm/v1/metadata/tags/{alg}/requests/{id}",
            post(update_tag),
        )
        .route("/algorithm/v1/buffer/{alg}/requests/{id}", get(get_buffer))
        .route(
            "/algorithm/v1/payload/{alg}/requests/{id}",
            get(get_payload_redirect),
        )
        .route("/algorithm/v1/cancel/{alg}/requests/{id}", post(cancel_run))
        .route(
            "/algorithm/v1/children/{alg}/requests/{id}",
            get(get_children),
        )
        .route("/algorithm/v1/algorithms", get(crate::algorithms::list))
        .route("/algorithm/v1/shards", get(crate::shards::list))
        .route("/algorithm/v1/runs", get(list_runs))
        .route(
            "/algorithm/v1/timeline/{alg}/requests/{id}",
            get(get_timeline),
        )
        .route(
            "/algorithm/v1/explain/{alg}/requests/{id}",
            get(get_explanation),
        )
        .route("/algorithm/v1/logs/{alg}/requests/{id}", get(get_logs))
        .route_layer(axum::middleware::from_fn_with_state(
            s.clone(),
            access::authenticate,
        ))
        .merge(open)
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(s)
}

/// The caller the authentication middleware found.
type Who = Extension<Arc<Caller>>;

/// Answers 413 at once when the declared `Content-Length` is over the limit, without reading the
/// body (bodies without a length are cut off by `DefaultBodyLimit` while being read).
async fn refuse_declared_oversize(
    limit: usize,
    key: &'static str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        metrics::rejected("too_large");
        // Read (and drop) a moderately oversized body first: a client still sending when the
        // server closes gets a broken pipe instead of this 413. Bounded in bytes and time.
        if n <= spool::drain_bound(limit) {
            spool::drain(
                req.into_body().into_data_stream(),
                spool::drain_bound(limit),
            )
            .await;
        }
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is {n} bytes; the limit is {limit} bytes ({key})"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

/// Renders an admission error: its message, the status of its kind (see
/// [`AdmitError::http_status`]), and `Retry-After` when retrying may succeed.
impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        let (kind, status) = (e.kind(), e.http_status());
        let mut out = ApiError::from_kind(kind, e.to_string());
        out.status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        out
    }
}

/// Renders a refused cancel: its message and the status of its kind.
impl From<crate::tree::CancelError> for ApiError {
    fn from(e: crate::tree::CancelError) -> Self {
        ApiError::from_kind(e.kind(), e.to_string())
    }
}

pub(crate) fn store_err(e: &StoreError) -> ApiError {
    ApiError::from_kind(e.kind(), format!("run store unavailable, try again: {e}"))
}

pub(crate) fn parse_id(id: &str) -> ApiResult<RunId> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{id}' is not a valid request id (expected a UUID)"
        ))
    })
}

/// Loads a run addressed by (algorithm, id); 404 when unknown or under another algorithm.
pub(crate) async fn load(s: &Scheduler, alg: &str, id: &str) -> ApiResult<Run> {
    let rid = parse_id(id)?;
    match s.store.get(rid).await {
        Ok(Some(r)) if r.algorithm == alg => Ok(r),
        Ok(_) => Err(ApiError::not_found(format!(
            "Provided request with identifier '{id}' not found for algorithm '{alg}'"
        ))),
        Err(e) => Err(store_err(&e)),
    }
}

/// Loads a run (as [`load`]) that `caller` may `action` (403 otherwise).
pub(crate) async fn load_for(
    s: &Scheduler,
    caller: &Caller,
    action: Action,
    alg: &str,
    id: &str,
) -> ApiResult<Run> {
    let run = load(s, alg, id).await?;
    access::may(s, caller, action, &run).await?;
    Ok(run)
}

pub(crate) fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    nexus_http::require_json(headers)
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunQuery {
    #[serde(rename = "dryRun")]
    pub(crate) dry_run: Option<String>,
}

/// `POST /algorithm/v1/run/{alg}`: parses the request (in memory, or spooled and split when it
/// is big) into an [`AdmitRequest`] and answers `202 {requestId}` once [`Admission`] has made
/// the run durable.
#[tracing::instrument(skip_all, fields(alg = %alg))]
async fn create_run(
    State(s): S,
    Extension(caller): Who,
    Path(alg): Path<String>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let received = Instant::now();
    require_json(&headers)?;
    let max_depth = s.config.max_json_depth;
    let invalid = |e: serde_json::Error| {
        metrics::rejected("invalid_body");
        ApiError::bad_request(format!("Algorithm payload is invalid: {e}"))
    };
    // Small requests are parsed in memory; big ones are spooled and split (see `spool`).
    let (req, parameters) = match spool::read_body(&headers, body, s.config.max_request_bytes)
        .await?
    {
        spool::Incoming::Memory(body) => {
            if let Err(depth) = crate::request_split::check_depth(&body, max_depth) {
                return Err(AdmitError::too_deep(depth).into());
            }
            let req: v1::AlgorithmRequest = serde_json::from_slice(&body).map_err(invalid)?;
            let bytes = req
                .algorithm_parameters
                .as_ref()
                .filter(|v| v.get().trim() != "null")
                .map(|p| p.get().as_bytes().to_vec());
            if let Some(b) = &bytes {
                admission::require_object(b.first().copied())?;
            }
            (req, bytes.map(Parameters::Memory))
        }
        spool::Incoming::Spooled(file) => {
            let split = tokio::task::spawn_blocking(move || spool::split_spooled(file, max_depth))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??;
            let req: v1::AlgorithmRequest = serde_json::from_slice(&split.rest).map_err(invalid)?;
            (req, split.payload.map(Parameters::Spooled))
        }
    };
    let Some(parameters) = parameters else {
        return Err(AdmitError::parameters_required().into());
    };
    let dry_run = parse_dry_run(q.dry_run.as_deref())?;
    let idempotency_key = idempotency_key(&headers);
    let parent = parent_for(
        &caller,
        req.parent_request.map(|p| (p.request_id, p.algorithm_name)),
        "submit",
        &alg,
    )?;
    let authorize = access::submit_check(&s, &caller);
    let algorithm = alg.clone();
    let admitted = Admission::new(s)
        .admit(AdmitRequest {
            algorithm: alg,
            parameters,
            tag: req.tag,
            custom_configuration: req.custom_configuration,
            api_version: req.request_api_version,
            payload_valid_for: req.payload_valid_for,
            parent,
            idempotency_key,
            dry_run,
            received,
            authorize,
        })
        .await;
    access::audit_submit(&caller, &algorithm, &admitted);
    let admitted = admitted?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(v1::RunCreated {
            request_id: admitted.id.to_string(),
        }),
    )
        .into_response())
}

/// `?dryRun=`: only `true` and `false` (as the reference reads it, `true` alone enables a dry
/// run; anything else is refused here rather than silently running the run for real).
pub(crate) fn parse_dry_run(v: Option<&str>) -> ApiResult<bool> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            metrics::rejected("invalid_query");
            Err(ApiError::bad_request(format!(
                "dryRun: must be 'true' or 'false', got '{}'",
                other.escape_default()
            )))
        }
    }
}

/// The result URI a client sees: a fresh signed URL for uploaded results, else what the
/// algorithm reported.
pub(crate) async fn result_uri(s: &Scheduler, run: &Run) -> String {
    if run.stage != Stage::Completed {
        return String::new();
    }
    if run.result_stored {
        let key = Keys::result(&run.algorithm, &run.id.to_string());
        return s
            .payloads
            .signed_get_url(&key, s.config.payload_valid_for)
            .await
            .unwrap_or_default();
    }
    run.result_uri.clone().unwrap_or_default()
}

fn error_message(run: &Run) -> String {
    if run.stage.is_terminal() && run.stage != Stage::Completed {
        run.failure_cause.clone().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Longest `?wait=` of a result read.
pub const MAX_RESULT_WAIT: Duration = Duration::from_secs(60);
/// First and longest pause between the store reads of a waiting result read: runs that end in
/// this process are announced at once ([`nexus_store::watch`]); these reads catch the ones that
/// end elsewhere (a receiver in another cluster).
const WAIT_READ_FIRST: Duration = Duration::from_millis(10);
const WAIT_READ_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
pub(crate) struct ResultQuery {
    wait: Option<String>,
}

/// `?wait=`: a duration up to [`MAX_RESULT_WAIT`].
fn parse_wait(v: Option<&str>) -> ApiResult<Option<Duration>> {
    let Some(v) = v else { return Ok(None) };
    let bad = |why: String| {
        metrics::rejected("invalid_query");
        ApiError::bad_request(format!(
            "wait: {why}; give how long to wait for the run to end, e.g. wait=30s (at most {}s)",
            MAX_RESULT_WAIT.as_secs()
        ))
    };
    let d = nexus_model::spec::parse_duration(v).map_err(bad)?;
    if d > MAX_RESULT_WAIT {
        return Err(bad(format!(
            "'{}' is longer than the limit",
            v.escape_default()
        )));
    }
    Ok(Some(d))
}

/// Waits up to `wait` for `run` to end: woken when it ends in this process, re-read now and
/// then for ends elsewhere; stops early when the scheduler shuts down. Returns the latest record.
async fn wait_for_end(s: &Scheduler, mut run: Run, wait: Duration) -> ApiResult<Run> {
    let deadline = tokio::time::Instant::now() + wait;
    let Some(watch) = nexus_store::watch::watch(run.id) else {
        return Ok(run);
    };
    let mut pause = WAIT_READ_FIRST;
    while !run.stage.is_terminal() && s.readiness.is_ready() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        // Registered before the read: an end between the read and the wait still wakes us.
        let changed = watch.changed();
        if let Some(latest) = s.store.get(run.id).await.map_err(|e| store_err(&e))? {
            run = latest;
        }
        if run.stage.is_terminal() {
            break;
        }
        let sleep = pause.min(deadline - now);
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(sleep) => pause = (pause * 2).min(WAIT_READ_MAX),
        }
    }
    Ok(run)
}

/// `GET /algorithm/v1/results/{alg}/requests/{id}`: the run's status and result. With
/// `?wait=30s`, a run that has not ended yet is answered when it ends (or when the wait is
/// over, with its status then): one request instead of a polling loop.
async fn get_result(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
    Query(q): Query<ResultQuery>,
) -> ApiResult<axum::Json<v1::RequestResult>> {
    let wait = parse_wait(q.wait.as_deref())?;
    let mut run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    if let Some(wait) = wait {
        run = wait_for_end(&s, run, wait).await?;
    }
    Ok(axum::Json(v1::RequestResult {
        request_id: run.id.to_string(),
        status: run.stage.to_string(),
        result_uri: result_uri(&s, &run).await,
        run_error_message: error_message(&run),
    }))
}

async fn tagged(s: &Scheduler, runs: Vec<Run>) -> Vec<v1::TaggedRequestResult> {
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        out.push(v1::TaggedRequestResult {
            request_id: run.id.to_string(),
            algorithm_name: run.algorithm.clone(),
            status: run.stage.to_string(),
            result_uri: result_uri(s, &run).await,
            run_error_message: error_message(&run),
        });
    }
    out
}

async fn get_by_tag(
    State(s): S,
    Extension(caller): Who,
    Path(tag): Path<String>,
) -> ApiResult<axum::Json<Vec<v1::TaggedRequestResult>>> {
    check_tag(&tag)?;
    let runs = s
        .store
        .by_tag(&tag, 10_000)
        .await
        .map_err(|e| store_err(&e))?;
    // Only the runs the caller may read.
    let runs = access::readable(&s, &caller, runs).await?;
    Ok(axum::Json(tagged(&s, runs).await))
}

async fn get_children(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<Vec<v1::TaggedRequestResult>>> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    let kids = s
        .store
        .by_parent(run.id, 10_000)
        .await
        .map_err(|e| store_err(&e))?;
    let kids = access::readable(&s, &caller, kids).await?;
    Ok(axum::Json(tagged(&s, kids).await))
}

/// `GET /algorithm/v1/runs?algorithm&stage&tag&from&to&parent&root&shard&limit&cursor`: one
/// page of the runs the caller may read, newest first (see [`crate::listing`]).
#[tracing::instrument(skip_all)]
async fn list_runs(
    State(s): S,
    Extension(caller): Who,
    q: Result<Query<crate::listing::ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<v1::RunPage>> {
    let Query(params) = q.map_err(|e| {
        metrics::rejected("invalid_query");
        ApiError::bad_request(format!(
            "{}; accepted: algorithm, stage, tag, from, to, parent, root, shard, limit, cursor",
            e.body_text()
        ))
    })?;
    let listing = params.validate().map_err(|m| {
        metrics::rejected("invalid_query");
        ApiError::bad_request(m)
    })?;
    let (runs, next) = crate::listing::page(&s, &caller, listing).await?;
    Ok(axum::Json(crate::listing::http_page(&s, runs, next).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    follow: Option<String>,
}

/// The `Idempotency-Key` header, when given.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The parent of runs `caller` creates from `requested` (`(request id, algorithm)`): a run
/// creates only children of its own (as over gRPC), whatever it names; others get what they ask.
///
/// # Errors
/// 403 when a run names another parent (audited as `action` on `alg`).
pub(crate) fn parent_for(
    caller: &Caller,
    requested: Option<(String, String)>,
    action: &str,
    alg: &str,
) -> Result<Option<ParentRef>, ApiError> {
    let parent = requested.map(|(request_id, algorithm)| ParentRef {
        request_id,
        algorithm,
    });
    let Caller::Run(me) = caller else {
        return Ok(parent);
    };
    if let Some(p) = &parent
        && p.request_id != me.id.to_string()
    {
        access::audit(caller, action, alg, "-", "denied");
        return Err(access::Refusal::Forbidden(format!(
            "run {} may create only its own children; parentRequest names {}",
            me.id, p.request_id
        ))
        .into());
    }
    Ok(Some(ParentRef {
        request_id: me.id.to_string(),
        algorithm: me.algorithm.clone(),
    }))
}

/// `GET /algorithm/v1/logs/{alg}/requests/{id}[?follow=true]`: the run's captured output,
/// streamed while it runs with `follow=true` (see [`crate::logs`]).
async fn get_logs(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("{}; accepted: follow=true|false", e.body_text()))
    })?;
    let follow = match q.follow.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "follow: must be 'true' or 'false', got '{}'",
                other.escape_default()
            )));
        }
    };
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    crate::logs::answer(s, run, follow).await
}

/// `GET /algorithm/v1/timeline/{alg}/requests/{id}`: every stage change of the run, with its
/// time, the component that made it and the cause.
async fn get_timeline(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<v1::RunTimeline>> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    Ok(axum::Json(crate::explain::timeline(&run)))
}

/// `GET /algorithm/v1/explain/{alg}/requests/{id}`: what the run is doing and why (see
/// [`crate::explain`]).
async fn get_explanation(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<v1::RunExplanation>> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    Ok(axum::Json(crate::explain::explain(&s, &run).await))
}

/// `GET /algorithm/v1/metadata/{alg}/requests/{id}`: the run as Go's `CheckpointedRequest`
/// (see [`checkpointed_request`]).
async fn get_metadata(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    Ok(axum::Json(checkpointed_request(&s, &run).await))
}

/// Formats a duration as Go's `time.Duration.String()` does (`24h0m0s`, `1m30s`, `45s`,
/// `1.5s`, `500ms`), the form of the reference's `payload_valid_for`.
#[must_use]
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let (sec, frac) = ((ms / 1000) % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{sec}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{sec}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// Removes `null` members and elements, recursively: the v1 documents leave an absent field out
/// rather than sending `null` (Go clients decode `null` objects as errors).
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(strip_nulls);
        }
        _ => {}
    }
}

/// Returns the run as the reference's `CheckpointedRequest` JSON (reference §2.1): snake_case
/// keys, RFC 3339 times, optional fields left out when empty, never `null`.
///
/// Go's fields: `algorithm`, `id`, `lifecycle_stage`, `payload_uri` (a fresh signed URL),
/// `result_uri`, `algorithm_failure_cause`, `algorithm_failure_details`, `received_at`,
/// `sent_at` (launch of the current attempt), `applied_configuration`,
/// `configuration_overrides`, `content_hash` (SHA-256, hex), `last_modified`, `tag`,
/// `api_version`, `job_uid` (the executor's handle: Job uid, process id or `dry-run`),
/// `parent` (`{requestId, algorithmName}`), `payload_valid_for` (Go duration). Go's
/// `received_by_host` is not recorded by Nexus and left out.
///
/// Nexus' additions: `workgroup`, `shard`, `root`, `depth`, `attempts`, `owner`,
/// `payload_size`, `started_at`, `finished_at`, `logs_uri` (signed URL of the captured output,
/// when there is some).
pub async fn checkpointed_request(s: &Scheduler, run: &Run) -> serde_json::Value {
    use nexus_model::run::format_millis;
    use serde_json::{Value, json};
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_owned(), v);
    };
    let text = |v: &Option<String>| v.as_deref().filter(|t| !t.is_empty()).map(Value::from);
    put("algorithm", run.algorithm.clone().into());
    put("id", run.id.to_string().into());
    put("lifecycle_stage", run.stage.as_str().into());
    put("payload_uri", s.payload_url(run).into());
    let result = result_uri(s, run).await;
    if !result.is_empty() {
        put("result_uri", result.into());
    }
    if let Some(c) = text(&run.failure_cause) {
        put("algorithm_failure_cause", c);
    }
    if let Some(d) = text(&run.failure_details) {
        put("algorithm_failure_details", d);
    }
    put("received_at", format_millis(run.received_at).into());
    if let Some(t) = run.started_at {
        put("sent_at", format_millis(t).into());
    }
    put(
        "applied_configuration",
        serde_json::to_value(&run.applied_configuration).unwrap_or_else(|_| json!({})),
    );
    if let Some(c) = run.configuration_overrides.clone().filter(Value::is_object) {
        put("configuration_overrides", c);
    }
    put("content_hash", run.content_hash.clone().into());
    put("last_modified", format_millis(run.last_modified).into());
    if let Some(t) = text(&run.tag) {
        put("tag", t);
    }
    if let Some(v) = text(&run.api_version) {
        put("api_version", v);
    }
    if let Some(j) = text(&run.executor_ref) {
        put("job_uid", j);
    }
    if let Some(p) = &run.parent {
        put(
            "parent",
            json!({"requestId": p.request_id.to_string(), "algorithmName": p.algorithm_name}),
        );
    }
    put(
        "payload_valid_for",
        go_duration(run.payload_valid_for).into(),
    );
    // Nexus' additions.
    put("workgroup", run.workgroup.clone().into());
    put("shard", run.shard.clone().into());
    put("root", run.root.to_string().into());
    put("depth", run.depth.into());
    put("attempts", run.attempts.into());
    if let Some(owner) = text(&run.owner) {
        put("owner", owner);
    }
    put("payload_size", run.payload_size.into());
    if run.external {
        put("external", true.into());
    }
    if let Some(p) = crate::listing::progress(run) {
        put(
            "progress",
            json!({"fraction": p.fraction, "message": p.message, "reported_at": p.reported_at}),
        );
    }
    if let Some(t) = run.started_at {
        put("started_at", format_millis(t).into());
    }
    if let Some(t) = run.finished_at {
        put("finished_at", format_millis(t).into());
    }
    // Logs are written when the process ends, which may be after the run completed (the
    // algorithm reports, then exits), so look for the object rather than a flag.
    let key = Keys::logs(&run.algorithm, &run.id.to_string());
    if (run.logs_stored
        || (run.stage.is_terminal() && matches!(s.payloads.size(&key).await, Ok(Some(_)))))
        && let Ok(u) = s
            .payloads
            .signed_get_url(&key, Duration::from_secs(3600))
            .await
    {
        put("logs_uri", u.into());
    }
    let mut v = Value::Object(o);
    strip_nulls(&mut v);
    v
}

async fn update_tag(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let run = load(&s, &alg, &id).await?;
    if let Err(r) = access::may(&s, &caller, Action::Submit, &run).await {
        access::audit(&caller, "tag", &alg, &id, "denied");
        return Err(r.into());
    }
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("tag must be UTF-8 text"))?;
    // Accept a raw tag or a JSON string (`"tag"`), as generated clients send either.
    let tag = serde_json::from_str::<String>(text).unwrap_or_else(|_| text.trim().to_owned());
    check_tag(&tag)?;
    let said = if tag.is_empty() {
        format!("tag of run {} cleared", run.id)
    } else {
        format!("tag of run {} set to '{tag}'", run.id)
    };
    s.store
        .set_tag(run.id, (!tag.is_empty()).then_some(tag))
        .await
        .map_err(|e| store_err(&e))?;
    access::audit(&caller, "tag", &alg, &id, "ok");
    Ok(text_ok(said))
}

/// A `200 text/plain; charset=utf-8` answer, as the reference's cancel and tag routes give (its
/// clients refuse a 200 without a media type).
pub(crate) fn text_ok(message: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// `GET /algorithm/v1/buffer/{alg}/requests/{id}`: the run's Kubernetes `batch/v1` Job as JSON,
/// served `text/plain` as the reference does. Nexus stores no Job: it renders the Job the
/// Kubernetes executor would create (for local runs too), with default Job options (namespace
/// `default`), a fresh signed payload URL, and placeholders for what is minted only at launch
/// (the run token, so also the receiver URL carrying it, and the result upload URL), so no
/// credential leaks through this route.
async fn get_buffer(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    let snap = s.catalog.snapshot();
    let wg = snap
        .workgroups
        .get(&run.workgroup)
        .map(|w| w.spec.clone())
        .unwrap_or_default();
    let ctx = LaunchContext {
        payload_url: &s.payload_url(&run),
        run_token: "<minted at launch>",
        receiver_url: "<receiver url>",
        result_upload_url: "<minted at launch>",
        scheduler_url: "",
    };
    let job = render_job(&run, &wg, &ctx, None, &JobOptions::default()).map_err(|e| {
        ApiError::bad_request(format!(
            "Failed to read buffered metadata for {id}: the run cannot be rendered as a Kubernetes Job: {e}"
        ))
    })?;
    let text = serde_json::to_string(&job)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}

/// `GET /algorithm/v1/payload/{alg}/requests/{id}`: `302 Found` to the payload's signed URL (the
/// reference's status; axum's `Redirect::to` would be 303).
async fn get_payload_redirect(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let run = load_for(&s, &caller, Action::Read, &alg, &id).await?;
    Ok((StatusCode::FOUND, [(header::LOCATION, s.payload_url(&run))]).into_response())
}

#[derive(Debug, Deserialize)]
struct SigQuery {
    exp: Option<String>,
    sig: Option<String>,
}

/// `GET /data/v1/payloads/{alg}/{id}?exp&sig`: the payload behind the signed URL handed to the
/// run (403 without a valid signature).
async fn serve_payload(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
) -> ApiResult<Response> {
    let (Some(exp), Some(sig)) = (q.exp.as_deref(), q.sig.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing signature: use the signed URL handed to the run",
        ));
    };
    let exp = verify_payload_signature(&s, &alg, &id, exp, sig)?;
    let run = load(&s, &alg, &id).await?;
    payload_response(&s, &run, exp).await
}

/// `GET /data/v1/payloads/{alg}/requests/{id}`: the payload as JSON (the newer Go API's route).
///
/// Authorization: it is an API route, open to the same callers as `/algorithm/v1/payload/...`,
/// which hands out the payload's signed URL: callers that may read the run. It also accepts the
/// signature query of the run's signed payload URL (`?exp&sig`) instead of a credential, so an
/// algorithm can use it; a signature that is present but forged or expired is refused with 403
/// rather than ignored.
async fn serve_payload_v1(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let e = IntoResponse::into_response;
    let exp = match (q.exp.as_deref(), q.sig.as_deref()) {
        (None, None) => None,
        (Some(exp), Some(sig)) => {
            Some(verify_payload_signature(&s, &alg, &id, exp, sig).map_err(e)?)
        }
        _ => {
            return Err(e(ApiError::new(
                StatusCode::FORBIDDEN,
                "incomplete signature: pass both exp and sig of the run's signed payload URL, or neither",
            )));
        }
    };
    // Without a signature, the caller must be allowed to read the run.
    let run = match exp {
        Some(_) => load(&s, &alg, &id).await.map_err(e)?,
        None => {
            let caller = access::http_caller(&s, &headers).await?;
            load_for(&s, &caller, Action::Read, &alg, &id)
                .await
                .map_err(e)?
        }
    };
    let exp = exp.unwrap_or_else(|| {
        now_secs().saturating_add(i64::try_from(run.payload_valid_for.as_secs()).unwrap_or(3600))
    });
    payload_response(&s, &run, exp).await.map_err(e)
}

/// Checks a payload signature (`exp`, `sig`) against the run's signed payload path
/// (`/data/v1/payloads/{alg}/{id}`); returns the expiry.
fn verify_payload_signature(
    s: &Scheduler,
    alg: &str,
    id: &str,
    exp: &str,
    sig: &str,
) -> ApiResult<i64> {
    let path = format!("/data/v1/payloads/{alg}/{id}");
    let exp: i64 = exp
        .parse()
        .map_err(|_| ApiError::new(StatusCode::FORBIDDEN, "malformed signature expiry"))?;
    s.signer
        .verify_url("GET", &path, exp, sig, now_secs())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    Ok(exp)
}

/// The payload of `run`: inline bytes as `200 application/json`; a payload in the payload store
/// as a `307` to the store's own signed URL, valid until `exp` (big payloads are not relayed).
async fn payload_response(s: &Scheduler, run: &Run, exp: i64) -> ApiResult<Response> {
    let bytes = match &run.payload {
        PayloadLocation::Inline { bytes } => Bytes::from(bytes.clone()),
        PayloadLocation::Stored { key } => {
            let left = u64::try_from(exp - now_secs()).unwrap_or(1).max(1);
            let url = s
                .payloads
                .signed_get_url(key, Duration::from_secs(left))
                .await
                .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
            return Ok(Redirect::temporary(&url).into_response());
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
async fn cancel_run(
    State(s): S,
    Extension(caller): Who,
    Path((alg, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: v1::CancellationRequest = if body.is_empty() {
        v1::CancellationRequest::default()
    } else {
        require_json(&headers)?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Cancellation payload is invalid: {e}")))?
    };
    let policy: CancellationPolicy = match req.cancellation_policy.as_deref() {
        None | Some("") => CancellationPolicy::default(),
        Some(p) => p.parse().map_err(|e: String| {
            ApiError::bad_request(format!("Invalid cancellation request: {e}"))
        })?,
    };
    let run = load(&s, &alg, &id).await?;
    if let Err(r) = access::may(&s, &caller, Action::Cancel, &run).await {
        access::audit(&caller, "cancel", &alg, &id, "denied");
        return Err(r.into());
    }
    // The initiator a client writes is its own claim; the authenticated caller is recorded
    // next to it, so a cancel cannot be passed off as someone else's.
    let initiator = match (caller.as_ref(), req.initiator.is_empty()) {
        (Caller::Anonymous, true) => "anonymous".to_owned(),
        (Caller::Anonymous, false) => req.initiator.clone(),
        (c, true) => c.describe(),
        (c, false) => format!("{} (as {})", req.initiator, c.describe()),
    };
    let id = run.id;
    let outcome = crate::tree::cancel(&s, run, policy, &initiator, &req.reason).await;
    access::audit(
        &caller,
        "cancel",
        &alg,
        &id.to_string(),
        if outcome.is_ok() { "ok" } else { "failed" },
    );
    match outcome {
        Ok(cascade) => Ok(text_ok(format!(
            "run {id} cancelled{}",
            cascade_note(&cascade)
        ))),
        // The reference answers 200 for a finished run (its clients turn 409 into an error):
        // say so in the body; nothing was changed.
        Err(e) if e.kind() == ErrorKind::Conflict => {
            let now = load(&s, &alg, &id.to_string()).await?;
            if now.stage.is_terminal() {
                Ok(text_ok(format!(
                    "run {id} had already finished as {}; nothing was changed",
                    now.stage
                )))
            } else {
                Err(e.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `" and its N descendants"` when a cancel reached descendants, else nothing.
fn cascade_note(c: &crate::tree::Cascade) -> String {
    match c.cancelled {
        0 => String::new(),
        1 => " and its 1 descendant".to_owned(),
        n => format!(" and its {n} descendants"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_prints_them() {
        let s = |secs: u64| go_duration(Duration::from_secs(secs));
        assert_eq!(s(24 * 3600), "24h0m0s");
        assert_eq!(s(6 * 3600 + 90), "6h1m30s");
        assert_eq!(s(90), "1m30s");
        assert_eq!(s(45), "45s");
        assert_eq!(s(0), "0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn nulls_are_left_out_at_every_depth() {
        let mut v = serde_json::json!({"a": null, "b": {"c": null, "d": [1, null, {"e": null}]}});
        strip_nulls(&mut v);
        assert_eq!(v, serde_json::json!({"b": {"d": [1, {}]}}));
    }
}
