//! External runs (issue #23): runs executed elsewhere (a Spark job, a notebook, another
//! scheduler) recorded in Nexus so they appear in results, tags, metadata, listings and the
//! console like any other run, marked `external`.
//!
//! * `POST /algorithm/v1/external/{alg}` registers one: its input (`algorithmParameters`), its
//!   stage (`CREATED`, `RUNNING`, `COMPLETED`, `FAILED`), its output (`result`, stored as the
//!   run's result, or `resultUri`) or error (`errorCause`, `errorDetails`), its times
//!   (`receivedAt`, `startedAt`, `finishedAt`, RFC 3339) and the engine's name (`engine`).
//!   `201 {"requestId"}`. `Idempotency-Key` as for a submit.
//! * `POST /algorithm/v1/external/{alg}/requests/{id}/stage` reports a stage as it happens
//!   (`{"stage": "RUNNING"}`, then `COMPLETED` with its result or `FAILED` with its error), as
//!   ModelOp's runtime monitor does for Spark jobs. Only legal moves are taken (CREATED → RUNNING
//!   → COMPLETED | FAILED, CREATED → FAILED); a report of the stage the run is in already is a
//!   no-op (retries are safe); anything else is 409 naming the run's stage.
//! * `POST /algorithm/v1/external/{alg}/requests/{id}/upload` returns a signed, short-lived
//!   (`UPLOAD_VALID_FOR`) `PUT` URL for that run's result object only, while the run is not
//!   finished; the `COMPLETED` report then finds the uploaded result.
//!
//! Who may: registering needs the right to submit runs of the algorithm (the same rules as a
//! submit: workgroup, parent); reporting and uploading need the right to submit on the run.
//!
//! An external run has no owner and the shard `external`: it is never queued, dispatched,
//! launched, relaunched or claimed by recovery (each of those also skips a run marked
//! external). Cancelling one only records the cancel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nexus_auth::Action;
use nexus_http::ApiError;
use nexus_model::run::{Millis, RunPatch, Stage, format_millis};
use nexus_payload::Keys;
use nexus_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Scheduler;
use crate::access::{self, Caller};
use crate::admission::{Admission, AdmitError, ExternalRequest, Parameters, ParentRef};
use crate::api::{load, require_json, store_err, text_ok};
use crate::metrics;

/// How long an upload URL stays valid.
pub const UPLOAD_VALID_FOR: Duration = Duration::from_secs(15 * 60);
/// Longest engine name.
const MAX_ENGINE_CHARS: usize = 64;
/// Longest error cause.
const MAX_CAUSE_CHARS: usize = 1024;
/// Longest error details.
const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// Longest result URI.
const MAX_URI_CHARS: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterBody {
    algorithm_parameters: Option<Box<RawValue>>,
    stage: Option<String>,
    result: Option<Box<RawValue>>,
    result_uri: Option<String>,
    error_cause: Option<String>,
    error_details: Option<String>,
    received_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    engine: Option<String>,
    tag: Option<String>,
    request_api_version: Option<String>,
    parent_request: Option<ParentWire>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentWire {
    request_id: String,
    algorithm_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StageBody {
    stage: String,
    result: Option<Box<RawValue>>,
    result_uri: Option<String>,
    error_cause: Option<String>,
    error_details: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Registered {
    request_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UploadUrl {
    result_upload_url: String,
    method: &'static str,
    expires_at: String,
}

fn invalid(m: impl Into<String>) -> ApiError {
    metrics::rejected("invalid_body");
    ApiError::bad_request(format!("External run is invalid: {}", m.into()))
}

/// The stage an engine reports: `CREATED` (stored BUFFERED: known, not started), `RUNNING`,
/// `COMPLETED`, `FAILED`.
fn reported_stage(s: &str) -> Result<Stage, ApiError> {
    match s {
        "CREATED" => Ok(Stage::Buffered),
        "RUNNING" => Ok(Stage::Running),
        "COMPLETED" => Ok(Stage::Completed),
        "FAILED" => Ok(Stage::Failed),
        other => Err(invalid(format!(
            "stage: '{}' is not one of CREATED, RUNNING, COMPLETED, FAILED",
            other.escape_default()
        ))),
    }
}

fn time(field: &str, v: Option<&str>) -> Result<Option<Millis>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let t = humantime::parse_rfc3339_weak(v)
        .map_err(|e| invalid(format!("{field}: '{v}' is not an RFC 3339 time ({e})")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| invalid(format!("{field}: before 1970")))?
        .as_millis();
    Ok(Some(i64::try_from(ms).map_err(|_| {
        invalid(format!("{field}: too far in the future"))
    })?))
}

/// The result JSON, the URI and the failure of a report, checked.
type Outcome = (Option<Vec<u8>>, Option<String>, Option<(String, String)>);

fn outcome(
    result: Option<Box<RawValue>>,
    result_uri: Option<String>,
    error_cause: Option<String>,
    error_details: Option<String>,
) -> Result<Outcome, ApiError> {
    if let Some(u) = &result_uri
        && (u.is_empty() || u.chars().count() > MAX_URI_CHARS || u.chars().any(char::is_control))
    {
        return Err(invalid(format!(
            "resultUri: 1 to {MAX_URI_CHARS} characters without control characters"
        )));
    }
    let failure = match (error_cause, error_details) {
        (None, None) => None,
        (None, Some(_)) => return Err(invalid("errorDetails: needs an errorCause")),
        (Some(c), d) => {
            if c.trim().is_empty() || c.chars().count() > MAX_CAUSE_CHARS {
                return Err(invalid(format!(
                    "errorCause: 1 to {MAX_CAUSE_CHARS} characters"
                )));
            }
            let d = d.unwrap_or_default();
            if d.len() > MAX_DETAILS_BYTES {
                return Err(invalid(format!(
                    "errorDetails: at most {MAX_DETAILS_BYTES} bytes"
                )));
            }
            Some((c, d))
        }
    };
    let result = result
        .filter(|r| r.get().trim() != "null")
        .map(|r| r.get().as_bytes().to_vec());
    Ok((result, result_uri, failure))
}

/// The engine recorded on an external run (`external:<engine>` in its executor ref).
fn engine_of(run: &nexus_model::run::Run) -> String {
    run.executor_ref
        .as_deref()
        .and_then(|e| e.strip_prefix("external:"))
        .unwrap_or("external")
        .to_owned()
}

/// `POST /algorithm/v1/external/{alg}`: registers a run executed elsewhere.
#[tracing::instrument(skip_all, fields(alg = %alg))]
pub(crate) async fn register(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(alg): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    if let Err(depth) = crate::request_split::check_depth(&body, s.config.max_json_depth) {
        return Err(AdmitError::too_deep(depth).into());
    }
    let b: RegisterBody = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let Some(params) = b.algorithm_parameters.filter(|p| p.get().trim() != "null") else {
        return Err(invalid(
            "algorithmParameters is required (the run's input, any JSON object)",
        ));
    };
    let params = params.get().as_bytes().to_vec();
    crate::admission::require_object(params.first().copied())?;
    let stage = reported_stage(b.stage.as_deref().unwrap_or(""))?;
    if let Some(e) = &b.engine
        && (e.is_empty()
            || e.chars().count() > MAX_ENGINE_CHARS
            || !e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(format!(
            "engine: 1 to {MAX_ENGINE_CHARS} characters of letters, digits, '-', '_', '.'"
        )));
    }
    let (result, result_uri, failure) =
        outcome(b.result, b.result_uri, b.error_cause, b.error_details)?;
    let mut parent = b.parent_request.map(|p| ParentRef {
        request_id: p.request_id,
        algorithm: p.algorithm_name,
    });
    if let Caller::Run(me) = caller.as_ref() {
        match &parent {
            Some(p) if p.request_id != me.id.to_string() => {
                return Err(access::Refusal::Forbidden(format!(
                    "run {} may register only its own children; parentRequest names {}",
                    me.id, p.request_id
                ))
                .into());
            }
            _ => {
                parent = Some(ParentRef {
                    request_id: me.id.to_string(),
                    algorithm: me.algorithm.clone(),
                });
            }
        }
    }
    let req = ExternalRequest {
        algorithm: alg.clone(),
        parameters: Parameters::Memory(params),
        stage,
        result,
        result_uri,
        failure,
        received_at: time("receivedAt", b.received_at.as_deref())?,
        started_at: time("startedAt", b.started_at.as_deref())?,
        finished_at: time("finishedAt", b.finished_at.as_deref())?,
        engine: b.engine,
        tag: b.tag,
        api_version: b.request_api_version,
        parent,
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        authorize: access::submit_check(&s, &caller),
    };
    let started = Instant::now();
    let admitted = Admission::new(s.clone()).admit_external(req).await;
    access::audit_submit(&caller, &alg, &admitted);
    let admitted = admitted?;
    metrics::accept_latency(started.elapsed().as_secs_f64());
    Ok((
        if admitted.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(Registered {
            request_id: admitted.id.to_string(),
        }),
    )
        .into_response())
}

/// Loads an external run the caller may report on.
async fn external_run(
    s: &Scheduler,
    caller: &Caller,
    alg: &str,
    id: &str,
    what: &str,
) -> Result<nexus_model::run::Run, ApiError> {
    let run = load(s, alg, id).await?;
    if let Err(r) = access::may(s, caller, Action::Submit, &run).await {
        access::audit(caller, what, alg, id, "denied");
        return Err(r.into());
    }
    if !run.external {
        return Err(ApiError::from_kind(
            nexus_model::error::ErrorKind::Conflict,
            format!("run {id} is not an external run: Nexus runs it and records its stages"),
        ));
    }
    Ok(run)
}

/// `POST /algorithm/v1/external/{alg}/requests/{id}/stage`: an external engine's stage report.
#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
pub(crate) async fn report_stage(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((alg, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    if let Err(depth) = crate::request_split::check_depth(&body, s.config.max_json_depth) {
        return Err(AdmitError::too_deep(depth).into());
    }
    let b: StageBody = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let to = reported_stage(&b.stage)?;
    let (result, result_uri, failure) =
        outcome(b.result, b.result_uri, b.error_cause, b.error_details)?;
    if to == Stage::Failed && failure.is_none() {
        return Err(invalid("errorCause: required for FAILED"));
    }
    if to != Stage::Failed && failure.is_some() {
        return Err(invalid("errorCause: only a FAILED report has one"));
    }
    if to != Stage::Completed && (result.is_some() || result_uri.is_some()) {
        return Err(invalid(
            "result, resultUri: only a COMPLETED report has a result",
        ));
    }
    if result.is_some() && result_uri.is_some() {
        return Err(invalid("result, resultUri: give one or the other"));
    }
    let run = external_run(&s, &caller, &alg, &id, "report").await?;
    let shown = |st: Stage| {
        if st == Stage::Buffered {
            "CREATED".to_owned()
        } else {
            st.to_string()
        }
    };
    if run.stage == to {
        // A repeated report (a retry): nothing to change.
        return Ok(text_ok(format!("run {id} is {} already", shown(to))));
    }
    if to == Stage::Buffered || !run.stage.can_transition_to(to) || run.stage == Stage::New {
        return Err(ApiError::from_kind(
            nexus_model::error::ErrorKind::Conflict,
            format!(
                "run {id} is {}; it cannot move to {} (an external run moves CREATED → RUNNING → COMPLETED or FAILED, or CREATED → FAILED)",
                shown(run.stage),
                shown(to)
            ),
        ));
    }
    let engine = engine_of(&run);
    let key = Keys::result(&run.algorithm, &run.id.to_string());
    let mut patch = match &failure {
        Some((c, d)) => RunPatch::failure(c.clone(), d.clone()),
        None => RunPatch::default(),
    };
    match to {
        Stage::Running => {
            patch.attempts = Some(run.attempts.max(1));
            patch.started_at = Some(nexus_model::run::now_millis());
        }
        Stage::Completed => {
            if let Some(bytes) = result {
                s.payloads
                    .put(&key, bytes.into())
                    .await
                    .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
                patch.result_stored = Some(true);
            } else if let Some(u) = result_uri {
                patch.result_uri = Some(u);
            } else if matches!(s.payloads.size(&key).await, Ok(Some(_))) {
                // Uploaded through the signed URL of the upload route.
                patch.result_stored = Some(true);
            }
        }
        _ => {}
    }
    let patch = patch.by(
        "external",
        format!("reported {} by the external engine {engine}", shown(to)),
    );
    match s.store.transition(run.id, run.stage, to, patch).await {
        Ok(_) => {
            access::audit(&caller, "report", &alg, &id, "ok");
            Ok(text_ok(format!("run {id} is now {}", shown(to))))
        }
        Err(StoreError::Conflict { current, .. }) => Err(ApiError::from_kind(
            nexus_model::error::ErrorKind::Conflict,
            format!(
                "run {id} changed to {} meanwhile; report again if needed",
                shown(current)
            ),
        )),
        Err(e) => Err(store_err(&e)),
    }
}

/// `POST /algorithm/v1/external/{alg}/requests/{id}/upload`: a signed PUT URL for the run's
/// result, valid for [`UPLOAD_VALID_FOR`], while the run is not finished.
#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
pub(crate) async fn upload_url(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((alg, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let run = external_run(&s, &caller, &alg, &id, "upload").await?;
    if run.stage.is_terminal() {
        return Err(ApiError::from_kind(
            nexus_model::error::ErrorKind::Conflict,
            format!(
                "run {id} finished as {}: a result is written once, while its run runs",
                run.stage
            ),
        ));
    }
    let key = Keys::result(&run.algorithm, &run.id.to_string());
    let url = s
        .payloads
        .signed_put_url(&key, UPLOAD_VALID_FOR)
        .await
        .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
    let expires = nexus_model::run::now_millis()
        + i64::try_from(UPLOAD_VALID_FOR.as_millis()).unwrap_or(i64::MAX);
    access::audit(&caller, "upload", &alg, &id, "ok");
    Ok(axum::Json(UploadUrl {
        result_upload_url: url,
        method: "PUT",
        expires_at: format_millis(expires),
    })
    .into_response())
}
