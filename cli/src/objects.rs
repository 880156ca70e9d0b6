//! `/data/v1/objects/{key}`: the signed GET/PUT routes of the payload store, through which
//! algorithms upload results and clients read results and logs. Every request must carry a
//! valid, unexpired signature minted by the [`TieredPayloadStore`]'s file store; anything else is
//! 403. The object itself is read from and written to the tiered store (small ones in SQLite).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nexus_core::http::ApiError;
use nexus_core::payload::{PayloadStore, TieredPayloadStore};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Sig {
    exp: Option<String>,
    sig: Option<String>,
}

/// Returns the object routes.
pub fn router(fs: Arc<TieredPayloadStore>) -> Router {
    Router::new()
        .route("/data/v1/objects/{*key}", get(get_object).put(put_object))
        .layer(DefaultBodyLimit::max(1024 * 1024 * 1024))
        .with_state(fs)
}

async fn get_object(
    State(fs): State<Arc<TieredPayloadStore>>,
    Path(key): Path<String>,
    Query(q): Query<Sig>,
) -> Result<Response, ApiError> {
    fs.verify("GET", &key, q.exp.as_deref(), q.sig.as_deref())
        .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
    match fs.get(&key).await {
        Ok(Some(b)) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response())
        }
        Ok(None) => Err(ApiError::not_found(format!("object {key} not found"))),
        Err(e) => Err(ApiError::from_kind(e.kind, e.message)),
    }
}

async fn put_object(
    State(fs): State<Arc<TieredPayloadStore>>,
    Path(key): Path<String>,
    Query(q): Query<Sig>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    fs.verify("PUT", &key, q.exp.as_deref(), q.sig.as_deref())
        .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
    fs.put(&key, body)
        .await
        .map_err(|e| ApiError::from_kind(e.kind, e.message))?;
    Ok(StatusCode::CREATED)
}
