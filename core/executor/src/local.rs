//! [`LocalProcessExecutor`]: runs each run as a local child process, the local analogue of a
//! Kubernetes Job.
//!
//! * Each launch gets a tokio task that first waits for a permit of its workgroup's semaphore
//!   (limit = [`LaunchSpec::max_concurrent`] or [`LocalExecutorConfig::default_max_concurrent`]),
//!   then runs attempts until one succeeds, a fatal exit code is seen, retries run out, the
//!   deadline passes or the run is cancelled.
//! * Every attempt runs in its own process group with a minimal environment (`PATH` with
//!   [`LocalExecutorConfig::extra_path`] prepended, `LANG`, `HOME` and `TMPDIR` pointing at the
//!   run's work directory, then the spec's variables). When an attempt ends, whatever is left of
//!   its process group is killed (like a pod's containers going away with the pod), so background
//!   children never outlive it.
//! * Isolation (algorithms are untrusted code): each run gets its own work directory
//!   `<work_root>/<run id>-<random>` (outside the server's data directory, `0700`, owned by the
//!   [`LocalExecutorConfig::run_as`] user when set, shared by the run's attempts and removed when
//!   the run finishes; the random part keeps it unguessable by other runs). The work root is
//!   `0700`, or `0711` with `run_as` (traversable, not listable). With `run_as` the process gets
//!   that uid and gid (and no supplementary groups) before it executes; with a
//!   [`LocalExecutorConfig::launcher`] the process is started through it (`nexus sandbox-exec`),
//!   which confines it (Landlock) and then executes the command in its place: same pid, same
//!   process group.
//! * The deadline covers the whole run, from the first start (time spent waiting for a permit
//!   does not count). On expiry the process group gets `SIGKILL`.
//! * Cancel sends `SIGTERM` to the process group, then `SIGKILL` after 500 ms. All three
//!   [`CancellationPolicy`] values behave the same: for local processes there is no Job object to
//!   delete separately from its pods, so `Orphan` is treated like `Background` (the processes are
//!   killed, never left running).
//! * stdout and stderr are read concurrently into one bounded buffer that keeps the tail
//!   ([`LocalExecutorConfig::max_log_bytes`]); attempts are separated by `--- attempt N ---` lines
//!   and a truncation note is prepended when bytes were dropped. When the spec has a
//!   [`LaunchSpec::logs_key`], the buffer is published there every [`LOG_PUBLISH_EVERY`] while
//!   it grows (live logs) and stored a last time after the run finishes.
//! * The concurrency limit of a workgroup is taken from the first launch that names it; a later
//!   launch with a larger limit raises it, a smaller one lowers it as far as free permits allow.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::{Executor, ExecutorError, ExecutorEvent, ExitInfo, LaunchSpec, Outcome};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_payload::PayloadStore;

/// Grace period between `SIGTERM` and `SIGKILL` on cancel.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the output readers after a normal exit.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long to wait for the output readers after a kill (cancel, deadline).
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(200);
/// Back-off unit between attempts (multiplied by the attempt number).
const BACKOFF_UNIT: Duration = Duration::from_millis(200);
/// Extra attempts allowed beyond `max_retries` for transient exit codes.
const TRANSIENT_SLACK: u32 = 10;
/// Environment variables inherited from the executor's own environment (besides `PATH`; `HOME`
/// and `TMPDIR` are the run's work directory).
const INHERITED_ENV: [&str; 1] = ["LANG"];

/// The user and group algorithm processes run as ([`LocalExecutorConfig::run_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id (the only group: supplementary groups are dropped).
    pub gid: u32,
}

/// A program that confines an algorithm process and then executes the algorithm in its place
/// (same pid, same process group), e.g. `nexus sandbox-exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// The launcher program.
    pub program: PathBuf,
    /// Its leading arguments; the executor appends `--work-dir <dir> -- <command> <args>…`.
    pub args: Vec<OsString>,
}

/// How often a running run's captured output is published to the payload store (live logs:
/// `GET /algorithm/v1/logs/...?follow=true` reads it).
pub const LOG_PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Configuration of a [`LocalProcessExecutor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExecutorConfig {
    /// Directories prepended to `PATH` for algorithm processes (e.g. the directory of the nexus
    /// binary, where demo algorithms are installed).
    pub extra_path: Vec<PathBuf>,
    /// Parent of the runs' private work directories (created `0700` if missing; it must belong
    /// to the server's user). Keep it outside the server's data directory.
    pub work_root: PathBuf,
    /// Per-workgroup concurrency limit when [`LaunchSpec::max_concurrent`] is `None`.
    pub default_max_concurrent: u32,
    /// Cap on the captured stdout+stderr of a run (the tail is kept; truncation is noted).
    pub max_log_bytes: usize,
    /// Where the process group of each running attempt is recorded (one file per run, holding
    /// the group id), so that a later executor on the same directory can stop the attempts a
    /// killed predecessor left running ([`LocalProcessExecutor::reap_previous`]). `None`: not
    /// recorded.
    pub state_dir: Option<PathBuf>,
    /// User and group of algorithm processes (the server must run as root to switch); `None`:
    /// the server's own.
    pub run_as: Option<RunAs>,
    /// Starts algorithm processes through this confining launcher; `None`: directly.
    pub launcher: Option<Launcher>,
    /// CA certificate algorithms trust for Nexus's URLs, passed as `NEXUS_CA_FILE` (the
    /// launcher must let them read it).
    pub ca_file: Option<PathBuf>,
}

/// The default work root: `<temp dir>/nexus-work-<euid>`.
#[must_use]
pub fn default_work_root() -> PathBuf {
    std::env::temp_dir().join(format!("nexus-work-{}", nix::unistd::geteuid()))
}

impl Default for LocalExecutorConfig {
    fn default() -> Self {
        Self {
            extra_path: Vec::new(),
            work_root: default_work_root(),
            default_max_concurrent: 4,
            max_log_bytes: 1024 * 1024,
            state_dir: None,
            run_as: None,
            launcher: None,
            ca_file: None,
        }
    }
}

/// Runs runs as local child processes; see the module docs.
#[derive(Debug, Clone)]
pub struct LocalProcessExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalExecutorConfig,
    payloads: Arc<dyn PayloadStore>,
    events: UnboundedSender<ExecutorEvent>,
    /// Active runs and their cancellation tokens.
    runs: Mutex<HashMap<RunId, CancellationToken>>,
    /// Per-workgroup semaphores with their current limit.
    groups: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    /// Runs waiting for a slot of their workgroup, with the workgroup.
    waiting: Mutex<HashMap<RunId, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a panic cannot leave it half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalProcessExecutor {
    /// Builds an executor that reports on `events` and stores logs in `payloads`.
    pub fn new(
        config: LocalExecutorConfig,
        payloads: Arc<dyn PayloadStore>,
        events: UnboundedSender<ExecutorEvent>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                payloads,
                events,
                runs: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                waiting: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl LocalProcessExecutor {
    /// Stops the attempts that a previous executor on the same `state_dir` left running (it was
    /// killed, so its children outlived it): each recorded process group is sent `SIGKILL` when
    /// `/proc/<pid>/environ` shows it still is that run's process (pids are reused), and the
    /// record is removed. Call it before anything is launched. Returns how many were stopped.
    #[must_use]
    pub fn reap_previous(state_dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(state_dir) else {
            return 0;
        };
        let mut stopped = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let run = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<RunId>().ok());
            let pgid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let (Some(run), Some(pgid)) = (run, pgid)
                && pgid > 1
                && process_belongs_to(pgid, run)
            {
                match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                    Ok(()) => {
                        stopped += 1;
                        tracing::warn!(run_id = %run, pgid, "stopped an attempt left running by a previous nexus process");
                    }
                    Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => {
                        tracing::warn!(run_id = %run, pgid, error = %e, "could not stop a previous attempt")
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        stopped
    }
}

/// True when process `pid` still runs run `run` (its environment names the run).
fn process_belongs_to(pid: i32, run: RunId) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let marker = format!("{}={run}", nexus_proto::v1::env::REQUEST_ID);
    environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
}

/// Records (and, dropped, forgets) the process group of a running attempt in the state dir.
struct AttemptRecord(Option<PathBuf>);

impl AttemptRecord {
    fn new(state_dir: Option<&PathBuf>, run: RunId, pid: Option<u32>) -> Self {
        let (Some(dir), Some(pid)) = (state_dir, pid) else {
            return Self(None);
        };
        let path = dir.join(run.to_string());
        let write = |path: &std::path::Path| -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = nexus_model::private_fs::open_or_create(path)?;
            f.set_len(0)?;
            f.write_all(pid.to_string().as_bytes())
        };
        match write(&path) {
            Ok(()) => Self(Some(path)),
            Err(e) => {
                tracing::warn!(run_id = %run, error = %e, "cannot record the attempt's process group");
                Self(None)
            }
        }
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[async_trait]
impl Executor for LocalProcessExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        if let Some(msg) = spec
            .source
            .as_deref()
            .and_then(|s| crate::contract::needs_kubernetes(&s.run))
        {
            return Err(ExecutorError::new(ErrorKind::InvalidInput, msg));
        }
        if spec.command.trim().is_empty() {
            return Err(ExecutorError::new(ErrorKind::InvalidInput, "empty command"));
        }
        if spec.max_concurrent == Some(0) {
            return Err(ExecutorError::new(
                ErrorKind::InvalidInput,
                format!(
                    "workgroup '{}' has maxConcurrent 0: the run can never start",
                    spec.workgroup
                ),
            ));
        }
        // The workgroup's limiter exists from now on, and the run waits for a slot until its
        // task takes one: `describe` never says "runs" of a run that has no slot yet.
        self.inner.semaphore(&spec);
        let token = {
            let mut runs = lock(&self.inner.runs);
            if runs.contains_key(&spec.run_id) {
                return Ok(());
            }
            let token = CancellationToken::new();
            runs.insert(spec.run_id, token.clone());
            lock(&self.inner.waiting).insert(spec.run_id, spec.workgroup.clone());
            token
        };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.run(spec, token).await });
        Ok(())
    }

    async fn cancel(
        &self,
        run_id: RunId,
        _policy: CancellationPolicy,
    ) -> Result<(), ExecutorError> {
        // All policies kill the process group (see the module docs); the run task does the killing
        // and reports `Cancelled`.
        if let Some(token) = lock(&self.inner.runs).get(&run_id) {
            token.cancel();
        }
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        lock(&self.inner.runs).keys().copied().collect()
    }

    async fn describe(&self, run_id: RunId) -> Vec<String> {
        let waiting_for = lock(&self.inner.waiting).get(&run_id).cloned();
        if let Some(wg) = waiting_for {
            let limit = lock(&self.inner.groups).get(&wg).map_or(0, |g| g.0);
            let queued = lock(&self.inner.waiting)
                .values()
                .filter(|w| **w == wg)
                .count();
            return vec![format!(
                "waiting for a slot of workgroup '{wg}': its {limit} slot(s) on this receiver are taken ({queued} run(s) wait for one)"
            )];
        }
        if lock(&self.inner.runs).contains_key(&run_id) {
            return vec!["its process runs on this receiver (local executor)".to_owned()];
        }
        Vec::new()
    }
}

/// How one attempt's wait ended.
enum AttemptEnd {
    Exited(std::io::Result<ExitStatus>),
    Deadline,
    Cancelled,
}

impl Inner {
    /// The semaphore of `spec`'s workgroup, created or resized to its limit.
    fn semaphore(&self, spec: &LaunchSpec) -> Arc<Semaphore> {
        let limit = spec
            .max_concurrent
            .unwrap_or(self.config.default_max_concurrent)
            .max(1);
        let mut groups = lock(&self.groups);
        let entry = groups
            .entry(spec.workgroup.clone())
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
        if limit > entry.0 {
            entry.1.add_permits((limit - entry.0) as usize);
            entry.0 = limit;
        } else if limit < entry.0 {
            let forgotten = entry.1.forget_permits((entry.0 - limit) as usize);
            // `forgotten` <= entry.0 - limit, so this cannot underflow.
            entry.0 -= u32::try_from(forgotten).unwrap_or(0);
        }
        Arc::clone(&entry.1)
    }

    fn emit(&self, event: ExecutorEvent) {
        // A dropped receiver means nobody listens any more (shutdown): nothing to do.
        let _ = self.events.send(event);
    }

    /// Publishes the captured output under `key` every [`LOG_PUBLISH_EVERY`] while it grows,
    /// until `stop` (live logs); an in-flight write finishes before the task ends, so the final
    /// write after the run always lands last.
    fn publish_logs(
        self: &Arc<Self>,
        key: String,
        logs: Arc<Mutex<LogBuffer>>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut published = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(LOG_PUBLISH_EVERY) => {}
                }
                let snapshot = {
                    let b = lock(&logs);
                    (b.version != published).then(|| (b.version, b.snapshot()))
                };
                if let Some((version, bytes)) = snapshot
                    && me.payloads.put(&key, Bytes::from(bytes)).await.is_ok()
                {
                    published = version;
                }
            }
        })
    }

    /// The whole life of one accepted launch; emits exactly one `Finished`.
    async fn run(self: Arc<Self>, spec: LaunchSpec, cancel: CancellationToken) {
        let logs = Arc::new(Mutex::new(LogBuffer::new(self.config.max_log_bytes)));
        let stop_publishing = CancellationToken::new();
        let publisher = spec
            .logs_key
            .clone()
            .map(|key| self.publish_logs(key, Arc::clone(&logs), stop_publishing.clone()));
        let semaphore = self.semaphore(&spec);
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            permit = semaphore.acquire_owned() => Some(permit),
        };
        lock(&self.waiting).remove(&spec.run_id);
        let outcome = match &permit {
            None => Outcome::Cancelled,
            Some(Err(_)) => Outcome::LaunchFailed {
                message: format!(
                    "concurrency limiter of workgroup '{}' closed",
                    spec.workgroup
                ),
            },
            Some(Ok(_)) => match self.create_work_dir(spec.run_id) {
                Ok(work_dir) => {
                    let outcome = self.attempts(&spec, &cancel, &logs, &work_dir).await;
                    remove_work_dir(spec.run_id, work_dir).await;
                    outcome
                }
                Err(message) => Outcome::LaunchFailed { message },
            },
        };
        if let Outcome::LaunchFailed { message } = &outcome {
            lock(&logs).push(format!("{message}\n").as_bytes());
        }
        stop_publishing.cancel();
        if let Some(p) = publisher {
            let _ = p.await;
        }
        let logs_stored = match &spec.logs_key {
            Some(key) => {
                let bytes = std::mem::replace(&mut *lock(&logs), LogBuffer::new(0)).into_bytes();
                match self.payloads.put(key, Bytes::from(bytes)).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(run_id = %spec.run_id, key, error = %e, "storing logs failed");
                        false
                    }
                }
            }
            None => false,
        };
        // Forget the run before reporting, so that a relaunch after `Finished` is accepted; keep
        // the permit until after `Finished`, so the next run of the workgroup starts after it.
        lock(&self.runs).remove(&spec.run_id);
        self.emit(ExecutorEvent::Finished {
            run_id: spec.run_id,
            outcome,
            logs_stored,
        });
        drop(permit);
    }

    /// `PATH` for algorithm processes: `extra_path`, then the executor's own `PATH`.
    fn path_var(&self) -> OsString {
        let mut dirs: Vec<PathBuf> = self.config.extra_path.clone();
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(dirs).unwrap_or_else(|_| std::env::var_os("PATH").unwrap_or_default())
    }

    /// Creates the run's private work directory `<work_root>/<run id>-<random>` (see the module
    /// docs); the message says what is wrong otherwise.
    fn create_work_dir(&self, run_id: RunId) -> Result<PathBuf, String> {
        let root = &self.config.work_root;
        nexus_model::private_fs::create_dir_all(root)
            .map_err(|e| format!("cannot create the work root {}: {e}", root.display()))?;
        let meta = std::fs::symlink_metadata(root)
            .map_err(|e| format!("cannot inspect the work root {}: {e}", root.display()))?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_dir() || meta.uid() != me {
            return Err(format!(
                "the work root {} is not a directory owned by this server's user (uid {me}): another user may have created it; remove it or set executor.work_root",
                root.display()
            ));
        }
        // Others may never list or write it; a `run_as` user must traverse it to reach its own
        // directory. Traverse bits another instance (with `run_as`) set are left alone: they
        // reveal nothing, the run directories' names being unguessable.
        let mode = meta.permissions().mode() & 0o7777;
        let want = if self.config.run_as.is_some() {
            0o711
        } else {
            0o700 | (mode & 0o011)
        };
        if mode != want {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(want)).map_err(|e| {
                format!(
                    "cannot set the mode of the work root {}: {e}",
                    root.display()
                )
            })?;
        }
        let dir = root.join(format!("{run_id}-{}", uuid::Uuid::new_v4().simple()));
        DirBuilder::new()
            .mode(nexus_model::private_fs::DIR_MODE)
            .create(&dir)
            .map_err(|e| format!("cannot create the work directory {}: {e}", dir.display()))?;
        if let Some(user) = self.config.run_as {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).map_err(|e| {
                format!(
                    "cannot give the work directory {} to uid {} gid {}: {e}",
                    dir.display(),
                    user.uid,
                    user.gid
                )
            })?;
        }
        Ok(dir)
    }

    /// The command of one attempt: the spec's command (through the launcher when configured),
    /// in `work_dir`, its own process group, the minimal environment, the `run_as` user.
    fn command(&self, spec: &LaunchSpec, path: &OsStr, work_dir: &Path) -> Command {
        let mut cmd = match &self.config.launcher {
            Some(launcher) => {
                let mut cmd = Command::new(&launcher.program);
                cmd.args(&launcher.args)
                    .arg("--work-dir")
                    .arg(work_dir)
                    .arg("--")
                    .arg(&spec.command);
                cmd
            }
            None => Command::new(&spec.command),
        };
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", work_dir)
            .env("TMPDIR", work_dir)
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if let Some(ca) = &self.config.ca_file {
            cmd.env(nexus_proto::v1::env::CA_FILE, ca);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(user) = self.config.run_as {
            // The standard library drops the supplementary groups, then sets the gid and the uid,
            // in the child before it executes (no `unsafe` here).
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Runs attempts until the run has an outcome.
    async fn attempts(
        &self,
        spec: &LaunchSpec,
        cancel: &CancellationToken,
        logs: &Arc<Mutex<LogBuffer>>,
        work_dir: &Path,
    ) -> Outcome {
        let path = self.path_var();
        let started = Instant::now();
        // A deadline too large to represent is as good as none: use a far-away instant.
        let deadline_at = started
            .checked_add(spec.deadline)
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
        let attempt_cap = spec.max_retries.saturating_add(TRANSIENT_SLACK).max(1);
        // A relaunch after lost attempts continues their count: each lost attempt used a retry.
        let mut attempt: u32 = spec.prior_attempts;
        let mut retries_used: u32 = spec.prior_attempts;
        loop {
            attempt += 1;
            lock(logs).push(format!("--- attempt {attempt} ---\n").as_bytes());
            let oom_before = oom_kills();
            let mut cmd = self.command(spec, &path, work_dir);
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let via = self
                        .config
                        .launcher
                        .as_ref()
                        .map(|l| format!(" through the launcher {}", l.program.display()))
                        .unwrap_or_default();
                    return Outcome::LaunchFailed {
                        message: format!(
                            "cannot start '{}'{via}: {e} (PATH={})",
                            spec.command,
                            path.to_string_lossy()
                        ),
                    };
                }
            };
            let pid = child.id();
            let _record = AttemptRecord::new(self.config.state_dir.as_ref(), spec.run_id, pid);
            self.emit(ExecutorEvent::Started {
                run_id: spec.run_id,
                attempt,
                executor_ref: pid.map(|p| p.to_string()).unwrap_or_default(),
            });
            let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(2);
            if let Some(out) = child.stdout.take() {
                readers.push(tokio::spawn(pump(out, Arc::clone(logs))));
            }
            if let Some(err) = child.stderr.take() {
                readers.push(tokio::spawn(pump(err, Arc::clone(logs))));
            }
            let end = tokio::select! {
                status = child.wait() => AttemptEnd::Exited(status),
                () = sleep_until(deadline_at) => AttemptEnd::Deadline,
                () = cancel.cancelled() => AttemptEnd::Cancelled,
            };
            match end {
                AttemptEnd::Exited(_) => {}
                AttemptEnd::Deadline => {
                    signal_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                AttemptEnd::Cancelled => {
                    signal_group(pid, Signal::SIGTERM);
                    if timeout(TERM_GRACE, child.wait()).await.is_err() {
                        signal_group(pid, Signal::SIGKILL);
                        let _ = child.wait().await;
                    }
                }
            }
            // Whatever is left of the attempt's process group goes with it.
            signal_group(pid, Signal::SIGKILL);
            let drain_for = if matches!(end, AttemptEnd::Exited(_)) {
                DRAIN_AFTER_EXIT
            } else {
                DRAIN_AFTER_KILL
            };
            drain(readers, drain_for).await;

            let status = match end {
                AttemptEnd::Deadline => {
                    return Outcome::DeadlineExceeded {
                        deadline: spec.deadline,
                    };
                }
                AttemptEnd::Cancelled => return Outcome::Cancelled,
                AttemptEnd::Exited(Err(e)) => {
                    tracing::warn!(run_id = %spec.run_id, error = %e, "waiting for the process failed");
                    return Outcome::Failed {
                        exit: ExitInfo {
                            code: None,
                            signal: None,
                        },
                        attempts: attempt,
                        fatal: false,
                    };
                }
                AttemptEnd::Exited(Ok(status)) => status,
            };
            if status.success() {
                return Outcome::Succeeded;
            }
            let exit = ExitInfo {
                code: status.code(),
                signal: status.signal(),
            };
            // SIGKILL while the kernel's OOM-kill counter rose: the OOM killer, most likely.
            let oom_rise = match (exit.signal, oom_before, oom_kills()) {
                (Some(9), Some(a), Some(b)) if b > a => Some(b - a),
                _ => None,
            };
            lock(logs).push(
                format!(
                    "--- attempt {attempt} exited: {status}{} ---\n",
                    if oom_rise.is_some() {
                        " (the kernel's out-of-memory killer)"
                    } else {
                        ""
                    }
                )
                .as_bytes(),
            );
            let code_in = |codes: &[i32]| exit.code.is_some_and(|c| codes.contains(&c));
            if code_in(&spec.fatal_exit_codes) {
                return Outcome::Failed {
                    exit,
                    attempts: attempt,
                    fatal: true,
                };
            }
            if attempt >= attempt_cap {
                return failed(exit, attempt, oom_rise);
            }
            if !code_in(&spec.transient_exit_codes) {
                if retries_used >= spec.max_retries {
                    return failed(exit, attempt, oom_rise);
                }
                retries_used += 1;
            }
            tokio::select! {
                () = sleep(BACKOFF_UNIT * attempt) => {}
                () = sleep_until(deadline_at) => {
                    return Outcome::DeadlineExceeded { deadline: spec.deadline };
                }
                () = cancel.cancelled() => return Outcome::Cancelled,
            }
        }
    }
}

/// Removes a finished run's work directory (on the blocking pool: it may hold many files).
/// `remove_dir_all` never follows the symbolic links an algorithm may have left in it.
async fn remove_work_dir(run_id: RunId, dir: PathBuf) {
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(run_id = %run_id, dir = %shown, error = %e, "removing the work directory failed")
        }
        Err(e) => {
            tracing::warn!(run_id = %run_id, dir = %shown, error = %e, "removing the work directory failed")
        }
    }
}

/// The system-wide count of processes the kernel's out-of-memory killer has killed
/// (`oom_kill` in `/proc/vmstat`, Linux ≥ 4.13); `None` where it cannot be read.
fn oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// The outcome of a run whose last attempt failed; `oom_rise` is how many OOM kills the kernel
/// counted while a SIGKILLed attempt ran.
fn failed(exit: ExitInfo, attempts: u32, oom_rise: Option<u64>) -> Outcome {
    match oom_rise {
        Some(n) => Outcome::Diagnosed {
            kind: super::FailureKind::OutOfMemory,
            cause: "Algorithm ran out of memory".into(),
            details: format!(
                "the process was killed (SIGKILL) by the kernel's out-of-memory killer after {attempts} attempt(s) (the kernel counted {n} OOM kill(s) while it ran): the machine ran out of memory; run fewer algorithms at once (the workgroup's maxConcurrentRuns) or give the machine more memory"
            ),
        },
        None => Outcome::Failed {
            exit,
            attempts,
            fatal: false,
        },
    }
}

/// Sends `signal` to the process group led by `pid` (each attempt is its own group leader).
/// A group that is already gone (`ESRCH`) is fine.
fn signal_group(pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pid, ?signal, error = %e, "signalling process group failed")
        }
    }
}

/// Waits up to `limit` for the output readers, then abandons them.
async fn drain(mut readers: Vec<JoinHandle<()>>, limit: Duration) {
    let all = async {
        for reader in &mut readers {
            let _ = reader.await;
        }
    };
    if timeout(limit, all).await.is_err() {
        for reader in &readers {
            reader.abort();
        }
    }
}

/// Copies a child's output stream into the shared log buffer until EOF.
async fn pump<R: AsyncRead + Unpin>(mut stream: R, logs: Arc<Mutex<LogBuffer>>) {
    let mut chunk = vec![0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lock(&logs).push(&chunk[..n]),
        }
    }
}

/// A byte buffer that keeps the last `max` bytes and counts the dropped ones.
#[derive(Debug)]
struct LogBuffer {
    max: usize,
    buf: Vec<u8>,
    dropped: u64,
    /// Bumped by every push (the publisher writes only when it moved).
    version: u64,
}

impl LogBuffer {
    fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            dropped: 0,
            version: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.version += 1;
        self.buf.extend_from_slice(bytes);
        // Trim lazily (amortised O(1) per byte): only once the buffer holds twice the cap.
        if self.buf.len()
            > self
                .max
                .saturating_mul(2)
                .max(self.max.saturating_add(8192))
        {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.max {
            let excess = self.buf.len() - self.max;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// What [`LogBuffer::into_bytes`] would return now, without consuming the buffer.
    fn snapshot(&self) -> Vec<u8> {
        let excess = self.buf.len().saturating_sub(self.max);
        let dropped = self.dropped + excess as u64;
        let mut out = if dropped == 0 {
            Vec::with_capacity(self.buf.len())
        } else {
            format!("[nexus: log truncated, {dropped} earlier bytes dropped]\n").into_bytes()
        };
        out.extend_from_slice(&self.buf[excess..]);
        out
    }

    fn into_bytes(mut self) -> Vec<u8> {
        self.trim();
        if self.dropped == 0 {
            return self.buf;
        }
        let mut out = format!(
            "[nexus: log truncated, {} earlier bytes dropped]\n",
            self.dropped
        )
        .into_bytes();
        out.extend_from_slice(&self.buf);
        out
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::test_suite::{self, Capabilities};
    use nexus_payload::InMemoryPayloadStore;

    fn make(
        events: UnboundedSender<ExecutorEvent>,
        payloads: Arc<dyn PayloadStore>,
        work_dir: &Path,
    ) -> Arc<dyn Executor> {
        let config = LocalExecutorConfig {
            work_root: work_dir.to_path_buf(),
            max_log_bytes: 64 * 1024,
            ..LocalExecutorConfig::default()
        };
        Arc::new(LocalProcessExecutor::new(config, payloads, events))
    }

    const CAPS: Capabilities = Capabilities {
        real_processes: true,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn succeeds() {
        test_suite::success(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_then_fails() {
        test_suite::retries_then_fails(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fatal_code_stops() {
        test_suite::fatal_code_stops(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_code_relaunches() {
        test_suite::transient_code_relaunches(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadline_kills_group() {
        test_suite::deadline_kills_group(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_running() {
        test_suite::cancel_active(&make, CAPS).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_limit() {
        test_suite::concurrency_limit(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_waiting_for_permit() {
        test_suite::cancel_waiting_for_permit(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn env_and_args() {
        test_suite::env_and_args(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logs_captured() {
        test_suite::logs_captured(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_program() {
        test_suite::missing_program(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn double_launch() {
        test_suite::double_launch(&make, CAPS).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_unknown() {
        test_suite::cancel_unknown(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extra_path_and_log_truncation() {
        let dir = test_suite::TempDir::new();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let algo = bin.join("nexus-test-algo");
        std::fs::write(
            &algo,
            "#!/bin/sh\nhead -c 5000 /dev/zero | tr '\\0' x\necho END\n",
        )
        .unwrap();
        std::fs::set_permissions(&algo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            extra_path: vec![bin],
            work_root: dir.path().join("work"),
            default_max_concurrent: 1,
            max_log_bytes: 100,
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let mut spec = test_suite::spec(&["ignored"]);
        spec.command = "nexus-test-algo".into();
        spec.args.clear();
        spec.logs_key = Some("logs/t/1".into());
        exec.launch(spec.clone()).await.unwrap();
        let events = test_suite::collect_until_finished(&mut rx, spec.run_id, 20).await;
        let fin = events.last().unwrap();
        assert_eq!(
            fin,
            &ExecutorEvent::Finished {
                run_id: spec.run_id,
                outcome: Outcome::Succeeded,
                logs_stored: true
            }
        );
        let logs = payloads.get("logs/t/1").await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&logs);
        assert!(text.starts_with("[nexus: log truncated"), "{text}");
        assert!(text.ends_with("xxxxEND\n"), "{text}");
        assert!(logs.len() < 200, "{}", logs.len());
    }

    /// Output is published while the run runs (live logs), then stored whole at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logs_are_published_while_running() {
        let dir = test_suite::TempDir::new();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            work_root: dir.path().join("work"),
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let mut spec = test_suite::spec(&["-c", "echo early; sleep 5; echo late"]);
        spec.logs_key = Some("logs/live/1".into());
        exec.launch(spec.clone()).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let live = loop {
            if let Some(b) = payloads.get("logs/live/1").await.unwrap() {
                break String::from_utf8_lossy(&b).into_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing published while the run ran"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(live.contains("early"), "{live}");
        assert!(!live.contains("late"), "published after the end? {live}");
        test_suite::collect_until_finished(&mut rx, spec.run_id, 20).await;
        let last = payloads.get("logs/live/1").await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&last);
        assert!(text.contains("early") && text.contains("late"), "{text}");
    }

    /// `describe` says a run waits for a slot of its workgroup, or that its process runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_tells_waiting_from_running() {
        let dir = test_suite::TempDir::new();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, _rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            work_root: dir.path().join("work"),
            default_max_concurrent: 1,
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads, tx);
        // Long enough that the first still holds the slot on a loaded machine (both are
        // cancelled at the end).
        let first = test_suite::spec(&["-c", "sleep 120"]);
        let second = test_suite::spec(&["-c", "sleep 120"]);
        exec.launch(first.clone()).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while exec.describe(first.run_id).await
            != vec!["its process runs on this receiver (local executor)".to_owned()]
        {
            assert!(std::time::Instant::now() < deadline, "first never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        exec.launch(second.clone()).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let facts = exec.describe(second.run_id).await;
            if facts
                .first()
                .is_some_and(|f| f.starts_with("waiting for a slot"))
            {
                assert_eq!(
                    facts,
                    vec![
                        "waiting for a slot of workgroup 'test-wg': its 1 slot(s) on this receiver are taken (1 run(s) wait for one)"
                            .to_owned()
                    ]
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "second: {facts:?}; first: {:?}",
                exec.describe(first.run_id).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(exec.describe(RunId::new()).await.is_empty());
        for id in [first.run_id, second.run_id] {
            exec.cancel(id, CancellationPolicy::Background)
                .await
                .unwrap();
        }
    }

    #[test]
    fn a_snapshot_is_what_the_final_bytes_would_be() {
        let mut b = LogBuffer::new(10);
        b.push(b"0123456789abcdef");
        let snap = b.snapshot();
        assert_eq!(
            snap,
            b"[nexus: log truncated, 6 earlier bytes dropped]\n6789abcdef"
        );
        assert_eq!(b.version, 1);
        assert_eq!(b.into_bytes(), snap);
    }

    /// Runs `spec` on `exec` and returns the outcome and the stored logs.
    async fn run_logged(
        exec: &LocalProcessExecutor,
        rx: &mut mpsc::UnboundedReceiver<ExecutorEvent>,
        payloads: &InMemoryPayloadStore,
        mut spec: LaunchSpec,
    ) -> (Outcome, String) {
        let key = format!("logs/t/{}", spec.run_id);
        spec.logs_key = Some(key.clone());
        exec.launch(spec.clone()).await.unwrap();
        let events = test_suite::collect_until_finished(rx, spec.run_id, 20).await;
        let Some(ExecutorEvent::Finished { outcome, .. }) = events.last() else {
            panic!("no Finished in {events:?}");
        };
        let logs = payloads.get(&key).await.unwrap().unwrap_or_default();
        (outcome.clone(), String::from_utf8_lossy(&logs).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_run_gets_a_private_work_dir_that_is_removed_afterwards() {
        let dir = test_suite::TempDir::new();
        let root = dir.path().join("work");
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            work_root: root.clone(),
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let script =
            r#"echo "cwd=$(pwd)"; echo "mode=$(stat -c %a .)"; echo "home=$HOME tmp=$TMPDIR""#;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let spec = test_suite::spec(&["-c", script]);
            let (outcome, logs) = run_logged(&exec, &mut rx, &payloads, spec.clone()).await;
            assert_eq!(outcome, Outcome::Succeeded, "{logs}");
            let cwd = logs
                .lines()
                .find_map(|l| l.strip_prefix("cwd="))
                .unwrap_or_else(|| panic!("{logs}"))
                .to_owned();
            let cwd = PathBuf::from(cwd);
            assert_eq!(cwd.parent(), Some(root.as_path()), "{logs}");
            let name = cwd.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with(&format!("{}-", spec.run_id)), "{name}");
            assert!(
                name.len() > spec.run_id.to_string().len() + 30,
                "an unguessable suffix: {name}"
            );
            assert!(logs.contains("mode=700"), "{logs}");
            assert!(
                logs.contains(&format!("home={0} tmp={0}", cwd.display())),
                "{logs}"
            );
            assert!(!cwd.exists(), "{} outlived its run", cwd.display());
            seen.push(cwd);
        }
        assert_ne!(seen[0], seen[1]);
        let root_mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(root_mode, 0o700);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_work_root_owned_by_another_user_is_refused() {
        let dir = test_suite::TempDir::new();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A file is "not a directory owned by this server's user" as much as another user's
        // directory is (creating one of those would need a second user).
        let planted = dir.path().join("planted");
        std::fs::write(&planted, b"").unwrap();
        let config = LocalExecutorConfig {
            work_root: planted,
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let (outcome, _) =
            run_logged(&exec, &mut rx, &payloads, test_suite::spec(&["-c", "true"])).await;
        match outcome {
            Outcome::LaunchFailed { message } => {
                assert!(message.contains("work root"), "{message}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launcher_gets_the_work_dir_and_the_command() {
        let dir = test_suite::TempDir::new();
        let launcher = dir.path().join("launcher");
        std::fs::write(
            &launcher,
            "#!/bin/sh\necho \"launcher: $*\"\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            work_root: dir.path().join("work"),
            launcher: Some(Launcher {
                program: launcher,
                args: vec!["sandbox-exec".into(), "--ro".into(), "/opt".into()],
            }),
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let spec = test_suite::spec(&["-c", "echo \"algo: $$ $(pwd)\"", "x"]);
        let (outcome, logs) = run_logged(&exec, &mut rx, &payloads, spec).await;
        assert_eq!(outcome, Outcome::Succeeded, "{logs}");
        let work = dir.path().join("work");
        let line = logs
            .lines()
            .find(|l| l.starts_with("launcher: "))
            .unwrap_or_else(|| panic!("{logs}"));
        let expected = format!(
            "launcher: sandbox-exec --ro /opt --work-dir {}/",
            work.display()
        );
        assert!(line.starts_with(&expected), "{line}");
        assert!(
            line.ends_with(" -- /bin/sh -c echo \"algo: $$ $(pwd)\" x"),
            "{line}"
        );
        assert!(logs.contains("algo: "), "{logs}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_as_switches_user_or_fails_to_launch_without_root() {
        let dir = test_suite::TempDir::new();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"server secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
        let (uid, gid) = nobody
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
            .unwrap_or((65534, 65534));
        let payloads = Arc::new(InMemoryPayloadStore::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = LocalExecutorConfig {
            work_root: dir.path().join("work"),
            run_as: Some(RunAs { uid, gid }),
            ..LocalExecutorConfig::default()
        };
        let exec = LocalProcessExecutor::new(config, payloads.clone(), tx);
        let script = format!(
            r#"echo "ids=$(id -u):$(id -g):$(id -G)"; echo "owner=$(stat -c %u:%g:%a .)"; cat {} || echo secret-refused"#,
            secret.display()
        );
        let (outcome, logs) = run_logged(
            &exec,
            &mut rx,
            &payloads,
            test_suite::spec(&["-c", &script]),
        )
        .await;
        if nix::unistd::geteuid().is_root() {
            assert_eq!(outcome, Outcome::Succeeded, "{logs}");
            assert!(logs.contains(&format!("ids={uid}:{gid}:{gid}\n")), "{logs}");
            assert!(logs.contains(&format!("owner={uid}:{gid}:700")), "{logs}");
            assert!(logs.contains("secret-refused"), "{logs}");
            assert!(!logs.contains("server secret"), "{logs}");
        } else {
            // Without root, switching users is impossible: the launch fails and says so (the
            // server refuses such a configuration at start-up before it gets here).
            match outcome {
                Outcome::LaunchFailed { message } => {
                    assert!(message.contains("cannot start"), "{message}")
                }
                o => panic!("expected a failed launch without root, got {o:?}: {logs}"),
            }
        }
    }

    #[test]
    fn log_buffer_keeps_tail() {
        let mut b = LogBuffer::new(4);
        for _ in 0..10_000 {
            b.push(b"ab");
        }
        b.push(b"cd");
        let out = b.into_bytes();
        assert!(out.ends_with(b"\nabcd"));
        assert!(String::from_utf8_lossy(&out).contains("19998 earlier bytes dropped"));
    }

    #[test]
    fn a_sigkill_during_an_oom_kill_is_diagnosed_as_out_of_memory() {
        // The counter is readable on Linux (kernel >= 4.13).
        assert!(oom_kills().is_some(), "/proc/vmstat has no oom_kill");
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        match failed(killed, 2, Some(1)) {
            Outcome::Diagnosed { kind, details, .. } => {
                assert_eq!(kind, crate::FailureKind::OutOfMemory);
                assert!(
                    details.contains("out-of-memory killer after 2 attempt(s)"),
                    "{details}"
                );
                assert!(details.contains("maxConcurrentRuns"), "{details}");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            failed(killed, 1, None),
            Outcome::Failed {
                exit: killed,
                attempts: 1,
                fatal: false
            }
        );
    }
}
