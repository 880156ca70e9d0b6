//! The receiver's HTTP API: `POST /algorithm/v1/complete/{alg}/requests/{id}`, and its alias
//! `/algorithm/v1.2/complete/...` (the path before receiver #21, still called by older Go SDKs).
//!
//! Fixes over the reference: the caller must present the run-scoped token handed to that run
//! (401 otherwise); an unknown run is 404 and a finished one 409, and neither changes anything;
//! the answer comes after the completion is durable.
//!
//! The token is presented either as `Authorization: Bearer <token>` or as the path prefix
//! `/run-token/<token>` that the receiver URL handed to the run carries
//! ([`nexus_executor::contract::receiver_url_with_token`]): an algorithm written for the Go contract
//! posts to `$NEXUS__RECEIVER_URL/algorithm/v1/complete/...` without a header, and so presents
//! its token without knowing it. The token is never logged: the handler's span records the
//! algorithm and run id only, and no access log records paths.
//!
//! The completion logic itself ([`Receiver::authorize_completion`], [`Receiver::apply_completion`])
//! is shared with the gRPC twin (`crate::grpc`), so the two transports cannot drift; each maps
//! [`CompletionError`] to its own status codes in one place.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use nexus_http::ApiError;
use nexus_model::error::ErrorKind;
use nexus_model::run::{RunId, RunPatch, Stage};
use nexus_model::sign::now_secs;
use nexus_payload::Keys;
use nexus_proto::v1;
use nexus_store::StoreError;

use crate::Receiver;

/// Returns the receiver's routes: the completion endpoint and its `v1.2` alias, each with and
/// without the `/run-token/{token}` prefix.
pub fn router(r: Arc<Receiver>) -> Router {
    let limit = r.config.max_completion_bytes;
    let routes = Router::new()
        .route("/algorithm/v1/complete/{alg}/requests/{id}", post(complete))
        .route(
            "/algorithm/v1.2/complete/{alg}/requests/{id}",
            post(complete),
        )
        .route(
            "/run-token/{token}/algorithm/v1/complete/{alg}/requests/{id}",
            post(complete),
        )
        .route(
            "/run-token/{token}/algorithm/v1.2/complete/{alg}/requests/{id}",
            post(complete),
        )
        .route("/algorithm/v1/progress/{alg}/requests/{id}", post(progress))
        .route(
            "/run-token/{token}/algorithm/v1/progress/{alg}/requests/{id}",
            post(progress),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(r);
    nexus_http::telemetry::track("nexus_receiver", routes)
}

fn metric(outcome: &'static str) {
    crate::metrics::completion(outcome);
}

/// Why a completion was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompletionError {
    /// No run token, or one that does not open this run (HTTP 401, gRPC UNAUTHENTICATED).
    #[error("{0}")]
    Unauthorized(String),
    /// A malformed id or result (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    /// No such run of that algorithm (HTTP 404, gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The run already finished; nothing was changed (HTTP 409, gRPC FAILED_PRECONDITION).
    #[error("run {id} already finished as {stage}; nothing was changed")]
    AlreadyFinished {
        /// The run.
        id: RunId,
        /// Its final stage.
        stage: Stage,
    },
    /// The store or payload store failed (mapped through the kind: retryable ones say so).
    #[error("{message}")]
    Backend {
        /// What kind of failure.
        kind: ErrorKind,
        /// Details.
        message: String,
    },
}

impl CompletionError {
    /// Returns the error kind (drives the HTTP status and the gRPC code).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            CompletionError::Unauthorized(_) => ErrorKind::Unauthorized,
            CompletionError::InvalidInput(_) => ErrorKind::InvalidInput,
            CompletionError::NotFound(_) => ErrorKind::NotFound,
            CompletionError::AlreadyFinished { .. } => ErrorKind::Conflict,
            CompletionError::Backend { kind, .. } => *kind,
        }
    }
}

impl From<CompletionError> for ApiError {
    fn from(e: CompletionError) -> Self {
        ApiError::from_kind(e.kind(), e.to_string())
    }
}

impl Receiver {
    /// Checks the run token presented for a completion of run `id` (text, as received).
    ///
    /// # Errors
    /// `InvalidInput` for an id that is not a UUID; `Unauthorized` for a missing token or one
    /// that does not open this run.
    pub fn authorize_completion(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> Result<RunId, CompletionError> {
        let rid: RunId = id.parse().map_err(|_| {
            CompletionError::InvalidInput(format!(
                "'{id}' is not a valid request id (expected a UUID)"
            ))
        })?;
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            metric("unauthorized");
            return Err(CompletionError::Unauthorized(
                "missing run token: post to the NEXUS__RECEIVER_URL given to the run (it carries the token), or send 'Authorization: Bearer <NEXUS__RUN_TOKEN>'"
                    .into(),
            ));
        };
        if let Err(e) = self.signer.verify_run_token(rid, token, now_secs()) {
            metric("unauthorized");
            return Err(CompletionError::Unauthorized(format!(
                "run token refused: {e}"
            )));
        }
        Ok(rid)
    }

    /// Records the outcome of an authorized run (see [`Receiver::authorize_completion`]):
    /// FAILED when `error_cause` is set, else COMPLETED (a result URI, or bytes uploaded to the
    /// run's result URL, is required). Durable when it returns.
    ///
    /// # Errors
    /// `NotFound` (unknown run of that algorithm), `AlreadyFinished` (nothing changed),
    /// `InvalidInput` (no result), `Backend` (store failures; retryable kinds mean "retry").
    pub async fn apply_completion(
        &self,
        alg: &str,
        rid: RunId,
        result: &v1::AlgorithmResult,
    ) -> Result<Stage, CompletionError> {
        let id = rid.to_string();
        let not_found = || not_found(alg, rid);
        let backend = |kind: ErrorKind, message: String| CompletionError::Backend { kind, message };
        let run = self.run_of(alg, rid).await?;
        if run.stage.is_terminal() {
            metric("conflict");
            return Err(CompletionError::AlreadyFinished {
                id: rid,
                stage: run.stage,
            });
        }
        let (target, patch) = match result.error_cause.as_deref().filter(|c| !c.is_empty()) {
            Some(cause) => (
                Stage::Failed,
                RunPatch::failure(cause, result.error_details.clone().unwrap_or_default()).by(
                    "receiver",
                    format!("the algorithm reported a failure: {cause}"),
                ),
            ),
            None => {
                // Whether a result was uploaded, without reading it (it may be big).
                let uploaded = self
                    .payloads
                    .size(&Keys::result(alg, &id))
                    .await
                    .map_err(|e| backend(e.kind, e.message))?
                    .is_some();
                if result.result_uri.is_empty() && !uploaded {
                    return Err(CompletionError::InvalidInput(
                        "Submitted result is invalid: resultUri is empty and nothing was uploaded to NEXUS__RESULT_UPLOAD_URL"
                            .into(),
                    ));
                }
                let patch = RunPatch {
                    result_uri: (!result.result_uri.is_empty()).then(|| result.result_uri.clone()),
                    result_stored: Some(uploaded && result.result_uri.is_empty()),
                    ..RunPatch::default()
                }
                .by("receiver", "the algorithm reported its result");
                (Stage::Completed, patch)
            }
        };
        match self.complete(rid, target, patch).await {
            Ok(()) => {
                metric(if target == Stage::Completed {
                    "completed"
                } else {
                    "failed"
                });
                Ok(target)
            }
            Err(StoreError::Conflict { current, .. }) => {
                metric("conflict");
                Err(CompletionError::AlreadyFinished {
                    id: rid,
                    stage: current,
                })
            }
            Err(StoreError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(backend(e.kind(), e.to_string())),
        }
    }
}

/// Least time between two recorded progress reports of one run.
pub const PROGRESS_INTERVAL_MS: i64 = 1_000;

/// Largest progress report body accepted, in bytes.
const MAX_PROGRESS_BYTES: usize = 4_096;

/// No run `rid` of algorithm `alg`.
fn not_found(alg: &str, rid: RunId) -> CompletionError {
    CompletionError::NotFound(format!("run {rid} of algorithm {alg} not found"))
}

/// A store failure, with its kind (retryable kinds mean "retry").
fn backend(e: &StoreError) -> CompletionError {
    CompletionError::Backend {
        kind: e.kind(),
        message: e.to_string(),
    }
}

impl Receiver {
    /// Run `rid` when it is of algorithm `alg` (completions and progress reports name both).
    async fn run_of(
        &self,
        alg: &str,
        rid: RunId,
    ) -> Result<nexus_model::run::Run, CompletionError> {
        match self.store.get(rid).await {
            Ok(Some(run)) if run.algorithm == alg => Ok(run),
            Ok(_) => Err(not_found(alg, rid)),
            Err(e) => Err(backend(&e)),
        }
    }

    /// Records an authorized run's progress report (see [`Receiver::authorize_completion`]) on
    /// its record, in place: no stage change, no timeline entry. At most one report per
    /// [`PROGRESS_INTERVAL_MS`] is written; a faster one is refused with the wait left (ms).
    ///
    /// # Errors
    /// `InvalidInput` (no field, a fraction outside 0..1, a message too long), `NotFound`,
    /// `AlreadyFinished`, `Backend`; `Err(Throttled(wait_ms))` is the caller's 429.
    pub async fn apply_progress(
        &self,
        alg: &str,
        rid: RunId,
        report: &v1::ProgressReport,
    ) -> Result<(), ProgressError> {
        let progress = checked_progress(report).map_err(CompletionError::InvalidInput)?;
        // A run that starts (or goes back to the queue) meanwhile changes its stage under the
        // compare-and-set: read again, a bounded number of times.
        for _ in 0..3 {
            let run = self.run_of(alg, rid).await?;
            if run.stage.is_terminal() {
                return Err(CompletionError::AlreadyFinished {
                    id: rid,
                    stage: run.stage,
                }
                .into());
            }
            if let Some(last) = &run.progress {
                let wait = last.at + PROGRESS_INTERVAL_MS - progress.at;
                if wait > 0 {
                    return Err(ProgressError::Throttled(wait));
                }
            }
            let patch = RunPatch {
                progress: Some(progress.clone()),
                ..RunPatch::default()
            };
            match self
                .store
                .transition(rid, run.stage, run.stage, patch)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound(_)) => return Err(not_found(alg, rid).into()),
                Err(e) => return Err(backend(&e).into()),
            }
        }
        Err(ProgressError::Throttled(PROGRESS_INTERVAL_MS))
    }
}

/// Why a progress report was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProgressError {
    /// As for a completion.
    #[error(transparent)]
    Refused(#[from] CompletionError),
    /// Sent too soon after the previous one: try again after this many milliseconds.
    #[error("progress was reported less than a second ago; report at most once a second")]
    Throttled(i64),
}

/// The stored form of a report, validated.
fn checked_progress(report: &v1::ProgressReport) -> Result<nexus_model::run::Progress, String> {
    use nexus_model::run::MAX_PROGRESS_MESSAGE_CHARS;
    if report.fraction.is_none() && report.message.is_none() {
        return Err("a progress report needs 'fraction' (0 to 1) or 'message', or both".into());
    }
    if let Some(f) = report.fraction
        && !(f.is_finite() && (0.0..=1.0).contains(&f))
    {
        return Err(format!("fraction: {f} is not a number from 0 to 1"));
    }
    if let Some(m) = &report.message {
        let n = m.chars().count();
        if n > MAX_PROGRESS_MESSAGE_CHARS {
            return Err(format!(
                "message: {n} characters; at most {MAX_PROGRESS_MESSAGE_CHARS}"
            ));
        }
    }
    Ok(nexus_model::run::Progress {
        fraction: report.fraction,
        message: report.message.clone().filter(|m| !m.is_empty()),
        at: nexus_model::run::now_millis(),
    })
}

/// `POST /algorithm/v1/progress/{alg}/requests/{id}` (the token in the `Authorization` header)
/// and `POST /run-token/{token}/algorithm/v1/progress/...` (the token in the path: the receiver
/// URL handed to the run).
async fn progress(
    State(r): State<Arc<Receiver>>,
    Path(p): Path<RunPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = p.token(&headers);
    report_progress(&r, p.alg, p.id, token, &headers, &body).await
}

#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
async fn report_progress(
    r: &Receiver,
    alg: String,
    id: String,
    token: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let refused = |e: ApiError| {
        crate::metrics::progress("refused");
        e
    };
    let rid = r
        .authorize_completion(&id, token.as_deref())
        .map_err(|e| refused(e.into()))?;
    nexus_http::require_json(headers).map_err(refused)?;
    if body.len() > MAX_PROGRESS_BYTES {
        return Err(refused(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a progress report is at most {MAX_PROGRESS_BYTES} bytes; this one has {}",
                body.len()
            ),
        )));
    }
    let report: v1::ProgressReport = serde_json::from_slice(body).map_err(|e| {
        refused(ApiError::bad_request(format!(
            "progress report is invalid: {e} (expected {{\"fraction\": 0.5, \"message\": \"…\"}})"
        )))
    })?;
    match r.apply_progress(&alg, rid, &report).await {
        Ok(()) => {
            crate::metrics::progress("recorded");
            Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({}))).into_response())
        }
        Err(ProgressError::Throttled(wait_ms)) => {
            crate::metrics::progress("throttled");
            let secs = (wait_ms.max(0) as u64).div_ceil(1000).max(1);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "progress of run {id} was reported less than a second ago: it is kept, this report is not; report at most once a second"
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            Ok(resp)
        }
        Err(ProgressError::Refused(e)) => Err(refused(e.into())),
    }
}

/// The path of a receiver route: the run, and the run token when the path carries it.
#[derive(Debug, serde::Deserialize)]
struct RunPath {
    token: Option<String>,
    alg: String,
    id: String,
}

impl RunPath {
    /// The token of the path (the receiver URL handed to the run), else of the `Authorization`
    /// header; with a path token the header is not consulted.
    fn token(&self, headers: &HeaderMap) -> Option<String> {
        self.token
            .clone()
            .or_else(|| bearer(headers).map(str::to_owned))
    }
}

/// `POST /algorithm/v1/complete/{alg}/requests/{id}` (and `v1.2`), the token in the
/// `Authorization` header, and `POST /run-token/{token}/algorithm/v1/complete/...` (and `v1.2`),
/// the token in the path (the receiver URL handed to the run).
async fn complete(
    State(r): State<Arc<Receiver>>,
    Path(p): Path<RunPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = p.token(&headers);
    complete_run(&r, p.alg, p.id, token, &headers, &body).await
}

/// The bearer token of the `Authorization` header, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
async fn complete_run(
    r: &Receiver,
    alg: String,
    id: String,
    token: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let rid = r.authorize_completion(&id, token.as_deref())?;
    nexus_http::require_json(headers)?;
    let result: v1::AlgorithmResult = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Submitted result is invalid: {e}")))?;
    r.apply_completion(&alg, rid, &result).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({}))).into_response())
}
