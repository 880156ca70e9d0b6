//! The scheduler's HTTP v1 API, wire-compatible with the reference (paths, methods, JSON field
//! names, status codes), with its defects fixed: 202 only once the run is durable, 404 for an
//! unknown run, cancel of queued runs and 409 on finished ones, body limits (413), content-type
//! checks (415), and errors negotiated between text/plain and problem+json.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use nexus_core::http::ApiError;
use nexus_core::payload::Keys;
use nexus_core::render::{LaunchContext, launch_spec};
use nexus_core::run::{
    CancellationPolicy, PayloadLocation, Run, RunId, RunPatch, Stage, now_millis,
};
use nexus_core::sign::now_secs;
use nexus_core::spec::{SpecOverride, parse_duration};
use nexus_core::store::{Inserted, StoreError};
use nexus_proto::v1;
use serde::Deserialize;
use sha2::Digest;

use crate::queue::Queued;
use crate::{Scheduler, metrics, spool};

type S = State<Arc<Scheduler>>;

/// A run's payload as it arrived.
enum PayloadIn {
    /// Parsed from a request read into memory.
    Memory(Vec<u8>),
    /// Located in a spooled request, validated and hashed.
    Spooled(spool::SpooledPayload),
}
type ApiResult<T> = Result<T, ApiError>;

/// Returns the scheduler's routes (v1 API, payload data route, OpenAPI document).
pub fn router(s: Arc<Scheduler>) -> Router {
    let limit = s.config.max_request_bytes;
    Router::new()
        .route(
            "/algorithm/v1/run/{alg}",
            post(create_run)
                .layer(DefaultBodyLimit::max(limit))
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_declared_oversize(limit, req, next)
                })),
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
        .route("/data/v1/payloads/{alg}/{id}", get(serve_payload))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(s)
}

/// Answers 413 at once when the declared `Content-Length` is over the limit, without reading the
/// body (bodies without a length are cut off by `DefaultBodyLimit` while being read).
async fn refuse_declared_oversize(
    limit: usize,
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
            format!("request body is {n} bytes; the limit is {limit} bytes (scheduler.max_request_bytes)"),
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

/// 400 for a request nested deeper than `scheduler.max_json_depth`.
pub(crate) fn too_deep(limit: usize) -> ApiError {
    ApiError::bad_request(format!(
        "Algorithm payload is invalid: JSON nested deeper than {limit} levels (scheduler.max_json_depth)"
    ))
}

pub(crate) fn store_err(e: &StoreError) -> ApiError {
    ApiError::from_kind(e.kind(), format!("run store unavailable, try again: {e}"))
}

fn parse_id(id: &str) -> ApiResult<RunId> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{id}' is not a valid request id (expected a UUID)"
        ))
    })
}

/// Loads a run addressed by (algorithm, id); 404 when unknown or under another algorithm.
async fn load(s: &Scheduler, alg: &str, id: &str) -> ApiResult<Run> {
    let rid = parse_id(id)?;
    match s.store.get(rid).await {
        Ok(Some(r)) if r.algorithm == alg => Ok(r),
        Ok(_) => Err(ApiError::not_found(format!(
            "Provided request with identifier '{id}' not found for algorithm '{alg}'"
        ))),
        Err(e) => Err(store_err(&e)),
    }
}

fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected Content-Type: application/json, got '{}'",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ))
    }
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
}

#[tracing::instrument(skip_all, fields(alg = %alg))]
async fn create_run(
    State(s): S,
    Path(alg): Path<String>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let started = Instant::now();
    require_json(&headers)?;
    let max_depth = s.config.max_json_depth;
    let invalid = |e: serde_json::Error| {
        metrics::rejected("invalid_body");
        ApiError::bad_request(format!("Algorithm payload is invalid: {e}"))
    };
    // Small requests are parsed in memory; big ones are spooled and split (see `spool`).
    let (req, mut payload_in) = match spool::read_body(&headers, body, s.config.max_request_bytes)
        .await?
    {
        spool::Incoming::Memory(body) => {
            if let Err(depth) = nexus_core::request_split::check_depth(&body, max_depth) {
                metrics::rejected("invalid_body");
                return Err(too_deep(depth));
            }
            let req: v1::AlgorithmRequest = serde_json::from_slice(&body).map_err(invalid)?;
            let bytes = req
                .algorithm_parameters
                .as_ref()
                .filter(|v| v.get().trim() != "null")
                .map(|p| p.get().as_bytes().to_vec());
            if let Some(b) = &bytes {
                spool::require_object(b.first().copied())?;
            }
            (req, bytes.map(PayloadIn::Memory))
        }
        spool::Incoming::Spooled(file) => {
            let split = tokio::task::spawn_blocking(move || spool::split_spooled(file, max_depth))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))??;
            let req: v1::AlgorithmRequest = serde_json::from_slice(&split.rest).map_err(invalid)?;
            (req, split.payload.map(PayloadIn::Spooled))
        }
    };
    if payload_in.is_none() {
        metrics::rejected("invalid_body");
        return Err(ApiError::bad_request(
            "Algorithm payload is invalid: algorithmParameters is required (any JSON object)",
        ));
    }
    let dry_run = parse_dry_run(q.dry_run.as_deref())?;
    let snap = s.catalog.snapshot();
    let Some(template) = snap.templates.get(&alg) else {
        metrics::accepted(false);
        return Err(ApiError::bad_request(format!(
            "No valid configuration found for: {alg}. Please check that algorithm name is spelled correctly and try again."
        )));
    };
    let overrides = match &req.custom_configuration {
        Some(v) if !v.is_null() => Some(
            SpecOverride::from_json(v)
                .map_err(|e| ApiError::bad_request(format!("Algorithm payload is invalid: {e}")))?,
        ),
        _ => None,
    };
    let applied = overrides
        .as_ref()
        .map_or_else(|| template.spec.clone(), |o| o.apply(&template.spec));
    let wg_name = applied.workgroup_name().unwrap_or_default().to_owned();
    let Some(workgroup) = snap.workgroups.get(&wg_name) else {
        return Err(ApiError::bad_request(format!(
            "Cannot assign requested workgroup {wg_name} to the algorithm {alg}: the workgroup does not exist"
        )));
    };
    let valid_for = match &req.payload_valid_for {
        Some(d) => {
            parse_duration(d).map_err(|e| ApiError::bad_request(format!("payloadValidFor: {e}")))?
        }
        None => applied
            .payload_configuration
            .as_ref()
            .and_then(|p| p.payload_valid_for.as_deref())
            .and_then(|d| parse_duration(d).ok())
            .unwrap_or(s.config.payload_valid_for),
    };
    if valid_for > s.config.max_payload_valid_for {
        return Err(ApiError::bad_request(format!(
            "payloadValidFor: {} is longer than the limit of {} (scheduler.max_payload_valid_for)",
            humantime::format_duration(valid_for),
            humantime::format_duration(s.config.max_payload_valid_for)
        )));
    }
    check_run_bounds(&s.config, &applied)?;
    if let Some(tag) = &req.tag {
        check_tag(tag)?;
    }
    let idem = idempotency_key(&headers)?;
    let (parent, root, depth) = match &req.parent_request {
        None => (None, None, 0),
        Some(p) => {
            let pr = load(&s, &p.algorithm_name, &p.request_id)
                .await
                .map_err(|e| {
                    if e.status == StatusCode::NOT_FOUND {
                        ApiError::bad_request(format!("parentRequest: {}", e.message))
                    } else {
                        e
                    }
                })?;
            check_can_have_child(&s, &pr).await?;
            (Some(pr.as_ref()), Some(pr.root), pr.depth + 1)
        }
    };
    if !dry_run && !s.queue.has_room() {
        metrics::rejected("queue_full");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the scheduler's queue is full; retry later",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let id = RunId::new();
    let unavailable = |e: nexus_core::payload::PayloadError| {
        ApiError::from_kind(
            e.kind,
            format!("payload store unavailable, try again: {}", e.message),
        )
    };
    let spool_err = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("spool file: {e}"),
        )
    };
    let inline_max = s.config.inline_payload_bytes as u64;
    let (payload, content_hash, size) = match payload_in.take().expect("checked above") {
        PayloadIn::Memory(bytes) => {
            let hash = hex(&sha2::Sha256::digest(&bytes));
            let size = bytes.len() as u64;
            if size <= inline_max {
                (PayloadLocation::Inline { bytes }, hash, size)
            } else {
                let key = Keys::payload(&alg, &id.to_string());
                s.payloads
                    .put(&key, bytes.into())
                    .await
                    .map_err(unavailable)?;
                (PayloadLocation::Stored { key }, hash, size)
            }
        }
        PayloadIn::Spooled(mut p) => {
            let (hash, size) = (p.sha256.clone(), p.span.len);
            if size <= inline_max {
                let bytes = tokio::task::spawn_blocking(move || p.read_all())
                    .await
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?
                    .map_err(spool_err)?;
                (PayloadLocation::Inline { bytes }, hash, size)
            } else {
                let key = Keys::payload(&alg, &id.to_string());
                let reader = p.into_reader().map_err(spool_err)?;
                s.payloads
                    .put_reader(&key, Box::new(reader), size)
                    .await
                    .map_err(unavailable)?;
                (PayloadLocation::Stored { key }, hash, size)
            }
        }
    };
    let now = now_millis();
    let run = Run {
        id,
        algorithm: alg.clone(),
        stage: if dry_run {
            Stage::Completed
        } else {
            Stage::Buffered
        },
        workgroup: wg_name,
        shard: workgroup.spec.cluster.clone(),
        tag: req.tag.clone(),
        api_version: req.request_api_version.clone(),
        parent,
        root: root.unwrap_or(id),
        depth,
        idempotency_key: idem,
        owner: if dry_run {
            None
        } else {
            Some(s.instance_id.clone())
        },
        attempts: 0,
        applied_configuration: applied,
        configuration_overrides: req.custom_configuration.clone().filter(|v| !v.is_null()),
        payload,
        content_hash,
        payload_size: size,
        payload_valid_for: valid_for,
        result_uri: None,
        result_stored: false,
        logs_stored: false,
        failure_cause: None,
        failure_details: None,
        executor_ref: dry_run.then(|| "dry-run".to_owned()),
        received_at: now,
        started_at: None,
        finished_at: dry_run.then_some(now),
        last_modified: now,
    };
    let shard = run.shard.clone();
    let fingerprint = Fingerprint::of(&run);
    // The durable write and the enqueue run in their own task: a client that closes its
    // connection drops this handler's future, and a run that became durable must still reach the
    // queue (a run stored BUFFERED but never queued would wait for the next restart).
    let s2 = Arc::clone(&s);
    let inserted = tokio::spawn(async move {
        let r = s2.store.insert(run).await;
        if matches!(r, Ok(Inserted::Created)) && !dry_run {
            s2.queue.push(Queued {
                id,
                shard,
                attempt: 0,
            });
        }
        r
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("accept task: {e}"),
        )
    })?;
    let final_id = match inserted {
        Ok(Inserted::Created) => id,
        Ok(Inserted::Existing(existing)) => {
            if let Some(key) = &fingerprint.stored_key {
                // This request's copy of the payload belongs to no run.
                let _ = s.payloads.delete(key).await;
            }
            fingerprint.same_request(&existing)?;
            existing.id
        }
        Err(e) => return Err(store_err(&e)),
    };
    metrics::accepted(true);
    metrics::accept_latency(started.elapsed().as_secs_f64());
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(v1::RunCreated {
            request_id: final_id.to_string(),
        }),
    )
        .into_response())
}

/// `?dryRun=`: only `true` and `false` (as the reference reads it, `true` alone enables a dry
/// run; anything else is refused here rather than silently running the run for real).
fn parse_dry_run(v: Option<&str>) -> ApiResult<bool> {
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

/// Most characters of a tag.
pub(crate) const MAX_TAG_CHARS: usize = 256;

/// Checks a client tag: at most [`MAX_TAG_CHARS`] characters, no control characters.
pub(crate) fn check_tag(tag: &str) -> ApiResult<()> {
    let n = tag.chars().count();
    if n > MAX_TAG_CHARS {
        return Err(ApiError::bad_request(format!(
            "tag: {n} characters; a tag is at most {MAX_TAG_CHARS} characters"
        )));
    }
    if tag.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "tag: must not contain control characters (newlines, tabs, …)",
        ));
    }
    Ok(())
}

/// Reads the `Idempotency-Key` header: 1 to 256 visible ASCII characters (RFC 9110 field values
/// may carry other bytes, which clients and proxies handle inconsistently, so they are refused
/// rather than silently ignored).
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        metrics::rejected("invalid_header");
        ApiError::bad_request(
            "Idempotency-Key: must be 1 to 256 visible ASCII characters (e.g. a UUID)",
        )
    };
    let k = v.to_str().map_err(|_| bad())?;
    if k.is_empty() || k.len() > 256 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(k.to_owned()))
}

/// Upper bounds on what a template or a run's `customConfiguration` may ask for.
fn check_run_bounds(
    c: &crate::SchedulerConfig,
    spec: &nexus_core::spec::AlgorithmSpec,
) -> ApiResult<()> {
    let retries = spec.maximum_retries();
    if retries > c.max_retries {
        return Err(ApiError::bad_request(format!(
            "runtimeEnvironment.maximumRetries: {retries} is over the limit of {} (scheduler.max_retries)",
            c.max_retries
        )));
    }
    let deadline = Duration::from_secs(u64::from(spec.deadline_seconds()));
    if deadline > c.max_deadline {
        return Err(ApiError::bad_request(format!(
            "runtimeEnvironment.deadlineSeconds: {} is over the limit of {} (scheduler.max_deadline)",
            deadline.as_secs(),
            humantime::format_duration(c.max_deadline)
        )));
    }
    Ok(())
}

/// What makes two submissions under one idempotency key the same request.
struct Fingerprint {
    content_hash: String,
    tag: Option<String>,
    overrides: Option<serde_json::Value>,
    parent: Option<String>,
    /// The payload object this request stored (big payloads), deleted again when the key was
    /// already used.
    stored_key: Option<String>,
}

impl Fingerprint {
    fn of(run: &Run) -> Self {
        Self {
            content_hash: run.content_hash.clone(),
            tag: run.tag.clone(),
            overrides: run.configuration_overrides.clone(),
            parent: run.parent.as_ref().map(|p| p.request_id.to_string()),
            stored_key: match &run.payload {
                PayloadLocation::Stored { key } => Some(key.clone()),
                PayloadLocation::Inline { .. } => None,
            },
        }
    }

    /// 422 when `existing` (the run first created under the key) came from a different request,
    /// as the IETF idempotency-key draft asks: the key was reused by mistake.
    fn same_request(&self, existing: &Run) -> ApiResult<()> {
        let differs = if existing.content_hash != self.content_hash {
            Some("algorithmParameters")
        } else if existing.tag != self.tag {
            Some("tag")
        } else if existing.configuration_overrides != self.overrides {
            Some("customConfiguration")
        } else if existing.parent.as_ref().map(|p| p.request_id.to_string()) != self.parent {
            Some("parentRequest")
        } else {
            None
        };
        match differs {
            None => Ok(()),
            Some(field) => {
                metrics::rejected("idempotency_conflict");
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key '{}' was already used for run {} with a different request ({field} differs); use a new key for a new run",
                        existing.idempotency_key.as_deref().unwrap_or_default(),
                        existing.id
                    ),
                ))
            }
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
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

async fn get_result(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<v1::RequestResult>> {
    let run = load(&s, &alg, &id).await?;
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
    Path(tag): Path<String>,
) -> ApiResult<axum::Json<Vec<v1::TaggedRequestResult>>> {
    check_tag(&tag)?;
    let runs = s
        .store
        .by_tag(&tag, 10_000)
        .await
        .map_err(|e| store_err(&e))?;
    Ok(axum::Json(tagged(&s, runs).await))
}

async fn get_children(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<Vec<v1::TaggedRequestResult>>> {
    let run = load(&s, &alg, &id).await?;
    let kids = s
        .store
        .by_parent(run.id, 10_000)
        .await
        .map_err(|e| store_err(&e))?;
    Ok(axum::Json(tagged(&s, kids).await))
}

async fn get_metadata(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let run = load(&s, &alg, &id).await?;
    let mut v = serde_json::to_value(&run)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        // Payload bytes are served by URL, never inlined into metadata.
        o.remove("payload");
        o.insert("lifecycleStage".into(), run.stage.to_string().into());
        o.insert("resultUri".into(), result_uri(&s, &run).await.into());
        // Logs are written when the process ends, which may be after the run completed (the
        // algorithm reports, then exits), so look for the object rather than a flag.
        let key = Keys::logs(&run.algorithm, &run.id.to_string());
        if run.logs_stored
            || (run.stage.is_terminal() && matches!(s.payloads.size(&key).await, Ok(Some(_))))
        {
            o.insert("logsStored".into(), true.into());
            if let Ok(u) = s
                .payloads
                .signed_get_url(&key, Duration::from_secs(3600))
                .await
            {
                o.insert("logsUri".into(), u.into());
            }
        }
        o.insert(
            "receivedAtRfc3339".into(),
            nexus_core::run::format_millis(run.received_at).into(),
        );
    }
    Ok(axum::Json(v))
}

async fn update_tag(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let run = load(&s, &alg, &id).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("tag must be UTF-8 text"))?;
    // Accept a raw tag or a JSON string (`"tag"`), as generated clients send either.
    let tag = serde_json::from_str::<String>(text).unwrap_or_else(|_| text.trim().to_owned());
    check_tag(&tag)?;
    s.store
        .set_tag(run.id, (!tag.is_empty()).then_some(tag))
        .await
        .map_err(|e| store_err(&e))?;
    Ok(StatusCode::OK)
}

async fn get_buffer(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let run = load(&s, &alg, &id).await?;
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
    let l = launch_spec(&run, &wg, &ctx).map_err(ApiError::bad_request)?;
    Ok(axum::Json(serde_json::json!({
        "requestId": run.id.to_string(),
        "algorithm": run.algorithm,
        "shard": run.shard,
        "workgroup": run.workgroup,
        "command": l.command,
        "args": l.args,
        "env": l.env.into_iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "deadlineSeconds": l.deadline.as_secs(),
        "maximumRetries": l.max_retries,
        "transientExitCodes": l.transient_exit_codes,
        "fatalExitCodes": l.fatal_exit_codes,
        "maxConcurrentRuns": l.max_concurrent,
    })))
}

async fn get_payload_redirect(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
) -> ApiResult<Redirect> {
    let run = load(&s, &alg, &id).await?;
    Ok(Redirect::to(&s.payload_url(&run)))
}

#[derive(Debug, Deserialize)]
struct SigQuery {
    exp: Option<String>,
    sig: Option<String>,
}

async fn serve_payload(
    State(s): S,
    Path((alg, id)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
) -> ApiResult<Response> {
    let path = format!("/data/v1/payloads/{alg}/{id}");
    let (Some(exp), Some(sig)) = (q.exp.as_deref(), q.sig.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing signature: use the signed URL handed to the run",
        ));
    };
    let exp: i64 = exp
        .parse()
        .map_err(|_| ApiError::new(StatusCode::FORBIDDEN, "malformed signature expiry"))?;
    s.signer
        .verify_url("GET", &path, exp, sig, now_secs())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let run = load(&s, &alg, &id).await?;
    let bytes = match &run.payload {
        PayloadLocation::Inline { bytes } => Bytes::from(bytes.clone()),
        PayloadLocation::Stored { key } => {
            // Big payloads are not relayed: the algorithm is sent to the payload store itself
            // (a presigned S3 GET, or the file store's signed URL), valid as long as this URL.
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

/// Execution-tree limits for a new child of `parent`: a clear 4xx naming the limit.
async fn check_can_have_child(s: &Scheduler, parent: &Run) -> ApiResult<()> {
    if parent.stage == Stage::Cancelled {
        return Err(ApiError::conflict(format!(
            "parentRequest: run {} was cancelled; it cannot have new children",
            parent.id
        )));
    }
    if parent.stage.is_terminal() {
        return Err(ApiError::conflict(format!(
            "parentRequest: run {} already finished as {}; a finished run cannot have new children",
            parent.id, parent.stage
        )));
    }
    if parent.depth + 1 > s.config.max_tree_depth {
        return Err(ApiError::bad_request(format!(
            "parentRequest: a child of {} would be at depth {} of its execution tree; the limit is {} (scheduler.max_tree_depth)",
            parent.id,
            parent.depth + 1,
            s.config.max_tree_depth
        )));
    }
    let max = s.config.max_children_per_run;
    let n = s
        .store
        .count_children(parent.id, max)
        .await
        .map_err(|e| store_err(&e))?;
    if n >= max {
        return Err(ApiError::bad_request(format!(
            "parentRequest: run {} already has {n} children; the limit is {max} (scheduler.max_children_per_run)",
            parent.id
        )));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
async fn cancel_run(
    State(s): S,
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
    let initiator = if req.initiator.is_empty() {
        "anonymous".to_owned()
    } else {
        req.initiator.clone()
    };
    cancel(&s, run, policy, &initiator, &req.reason).await?;
    Ok(StatusCode::OK.into_response())
}

/// Cancels `run` (compare-and-set, following stage changes), stops it on its shard, then
/// cancels every descendant. A run already CANCELLED resumes its cascade and answers 409 like any
/// finished run.
///
/// # Errors
/// 409 for a finished run, store failures.
pub(crate) async fn cancel(
    s: &Scheduler,
    mut run: Run,
    policy: CancellationPolicy,
    initiator: &str,
    reason: &str,
) -> ApiResult<crate::tree::Cascade> {
    let patch = RunPatch::failure(
        format!("Cancelled by '{initiator}'"),
        format!("Run cancelled, reason: '{reason}'"),
    );
    // Compare-and-set loop: the stage may move (BUFFERED → RUNNING) between read and write.
    for _ in 0..8 {
        if run.stage.is_terminal() {
            if run.stage == Stage::Cancelled {
                // Cancelled before: finish a cascade an earlier cancel may not have completed.
                crate::tree::cancel_descendants(s, &run, policy, initiator, reason)
                    .await
                    .map_err(|e| store_err(&e))?;
            }
            return Err(ApiError::conflict(format!(
                "run {} already finished as {}; nothing was changed",
                run.id, run.stage
            )));
        }
        match s
            .store
            .transition(run.id, run.stage, Stage::Cancelled, patch.clone())
            .await
        {
            Ok(_) => {
                if let Some(shard) = s.shards.route(&run.shard)
                    && let Err(e) = shard.cancel(run.id, policy).await
                {
                    tracing::warn!(
                        "run cancelled in the store, but its process could not be stopped yet: {e}"
                    );
                }
                // Every descendant, wherever it runs, is cancelled with a cause naming this run.
                return crate::tree::cancel_descendants(s, &run, policy, initiator, reason)
                    .await
                    .map_err(|e| store_err(&e));
            }
            Err(StoreError::Conflict { current, .. }) => run.stage = current,
            Err(e) => return Err(store_err(&e)),
        }
    }
    Err(ApiError::conflict(
        "the run changed stage repeatedly while cancelling; retry",
    ))
}
