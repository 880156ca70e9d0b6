//! A run's captured output: `GET /algorithm/v1/logs/{alg}/requests/{id}[?follow=true]`.
//!
//! Output lives in the payload store under [`Keys::logs`]: the local executor publishes it every
//! few seconds while the run runs and stores it a last time when the process ends (kept with the
//! run's other objects until retention). Without `follow` the answer is what is stored now. With
//! `follow=true` the answer is a chunked stream: what is stored, then every new byte as it is
//! published, until the run has finished and its last output is in (or [`MAX_FOLLOW`]), so a
//! client reads a live run like `tail -f`. Each follower costs one object read and one run read
//! per [`FOLLOW_POLL`]; the stream ends when the client goes away.
//!
//! The captured output is bounded (the executor keeps the tail); when the head was dropped
//! between two reads, the stream resumes after the last bytes it sent, or says that some output
//! was skipped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use nexus_http::ApiError;
use nexus_model::run::Run;
use nexus_payload::Keys;
use tokio::time::Instant;

use crate::Scheduler;

/// How often a follower looks for new output.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// Longest a single follow lasts (a client reconnects to go on).
pub const MAX_FOLLOW: Duration = Duration::from_secs(6 * 3600);
/// How long after a run finished a follower waits for its last output to be stored.
const FINAL_GRACE: Duration = Duration::from_secs(15);
/// Bytes of the last chunk sent that locate where to resume in a republished (trimmed) object.
const TAIL: usize = 256;

fn text(status: StatusCode, body: Body) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn nothing_yet(run: &Run) -> ApiError {
    ApiError::not_found(format!(
        "run {} ({}) has no captured output{}: output is captured for runs executed as local processes; for Kubernetes runs read the pod's log (kubectl logs job/{})",
        run.id,
        run.stage,
        if run.stage.is_terminal() {
            ""
        } else {
            " yet (follow=true waits for it)"
        },
        run.id
    ))
}

/// The answer for `run`'s output; see the module docs.
///
/// # Errors
/// 404 when nothing is stored and there is nothing to wait for; payload store failures.
pub async fn answer(s: Arc<Scheduler>, run: Run, follow: bool) -> Result<Response, ApiError> {
    let key = Keys::logs(&run.algorithm, &run.id.to_string());
    let stored = s.payloads.get(&key).await.map_err(|e| {
        ApiError::from_kind(e.kind, format!("reading the run's output: {}", e.message))
    })?;
    if !follow || run.stage.is_terminal() {
        return match stored {
            Some(b) => Ok(text(StatusCode::OK, Body::from(b))),
            None => Err(nothing_yet(&run)),
        };
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(follow_task(s, run, key, tx));
    Ok(text(
        StatusCode::OK,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    ))
}

/// Sends new output to `tx` until the run's last output is in, the client left, or
/// [`MAX_FOLLOW`].
async fn follow_task(
    s: Arc<Scheduler>,
    run: Run,
    key: String,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let started = Instant::now();
    let mut cursor = Cursor::default();
    let mut finished: Option<Instant> = None;
    loop {
        // The run's state first: output read after "finished and stored" is the last.
        let last_round = match s.store.get(run.id).await {
            Ok(Some(r)) if r.stage.is_terminal() => {
                let since = *finished.get_or_insert_with(Instant::now);
                r.logs_stored || since.elapsed() >= FINAL_GRACE
            }
            Ok(Some(_)) => false,
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(run_id = %run.id, error = %e, "follow: run store unavailable, trying again");
                false
            }
        };
        match s.payloads.get(&key).await {
            Ok(Some(b)) => {
                for chunk in cursor.advance(&b) {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(run_id = %run.id, error = %e.message, "follow: payload store unavailable, trying again");
            }
        }
        if last_round {
            return;
        }
        if started.elapsed() >= MAX_FOLLOW {
            let note = format!(
                "\n[nexus: stopped following after {}; request again to go on]\n",
                humantime::format_duration(MAX_FOLLOW)
            );
            let _ = tx.send(Ok(Bytes::from(note))).await;
            return;
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// What a follower has sent: how far into the object, and its last bytes.
#[derive(Debug, Default)]
struct Cursor {
    sent: usize,
    tail: Vec<u8>,
}

impl Cursor {
    /// The chunks to send for the object now being `b`.
    fn advance(&mut self, b: &Bytes) -> Vec<Bytes> {
        let resume = if self.sent == 0 {
            Some(0)
        } else if b.len() >= self.sent && b[self.sent - self.tail.len()..self.sent] == self.tail[..]
        {
            // It grew: the usual case.
            Some(self.sent)
        } else {
            // Republished with its head dropped: find the last bytes sent.
            b.windows(self.tail.len())
                .rposition(|w| w == &self.tail[..])
                .map(|i| i + self.tail.len())
        };
        let mut out = Vec::new();
        let from = match resume {
            Some(i) => i,
            None => {
                out.push(Bytes::from_static(
                    b"\n[nexus: some output was dropped before it could be sent]\n",
                ));
                0
            }
        };
        if from < b.len() {
            out.push(b.slice(from..));
        }
        self.sent = b.len();
        let keep = b.len().min(TAIL);
        self.tail = b[b.len() - keep..].to_vec();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(chunks: Vec<Bytes>) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn a_follower_sends_each_byte_once_as_the_output_grows() {
        let mut c = Cursor::default();
        assert_eq!(joined(c.advance(&Bytes::from("line 1\n"))), "line 1\n");
        assert_eq!(joined(c.advance(&Bytes::from("line 1\n"))), "");
        assert_eq!(
            joined(c.advance(&Bytes::from("line 1\nline 2\n"))),
            "line 2\n"
        );
    }

    #[test]
    fn a_trimmed_republish_resumes_after_the_last_bytes_sent() {
        let mut c = Cursor::default();
        let first: String = (0..100).map(|i| format!("line {i}\n")).collect();
        c.advance(&Bytes::from(first.clone()));
        // The head was dropped and new lines came.
        let second = format!(
            "[nexus: log truncated, 300 earlier bytes dropped]\n{}line 100\nline 101\n",
            &first[300..]
        );
        assert_eq!(
            joined(c.advance(&Bytes::from(second))),
            "line 100\nline 101\n"
        );
        // Everything sent was dropped before the next read: say so, send what there is.
        let third = Bytes::from("[nexus: log truncated]\nline 900\n");
        let out = joined(c.advance(&third));
        assert!(
            out.starts_with("\n[nexus: some output was dropped"),
            "{out}"
        );
        assert!(out.ends_with("line 900\n"), "{out}");
    }
}

#[cfg(test)]
mod http_tests {
    use axum::body::Body;
    use axum::http::Request;
    use nexus_model::run::{RunPatch, Stage};
    use nexus_store::RunStore as _;
    use nexus_store::test_suite::sample_run;
    use tower::ServiceExt as _;

    use super::*;
    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler;

    async fn get(s: &Arc<Scheduler>, uri: &str) -> Response {
        crate::api::router(s.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_streams_new_output_until_the_run_finished() {
        let (s, store) = scheduler(SchedulerConfig::default());
        let run = sample_run("knapsack");
        store.insert(run.clone()).await.unwrap();
        let uri = format!("/algorithm/v1/logs/knapsack/requests/{}", run.id);
        // Nothing yet: 404 without follow, saying follow waits.
        let resp = get(&s, &uri).await;
        assert_eq!(resp.status(), 404);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("follow=true waits"));
        let bad = get(&s, &format!("{uri}?follow=yes")).await;
        assert_eq!(bad.status(), 400);

        let key = Keys::logs("knapsack", &run.id.to_string());
        s.payloads.put(&key, Bytes::from("one\n")).await.unwrap();
        let resp = get(&s, &format!("{uri}?follow=true")).await;
        assert_eq!(resp.status(), 200);
        let writer = {
            let (s, store, key, id) = (s.clone(), store.clone(), key.clone(), run.id);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                s.payloads
                    .put(&key, Bytes::from("one\ntwo\n"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                s.payloads
                    .put(&key, Bytes::from("one\ntwo\nthree\n"))
                    .await
                    .unwrap();
                store
                    .transition(id, Stage::Buffered, Stage::Running, RunPatch::default())
                    .await
                    .unwrap();
                store
                    .transition(
                        id,
                        Stage::Running,
                        Stage::Completed,
                        RunPatch {
                            logs_stored: Some(true),
                            ..RunPatch::default()
                        },
                    )
                    .await
                    .unwrap();
            })
        };
        let body = tokio::time::timeout(
            Duration::from_secs(20),
            axum::body::to_bytes(resp.into_body(), 1 << 16),
        )
        .await
        .expect("the stream ends once the run finished")
        .unwrap();
        writer.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&body), "one\ntwo\nthree\n");
        // Afterwards: the stored output, at once.
        let resp = get(&s, &uri).await;
        assert_eq!(resp.status(), 200);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"one\ntwo\nthree\n");
    }
}
