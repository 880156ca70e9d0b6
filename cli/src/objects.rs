//! `/data/v1/objects/{key}`: the signed GET/PUT routes of the payload store, through which
//! algorithms upload results and clients read results and logs. Every request must carry a
//! valid, unexpired signature minted by the [`TieredPayloadStore`]'s file store; anything else is
//! 403. The object itself is read from and written to the tiered store (small ones in SQLite).
//!
//! Invariants:
//! * Both ways stream: a GET answers from [`PayloadStore::open`] in chunks of [`READ_CHUNK`], a
//!   PUT body goes to [`PayloadStore::put_stream`] as it arrives; memory does not grow with the
//!   object's size.
//! * A PUT stores at most `max_result_bytes`: a declared `Content-Length` over it is refused at
//!   once, and the bytes are counted while streaming (a chunked body has no length to trust);
//!   either way the answer is 413 and nothing is stored.
//! * A result (`results/{algorithm}/{id}`) is written only while its run is running (RUNNING,
//!   or BUFFERED: launched but its start not recorded yet): checked before the body is read (409
//!   at once) and again right before the object is replaced, so a finished run's result never
//!   changes. Re-uploads while the run is RUNNING replace the
//!   result (retries of a flaky upload; see docs/DECISIONS.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt as _;
use nexus_embedded::TieredPayloadStore;
use nexus_http::ApiError;
use nexus_model::error::ErrorKind;
use nexus_model::run::RunId;
use nexus_payload::{BeforeCommit, PayloadError, PayloadStore};
use nexus_store::RunStore;
use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes per chunk of a streamed GET.
pub const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
struct Sig {
    exp: Option<String>,
    sig: Option<String>,
}

/// What the object routes need.
#[derive(Debug, Clone)]
struct Objects {
    store: Arc<TieredPayloadStore>,
    runs: Arc<dyn RunStore>,
    max_result_bytes: u64,
}

/// Returns the object routes over `store`, checking result uploads against `runs` and bounding
/// every upload to `max_result_bytes`.
pub fn router(
    store: Arc<TieredPayloadStore>,
    runs: Arc<dyn RunStore>,
    max_result_bytes: u64,
) -> Router {
    Router::new()
        .route("/data/v1/objects/{*key}", get(get_object).put(put_object))
        // The body is streamed and counted against max_result_bytes by the handler itself.
        .layer(DefaultBodyLimit::disable())
        .with_state(Objects {
            store,
            runs,
            max_result_bytes,
        })
}

fn api(e: PayloadError) -> ApiError {
    ApiError::from_kind(e.kind, e.message)
}

async fn get_object(
    State(o): State<Objects>,
    Path(key): Path<String>,
    Query(q): Query<Sig>,
) -> Result<Response, ApiError> {
    o.store
        .verify("GET", &key, q.exp.as_deref(), q.sig.as_deref())
        .map_err(api)?;
    let Some(obj) = o.store.open(&key).await.map_err(api)? else {
        return Err(ApiError::not_found(format!("object {key} not found")));
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        obj.body, READ_CHUNK,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, obj.len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The run whose result a key names: `results/{algorithm}/{id}` → (algorithm, id).
fn result_of(key: &str) -> Option<Result<(String, RunId), ApiError>> {
    let rest = key.strip_prefix("results/")?;
    let parsed = rest
        .split_once('/')
        .and_then(|(alg, id)| Some((alg.to_owned(), id.parse::<RunId>().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "'{key}' is not a result key (results/<algorithm>/<request id>)"
            ))
        });
    Some(parsed)
}

/// "The run is running (not finished)": checked before a result's body is read and again right before it is
/// stored.
#[derive(Debug)]
struct WhileRunning {
    runs: Arc<dyn RunStore>,
    algorithm: String,
    id: RunId,
}

#[async_trait]
impl BeforeCommit for WhileRunning {
    async fn check(&self) -> Result<(), PayloadError> {
        let (alg, id) = (&self.algorithm, self.id);
        match self.runs.get(id).await {
            Ok(Some(run)) if &run.algorithm == alg => {
                // BUFFERED too: the algorithm can run (and upload) before its start is recorded
                // (standalone records RUNNING from the executor's start event, after the spawn),
                // and its upload URL exists only once it was launched.
                if !run.stage.is_terminal() {
                    Ok(())
                } else {
                    Err(PayloadError::new(
                        ErrorKind::Conflict,
                        format!(
                            "run {id} of algorithm {alg} is {}: a result can only be uploaded \
                             while its run is running (BUFFERED or RUNNING), and a finished run's \
                             result never changes",
                            run.stage
                        ),
                    ))
                }
            }
            Ok(_) => Err(PayloadError::new(
                ErrorKind::NotFound,
                format!("run {id} of algorithm {alg} not found: no result can be uploaded for it"),
            )),
            Err(e) => Err(PayloadError::new(
                e.kind(),
                format!("run store unavailable, try again: {e}"),
            )),
        }
    }
}

/// A body that fails once more than `left` bytes arrived, and says so in `exceeded`.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Bounded<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > self.left {
            self.exceeded.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::other("body over max_result_bytes")));
        }
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

fn too_large(max: u64, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{what}; objects uploaded here are limited to {max} bytes (max_result_bytes): \
             nothing stored"
        ),
    )
}

async fn put_object(
    State(o): State<Objects>,
    Path(key): Path<String>,
    Query(q): Query<Sig>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    o.store
        .verify("PUT", &key, q.exp.as_deref(), q.sig.as_deref())
        .map_err(api)?;
    let guard = match result_of(&key) {
        Some(parsed) => {
            let (algorithm, id) = parsed?;
            let g = WhileRunning {
                runs: o.runs.clone(),
                algorithm,
                id,
            };
            // Refused before a byte of the body is read.
            g.check().await.map_err(api)?;
            Some(g)
        }
        None => None,
    };
    let max = o.max_result_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_large(max, &format!("the body is {n} bytes")));
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let reader = Bounded {
        inner: tokio_util::io::StreamReader::new(body.into_data_stream().map_err(io::Error::other)),
        left: max,
        exceeded: exceeded.clone(),
    };
    let check = guard.as_ref().map(|g| g as &dyn BeforeCommit);
    match o.store.put_stream(&key, Box::new(reader), check).await {
        Ok(_) => Ok(StatusCode::CREATED),
        Err(_) if exceeded.load(Ordering::Acquire) => {
            Err(too_large(max, &format!("the body is over {max} bytes")))
        }
        Err(e) => Err(api(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_keys_are_recognised() {
        let id = RunId::new();
        let (alg, rid) = result_of(&format!("results/knapsack/{id}"))
            .unwrap()
            .unwrap();
        assert_eq!((alg.as_str(), rid), ("knapsack", id));
        assert!(result_of(&format!("payloads/knapsack/{id}")).is_none());
        assert!(result_of(&format!("logs/knapsack/{id}")).is_none());
        let e = result_of("results/knapsack/not-a-uuid")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(result_of("results/knapsack").unwrap().is_err());
    }
}
