//! Runs' pod logs: read live for [`nexus_executor::Executor::logs`], and kept in the payload store
//! when a run's Job finishes, so its output outlives the pod (the Job's TTL, a node drain).
//!
//! * A run's pods carry its request-id label; its log is the container named after the run id
//!   ([`crate::job::render_job`]). The newest pod whose container ran is the one read.
//! * A read that is not followed fetches at most [`TAIL_LINES`] lines and [`READ_CAP`] bytes
//!   (server side) within [`READ_TIMEOUT`], and keeps their last [`PodLogOptions::max_bytes`].
//! * A follow streams the newest pod's log from its last [`TAIL_LINES`] lines, then every later
//!   pod of the Job (a relaunched attempt) from its start under a `--- pod NAME ---` line, until
//!   the Job finished (or is gone), the caller goes, the executor shuts down or
//!   [`PodLogOptions::max_follow`]. A pod that is silent longer than the API client's read
//!   timeout breaks the stream; it is opened again from just after the last output (sinceTime),
//!   so nothing repeats; another break says that lines of the last second may repeat.
//! * Bounds: at most [`PodLogOptions::max_streams`] reads and follows at once (more are
//!   `ResourceExhausted`), chunks of at most [`CHUNK`] bytes, at most
//!   [`PodLogOptions::max_captures`] copies made at once with [`MAX_PENDING_CAPTURES`] waiting
//!   (more are skipped and counted).
//!
//! A copy is made after the run's `Finished` event is sent, in a task of its own: it never
//! delays or fails the run's own transition. A run that finished before its container ran has
//! no log and gets no copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncReadExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, TimeDelta, Utc};
use kube::Api;
use kube::api::{ListParams, LogParams};
use nexus_executor::{ExecutorError, LogStream};
use nexus_model::error::ErrorKind;
use nexus_model::run::RunId;
use nexus_payload::PayloadStore;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::LABEL_REQUEST_ID;

/// Lines of a pod's log a read (or the start of a follow) fetches at most.
pub const TAIL_LINES: i64 = 50_000;
/// Bytes a read that is not followed fetches at most (the API server stops there).
pub const READ_CAP: i64 = 32 * 1024 * 1024;
/// Longest read that is not followed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes in one chunk of a stream.
pub const CHUNK: usize = 64 * 1024;
/// Copies waiting for a slot at most; more are skipped (a burst of thousands of finished runs
/// must not queue thousands of reads).
pub const MAX_PENDING_CAPTURES: usize = 1024;
/// How soon a follow looks again for the next pod or the Job's end; the wait doubles while
/// nothing changes, up to [`MAX_POLL`] (a follower waiting for a pod to start costs at most one
/// request per [`MAX_POLL`] of the cluster's API budget).
const POLL: Duration = Duration::from_secs(1);
/// Longest wait between two looks of a follow.
const MAX_POLL: Duration = Duration::from_secs(5);
/// Times a follow opens one pod's log again after its stream broke.
const MAX_REOPEN: u32 = 20;
/// A stream silent this long before it broke was cut for its silence (the client's read
/// timeout): reopened after the last output, nothing repeats.
const SILENT: Duration = Duration::from_secs(60);
/// Margin kept against clock skew between this process and the node when reopening.
const SKEW: Duration = Duration::from_secs(30);

/// Pod logs (receiver section `pod_logs`, `runtime: kubernetes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodLogOptions {
    /// Keep a copy of a run's pod log in the payload store when its Job finishes, so the logs
    /// route and `logs_uri` serve it after the pod is gone.
    pub keep: bool,
    /// Most bytes kept of a pod log (its tail), and answered by a read that is not followed.
    pub max_bytes: usize,
    /// Copies made at once.
    pub max_captures: usize,
    /// Log reads and follows served at once by this receiver.
    pub max_streams: usize,
    /// Longest follow (the caller asks again to go on).
    #[serde(with = "humantime_serde")]
    pub max_follow: Duration,
}

impl Default for PodLogOptions {
    fn default() -> Self {
        Self {
            keep: true,
            max_bytes: 1024 * 1024,
            max_captures: 4,
            max_streams: 64,
            max_follow: Duration::from_secs(6 * 3600),
        }
    }
}

impl PodLogOptions {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key and what is accepted.
    pub fn validate(&self) -> Result<(), String> {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_bytes) {
            return Err(format!(
                "pod_logs.max_bytes must be between 1024 and 67108864 (64 MiB), got {}",
                self.max_bytes
            ));
        }
        if !(1..=64).contains(&self.max_captures) {
            return Err(format!(
                "pod_logs.max_captures must be between 1 and 64, got {}",
                self.max_captures
            ));
        }
        if !(1..=10_000).contains(&self.max_streams) {
            return Err(format!(
                "pod_logs.max_streams must be between 1 and 10000, got {}",
                self.max_streams
            ));
        }
        if self.max_follow < Duration::from_secs(1) {
            return Err(format!(
                "pod_logs.max_follow must be at least 1s, got {:?}",
                self.max_follow
            ));
        }
        Ok(())
    }
}

/// Reads runs' pod logs; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct PodLogs {
    pods: Api<Pod>,
    jobs: Api<Job>,
    opts: PodLogOptions,
    payloads: Option<Arc<dyn PayloadStore>>,
    streams: Arc<Semaphore>,
    captures: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

/// How following one pod's log ended.
enum PodEnd {
    /// Its container ended (or the pod is gone).
    Ended,
    /// The caller went away or the executor shuts down.
    Stop,
    /// [`PodLogOptions::max_follow`] passed.
    Deadline,
}

impl PodLogs {
    pub(crate) fn new(
        pods: Api<Pod>,
        jobs: Api<Job>,
        opts: PodLogOptions,
        payloads: Option<Arc<dyn PayloadStore>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pods,
            jobs,
            streams: Arc::new(Semaphore::new(opts.max_streams.max(1))),
            captures: Arc::new(Semaphore::new(opts.max_captures.max(1))),
            opts,
            payloads,
            pending: Arc::default(),
            shutdown,
        }
    }

    /// See [`nexus_executor::Executor::logs`].
    pub(crate) async fn logs(
        &self,
        id: RunId,
        follow: bool,
    ) -> Result<Option<LogStream>, ExecutorError> {
        use futures::StreamExt as _;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            ExecutorError::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "{} pod log streams are open on this receiver (pod_logs.max_streams); try again later",
                    self.opts.max_streams
                ),
            )
        })?;
        if !follow {
            let tail = self.read_tail(id).await.map_err(|e| {
                crate::executor::kube_err(&format!("cannot read the log of run {id}"), &e)
            })?;
            drop(permit);
            return Ok(tail.map(|b| futures::stream::once(async move { b }).boxed()));
        }
        let job = self
            .jobs
            .get_opt(&id.to_string())
            .await
            .map_err(|e| crate::executor::kube_err("cannot read the run's Job", &e))?;
        if job.is_none() && self.pods_of(id).await?.is_empty() {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let me = self.clone();
        tokio::spawn(async move {
            me.follow(id, &tx).await;
            drop(permit);
        });
        Ok(Some(
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
                .boxed(),
        ))
    }

    async fn pods_of(&self, id: RunId) -> Result<Vec<Pod>, ExecutorError> {
        let lp = ListParams::default().labels(&format!("{LABEL_REQUEST_ID}={id}"));
        self.pods
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|e| crate::executor::kube_err("cannot list the run's pods", &e))
    }

    /// The tail of the log of run `id`'s newest pod whose container ran, or `None` when none
    /// ran; bounded as the module docs say.
    pub(crate) async fn read_tail(&self, id: RunId) -> Result<Option<Bytes>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{LABEL_REQUEST_ID}={id}"));
        let pods = self.pods.list(&lp).await?.items;
        let Some(pod) = newest(pods.into_iter().filter(container_ran)) else {
            return Ok(None);
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let lp = LogParams {
            container: Some(id.to_string()),
            tail_lines: Some(TAIL_LINES),
            limit_bytes: Some(READ_CAP),
            ..LogParams::default()
        };
        let mut tail = Tail::new(self.opts.max_bytes);
        let read = async {
            let mut r = Box::pin(self.pods.log_stream(&name, &lp).await?);
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return Ok::<(), kube::Error>(()),
                    Ok(n) => tail.push(&buf[..n]),
                    Err(e) => {
                        tail.note(&format!("[nexus: reading the pod's log failed: {e}]"));
                        return Ok(());
                    }
                }
            }
        };
        let read = tokio::time::timeout(READ_TIMEOUT, read).await;
        match read {
            Ok(r) => r?,
            Err(_) => tail.note(&format!(
                "[nexus: reading the pod's log stopped after {READ_TIMEOUT:?}]"
            )),
        }
        Ok(Some(tail.into_bytes()))
    }

    /// Keeps a copy of run `id`'s pod log under `key`, in a task of its own (see the module
    /// docs); a no-op when copies are off or no payload store was given.
    pub(crate) fn keep(&self, id: RunId, key: String) {
        let Some(payloads) = self.payloads.clone().filter(|_| self.opts.keep) else {
            return;
        };
        if self.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_CAPTURES {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            crate::metrics::pod_log_kept("skipped");
            tracing::warn!(run_id = %id, "too many pod logs waiting to be kept; this one is not");
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = match me.captures.acquire().await {
                Ok(_slot) => match me.read_tail(id).await {
                    Ok(Some(bytes)) => {
                        let n = bytes.len();
                        match payloads.put(&key, bytes).await {
                            Ok(()) => {
                                tracing::debug!(run_id = %id, key, bytes = n, "pod log kept");
                                "kept"
                            }
                            Err(e) => {
                                tracing::warn!(run_id = %id, key, error = %e, "storing the pod log failed");
                                "failed"
                            }
                        }
                    }
                    Ok(None) => "none",
                    Err(e) => {
                        tracing::warn!(run_id = %id, error = %e, "reading the pod log to keep failed");
                        "failed"
                    }
                },
                Err(_) => "failed",
            };
            crate::metrics::pod_log_kept(outcome);
            me.pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Sends run `id`'s output to `tx` as it comes; see the module docs.
    async fn follow(&self, id: RunId, tx: &mpsc::Sender<Bytes>) {
        let deadline = Instant::now() + self.opts.max_follow;
        // The last pod read to its end (or passed over): only newer ones are read after it.
        let mut last: Option<PodKey> = None;
        let mut failures = 0u32;
        let mut wait = POLL;
        loop {
            if tx.is_closed() || self.shutdown.is_cancelled() {
                return;
            }
            if Instant::now() >= deadline {
                self.stopped(tx).await;
                return;
            }
            let pods = match self.pods_of(id).await {
                Ok(p) => p,
                Err(e) => {
                    failures += 1;
                    if failures > MAX_REOPEN {
                        let _ = tx
                            .send(Bytes::from(format!("\n[nexus: {}]\n", e.message)))
                            .await;
                        return;
                    }
                    tracing::debug!(run_id = %id, error = %e, "follow: cannot list the pods, trying again");
                    if !self.pause(tx, MAX_POLL).await {
                        return;
                    }
                    continue;
                }
            };
            let next = newest(
                pods.into_iter()
                    .filter(|p| last.as_ref().is_none_or(|l| key(p) > *l)),
            );
            match next {
                Some(pod) if container_ran(&pod) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let later = last.is_some();
                    if later
                        && tx
                            .send(Bytes::from(format!("--- pod {name} ---\n")))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    wait = POLL;
                    match self.follow_pod(id, &name, !later, deadline, tx).await {
                        PodEnd::Ended => last = Some(key(&pod)),
                        PodEnd::Stop => return,
                        PodEnd::Deadline => {
                            self.stopped(tx).await;
                            return;
                        }
                    }
                }
                // Failed before its container ran: nothing to read there.
                Some(pod) if pod_ended(&pod) => last = Some(key(&pod)),
                _ => {
                    // Nothing (more) to read now: the run is over, or a pod is coming.
                    match self.jobs.get_opt(&id.to_string()).await {
                        Ok(None) => return,
                        Ok(Some(job)) if crate::executor::finished_at(&job).is_some() => return,
                        Ok(Some(_)) => {}
                        Err(e) => {
                            tracing::debug!(run_id = %id, error = %e, "follow: cannot read the Job, trying again");
                        }
                    }
                    if !self.pause(tx, wait).await {
                        return;
                    }
                    wait = (wait * 2).min(MAX_POLL);
                }
            }
        }
    }

    /// Waits `d`; false when the caller left or the executor shuts down meanwhile.
    async fn pause(&self, tx: &mpsc::Sender<Bytes>, d: Duration) -> bool {
        tokio::select! {
            () = tx.closed() => false,
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    async fn stopped(&self, tx: &mpsc::Sender<Bytes>) {
        let note = format!(
            "\n[nexus: stopped following after {}; request again to go on]\n",
            humantime_serde::re::humantime::format_duration(self.opts.max_follow)
        );
        let _ = tx.send(Bytes::from(note)).await;
    }

    /// Streams pod `name`'s log to `tx` until its container ended; from its last
    /// [`TAIL_LINES`] lines when `tail`, else from its start.
    async fn follow_pod(
        &self,
        id: RunId,
        name: &str,
        tail: bool,
        deadline: Instant,
        tx: &mpsc::Sender<Bytes>,
    ) -> PodEnd {
        let mut since: Option<DateTime<Utc>> = None;
        let mut reopened = 0u32;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let lp = LogParams {
                container: Some(id.to_string()),
                follow: true,
                tail_lines: (tail && since.is_none()).then_some(TAIL_LINES),
                since_time: since,
                ..LogParams::default()
            };
            let opened = Utc::now();
            let broke = match self.pods.log_stream(name, &lp).await {
                Ok(r) => {
                    let mut r = Box::pin(r);
                    let mut last = (Instant::now(), opened);
                    loop {
                        tokio::select! {
                            () = tx.closed() => return PodEnd::Stop,
                            () = self.shutdown.cancelled() => return PodEnd::Stop,
                            () = tokio::time::sleep_until(deadline) => return PodEnd::Deadline,
                            n = r.read(&mut buf) => match n {
                                Ok(0) => return PodEnd::Ended,
                                Ok(n) => {
                                    last = (Instant::now(), Utc::now());
                                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                        return PodEnd::Stop;
                                    }
                                }
                                Err(e) => break Some((e.to_string(), last)),
                            },
                        }
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return PodEnd::Ended,
                Err(e) => Some((e.to_string(), (Instant::now(), opened))),
            };
            let Some((error, (last_at, last_wall))) = broke else {
                return PodEnd::Ended;
            };
            reopened += 1;
            if reopened > MAX_REOPEN {
                let _ = tx
                    .send(Bytes::from(format!(
                        "\n[nexus: the log stream of pod {name} kept breaking ({error}); stopped following it]\n"
                    )))
                    .await;
                return PodEnd::Ended;
            }
            let silent = last_at.elapsed();
            since = Some(if silent >= SILENT {
                // Cut for its silence: nothing came after `last_wall`; resume past it.
                last_wall + TimeDelta::from_std(silent - SKEW).unwrap_or_default()
            } else {
                let note = format!(
                    "\n[nexus: the log stream of pod {name} broke ({error}); resuming, lines of the last second may repeat]\n"
                );
                if tx.send(Bytes::from(note)).await.is_err() {
                    return PodEnd::Stop;
                }
                last_wall - TimeDelta::seconds(1)
            });
            tracing::debug!(run_id = %id, pod = name, error, "follow: the pod's log stream broke, opening it again");
            tokio::select! {
                () = tx.closed() => return PodEnd::Stop,
                () = self.shutdown.cancelled() => return PodEnd::Stop,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// Where a pod stands among a run's pods: its creation time, then its name.
type PodKey = (Option<DateTime<Utc>>, String);

fn key(p: &Pod) -> PodKey {
    (
        p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// The newest of `pods`.
fn newest(pods: impl Iterator<Item = Pod>) -> Option<Pod> {
    pods.max_by_key(key)
}

/// The pod's container started (it runs or ran): it has a log.
fn container_ran(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || c.last_state
                        .as_ref()
                        .is_some_and(|s| s.terminated.is_some())
            })
        })
}

/// The pod is over (its phase is final, or it is being deleted).
fn pod_ended(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// The last `max` bytes of what is pushed, with a note of what was dropped.
struct Tail {
    max: usize,
    buf: Vec<u8>,
    dropped: usize,
    notes: Vec<String>,
}

impl Tail {
    fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            dropped: 0,
            notes: Vec::new(),
        }
    }

    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        // Trimmed in steps, so a stream of small chunks does not move the buffer every time.
        if self.buf.len() > self.max.saturating_mul(2) {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
            self.dropped += cut;
        }
    }

    fn note(&mut self, n: &str) {
        self.notes.push(n.to_owned());
    }

    fn into_bytes(mut self) -> Bytes {
        if self.buf.len() > self.max {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
            self.dropped += cut;
        }
        let mut out = Vec::with_capacity(self.buf.len() + 128);
        if self.dropped > 0 {
            out.extend_from_slice(
                format!(
                    "[nexus: log truncated, {} earlier bytes dropped]\n",
                    self.dropped
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(&self.buf);
        for n in self.notes {
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(n.as_bytes());
            out.push(b'\n');
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, created: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_newest_pod_whose_container_ran_is_read() {
        let running = serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {}}
        }]});
        let waiting = serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]});
        let failed_before = serde_json::json!({"phase": "Failed"});
        let old = pod("r-a", "2025-01-01T00:00:00Z", running.clone());
        let new = pod("r-b", "2025-01-01T00:01:00Z", waiting);
        let gone = pod("r-c", "2025-01-01T00:02:00Z", failed_before);
        assert!(container_ran(&old));
        assert!(!container_ran(&new));
        assert!(!container_ran(&gone) && pod_ended(&gone));
        assert!(!pod_ended(&old));
        let pods = vec![new.clone(), old.clone(), gone.clone()];
        assert_eq!(
            newest(pods.clone().into_iter())
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("r-c")
        );
        assert_eq!(
            newest(pods.into_iter().filter(container_ran))
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("r-a")
        );
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_and_says_what_it_dropped() {
        let mut t = Tail::new(10);
        for _ in 0..5 {
            t.push(b"0123456789");
        }
        t.push(b"abc");
        t.note("[nexus: stopped]");
        let out = String::from_utf8(t.into_bytes().to_vec()).unwrap();
        assert_eq!(
            out,
            "[nexus: log truncated, 43 earlier bytes dropped]\n3456789abc\n[nexus: stopped]\n"
        );
        let mut t = Tail::new(10);
        t.push(b"short\n");
        assert_eq!(&t.into_bytes()[..], b"short\n");
    }

    #[test]
    fn options_are_checked_naming_the_key() {
        PodLogOptions::default().validate().unwrap();
        let bad = PodLogOptions {
            max_streams: 0,
            ..PodLogOptions::default()
        };
        assert!(bad.validate().unwrap_err().contains("pod_logs.max_streams"));
        let bad = PodLogOptions {
            max_bytes: 10,
            ..PodLogOptions::default()
        };
        assert!(bad.validate().unwrap_err().contains("pod_logs.max_bytes"));
        let parsed: PodLogOptions = serde_yaml::from_str("keep: false\nmax_follow: 2h\n").unwrap();
        assert!(!parsed.keep);
        assert_eq!(parsed.max_follow, Duration::from_secs(7200));
        assert!(serde_yaml::from_str::<PodLogOptions>("keeps: true\n").is_err());
    }
}
