//! The algorithm side of the Nexus contract: environment, payload download,
//! result upload and completion.

use std::time::Duration;

use bytes::Bytes;
use nexus_http::client::{Answer, HttpClient};
use nexus_http::http::Method;
use serde_json::{Value, json};

fn encode(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("cannot encode JSON: {e}"))
}

/// What an algorithm produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Result document, uploaded to `NEXUS__RESULT_UPLOAD_URL`.
    Success(Value),
    /// Reported to Nexus as `errorCause` / `errorDetails`.
    Failure { cause: String, details: String },
}

impl Outcome {
    pub fn failure(cause: impl Into<String>, details: impl Into<String>) -> Self {
        Outcome::Failure {
            cause: cause.into(),
            details: details.into(),
        }
    }

    /// Shorthand for a rejected payload: `errorCause = "invalid input: <what>"`.
    pub fn invalid_input(what: impl std::fmt::Display) -> Self {
        let what = what.to_string();
        Outcome::Failure {
            cause: format!("invalid input: {what}"),
            details: format!("the payload was rejected: {what}"),
        }
    }
}

/// Everything the run needs from its environment.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub algorithm: String,
    pub request_id: String,
    pub shard: Option<String>,
    pub parent_request_id: Option<String>,
    run_token: String,
    receiver_url: String,
    result_upload_url: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required_env(name: &str) -> Result<String, String> {
    env(name).ok_or_else(|| {
        format!("environment variable {name} is not set (is this process being run by Nexus?)")
    })
}

impl RunContext {
    /// Reads the `NEXUS__*` environment. `request_id_arg` (from `--request-id`)
    /// takes precedence over `NEXUS__REQUEST_ID`.
    pub fn from_env(default_algorithm: &str, request_id_arg: Option<&str>) -> Result<Self, String> {
        let env_request_id = env("NEXUS__REQUEST_ID");
        let request_id = match (request_id_arg, env_request_id) {
            (Some(arg), Some(from_env)) => {
                if arg != from_env {
                    eprintln!(
                        "[nexus-demo] warning: --request-id={arg} differs from NEXUS__REQUEST_ID={from_env}; using {arg}"
                    );
                }
                arg.to_owned()
            }
            (Some(arg), None) => arg.to_owned(),
            (None, Some(from_env)) => from_env,
            (None, None) => {
                return Err(
                    "no request id: pass --request-id=<ID> or set NEXUS__REQUEST_ID".to_owned(),
                );
            }
        };
        Ok(RunContext {
            algorithm: env("NEXUS__ALGORITHM_NAME").unwrap_or_else(|| default_algorithm.to_owned()),
            request_id,
            shard: env("NEXUS__SHARD_NAME"),
            parent_request_id: env("NEXUS__PARENT_REQUEST_ID"),
            run_token: required_env("NEXUS__RUN_TOKEN")?,
            receiver_url: required_env("NEXUS__RECEIVER_URL")?,
            result_upload_url: required_env("NEXUS__RESULT_UPLOAD_URL")?,
        })
    }

    pub fn completion_url(&self) -> String {
        completion_url(&self.receiver_url, &self.algorithm, &self.request_id)
    }

    /// `{receiver}/algorithm/v1/progress/{algorithm}/requests/{id}`.
    pub fn progress_url(&self) -> String {
        format!(
            "{}/algorithm/v1/progress/{}/requests/{}",
            self.receiver_url.trim_end_matches('/'),
            self.algorithm,
            self.request_id
        )
    }
}

/// `{receiver}/algorithm/v1/complete/{algorithm}/requests/{id}`.
pub fn completion_url(receiver_url: &str, algorithm: &str, request_id: &str) -> String {
    format!(
        "{}/algorithm/v1/complete/{algorithm}/requests/{request_id}",
        receiver_url.trim_end_matches('/')
    )
}

/// Body of the completion call.
pub fn completion_body(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Success(_) => json!({ "resultUri": "" }),
        Outcome::Failure { cause, details } => {
            json!({ "resultUri": "", "errorCause": cause, "errorDetails": details })
        }
    }
}

/// How long transient failures (unreachable server, 5xx, 429) are retried before giving up.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Largest payload or answer body the demo reads (the scheduler's own request bound is lower).
const MAX_BODY: usize = 512 * 1024 * 1024;

/// Thin blocking HTTP(S) client over `nexus-http`'s client (rustls: system roots plus the CA file
/// Nexus hands the run as `NEXUS_CA_FILE`, when it serves a private certificate); every failure
/// becomes a printable message.
#[derive(Debug)]
pub struct Client {
    http: HttpClient,
    rt: tokio::runtime::Runtime,
}

/// Strips the query string (signature) from a URL before logging it.
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Hides the run token a receiver URL carries (`.../run-token/<token>/...`) before logging it:
/// the run's output is its log, readable by whoever may read the run.
pub fn redact_token(url: &str) -> String {
    const MARK: &str = "/run-token/";
    match url.find(MARK) {
        Some(i) => {
            let rest = &url[i + MARK.len()..];
            let tail = rest.find('/').map_or("", |j| &rest[j..]);
            format!("{}{MARK}***{tail}", &url[..i])
        }
        None => url.to_owned(),
    }
}

fn body_snippet(answer: &Answer) -> String {
    let text = answer.text();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(500).collect::<String>())
    }
}

/// One request: method, URL, headers and an optional (body, content type).
struct Call<'a> {
    method: Method,
    url: &'a str,
    headers: Vec<(&'a str, String)>,
    body: Option<(Vec<u8>, &'static str)>,
}

impl Client {
    /// A client trusting the system's roots plus `NEXUS_CA_FILE` when set.
    pub fn new() -> Result<Self, String> {
        let ca = env(nexus_sdk::CA_FILE).map(std::path::PathBuf::from);
        let http = HttpClient::new(
            ca.as_deref(),
            Duration::from_secs(60),
            MAX_BODY,
            concat!("nexus-demo/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| format!("cannot build HTTP client ({}): {e}", nexus_sdk::CA_FILE))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
        Ok(Client { http, rt })
    }

    /// Sends `call` until it succeeds, retrying (with back-off, for about a minute) while the
    /// server is unreachable or answers 5xx/429: a receiver restarting or an object store hiccup
    /// must not fail a run whose work is done. Other 4xx answers are final (wrong token, expired
    /// signature, run already finished). `what` names the call in errors.
    fn send_with_retries(&self, what: &str, call: &Call<'_>) -> Result<Answer, String> {
        let mut delay = Duration::from_millis(200);
        let give_up = std::time::Instant::now() + RETRY_FOR;
        let headers: Vec<(&str, &str)> =
            call.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        loop {
            let body = call
                .body
                .as_ref()
                .map(|(b, ct)| (Bytes::copy_from_slice(b), *ct));
            // A GET follows redirects: a large payload's URL answers 307 to the stored object.
            let sent = if call.method == Method::GET {
                self.rt
                    .block_on(self.http.get_following(call.url, &headers))
            } else {
                self.rt.block_on(
                    self.http
                        .send(call.method.clone(), call.url, &headers, body),
                )
            };
            let err = match sent {
                Ok(a) if a.status.is_success() => return Ok(a),
                Ok(a) => {
                    let status = a.status;
                    let e = format!("{what} failed with HTTP {status}{}", body_snippet(&a));
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(e);
                    }
                    e
                }
                Err(e) => format!("{what} failed: {e}"),
            };
            if std::time::Instant::now() + delay > give_up {
                return Err(err);
            }
            eprintln!("[nexus-demo] {err}; retrying in {delay:?}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// GET the payload (the JSON of the client's `algorithmParameters`).
    pub fn fetch_payload(&self, sas_uri: &str) -> Result<Vec<u8>, String> {
        let shown = redact(sas_uri);
        println!("[nexus-demo] GET payload {shown}");
        let call = Call {
            method: Method::GET,
            url: sas_uri,
            headers: Vec::new(),
            body: None,
        };
        let answer = self.send_with_retries(&format!("fetching payload from {shown}"), &call)?;
        Ok(answer.body.to_vec())
    }

    /// PUT the result document to the signed upload URL.
    pub fn upload_result(&self, ctx: &RunContext, result: &Value) -> Result<(), String> {
        let shown = redact(&ctx.result_upload_url);
        let bytes = serde_json::to_vec(result).map_err(|e| format!("cannot encode result: {e}"))?;
        println!("[nexus-demo] PUT result ({} bytes) to {shown}", bytes.len());
        let call = Call {
            method: Method::PUT,
            url: &ctx.result_upload_url,
            headers: Vec::new(),
            body: Some((bytes, "application/json")),
        };
        self.send_with_retries(&format!("uploading result to {shown}"), &call)?;
        Ok(())
    }

    /// POST the completion call (retried like every other call: a receiver restarting must not
    /// lose a finished run).
    pub fn complete(&self, ctx: &RunContext, outcome: &Outcome) -> Result<(), String> {
        let url = ctx.completion_url();
        let body = completion_body(outcome);
        let shown = redact_token(&url);
        println!("[nexus-demo] POST completion to {shown}");
        let call = Call {
            method: Method::POST,
            url: &url,
            headers: vec![("authorization", format!("Bearer {}", ctx.run_token))],
            body: Some((encode(&body)?, "application/json")),
        };
        let answer = self.send_with_retries(&format!("completion call to {shown}"), &call)?;
        println!("[nexus-demo] completion accepted (HTTP {})", answer.status);
        Ok(())
    }

    /// Reports progress (`fraction` 0..1 and a message), once and without retrying: progress is
    /// advisory, so a failure or a refusal (the receiver keeps one report a second) is printed
    /// and the run goes on.
    pub fn report_progress(&self, ctx: &RunContext, fraction: f64, message: &str) {
        let url = ctx.progress_url();
        let body = json!({"fraction": fraction.clamp(0.0, 1.0), "message": message});
        let Ok(bytes) = encode(&body) else { return };
        let bearer = format!("Bearer {}", ctx.run_token);
        let sent = self.rt.block_on(self.http.send(
            Method::POST,
            &url,
            &[("authorization", bearer.as_str())],
            Some((Bytes::from(bytes), "application/json")),
        ));
        match sent {
            Ok(a) if a.status.is_success() => {
                println!("[nexus-demo] progress {:.0}% {message}", fraction * 100.0);
            }
            Ok(a) => eprintln!(
                "[nexus-demo] progress report not kept: HTTP {}{}",
                a.status,
                body_snippet(&a)
            ),
            Err(e) => eprintln!("[nexus-demo] progress report failed: {e}"),
        }
    }

    /// POSTs a JSON body with no credential of its own (retried like every call); returns the
    /// status. `what` names the call in messages (never the URL, which may carry a token).
    pub fn post_json(&self, url: &str, body: &Value, what: &str) -> Result<u16, String> {
        let call = Call {
            method: Method::POST,
            url,
            headers: Vec::new(),
            body: Some((encode(body)?, "application/json")),
        };
        Ok(self.send_with_retries(what, &call)?.status.as_u16())
    }

    /// Upload (on success) and complete.
    pub fn finish(&self, ctx: &RunContext, outcome: &Outcome) -> Result<(), String> {
        if let Outcome::Success(result) = outcome {
            self.upload_result(ctx, result)?;
        }
        self.complete(ctx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_url_shape() {
        assert_eq!(
            completion_url("http://127.0.0.1:8090/", "knapsack", "abc"),
            "http://127.0.0.1:8090/algorithm/v1/complete/knapsack/requests/abc"
        );
    }

    #[test]
    fn completion_bodies() {
        assert_eq!(
            completion_body(&Outcome::Success(json!({"ok": true}))),
            json!({"resultUri": ""})
        );
        let body = completion_body(&Outcome::invalid_input("capacity too large"));
        assert_eq!(body["resultUri"], "");
        assert_eq!(body["errorCause"], "invalid input: capacity too large");
        assert!(body["errorDetails"].is_string());
    }

    #[test]
    fn redacts_run_tokens() {
        assert_eq!(
            redact_token("http://h:1/run-token/v1.9.abc/algorithm/v1/complete/a/requests/1"),
            "http://h:1/run-token/***/algorithm/v1/complete/a/requests/1"
        );
        assert_eq!(
            redact_token("http://h:1/run-token/v1.9.abc"),
            "http://h:1/run-token/***"
        );
        assert_eq!(redact_token("http://h:1/x"), "http://h:1/x");
    }

    #[test]
    fn redacts_signatures() {
        assert_eq!(redact("http://h/p?exp=1&sig=abc"), "http://h/p");
        assert_eq!(redact("http://h/p"), "http://h/p");
    }

    /// A one-thread HTTP server answering each connection with the next canned response.
    fn serve(responses: Vec<&'static str>) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/payload", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for body in responses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                conn.write_all(body.as_bytes()).unwrap();
                served += 1;
            }
            served
        });
        (url, handle)
    }

    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy";

    #[test]
    fn transient_failures_are_retried() {
        let ok = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
        let (url, server) = serve(vec![UNAVAILABLE, UNAVAILABLE, ok]);
        let payload = Client::new().unwrap().fetch_payload(&url).unwrap();
        assert_eq!(payload, b"{}");
        assert_eq!(server.join().unwrap(), 3);
    }

    #[test]
    fn client_errors_are_final_and_named() {
        let denied =
            "HTTP/1.1 403 Forbidden\r\nconnection: close\r\ncontent-length: 7\r\n\r\nexpired";
        let (url, server) = serve(vec![UNAVAILABLE, denied]);
        let err = Client::new().unwrap().fetch_payload(&url).unwrap_err();
        assert!(err.contains("HTTP 403") && err.contains("expired"), "{err}");
        assert_eq!(server.join().unwrap(), 2);
    }
}
