//! A run's output: `GET /algorithm/v1/logs/{alg}/requests/{id}[?follow=true]`.
//!
//! Output comes from two places:
//! * the payload store, under [`Keys::logs`]: the local executor publishes a run's output there
//!   every few seconds while it runs and stores it a last time when the process ends; the
//!   Kubernetes executor keeps a copy of a run's pod log there when its Job finishes. Kept with
//!   the run's other objects until retention.
//! * the run's shard ([`Shard::logs`]): a receiver whose executor reads output where the run
//!   runs (a Kubernetes run's pod) streams it from there.
//!
//! Without `follow` the answer is what is stored now, or else what the shard reads now (its
//! tail, bounded by the receiver). With `follow=true` on a run that has not finished, the answer
//! is a chunked stream: from the shard when it can read the run (until the run's process ended),
//! or else what is stored, then every new byte as it is published, until the run has finished
//! and its last output is in; at most [`MAX_FOLLOW`], and it ends when the client goes away. A
//! follower of stored output costs one object read and one run read per [`FOLLOW_POLL`], and
//! asks the shard again every [`SHARD_RETRY`] while nothing came (a run not launched yet).
//!
//! The captured output is bounded (the executor keeps the tail); when the head was dropped
//! between two reads, the stream resumes after the last bytes it sent, or says that some output
//! was skipped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use nexus_http::ApiError;
use nexus_link::shard::{LogStream, ShardError};
use nexus_model::error::ErrorKind;
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
/// How often a follower that has nothing yet asks the shard again (the run may not have been
/// launched when it started).
pub const SHARD_RETRY: Duration = Duration::from_secs(5);
/// Longest wait for the shard to start answering (each gRPC receiver is bounded too).
const SHARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long after the shard's stream ended a follower waits for the run to be recorded finished
/// before saying the stream ended early.
const END_GRACE: Duration = Duration::from_secs(10);

type Chunks = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

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
        "run {} ({}) has no captured output{}: output is kept for runs executed as local processes and, once their Job finished, for Kubernetes runs whose pod's container ran; a Kubernetes run's output is read from its pod while the pod exists",
        run.id,
        run.stage,
        if run.stage.is_terminal() {
            ""
        } else {
            " yet (follow=true waits for it)"
        },
    ))
}

/// What `run`'s shard can read of its output where it runs, within [`SHARD_TIMEOUT`].
async fn from_shard(
    s: &Scheduler,
    run: &Run,
    follow: bool,
) -> Result<Option<LogStream>, ShardError> {
    let Some(shard) = s.shards.route(&run.shard) else {
        return Ok(None);
    };
    match tokio::time::timeout(SHARD_TIMEOUT, shard.logs(run.id, follow)).await {
        Ok(r) => r,
        Err(_) => Err(ShardError::new(
            ErrorKind::Timeout,
            format!(
                "shard '{}' did not answer within {SHARD_TIMEOUT:?}",
                run.shard
            ),
        )),
    }
}

fn streamed(stream: LogStream) -> Response {
    text(
        StatusCode::OK,
        Body::from_stream(stream.map(Ok::<Bytes, std::io::Error>)),
    )
}

/// The answer for `run`'s output; see the module docs.
///
/// # Errors
/// 404 when nothing is stored and there is nothing to wait for; payload store failures; the
/// shard's refusal when only it could answer.
pub async fn answer(s: Arc<Scheduler>, run: Run, follow: bool) -> Result<Response, ApiError> {
    let key = Keys::logs(&run.algorithm, &run.id.to_string());
    let stored = s.payloads.get(&key).await.map_err(|e| {
        ApiError::from_kind(e.kind, format!("reading the run's output: {}", e.message))
    })?;
    let live = follow && !run.stage.is_terminal();
    if let Some(b) = &stored
        && !live
    {
        return Ok(text(StatusCode::OK, Body::from(b.clone())));
    }
    // Nothing stored, or a follow of a run that has not finished: read it where it runs when
    // its shard can.
    match from_shard(&s, &run, live).await {
        Ok(Some(stream)) if live => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                forward(&s, &run, stream, &tx, Instant::now()).await;
            });
            return Ok(text(
                StatusCode::OK,
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            ));
        }
        Ok(Some(stream)) => return Ok(streamed(stream)),
        Ok(None) => {}
        // Stored output is followed without the shard (a local run's receiver unreachable).
        Err(e) if stored.is_some() => {
            tracing::debug!(run_id = %run.id, error = %e, "logs: the shard did not answer; following the stored output");
        }
        Err(e) => {
            return Err(ApiError::from_kind(
                e.kind,
                format!(
                    "reading the run's output from shard '{}': {}",
                    run.shard, e.message
                ),
            ));
        }
    }
    if !live {
        return Err(nothing_yet(&run));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(follow_task(s, run, key, tx));
    Ok(text(
        StatusCode::OK,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    ))
}

/// Sends the shard's `stream` of `run`'s output to `tx` until it ends, the client left, or
/// [`MAX_FOLLOW`] after `started`; then says so when the run was not recorded finished soon
/// after (the stream broke: its receiver restarted, or the run was launched again).
async fn forward(s: &Scheduler, run: &Run, mut stream: LogStream, tx: &Chunks, started: Instant) {
    let until = started + MAX_FOLLOW;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep_until(until) => {
                let _ = tx.send(Ok(stopped_note())).await;
                return;
            }
            chunk = stream.next() => match chunk {
                Some(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    let ended = Instant::now();
    loop {
        match s.store.get(run.id).await {
            Ok(Some(r)) if !r.stage.is_terminal() => {}
            // Finished (or gone): its last output was sent.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(run_id = %run.id, error = %e, "follow: run store unavailable, trying again");
            }
        }
        if ended.elapsed() >= END_GRACE {
            let note = "\n[nexus: the run's output stream ended before the run finished (its receiver restarted, or the run is being launched again); request again to go on]\n";
            let _ = tx.send(Ok(Bytes::from_static(note.as_bytes()))).await;
            return;
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn stopped_note() -> Bytes {
    Bytes::from(format!(
        "\n[nexus: stopped following after {}; request again to go on]\n",
        humantime::format_duration(MAX_FOLLOW)
    ))
}

/// Sends new output to `tx` until the run's last output is in, the client left, or
/// [`MAX_FOLLOW`]; switches to the shard's stream when the shard can read the run's output
/// before any was stored.
async fn follow_task(s: Arc<Scheduler>, run: Run, key: String, tx: Chunks) {
    let started = Instant::now();
    let mut cursor = Cursor::default();
    let mut finished: Option<Instant> = None;
    let mut asked = Instant::now();
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
            let _ = tx.send(Ok(stopped_note())).await;
            return;
        }
        if cursor.sent == 0 && finished.is_none() && asked.elapsed() >= SHARD_RETRY {
            asked = Instant::now();
            if let Ok(Some(stream)) = from_shard(&s, &run, true).await {
                forward(&s, &run, stream, &tx, started).await;
                return;
            }
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

#[cfg(test)]
mod shard_tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use nexus_link::shard::{Dispatch, Shard};
    use nexus_model::run::{CancellationPolicy, RunId, RunPatch, Stage};
    use nexus_store::RunStore as _;
    use nexus_store::test_suite::sample_run;
    use tokio::sync::Notify;
    use tower::ServiceExt as _;

    use super::*;
    use crate::admission::tests::scheduler_with;
    use crate::{SchedulerConfig, ShardMap};

    /// A shard whose receiver reads runs' output where they run: a follow gets a first line,
    /// then a second once released; a read gets the tail. Or it refuses, as told.
    #[derive(Debug, Default)]
    struct PodShard {
        release: Arc<Notify>,
        refuse: Mutex<Option<ErrorKind>>,
        asked: Mutex<Vec<(RunId, bool)>>,
    }

    #[async_trait::async_trait]
    impl Shard for PodShard {
        async fn submit(&self, _: Dispatch) -> Result<(), ShardError> {
            Ok(())
        }
        async fn cancel(&self, _: RunId, _: CancellationPolicy) -> Result<(), ShardError> {
            Ok(())
        }
        async fn logs(&self, run_id: RunId, follow: bool) -> Result<Option<LogStream>, ShardError> {
            self.asked.lock().unwrap().push((run_id, follow));
            if let Some(kind) = *self.refuse.lock().unwrap() {
                return Err(ShardError::new(kind, "64 pod log streams are open"));
            }
            if !follow {
                return Ok(Some(futures::stream::iter([Bytes::from("tail\n")]).boxed()));
            }
            let release = self.release.clone();
            let first = futures::stream::iter([Bytes::from("line 1\n")]);
            let later = futures::stream::once(async move {
                release.notified().await;
                Bytes::from("line 2\n")
            });
            Ok(Some(first.chain(later).boxed()))
        }
    }

    async fn get(s: &Arc<Scheduler>, uri: &str) -> Response {
        crate::api::router(s.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body_text(r: Response) -> String {
        let b = tokio::time::timeout(
            Duration::from_secs(20),
            axum::body::to_bytes(r.into_body(), 1 << 16),
        )
        .await
        .expect("the answer ends")
        .unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_run_is_followed_from_its_shard_and_read_from_it_until_stored() {
        let shard = Arc::new(PodShard::default());
        let mut shards = ShardMap::default();
        shards.shards.insert("local".into(), shard.clone());
        let (s, store) = scheduler_with(
            SchedulerConfig::default(),
            nexus_auth::Authenticator::none(),
            shards,
        );
        let run = sample_run("knapsack");
        store.insert(run.clone()).await.unwrap();
        store
            .transition(run.id, Stage::Buffered, Stage::Running, RunPatch::default())
            .await
            .unwrap();
        let uri = format!("/algorithm/v1/logs/knapsack/requests/{}", run.id);

        // Following: the first line arrives while the run runs.
        let resp = get(&s, &format!("{uri}?follow=true")).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body().into_data_stream();
        let first = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a first chunk while the run runs")
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"line 1\n");
        store
            .transition(
                run.id,
                Stage::Running,
                Stage::Completed,
                RunPatch::default(),
            )
            .await
            .unwrap();
        shard.release.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("the stream ends once the shard's does")
        {
            rest.extend_from_slice(&c.unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&rest), "line 2\n");

        // Finished, nothing stored yet (the copy is being made): read from the shard.
        let resp = get(&s, &uri).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body_text(resp).await, "tail\n");
        // Stored: served from the store, the shard not asked.
        let key = Keys::logs("knapsack", &run.id.to_string());
        s.payloads.put(&key, Bytes::from("kept\n")).await.unwrap();
        let asked = shard.asked.lock().unwrap().len();
        for u in [uri.clone(), format!("{uri}?follow=true")] {
            let resp = get(&s, &u).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(body_text(resp).await, "kept\n");
        }
        assert_eq!(shard.asked.lock().unwrap().len(), asked);
        assert_eq!(
            shard.asked.lock().unwrap()[..],
            [(run.id, true), (run.id, false)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_ends_before_the_run_says_so_and_a_refusal_is_its_status() {
        let shard = Arc::new(PodShard::default());
        let mut shards = ShardMap::default();
        shards.shards.insert("local".into(), shard.clone());
        let (s, store) = scheduler_with(
            SchedulerConfig::default(),
            nexus_auth::Authenticator::none(),
            shards,
        );
        let run = sample_run("knapsack");
        store.insert(run.clone()).await.unwrap();
        let uri = format!("/algorithm/v1/logs/knapsack/requests/{}", run.id);
        let resp = get(&s, &format!("{uri}?follow=true")).await;
        shard.release.notify_one();
        let text = body_text(resp).await;
        assert!(
            text.starts_with("line 1\nline 2\n") && text.contains("ended before the run finished"),
            "{text}"
        );

        *shard.refuse.lock().unwrap() = Some(ErrorKind::ResourceExhausted);
        let resp = get(&s, &format!("{uri}?follow=true")).await;
        assert_eq!(resp.status(), 429);
        let text = body_text(resp).await;
        assert!(text.contains("64 pod log streams"), "{text}");
    }
}
