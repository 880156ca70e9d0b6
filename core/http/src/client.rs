//! A small HTTP(S) client: hyper-util's pooled client over hyper-rustls, with the trust store of
//! [`crate::tls::client_config`] (system roots plus an optional CA file), a whole-request
//! timeout and a bound on the body it reads.
//!
//! Used by the CLI (the v1 API over `https://`) and by OIDC discovery (the issuer's keys). It
//! exists because reqwest is built without TLS in this workspace: reqwest 0.12's rustls support
//! wants a process-wide crypto provider installed before any client is built, which every test
//! and binary would have to remember (see `docs/DECISIONS.md`, "Authentication").

use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::tls::{TlsError, client_config};

/// Why a request failed before an answer was read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL or a header is invalid.
    #[error("invalid request: {0}")]
    Request(String),
    /// The server could not be reached (DNS, refused connection, TLS handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the answer was read, or the answer was over the size bound.
    #[error("reading the answer failed: {0}")]
    Body(String),
}

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (invalid UTF-8 replaced).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// The body is not the expected JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A pooled HTTP/1.1 + HTTP/2 client speaking `http://` and `https://`.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
    user_agent: HeaderValue,
}

impl HttpClient {
    /// A client trusting the system's roots plus `ca_file`, failing requests that take longer
    /// than `timeout`, reading bodies up to `max_body` bytes.
    ///
    /// # Errors
    /// The CA file cannot be used.
    pub fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
        max_body: usize,
        user_agent: &str,
    ) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(ca_file)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
            timeout,
            max_body,
            user_agent: HeaderValue::from_str(user_agent)
                .unwrap_or_else(|_| HeaderValue::from_static("nexus")),
        })
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    /// See [`ClientError`]; an answer with an error status is an `Ok` [`Answer`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(Bytes, &str)>,
    ) -> Result<Answer, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Request(format!("url '{url}': {e}")))?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::USER_AGENT, self.user_agent.clone());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = match body {
            Some((bytes, content_type)) => {
                b = b.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = b
            .body(Full::new(body))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let max = self.max_body;
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect(error_chain(&e))
                } else {
                    ClientError::Body(error_chain(&e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }
}

impl HttpClient {
    /// Sends a GET, following up to [`MAX_REDIRECTS`] redirects (301, 302, 303, 307, 308; a
    /// relative `Location` is resolved against the URL that answered). Headers are dropped when
    /// a redirect leaves the first URL's origin, so a credential never travels to another host.
    ///
    /// # Errors
    /// As [`HttpClient::send`]; `Request` for a redirect without a usable `Location` or one
    /// redirect too many.
    pub async fn get_following(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let origin = origin_of(url);
        let mut current = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = origin_of(&current) == origin;
            let sent: &[(&str, &str)] = if same_origin { headers } else { &[] };
            let answer = self.send(Method::GET, &current, sent, None).await?;
            if !matches!(answer.status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(answer);
            }
            let location = answer
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    ClientError::Request(format!(
                        "{} answered {} without a Location",
                        redact_query(&current),
                        answer.status
                    ))
                })?;
            current = resolve(&current, location)?;
        }
        Err(ClientError::Request(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            redact_query(url)
        )))
    }
}

/// Redirects [`HttpClient::get_following`] follows before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// `scheme://authority` of a URL (empty when it has none).
fn origin_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .map(|u| {
            format!(
                "{}://{}",
                u.scheme_str().unwrap_or(""),
                u.authority().map_or("", |a| a.as_str())
            )
        })
        .unwrap_or_default()
}

/// A URL without its query string (signatures stay out of messages).
fn redact_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// `location` resolved against `base`: absolute, origin-relative (`/path`) or path-relative.
fn resolve(base: &str, location: &str) -> Result<String, ClientError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let origin = origin_of(base);
    if origin.len() <= 3 {
        return Err(ClientError::Request(format!(
            "cannot resolve redirect '{location}' against '{}'",
            redact_query(base)
        )));
    }
    if location.starts_with('/') {
        return Ok(format!("{origin}{location}"));
    }
    let path = redact_query(base)
        .strip_prefix(origin.as_str())
        .unwrap_or("/");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Ok(format!("{origin}{dir}{location}"))
}

impl HttpClient {
    /// Sends a GET and hands the answer's body to `sink` chunk by chunk as it arrives (no size
    /// or time bound on a successful body: it may be a followed log). The answer's head must
    /// come within the timeout. An error status's body is read whole (bounded) and returned in
    /// the [`Answer`]; a successful answer comes back with an empty body once the stream ended.
    ///
    /// # Errors
    /// As [`HttpClient::send`]; `Body` when `sink` fails or the connection breaks mid-stream.
    pub async fn stream(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Answer, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Request(format!("url '{url}': {e}")))?;
        let mut b = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::USER_AGENT, self.user_agent.clone());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.inner.request(req))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect(error_chain(&e))
                } else {
                    ClientError::Body(error_chain(&e))
                }
            })?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let body =
                tokio::time::timeout(self.timeout, Limited::new(body, self.max_body).collect())
                    .await
                    .map_err(|_| ClientError::Timeout(self.timeout))?
                    .map_err(|e| ClientError::Body(e.to_string()))?
                    .to_bytes();
            return Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Body(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                sink(&data).map_err(|e| ClientError::Body(format!("writing the answer: {e}")))?;
            }
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::new(),
        })
    }
}

/// An error with its sources, `a: b: c` (hyper's own message alone says little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{origin_of, resolve};

    #[test]
    fn redirects_resolve_against_the_answering_url() {
        let base = "http://127.0.0.1:8090/data/v1/payloads/k/1?sig=x";
        assert_eq!(
            resolve(base, "https://s3.example/b/k?X-Amz=1").unwrap(),
            "https://s3.example/b/k?X-Amz=1"
        );
        assert_eq!(
            resolve(base, "/data/v1/objects/p?exp=1").unwrap(),
            "http://127.0.0.1:8090/data/v1/objects/p?exp=1"
        );
        assert_eq!(
            resolve(base, "2?sig=y").unwrap(),
            "http://127.0.0.1:8090/data/v1/payloads/k/2?sig=y"
        );
        assert!(resolve("not a url", "/x").is_err());
        assert_eq!(origin_of(base), "http://127.0.0.1:8090");
        assert_ne!(origin_of(base), origin_of("http://127.0.0.1:8091/x"));
    }
}
