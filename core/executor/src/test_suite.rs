//! Conformance suite for [`Executor`] implementations.
//!
//! Each check takes a constructor ([`MakeExecutor`]) that builds a fresh executor reporting on the
//! given channel, storing logs in the given payload store and working under the given directory.
//! Checks that need real processes (`/bin/sh`) are only meant for executors that run them; checks
//! shared with fakes take a [`Capabilities`] value. Every event wait is bounded by a timeout, so a
//! bug fails a test instead of hanging it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, timeout};

use super::{Executor, ExecutorEvent, ExitInfo, LaunchSpec, Outcome};
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_payload::{InMemoryPayloadStore, PayloadStore};

/// Builds an executor: `(events, payload store for logs, work directory)`.
pub type MakeExecutor =
    dyn Fn(UnboundedSender<ExecutorEvent>, Arc<dyn PayloadStore>, &Path) -> Arc<dyn Executor>;

/// What the executor under test can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It runs real processes (the `/bin/sh` commands of the specs are executed).
    pub real_processes: bool,
}

/// A temporary directory removed on drop (the suite cannot use dev-dependencies).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("nexus-exec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// Its path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One executor under test with its event receiver, payload store and directory.
#[derive(Debug)]
pub struct Harness {
    /// The executor.
    pub executor: Arc<dyn Executor>,
    /// Its events.
    pub events: UnboundedReceiver<ExecutorEvent>,
    /// Where it stores logs.
    pub payloads: Arc<InMemoryPayloadStore>,
    /// Scratch directory (the executor's work dir is `dir/work`).
    pub dir: TempDir,
}

impl Harness {
    /// Builds a harness with `make`.
    #[must_use]
    pub fn new(make: &MakeExecutor) -> Self {
        let dir = TempDir::new();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let executor = make(tx, payloads.clone(), &dir.path().join("work"));
        Self {
            executor,
            events: rx,
            payloads,
            dir,
        }
    }

    /// Waits for all events up to and including `run_id`'s `Finished`.
    pub async fn until_finished(&mut self, run_id: RunId, secs: u64) -> Vec<ExecutorEvent> {
        collect_until_finished(&mut self.events, run_id, secs).await
    }

    /// Waits for the next event.
    ///
    /// # Panics
    /// After `secs` seconds without one.
    pub async fn next(&mut self, secs: u64) -> ExecutorEvent {
        timeout(Duration::from_secs(secs), self.events.recv())
            .await
            .expect("timed out waiting for an executor event")
            .expect("event channel closed")
    }

    /// Asserts no event arrives within `ms` milliseconds.
    pub async fn assert_quiet(&mut self, ms: u64) {
        if let Ok(Some(e)) = timeout(Duration::from_millis(ms), self.events.recv()).await {
            panic!("unexpected event {e:?}");
        }
    }
}

/// Collects events until `run_id`'s `Finished`, failing after `secs` seconds.
///
/// # Panics
/// On timeout or a closed channel.
pub async fn collect_until_finished(
    rx: &mut UnboundedReceiver<ExecutorEvent>,
    run_id: RunId,
    secs: u64,
) -> Vec<ExecutorEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no Finished for {run_id} within {secs}s; got {out:?}"))
            .expect("event channel closed");
        let done = matches!(&ev, ExecutorEvent::Finished { run_id: r, .. } if *r == run_id);
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// A spec running `/bin/sh` with `args`, 60 s deadline, no retries, no logs.
#[must_use]
pub fn spec(args: &[&str]) -> LaunchSpec {
    LaunchSpec {
        prior_attempts: 0,
        run_id: RunId::new(),
        algorithm: "test-algo".into(),
        workgroup: "test-wg".into(),
        max_concurrent: None,
        command: "/bin/sh".into(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: Vec::new(),
        deadline: Duration::from_secs(60),
        max_retries: 0,
        transient_exit_codes: Vec::new(),
        fatal_exit_codes: Vec::new(),
        logs_key: None,
        source: None,
    }
}

/// A `/bin/sh -c script` spec.
#[must_use]
pub fn sh(script: &str) -> LaunchSpec {
    spec(&["-c", script])
}

fn started(events: &[ExecutorEvent], run_id: RunId) -> Vec<(u32, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            ExecutorEvent::Started {
                run_id: r,
                attempt,
                executor_ref,
            } if *r == run_id => Some((*attempt, executor_ref.clone())),
            _ => None,
        })
        .collect()
}

fn outcome(events: &[ExecutorEvent]) -> Outcome {
    match events.last() {
        Some(ExecutorEvent::Finished { outcome, .. }) => outcome.clone(),
        other => panic!("expected Finished last, got {other:?}"),
    }
}

/// True when `/proc/<pid>` is gone or a zombie.
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn wait_gone(pid: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    while !process_gone(pid) {
        assert!(Instant::now() < until, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs every check that applies to `caps`, one after the other.
pub async fn run_all(make: &MakeExecutor, caps: Capabilities) {
    cancel_unknown(make).await;
    double_launch(make, caps).await;
    cancel_active(make, caps).await;
    if caps.real_processes {
        success(make).await;
        retries_then_fails(make).await;
        fatal_code_stops(make).await;
        transient_code_relaunches(make).await;
        deadline_kills_group(make).await;
        concurrency_limit(make).await;
        cancel_waiting_for_permit(make).await;
        env_and_args(make).await;
        logs_captured(make).await;
        missing_program(make).await;
    }
}

/// Exit 0 → one Started with a pid, then `Succeeded`.
pub async fn success(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let s = sh("exit 0");
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    let st = started(&ev, s.run_id);
    assert_eq!(st.len(), 1, "{ev:?}");
    assert_eq!(st[0].0, 1);
    assert!(
        st[0].1.parse::<u32>().is_ok_and(|p| p > 0),
        "pid ref: {:?}",
        st[0].1
    );
    assert_eq!(outcome(&ev), Outcome::Succeeded);
    assert!(h.executor.active().await.is_empty());
    h.assert_quiet(200).await;
}

/// Exit 3 with `max_retries` 2 → three attempts, then `Failed{attempts: 3}`.
pub async fn retries_then_fails(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut s = sh("exit 3");
    s.max_retries = 2;
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    let attempts: Vec<u32> = started(&ev, s.run_id).into_iter().map(|a| a.0).collect();
    assert_eq!(attempts, vec![1, 2, 3], "{ev:?}");
    assert_eq!(
        outcome(&ev),
        Outcome::Failed {
            exit: ExitInfo {
                code: Some(3),
                signal: None
            },
            attempts: 3,
            fatal: false
        }
    );
}

/// A fatal exit code stops at once, whatever the retries.
pub async fn fatal_code_stops(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut s = sh("exit 4");
    s.max_retries = 5;
    s.fatal_exit_codes = vec![4];
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    assert_eq!(started(&ev, s.run_id).len(), 1, "{ev:?}");
    assert_eq!(
        outcome(&ev),
        Outcome::Failed {
            exit: ExitInfo {
                code: Some(4),
                signal: None
            },
            attempts: 1,
            fatal: true
        }
    );
}

/// A transient exit code relaunches without consuming retries.
pub async fn transient_code_relaunches(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let counter = h.dir.path().join("count");
    let script = r#"n=$(cat "$COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$COUNTER"; [ $n -ge 3 ] && exit 0; exit 7"#;
    let mut s = sh(script);
    s.transient_exit_codes = vec![7];
    s.env = vec![("COUNTER".into(), counter.display().to_string())];
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    let attempts: Vec<u32> = started(&ev, s.run_id).into_iter().map(|a| a.0).collect();
    assert_eq!(attempts, vec![1, 2, 3], "{ev:?}");
    assert_eq!(outcome(&ev), Outcome::Succeeded);
}

/// The deadline kills the process and its background children.
pub async fn deadline_kills_group(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let pidfile = h.dir.path().join("grandchild.pid");
    let mut s = sh(r#"sleep 30 & echo $! > "$PIDFILE"; sleep 30"#);
    s.env = vec![("PIDFILE".into(), pidfile.display().to_string())];
    s.deadline = Duration::from_secs(1);
    s.max_retries = 3;
    let t0 = Instant::now();
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 10).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        outcome(&ev),
        Outcome::DeadlineExceeded {
            deadline: Duration::from_secs(1)
        }
    );
    let st = started(&ev, s.run_id);
    assert_eq!(st.len(), 1, "{ev:?}");
    wait_gone(&st[0].1).await;
    let grandchild = std::fs::read_to_string(&pidfile).expect("grandchild pid file");
    wait_gone(grandchild.trim()).await;
}

/// Cancel of an active run finishes it `Cancelled` within 1 s (2 s of slack allowed here).
pub async fn cancel_active(make: &MakeExecutor, caps: Capabilities) {
    let mut h = Harness::new(make);
    let s = sh("sleep 30");
    h.executor.launch(s.clone()).await.unwrap();
    assert_eq!(h.executor.active().await, vec![s.run_id]);
    let mut pid = None;
    if caps.real_processes {
        match h.next(10).await {
            ExecutorEvent::Started {
                run_id,
                executor_ref,
                ..
            } if run_id == s.run_id => {
                pid = Some(executor_ref);
            }
            other => panic!("expected Started, got {other:?}"),
        }
    }
    let t0 = Instant::now();
    h.executor
        .cancel(s.run_id, CancellationPolicy::Background)
        .await
        .unwrap();
    let ev = h.until_finished(s.run_id, 5).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        t0.elapsed()
    );
    assert_eq!(outcome(&ev), Outcome::Cancelled);
    assert!(h.executor.active().await.is_empty());
    if let Some(pid) = pid {
        wait_gone(&pid).await;
    }
    // Idempotent: cancelling again (any policy) is Ok and emits nothing.
    h.executor
        .cancel(s.run_id, CancellationPolicy::Orphan)
        .await
        .unwrap();
    h.executor
        .cancel(s.run_id, CancellationPolicy::Foreground)
        .await
        .unwrap();
    h.assert_quiet(300).await;
}

/// With a workgroup limit of 1, a second run starts only after the first finished.
pub async fn concurrency_limit(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut a = sh("sleep 0.5");
    a.max_concurrent = Some(1);
    let mut b = a.clone();
    b.run_id = RunId::new();
    h.executor.launch(a.clone()).await.unwrap();
    h.executor.launch(b.clone()).await.unwrap();
    let mut ev = Vec::new();
    let mut finished = 0;
    while finished < 2 {
        let e = h.next(20).await;
        if matches!(e, ExecutorEvent::Finished { .. }) {
            finished += 1;
        }
        ev.push(e);
    }
    // At most one run between its Started and its Finished at any time.
    let mut running: Option<RunId> = None;
    for e in &ev {
        match e {
            ExecutorEvent::Started { run_id, .. } => {
                assert!(running.is_none(), "two runs at once: {ev:?}");
                running = Some(*run_id);
            }
            ExecutorEvent::Finished {
                run_id, outcome, ..
            } => {
                assert_eq!(running, Some(*run_id), "{ev:?}");
                assert_eq!(outcome, &Outcome::Succeeded);
                running = None;
            }
        }
    }
}

/// A run waiting for a permit finishes `Cancelled` without starting.
pub async fn cancel_waiting_for_permit(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut a = sh("sleep 30");
    a.max_concurrent = Some(1);
    let mut b = a.clone();
    b.run_id = RunId::new();
    h.executor.launch(a.clone()).await.unwrap();
    match h.next(10).await {
        ExecutorEvent::Started { run_id, .. } => assert_eq!(run_id, a.run_id),
        other => panic!("expected Started, got {other:?}"),
    }
    h.executor.launch(b.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.executor
        .cancel(b.run_id, CancellationPolicy::Background)
        .await
        .unwrap();
    let ev = h.until_finished(b.run_id, 5).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(outcome(&ev), Outcome::Cancelled);
    h.executor
        .cancel(a.run_id, CancellationPolicy::Background)
        .await
        .unwrap();
    let ev = h.until_finished(a.run_id, 5).await;
    assert_eq!(outcome(&ev), Outcome::Cancelled);
}

/// Arguments and environment variables reach the process; the rest of the environment does not.
pub async fn env_and_args(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let out = h.dir.path().join("out");
    let mut s = spec(&[
        "-c",
        r#"printf '%s|%s|%s' "$FOO" "$1" "$2" > "$OUT"; env > "$OUT.env""#,
        "sh",
        "arg one",
        "two",
    ]);
    s.env = vec![
        ("FOO".into(), "bar baz".into()),
        ("OUT".into(), out.display().to_string()),
    ];
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    assert_eq!(outcome(&ev), Outcome::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "bar baz|arg one|two"
    );
    let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
    let allowed = [
        "PATH", "HOME", "LANG", "TMPDIR", "FOO", "OUT", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    for line in env.lines() {
        let key = line.split('=').next().unwrap_or_default();
        assert!(
            allowed.contains(&key),
            "unexpected env var {line:?} in {env}"
        );
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
}

/// stdout and stderr are stored under the logs key.
pub async fn logs_captured(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut s = sh("echo to-stdout; echo to-stderr >&2; exit 0");
    s.logs_key = Some("logs/test-algo/1".into());
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    assert_eq!(
        ev.last(),
        Some(&ExecutorEvent::Finished {
            run_id: s.run_id,
            outcome: Outcome::Succeeded,
            logs_stored: true
        })
    );
    let logs = h
        .payloads
        .get("logs/test-algo/1")
        .await
        .unwrap()
        .expect("logs stored");
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("--- attempt 1 ---"), "{text}");
    assert!(text.contains("to-stdout"), "{text}");
    assert!(text.contains("to-stderr"), "{text}");
    // Without a key, nothing is stored.
    let s2 = sh("echo hi");
    h.executor.launch(s2.clone()).await.unwrap();
    let ev = h.until_finished(s2.run_id, 20).await;
    assert!(matches!(
        ev.last(),
        Some(ExecutorEvent::Finished {
            logs_stored: false,
            ..
        })
    ));
    assert_eq!(h.payloads.len(), 1);
}

/// A program that does not exist → `LaunchFailed` naming it, no Started.
pub async fn missing_program(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    let mut s = spec(&[]);
    s.command = "nexus-no-such-program-xyz".into();
    s.max_retries = 3;
    h.executor.launch(s.clone()).await.unwrap();
    let ev = h.until_finished(s.run_id, 20).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    match outcome(&ev) {
        Outcome::LaunchFailed { message } => {
            assert!(message.contains("nexus-no-such-program-xyz"), "{message}");
            assert!(message.contains("PATH"), "{message}");
        }
        other => panic!("expected LaunchFailed, got {other:?}"),
    }
}

/// Launching an active id again is a no-op: one Finished only.
pub async fn double_launch(make: &MakeExecutor, caps: Capabilities) {
    let mut h = Harness::new(make);
    let s = sh("sleep 30");
    h.executor.launch(s.clone()).await.unwrap();
    h.executor.launch(s.clone()).await.unwrap();
    assert_eq!(h.executor.active().await, vec![s.run_id]);
    if caps.real_processes {
        assert!(matches!(
            h.next(10).await,
            ExecutorEvent::Started { attempt: 1, .. }
        ));
    }
    h.executor.launch(s.clone()).await.unwrap();
    h.executor
        .cancel(s.run_id, CancellationPolicy::Background)
        .await
        .unwrap();
    let ev = h.until_finished(s.run_id, 5).await;
    assert_eq!(outcome(&ev), Outcome::Cancelled);
    assert!(started(&ev, s.run_id).is_empty(), "second Started: {ev:?}");
    h.assert_quiet(500).await;
}

/// Cancel of an unknown run is `Ok` and emits nothing.
pub async fn cancel_unknown(make: &MakeExecutor) {
    let mut h = Harness::new(make);
    for policy in [
        CancellationPolicy::Background,
        CancellationPolicy::Foreground,
        CancellationPolicy::Orphan,
    ] {
        h.executor.cancel(RunId::new(), policy).await.unwrap();
    }
    assert!(h.executor.active().await.is_empty());
    h.assert_quiet(100).await;
}
