//! nexus-http: the HTTP plumbing of every component: the bounded server ([`server`]: timeouts,
//! connection limits, graceful shutdown), the API error type, content negotiation of error
//! bodies, and health probes.
//!
//! Errors are `text/plain` by default (as in the reference, whose SDKs read the text) and
//! `application/problem+json` (RFC 9457) when the client's `Accept` asks for JSON. The conversion
//! is one middleware, so it also covers the framework's own rejections (413, 415, 405, …).
//!
//! [`tls`] puts every listener behind TLS when `server.tls` is configured (certificates
//! reloaded when their files change); [`client`] is the HTTPS client of the CLI and of OIDC
//! discovery.

pub mod client;
pub mod server;
pub mod telemetry;
pub mod tls;

/// The `http` types of [`client`]'s signatures (method, status, headers).
pub use axum::http;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use nexus_model::error::ErrorKind;

/// An error answer: a status and a message a person can act on.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message (becomes the text/plain body or the problem `detail`).
    pub message: String,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Builds an error with a status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// Maps an error kind through the one kind → status table.
    pub fn from_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut e = Self::new(status, message);
        if kind.is_retryable() {
            e.retry_after = Some(1);
        }
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

fn wants_json(req: &Request) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") || v.contains("application/problem+json"))
}

/// Middleware: rewrites error responses (status ≥ 400) as `application/problem+json` when the
/// request's `Accept` asks for JSON; leaves everything else untouched.
pub async fn negotiate_errors(req: Request, next: Next) -> Response {
    let json = wants_json(&req);
    let instance = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.status().as_u16() < 400 {
        return resp;
    }
    // The framework's own answers (405, a rejected extractor without a body) get a message too.
    let resp = if resp.headers().contains_key(header::CONTENT_TYPE) {
        resp
    } else {
        let allow = resp
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (mut parts, _) = resp.into_parts();
        let msg = match (parts.status, allow) {
            (StatusCode::METHOD_NOT_ALLOWED, Some(a)) => {
                format!("method {method} is not allowed on {instance}; allowed: {a}")
            }
            (StatusCode::METHOD_NOT_ALLOWED, None) => {
                format!("method {method} is not allowed on {instance}")
            }
            (s, _) => format!(
                "{} ({method} {instance})",
                s.canonical_reason().unwrap_or("error")
            ),
        };
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(msg))
    };
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let detail = match to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let problem = serde_json::json!({
        "type": "about:blank",
        "title": parts.status.canonical_reason().unwrap_or("Error"),
        "status": parts.status.as_u16(),
        "detail": detail,
        "instance": instance,
    });
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(problem.to_string()))
}

/// Readiness of a component: true while it accepts work, with an optional note on what it is
/// still doing in the background (e.g. recovering runs), shown by `/health/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>, Arc<std::sync::Mutex<Option<String>>>);

impl Readiness {
    /// Marks the component ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Returns true when ready.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Sets (or clears) the note on background work shown by the readiness probe.
    pub fn set_note(&self, note: Option<String>) {
        *self
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = note;
    }
    /// The current note.
    #[must_use]
    pub fn note(&self) -> Option<String> {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Returns the `/health/livez` and `/health/readyz` routes.
pub fn health_routes(ready: Readiness) -> axum::Router {
    axum::Router::new()
        .route("/health/livez", axum::routing::get(|| async { "ok" }))
        .route(
            "/health/readyz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() {
                        let body = match ready.note() {
                            Some(n) => format!("ready; {n}"),
                            None => "ready".to_owned(),
                        };
                        (StatusCode::OK, body)
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: starting or shutting down".to_owned(),
                        )
                    }
                }
            }),
        )
}

/// Refuses a body that is not declared as JSON (`application/json` or `…+json`) with 415 and a
/// message naming what was sent.
///
/// # Errors
/// As above.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
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

/// Fallback of every HTTP app: `404 text/plain` for a path no route serves (a known path with
/// another method stays 405). The path is not echoed, so that a credential in it (a receiver
/// URL's `/run-token/...` prefix) is not repeated.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route: the HTTP API is described at /openapi.json")
}
