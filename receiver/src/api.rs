//! The receiver's HTTP API: `POST /algorithm/v1/complete/{alg}/requests/{id}`.
//!
//! Fixes over the reference: the caller must present the run-scoped token handed to that run
//! (401 otherwise); an unknown run is 404 and a finished one 409, and neither changes anything;
//! the answer comes after the completion is durable.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use nexus_core::http::ApiError;
use nexus_core::payload::Keys;
use nexus_core::run::{RunId, RunPatch, Stage};
use nexus_core::sign::now_secs;
use nexus_core::store::StoreError;
use nexus_proto::v1;

use crate::Receiver;

/// Returns the receiver's routes.
pub fn router(r: Arc<Receiver>) -> Router {
    let limit = r.config.max_completion_bytes;
    Router::new()
        .route("/algorithm/v1/complete/{alg}/requests/{id}", post(complete))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(r)
}

fn metric(outcome: &'static str) {
    metrics::counter!("nexus_receiver_completions_total", "outcome" => outcome).increment(1);
}

#[tracing::instrument(skip_all, fields(alg = %alg, run_id = %id))]
async fn complete(
    State(r): State<Arc<Receiver>>,
    Path((alg, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rid: RunId = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{id}' is not a valid request id (expected a UUID)"
        ))
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        metric("unauthorized");
        return Err(ApiError::unauthorized(
            "missing run token: send 'Authorization: Bearer <NEXUS__RUN_TOKEN>' as given to the run",
        ));
    };
    if let Err(e) = r.signer.verify_run_token(rid, token, now_secs()) {
        metric("unauthorized");
        return Err(ApiError::unauthorized(format!("run token refused: {e}")));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected Content-Type: application/json, got '{}'",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ));
    }
    let result: v1::AlgorithmResult = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Submitted result is invalid: {e}")))?;
    let run = match r.store.get(rid).await {
        Ok(Some(run)) if run.algorithm == alg => run,
        Ok(_) => {
            return Err(ApiError::not_found(format!(
                "run {id} of algorithm {alg} not found"
            )));
        }
        Err(e) => return Err(ApiError::from_kind(e.kind(), e.to_string())),
    };
    if run.stage.is_terminal() {
        metric("conflict");
        return Err(ApiError::conflict(format!(
            "run {id} already finished as {}; nothing was changed",
            run.stage
        )));
    }
    let (target, patch) = match result.error_cause.as_deref().filter(|c| !c.is_empty()) {
        Some(cause) => (
            Stage::Failed,
            RunPatch::failure(cause, result.error_details.clone().unwrap_or_default()),
        ),
        None => {
            let uploaded = r
                .payloads
                .get(&Keys::result(&alg, &id))
                .await
                .map_err(|e| ApiError::from_kind(e.kind, e.message))?
                .is_some();
            if result.result_uri.is_empty() && !uploaded {
                return Err(ApiError::bad_request(
                    "Submitted result is invalid: resultUri is empty and nothing was uploaded to NEXUS__RESULT_UPLOAD_URL",
                ));
            }
            let patch = RunPatch {
                result_uri: (!result.result_uri.is_empty()).then(|| result.result_uri.clone()),
                result_stored: Some(uploaded && result.result_uri.is_empty()),
                ..RunPatch::default()
            };
            (Stage::Completed, patch)
        }
    };
    match r.complete(rid, target, patch).await {
        Ok(()) => {
            metric(if target == Stage::Completed {
                "completed"
            } else {
                "failed"
            });
            Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({}))).into_response())
        }
        Err(StoreError::Conflict { current, .. }) => {
            metric("conflict");
            Err(ApiError::conflict(format!(
                "run {id} already finished as {current}; nothing was changed"
            )))
        }
        Err(StoreError::NotFound(_)) => Err(ApiError::not_found(format!(
            "run {id} of algorithm {alg} not found"
        ))),
        Err(e) => Err(ApiError::from_kind(e.kind(), e.to_string())),
    }
}
