//! Deliberate failure paths, for watching how Nexus handles each of them.
//!
//! Payload: `{"mode": "..."}` plus per-mode fields; see [`Action`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::nexus::Outcome;

pub const MODES: &str = "exit, sleep, crash, error, no-complete, succeed, digest, flaky, memory";

/// Exit code meaning "transient failure, retry me" (the chaos template lists it
/// under `errorHandlingBehaviour.transientExitCodes`).
pub const TRANSIENT_EXIT_CODE: i32 = 75;

/// The most the `memory` mode allocates (it is meant to exceed a container's limit, not the
/// machine's memory).
pub const MAX_MEGABYTES: u64 = 16 * 1024;

/// What a payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `{"mode": "exit", "code": n}`: exit with `n` without completing.
    Exit(i32),
    /// `{"mode": "sleep", "seconds": n}`: sleep (reporting its progress every second), then
    /// succeed with `{"slept": n}`.
    Sleep(u64),
    /// `{"mode": "crash"}`: abort (SIGABRT).
    Crash,
    /// `{"mode": "error"}`: complete with an error cause.
    Error,
    /// `{"mode": "no-complete"}`: exit 0 without completing.
    NoComplete,
    /// `{"mode": "succeed"}`: complete with `{"ok": true}`.
    Succeed,
    /// `{"mode": "digest", ...}`: complete with `{"bytes": n, "sha256": "<hex>"}` of the payload
    /// as received, so a client can check that a large payload reached the algorithm intact.
    Digest,
    /// `{"mode": "flaky", "failUntilAttempt": n}`: exit 75 on attempts `1..n`, succeed on attempt `n`.
    Flaky(u64),
    /// `{"mode": "memory", "megabytes": n}`: allocate and touch `n` MiB (a memory limit below
    /// that gets the process OOM-killed), then succeed with `{"megabytes": n}`.
    Memory(u64),
    /// Anything else: complete with an error naming the valid modes.
    Unknown(String),
}

fn field_u64(v: &Value, name: &str, default: u64) -> Result<u64, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .ok_or_else(|| format!("`{name}` must be a non-negative integer, got {x}")),
    }
}

/// Interprets the payload; `Err` is an invalid-input message.
pub fn plan(payload: &[u8]) -> Result<Action, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mode = match v.get("mode") {
        Some(Value::String(m)) => m.as_str(),
        Some(other) => return Err(format!("`mode` must be a string, got {other}")),
        None => return Err(format!("missing `mode` (one of: {MODES})")),
    };
    Ok(match mode {
        "exit" => {
            let code = field_u64(&v, "code", 1)?;
            if code > 255 {
                return Err(format!("`code` must be between 0 and 255, got {code}"));
            }
            Action::Exit(code as i32)
        }
        "sleep" => Action::Sleep(field_u64(&v, "seconds", 30)?),
        "crash" => Action::Crash,
        "error" => Action::Error,
        "no-complete" => Action::NoComplete,
        "succeed" => Action::Succeed,
        "digest" => Action::Digest,
        "flaky" => Action::Flaky(field_u64(&v, "failUntilAttempt", 3)?.max(1)),
        "memory" => {
            let mb = field_u64(&v, "megabytes", 512)?;
            if mb > MAX_MEGABYTES {
                return Err(format!(
                    "`megabytes` must be at most {MAX_MEGABYTES}, got {mb}"
                ));
            }
            Action::Memory(mb)
        }
        other => Action::Unknown(other.to_owned()),
    })
}

/// Marker file `flaky-<request id>` (request id sanitised for the file system).
pub fn marker_path(dir: &Path, request_id: &str) -> PathBuf {
    let safe: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("flaky-{safe}"))
}

/// Increments and returns the attempt counter stored in `path` (1 on the first attempt).
pub fn record_attempt(path: &Path) -> std::io::Result<u64> {
    let previous = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let attempt = previous + 1;
    std::fs::write(path, format!("{attempt}\n"))?;
    Ok(attempt)
}

/// Entry point used by `main`. May not return (exit / crash modes).
pub fn run(payload: &[u8], request_id: &str, progress: &dyn Fn(f64, &str)) -> Outcome {
    let action = match plan(payload) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("[chaos] invalid payload: {e}");
            return Outcome::invalid_input(e);
        }
    };
    println!("[chaos] action: {action:?}");
    match action {
        Action::Exit(code) => {
            eprintln!("[chaos] exiting with code {code} without reporting completion");
            std::process::exit(code);
        }
        Action::Sleep(seconds) => {
            println!(
                "[chaos] sleeping {seconds}s (a deadline shorter than this should kill the run)"
            );
            // A second at a time, reporting how far it is.
            for slept in 1..=seconds {
                std::thread::sleep(Duration::from_secs(1));
                #[allow(clippy::cast_precision_loss)]
                let fraction = slept as f64 / seconds as f64;
                progress(fraction, &format!("slept {slept}s of {seconds}s"));
            }
            println!("[chaos] woke up after {seconds}s");
            Outcome::Success(json!({ "slept": seconds }))
        }
        Action::Crash => {
            eprintln!("[chaos] aborting (SIGABRT)");
            std::process::abort();
        }
        Action::Error => Outcome::failure(
            "demo failure requested",
            "the chaos algorithm was asked (mode \"error\") to report a failure through the completion API",
        ),
        Action::NoComplete => {
            println!("[chaos] exiting 0 without reporting completion");
            std::process::exit(0);
        }
        Action::Succeed => Outcome::Success(json!({ "ok": true })),
        Action::Digest => {
            use sha2::Digest as _;
            let hash = sha2::Sha256::digest(payload);
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            Outcome::Success(json!({ "bytes": payload.len(), "sha256": hex }))
        }
        Action::Flaky(fail_until) => {
            let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            let path = marker_path(&dir, request_id);
            let attempt = match record_attempt(&path) {
                Ok(n) => n,
                Err(e) => {
                    return Outcome::failure(
                        "flaky marker unavailable",
                        format!("cannot update attempt counter {}: {e}", path.display()),
                    );
                }
            };
            if attempt < fail_until {
                eprintln!(
                    "[chaos] flaky attempt {attempt} of {fail_until}: failing transiently (exit {TRANSIENT_EXIT_CODE})"
                );
                std::process::exit(TRANSIENT_EXIT_CODE);
            }
            println!("[chaos] flaky attempt {attempt} of {fail_until}: succeeding");
            let _ = std::fs::remove_file(&path);
            Outcome::Success(json!({ "ok": true, "attempts": attempt }))
        }
        Action::Memory(mb) => {
            println!(
                "[chaos] allocating {mb} MiB (a memory limit below that should OOM-kill the run)"
            );
            // Every page is written, so the memory is resident (and counted by the cgroup), and
            // kept until the end.
            let mut held: Vec<Vec<u8>> = Vec::new();
            for i in 0..mb {
                held.push(vec![u8::try_from(i % 251).unwrap_or(1) | 1; 1 << 20]);
            }
            println!("[chaos] holding {} MiB: not killed", held.len());
            Outcome::Success(json!({ "megabytes": mb }))
        }
        Action::Unknown(mode) => Outcome::failure(
            format!("invalid input: unknown chaos mode \"{mode}\" (valid modes: {MODES})"),
            format!("valid modes: {MODES}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_every_mode() {
        assert_eq!(plan(br#"{"mode": "exit", "code": 3}"#), Ok(Action::Exit(3)));
        assert_eq!(
            plan(br#"{"mode": "digest", "blob": "x"}"#),
            Ok(Action::Digest)
        );
        assert_eq!(plan(br#"{"mode": "exit"}"#), Ok(Action::Exit(1)));
        assert_eq!(
            plan(br#"{"mode": "sleep", "seconds": 30}"#),
            Ok(Action::Sleep(30))
        );
        assert_eq!(plan(br#"{"mode": "crash"}"#), Ok(Action::Crash));
        assert_eq!(plan(br#"{"mode": "error"}"#), Ok(Action::Error));
        assert_eq!(plan(br#"{"mode": "no-complete"}"#), Ok(Action::NoComplete));
        assert_eq!(plan(br#"{"mode": "succeed"}"#), Ok(Action::Succeed));
        assert_eq!(
            plan(br#"{"mode": "flaky", "failUntilAttempt": 3}"#),
            Ok(Action::Flaky(3))
        );
        assert_eq!(
            plan(br#"{"mode": "memory", "megabytes": 64}"#),
            Ok(Action::Memory(64))
        );
        assert!(plan(br#"{"mode": "memory", "megabytes": 999999}"#).is_err());
        assert_eq!(
            plan(br#"{"mode": "dance"}"#),
            Ok(Action::Unknown("dance".into()))
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        assert!(plan(b"nope").is_err());
        assert!(plan(br#"{}"#).is_err());
        assert!(plan(br#"{"mode": 1}"#).is_err());
        assert!(plan(br#"{"mode": "exit", "code": 256}"#).is_err());
        assert!(plan(br#"{"mode": "sleep", "seconds": -1}"#).is_err());
        match run(b"nope", "x", &|_, _| {}) {
            Outcome::Failure { cause, .. } => assert!(cause.starts_with("invalid input: ")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sleep_reports_its_progress_every_second() {
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |f: f64, m: &str| seen.borrow_mut().push((f, m.to_owned()));
        assert_eq!(
            run(br#"{"mode": "sleep", "seconds": 2}"#, "x", &record),
            Outcome::Success(json!({"slept": 2}))
        );
        assert_eq!(
            seen.into_inner(),
            vec![
                (0.5, "slept 1s of 2s".to_owned()),
                (1.0, "slept 2s of 2s".to_owned())
            ]
        );
    }

    #[test]
    fn non_exiting_modes() {
        assert_eq!(
            run(br#"{"mode": "succeed"}"#, "x", &|_, _| {}),
            Outcome::Success(json!({"ok": true}))
        );
        assert_eq!(
            run(br#"{"mode": "sleep", "seconds": 0}"#, "x", &|_, _| {}),
            Outcome::Success(json!({"slept": 0}))
        );
        assert_eq!(
            run(br#"{"mode": "memory", "megabytes": 2}"#, "x", &|_, _| {}),
            Outcome::Success(json!({"megabytes": 2}))
        );
        match run(br#"{"mode": "error"}"#, "x", &|_, _| {}) {
            Outcome::Failure { cause, details } => {
                assert_eq!(cause, "demo failure requested");
                assert!(!details.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match run(br#"{"mode": "dance"}"#, "x", &|_, _| {}) {
            Outcome::Failure { cause, .. } => assert!(cause.contains("no-complete")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flaky_marker_counts_attempts() {
        let dir = std::env::temp_dir().join(format!("nexus-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = marker_path(&dir, "run/1");
        assert_eq!(path.file_name().unwrap(), "flaky-run_1");
        let _ = std::fs::remove_file(&path);
        assert_eq!(record_attempt(&path).unwrap(), 1);
        assert_eq!(record_attempt(&path).unwrap(), 2);
        assert_eq!(record_attempt(&path).unwrap(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
