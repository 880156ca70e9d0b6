//! Fan-out: `POST /algorithm/v1/batch/{alg}`, many runs of one algorithm in one request, all
//! accepted or none, each with its own id (issue #23).
//!
//! The body is the v1 run request with `algorithmParameters` (and optionally `tag`) moved into a
//! `runs` array; the other fields (`customConfiguration`, `parentRequest`, `payloadValidFor`,
//! `requestApiVersion`, and `tag` as the default of runs without one) are shared:
//!
//! ```json
//! {"runs": [{"algorithmParameters": {"x": 1}}, {"algorithmParameters": {"x": 2}, "tag": "b"}],
//!  "tag": "sweep-7"}
//! ```
//!
//! The answer is `202 {"requestIds": [...]}` in the order of `runs`, once every run is durable.
//! Bounds: `scheduler.max_batch_runs` runs and `scheduler.max_batch_bytes` of body (a batch is
//! parsed in memory); `Idempotency-Key` makes a retried batch return the first batch's ids. A run
//! caller (an algorithm, by its run token) creates children of itself only, as with one run.
//!
//! It must not know about the store: [`Admission::admit_batch`] decides and writes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nexus_http::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Scheduler;
use crate::access::{self, Caller};
use crate::admission::{Admission, AdmitError, BatchItem, BatchRequest, Parameters};
use crate::api::{RunQuery, idempotency_key, parent_for, parse_dry_run, require_json};
use crate::metrics;

/// The batch request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody {
    runs: Option<Vec<BatchRun>>,
    tag: Option<String>,
    custom_configuration: Option<serde_json::Value>,
    request_api_version: Option<String>,
    payload_valid_for: Option<String>,
    parent_request: Option<ParentWire>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchRun {
    algorithm_parameters: Option<Box<RawValue>>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentWire {
    request_id: String,
    algorithm_name: String,
}

/// The answer: the runs' ids in request order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchCreated {
    request_ids: Vec<String>,
}

/// `POST /algorithm/v1/batch/{alg}`: see the module docs.
#[tracing::instrument(skip_all, fields(alg = %alg))]
pub(crate) async fn create_runs(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(alg): Path<String>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    require_json(&headers)?;
    let invalid = |m: String| {
        metrics::rejected("invalid_body");
        ApiError::bad_request(format!("Batch payload is invalid: {m}"))
    };
    if let Err(depth) = crate::request_split::check_depth(&body, s.config.max_json_depth) {
        return Err(AdmitError::too_deep(depth).into());
    }
    let req: BatchBody = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let Some(runs) = req.runs else {
        return Err(invalid(
            "runs is required: an array of {\"algorithmParameters\": {...}}".to_owned(),
        ));
    };
    if runs.is_empty() {
        return Err(AdmitError::BatchEmpty.into());
    }
    if runs.len() > s.config.max_batch_runs {
        return Err(AdmitError::BatchTooLarge {
            runs: runs.len(),
            limit: s.config.max_batch_runs,
        }
        .into());
    }
    let mut items = Vec::with_capacity(runs.len());
    for (i, run) in runs.into_iter().enumerate() {
        let Some(p) = run
            .algorithm_parameters
            .filter(|p| p.get().trim() != "null")
        else {
            return Err(invalid(format!(
                "runs[{i}].algorithmParameters is required (any JSON object)"
            )));
        };
        let bytes = p.get().as_bytes().to_vec();
        if bytes.first() != Some(&b'{') {
            return Err(invalid(format!(
                "runs[{i}].algorithmParameters must be a JSON object"
            )));
        }
        items.push(BatchItem {
            parameters: Parameters::Memory(bytes),
            tag: run.tag.or_else(|| req.tag.clone()),
        });
    }
    let dry_run = parse_dry_run(q.dry_run.as_deref())?;
    let batch_key = idempotency_key(&headers);
    let parent = parent_for(
        &caller,
        req.parent_request.map(|p| (p.request_id, p.algorithm_name)),
        "submit-batch",
        &alg,
    )?;
    let n = items.len();
    let admitted = Admission::new(s.clone())
        .admit_batch(BatchRequest {
            algorithm: alg.clone(),
            items,
            custom_configuration: req.custom_configuration,
            api_version: req.request_api_version,
            payload_valid_for: req.payload_valid_for,
            parent,
            batch_key,
            dry_run,
            received,
            authorize: access::submit_check(&s, &caller),
        })
        .await;
    let outcome = match &admitted {
        Ok(a) if a.created => "ok",
        Ok(_) => "ok-existing",
        Err(AdmitError::Forbidden(_)) => "denied",
        Err(_) => "refused",
    };
    access::audit(&caller, "submit-batch", &alg, &format!("{n} runs"), outcome);
    let admitted = admitted?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchCreated {
            request_ids: admitted.ids.iter().map(ToString::to_string).collect(),
        }),
    )
        .into_response())
}
