//! The algorithm side of the Nexus contract: environment, payload download,
//! result upload and completion.

use std::time::Duration;

use serde_json::{Value, json};

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

/// Thin blocking HTTP client; every failure becomes a printable message.
#[derive(Debug)]
pub struct Client {
    http: reqwest::blocking::Client,
}

/// Strips the query string (signature) from a URL before logging it.
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

fn body_snippet(resp: reqwest::blocking::Response) -> String {
    let text = resp.text().unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(500).collect::<String>())
    }
}

impl Client {
    pub fn new() -> Result<Self, String> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Client { http })
    }

    /// GET the payload (the JSON of the client's `algorithmParameters`).
    pub fn fetch_payload(&self, sas_uri: &str) -> Result<Vec<u8>, String> {
        let shown = redact(sas_uri);
        println!("[nexus-demo] GET payload {shown}");
        let resp = self
            .http
            .get(sas_uri)
            .send()
            .map_err(|e| format!("cannot fetch payload from {shown}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "fetching payload from {shown} failed with HTTP {status}{}",
                body_snippet(resp)
            ));
        }
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| format!("cannot read payload body from {shown}: {e}"))
    }

    /// PUT the result document to the signed upload URL.
    pub fn upload_result(&self, ctx: &RunContext, result: &Value) -> Result<(), String> {
        let shown = redact(&ctx.result_upload_url);
        let bytes = serde_json::to_vec(result).map_err(|e| format!("cannot encode result: {e}"))?;
        println!("[nexus-demo] PUT result ({} bytes) to {shown}", bytes.len());
        let resp = self
            .http
            .put(&ctx.result_upload_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .map_err(|e| format!("cannot upload result to {shown}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "uploading result to {shown} failed with HTTP {status}{}",
                body_snippet(resp)
            ));
        }
        Ok(())
    }

    /// POST the completion call, retrying (with back-off, for about a minute) while the receiver
    /// is unreachable or answers 5xx/429: a receiver restarting must not lose a finished run.
    /// 4xx answers are final (wrong token, run already finished).
    pub fn complete(&self, ctx: &RunContext, outcome: &Outcome) -> Result<(), String> {
        let url = ctx.completion_url();
        let body = completion_body(outcome);
        let mut delay = std::time::Duration::from_millis(200);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            println!("[nexus-demo] POST completion to {url}");
            let resp = self
                .http
                .post(&url)
                .bearer_auth(&ctx.run_token)
                .json(&body)
                .send();
            let err = match resp {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        println!("[nexus-demo] completion accepted (HTTP {status})");
                        return Ok(());
                    }
                    let e = format!(
                        "completion call to {url} failed with HTTP {status}{}",
                        body_snippet(resp)
                    );
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(e);
                    }
                    e
                }
                Err(e) => format!("cannot report completion to {url}: {e}"),
            };
            if std::time::Instant::now() + delay > give_up {
                return Err(err);
            }
            eprintln!("[nexus-demo] {err}; retrying in {delay:?}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
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
    fn redacts_signatures() {
        assert_eq!(redact("http://h/p?exp=1&sig=abc"), "http://h/p");
        assert_eq!(redact("http://h/p"), "http://h/p");
    }
}
