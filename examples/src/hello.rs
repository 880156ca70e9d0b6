//! `hello`: a hello-world algorithm written only to the Go Nexus algorithm-container contract,
//! the way an algorithm built for SneaksAndData's Go Nexus is (reference §3.4, §1.3).
//!
//! What it uses, and nothing else: the arguments `--sas-uri=<payload url>` and
//! `--request-id=<id>`, and the environment variables `NEXUS__RECEIVER_URL` and
//! `NEXUS__ALGORITHM_NAME`. It sends no `Authorization` header, reads no `NEXUS__RUN_TOKEN` and
//! uploads nothing to `NEXUS__RESULT_UPLOAD_URL`: Nexus hands it a receiver URL that carries the
//! run's token, so the Go-style completion call authenticates without the algorithm knowing.
//!
//! 1. GET the `--sas-uri` (a plain GET, redirects followed): `{"name": "<someone>"}`.
//! 2. POST `{"resultUri": "data:text/plain;charset=utf-8,Hello%2C%20<someone>%21"}` to
//!    `$NEXUS__RECEIVER_URL/algorithm/v1/complete/<algorithm>/requests/<id>`: the result lives in
//!    the URI itself (a `data:` URL), standing for the storage URL a real algorithm reports.
//!    A payload without a non-empty string `name` is reported as
//!    `{"resultUri": "", "errorCause": "invalid payload: ...", "errorDetails": "..."}`.
//!
//! The receiver URL is never printed: it contains the run's credential.

use serde_json::{Value, json};

use crate::nexus::{Client, Outcome};

/// Environment variable of the Go contract: the receiver's base URL.
const RECEIVER_URL: &str = "NEXUS__RECEIVER_URL";
/// Environment variable of the Go contract: the algorithm (template) name.
const ALGORITHM_NAME: &str = "NEXUS__ALGORITHM_NAME";

/// Computes the greeting for a payload: success with `{"greeting": ...}`, or the failure reported.
pub fn run(payload: &[u8]) -> Outcome {
    let parsed: Result<Value, _> = serde_json::from_slice(payload);
    let name = match &parsed {
        Ok(v) => v.get("name").and_then(Value::as_str).map(str::trim),
        Err(_) => None,
    };
    match name {
        Some(n) if !n.is_empty() => Outcome::Success(json!({ "greeting": format!("Hello, {n}!") })),
        _ => Outcome::Failure {
            cause: "invalid payload: expected {\"name\": \"<someone>\"}".to_owned(),
            details: match parsed {
                Ok(v) => format!("the payload {v} has no non-empty string field `name`"),
                Err(e) => format!("the payload is not JSON: {e}"),
            },
        },
    }
}

/// Percent-encodes `text` for a `data:` URL (everything but unreserved characters).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The completion body of the Go contract (`AlgorithmResult`) for an outcome.
pub fn completion_body(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Success(v) => {
            let greeting = v["greeting"].as_str().unwrap_or_default();
            json!({ "resultUri": format!("data:text/plain;charset=utf-8,{}", percent_encode(greeting)) })
        }
        Outcome::Failure { cause, details } => {
            json!({ "resultUri": "", "errorCause": cause, "errorDetails": details })
        }
    }
}

/// Runs under Nexus: payload from `sas_uri`, completion to `$NEXUS__RECEIVER_URL` without any
/// header of its own.
///
/// # Errors
/// A message when the environment is incomplete or Nexus cannot be reached.
pub fn execute_remote(sas_uri: &str, request_id: Option<&str>) -> Result<(), String> {
    let request_id = request_id.ok_or("missing --request-id=<ID> (the Go contract passes it)")?;
    let receiver = std::env::var(RECEIVER_URL)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("environment variable {RECEIVER_URL} is not set"))?;
    let algorithm = std::env::var(ALGORITHM_NAME)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "hello".to_owned());
    let client = Client::new()?;
    let payload = client.fetch_payload(sas_uri)?;
    let outcome = run(&payload);
    let url = format!(
        "{}/algorithm/v1/complete/{algorithm}/requests/{request_id}",
        receiver.trim_end_matches('/')
    );
    let body = completion_body(&outcome);
    println!("[hello] POST completion of run {request_id} ({algorithm})");
    let status = client.post_json(&url, &body, &format!("completion of run {request_id}"))?;
    println!("[hello] completion accepted (HTTP {status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name_in_a_data_url() {
        let out = run(br#"{"name": "Nexus"}"#);
        assert_eq!(out, Outcome::Success(json!({"greeting": "Hello, Nexus!"})));
        assert_eq!(
            completion_body(&out),
            json!({"resultUri": "data:text/plain;charset=utf-8,Hello%2C%20Nexus%21"})
        );
    }

    #[test]
    fn a_bad_payload_is_reported_as_an_error_cause() {
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"name": ""}"#,
            br#"{"name": 3}"#,
        ] {
            let body = completion_body(&run(bad));
            assert_eq!(body["resultUri"], "");
            assert!(
                body["errorCause"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid payload"),
                "{body}"
            );
            assert!(body["errorDetails"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }
}
