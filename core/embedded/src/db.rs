//! `Db`: one SQLite file with a group-commit writer, a checkpointer and a read pool, shared by the
//! SQLite backends ([`crate::SqliteRunStore`], [`crate::SqliteObjectStore`]).
//!
//! What it owns:
//! * **Group commit.** One writer thread drains every queued write command (up to
//!   [`Options::max_batch`]), runs them in ONE transaction and commits with one fsync (WAL,
//!   `synchronous=FULL`: a command is answered only once it survives power loss), then answers
//!   every caller. Invariant for every command: **at most one modifying statement per command**,
//!   after its checks (see `writer_loop`), so one failed command fails alone without a savepoint.
//! * **Checkpoints** on their own thread (PASSIVE every 250 ms, RESTART when the WAL grows past
//!   [`RESTART_FRAMES`]), never inside a commit.
//! * **Reads** on `spawn_blocking` with a small pool of read-only connections (WAL lets readers
//!   proceed during a write); they never touch the writer.
//! * **A single process per file**: an exclusive `flock` on `<path>.lock`, which holds the owner's
//!   pid, is taken before the file is opened and released only after the writer's last batch.
//!
//! It knows nothing of runs or objects: the schema comes in [`Options`], errors go out as
//! [`DbError`], which each backend turns into its own error type.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use nexus_model::error::ErrorKind;

/// Read connections kept for reuse.
const READ_POOL: usize = 8;
/// Database page size (only takes effect on a new file). 16 KiB pages hold several ~2 KiB run
/// records (with 4 KiB pages one such record fills most of a page), and need a quarter of the
/// overflow pages of 4 KiB ones for a large object.
const PAGE_SIZE: u32 = 16 * 1024;
/// Memory-mapped reads: up to this many bytes of the file (no copy through the page cache).
const MMAP_BYTES: i64 = 1 << 30;
/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) past which the checkpointer rewinds the WAL (≈ 64 MiB of 16 KiB pages).
const RESTART_FRAMES: i64 = 4096;
/// How long a connection waits for a lock held by another connection of this process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An error of the shared machinery (open, lock, commit, closed store) or a SQLite error, which
/// each backend maps into its own error type.
#[derive(Debug, Clone)]
pub(crate) struct DbError {
    /// What kind of failure.
    pub(crate) kind: ErrorKind,
    /// Details.
    pub(crate) message: String,
}

impl DbError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn io(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Unavailable, format!("{what}: {e}"))
    }
}

impl From<rusqlite::Error> for DbError {
    /// Maps a SQLite error (the one mapping of the SQLite backends).
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Unavailable,
            Some(ErrorCode::ConstraintViolation) => ErrorKind::Conflict,
            Some(
                ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure,
            ) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, format!("sqlite: {e}"))
    }
}

/// What differs between the databases built on [`Db`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Name in error and log messages, e.g. "run store".
    pub(crate) what: &'static str,
    /// Name of the writer thread (Linux keeps the first 15 bytes).
    pub(crate) writer_thread: &'static str,
    /// Name of the checkpointer thread.
    pub(crate) checkpoint_thread: &'static str,
    /// `CREATE … IF NOT EXISTS` statements, run in one transaction at every open.
    pub(crate) schema: &'static str,
    /// Version of `schema`, kept in `PRAGMA user_version`; a newer file is refused.
    pub(crate) schema_version: i64,
    /// Upgrades of files written by older versions: `(version, statements)` pairs, oldest
    /// first; a file at version `v` (> 0: 0 is a new file, which `schema` creates whole) gets
    /// every upgrade above `v`, before `schema` runs, in the same transaction.
    pub(crate) upgrades: &'static [(i64, &'static str)],
    /// Most write commands committed in one transaction (1 = one transaction per command).
    pub(crate) max_batch: usize,
    /// Page cache of the writer connection, in KiB.
    pub(crate) writer_cache_kib: i64,
}

/// Called after the batch commits (or fails to) with the commit error, if any.
type Finisher = Box<dyn FnOnce(Option<DbError>) + Send>;
/// A write command: runs inside the batch transaction (at most one modifying statement, see
/// `writer_loop`), returns what answers its caller once the batch is committed.
type Job = Box<dyn FnOnce(&Connection) -> Finisher + Send>;

struct Inner {
    path: PathBuf,
    what: &'static str,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    _lock: Flock<File>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel, then wait for the writer to finish its last batch, so that the lock
        // (dropped after this) is only released once no write can happen any more.
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
        if let Some((stop, t)) = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            drop(stop);
            let _ = t.join();
        }
    }
}

/// One SQLite file with group commit; see the module docs. Clones share the file.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("what", &self.inner.what)
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn configure(conn: &Connection) -> Result<(), DbError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Checkpoints run on their own thread (see `checkpointer`), never inside a commit.
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA mmap_size={MMAP_BYTES};
         PRAGMA temp_store=MEMORY;
         PRAGMA journal_size_limit={};",
        64 * 1024 * 1024
    ))?;
    Ok(())
}

/// The checkpointer thread: every [`CHECKPOINT_EVERY`], a PASSIVE checkpoint on its own
/// connection copies committed WAL frames into the database. PASSIVE never blocks the writer or
/// readers, so commits never pay for checkpoints (with SQLite's default auto-checkpoint, the
/// commit that crosses 1,000 WAL pages does the copying before its callers are answered). It
/// stops when `stop` is dropped, after a last checkpoint.
fn checkpointer(conn: &Connection, stop: &mpsc::Receiver<()>, what: &str) {
    loop {
        let last = matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        // (busy, frames in the WAL, frames checkpointed)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            // Under sustained writes a PASSIVE checkpoint never reaches the WAL's end, so the WAL
            // is never rewound and grows without bound: past RESTART_FRAMES, a RESTART
            // checkpoint briefly holds the writer back while it copies the (few) frames the
            // passive ones did not, so the next commit starts the WAL from its beginning again.
            Ok((_, log, _)) if log > RESTART_FRAMES => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::warn!(what = %what, error = %e, "checkpoint (restart) failed (retried)");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(what = %what, error = %e, "checkpoint failed (retried)"),
        }
        if last {
            return;
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Creates the database file `0600` when missing and tightens it, its `-wal` and its `-shm` when
/// an older version left them readable by other users.
fn private_db_files(path: &Path) -> Result<(), DbError> {
    drop(
        nexus_model::private_fs::open_or_create(path)
            .map_err(|e| DbError::io(&format!("creating {}", path.display()), e))?,
    );
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        nexus_model::private_fs::tighten(&p)
            .map_err(|e| DbError::io(&format!("making {} private", p.display()), e))?;
    }
    Ok(())
}

fn take_lock(path: &Path, what: &str) -> Result<Flock<File>, DbError> {
    let lp = lock_path(path);
    let file = nexus_model::private_fs::open_or_create(&lp)
        .map_err(|e| DbError::io(&format!("opening lock file {}", lp.display()), e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let pid = std::process::id();
            lock.set_len(0)
                .map_err(|e| DbError::io("writing lock file", e))?;
            lock.rewind()
                .map_err(|e| DbError::io("writing lock file", e))?;
            writeln!(&mut *lock, "{pid}").map_err(|e| DbError::io("writing lock file", e))?;
            lock.sync_all()
                .map_err(|e| DbError::io("writing lock file", e))?;
            Ok(lock)
        }
        Err((mut file, errno)) => {
            if errno != nix::errno::Errno::EWOULDBLOCK {
                return Err(DbError::io(&format!("locking {}", lp.display()), errno));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Err(DbError::new(
                ErrorKind::Unavailable,
                format!(
                    "{what} {} is locked by another nexus process (pid {})",
                    path.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                ),
            ))
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`: parent directory, file, schema, WAL,
    /// `synchronous=FULL`, writer and checkpointer threads, and an exclusive lock on
    /// `<path>.lock` held until the last clone is dropped. Blocking.
    ///
    /// # Errors
    /// `Unavailable` when another process holds the file or it cannot be opened; `Internal` when
    /// the file's schema is newer than `opts.schema_version`.
    pub(crate) fn open(path: &Path, opts: &Options) -> Result<Self, DbError> {
        let what = opts.what;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            nexus_model::private_fs::create_dir_all(dir)
                .map_err(|e| DbError::io(&format!("creating {}", dir.display()), e))?;
        }
        let lock = take_lock(path, what)?;
        // SQLite would create the file 0644 (less the umask); created here 0600 first, its WAL and
        // shared-memory files get the same mode (SQLite copies the database file's).
        private_db_files(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::new(
                ErrorKind::Internal,
                format!("journal_mode is {mode}, expected wal"),
            ));
        }
        configure(&conn)?;
        conn.execute_batch(&format!("PRAGMA cache_size=-{};", opts.writer_cache_kib))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > opts.schema_version {
            return Err(DbError::new(
                ErrorKind::Internal,
                format!(
                    "{what} schema version {version} is newer than this binary ({})",
                    opts.schema_version
                ),
            ));
        }
        let upgrades: String = opts
            .upgrades
            .iter()
            .filter(|(v, _)| version > 0 && *v > version)
            .map(|(_, sql)| *sql)
            .collect();
        conn.execute_batch(&format!(
            "BEGIN; {upgrades} {} PRAGMA user_version = {}; COMMIT;",
            opts.schema, opts.schema_version
        ))?;

        let (tx, rx) = mpsc::channel::<Job>();
        let max_batch = opts.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name(opts.writer_thread.into())
            .spawn(move || writer_loop(&conn, &rx, max_batch, what))
            .map_err(|e| DbError::io(&format!("spawning the {what} writer"), e))?;
        let ckpt_conn = Connection::open(path)?;
        configure(&ckpt_conn)?;
        let (ckpt_tx, ckpt_rx) = mpsc::channel::<()>();
        let ckpt = std::thread::Builder::new()
            .name(opts.checkpoint_thread.into())
            .spawn(move || checkpointer(&ckpt_conn, &ckpt_rx, what))
            .map_err(|e| DbError::io(&format!("spawning the {what} checkpointer"), e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                what,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                checkpointer: Mutex::new(Some((ckpt_tx, ckpt))),
                readers: Mutex::new(Vec::new()),
                _lock: lock,
            }),
        })
    }

    /// Returns the database file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues a write command and waits for its batch to commit. `f` runs on the writer thread
    /// inside the batch's transaction and must make **at most one modifying statement**, after
    /// its checks (see `writer_loop`); keep encoding and other CPU work out of it.
    ///
    /// # Errors
    /// `f`'s error, or (converted from [`DbError`]) the batch's commit error or a closed store.
    pub(crate) async fn write<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let finish: Finisher = Box::new(move |commit_err| {
                let result = match commit_err {
                    Some(e) if result.is_ok() => Err(E::from(e)),
                    _ => result,
                };
                let _ = reply.send(result);
            });
            finish
        });
        let what = self.inner.what;
        {
            let guard = self
                .inner
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let sender = guard.as_ref().ok_or_else(|| {
                E::from(DbError::new(
                    ErrorKind::Unavailable,
                    format!("{what} is closed"),
                ))
            })?;
            sender.send(job).map_err(|_| {
                E::from(DbError::new(
                    ErrorKind::Unavailable,
                    format!("{what} writer stopped"),
                ))
            })?;
        }
        answer.await.map_err(|_| {
            E::from(DbError::new(
                ErrorKind::Unavailable,
                format!("{what} write batch failed before commit"),
            ))
        })?
    }

    /// Runs a read on a blocking thread with a pooled read-only connection.
    ///
    /// # Errors
    /// `f`'s error, or (converted from [`DbError`]) a connection that cannot be opened.
    pub(crate) async fn read<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || with_reader(&inner, f))
            .await
            .map_err(|e| {
                E::from(DbError::new(
                    ErrorKind::Internal,
                    format!("read task failed: {e}"),
                ))
            })?
    }

    /// Runs a point read (one primary-key lookup) right on the calling task.
    ///
    /// A lookup by key in a WAL database takes microseconds and never waits for the writer, so
    /// the hop to a blocking thread and back costs more than the read: in the `e2e` benchmark
    /// those wake-ups were a third of the process's CPU (futex + task switches). Scans and
    /// anything unbounded go through [`Db::read`].
    ///
    /// # Errors
    /// `f`'s error, or (converted from [`DbError`]) a connection that cannot be opened.
    pub(crate) fn read_point<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        with_reader(&self.inner, f)
    }
}

/// Runs `f` with a pooled read-only connection (opened on demand, returned to the pool after).
fn with_reader<T, E>(inner: &Inner, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
where
    E: From<DbError>,
{
    let pooled = inner
        .readers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let conn = match pooled {
        Some(c) => c,
        None => open_reader(&inner.path).map_err(E::from)?,
    };
    let result = f(&conn);
    let mut pool = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < READ_POOL {
        pool.push(conn);
    }
    result
}

fn open_reader(path: &Path) -> Result<Connection, DbError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    c.execute_batch(&format!("PRAGMA mmap_size={MMAP_BYTES};"))?;
    Ok(c)
}

/// The writer thread: drains queued commands into one transaction per batch.
fn writer_loop(conn: &Connection, rx: &mpsc::Receiver<Job>, max_batch: usize, what: &str) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(what = %what, error = %e, "cannot begin a write transaction");
            // Dropping the jobs answers their callers with an Unavailable error.
            continue;
        }
        let mut finishers = Vec::with_capacity(batch.len());
        for job in batch {
            // No SAVEPOINT per command: every command checks its preconditions with reads and
            // then issues at most ONE modifying statement, which SQLite applies atomically
            // (a failing statement is rolled back alone, the transaction goes on). So a failed
            // command leaves nothing behind without a savepoint, whose sub-journal copied every
            // touched page (17 % of accept's CPU when profiled). Keep that invariant when adding
            // a command; the one exception, the batch insert, opens a savepoint of its own.
            finishers.push(job(conn));
        }
        let commit = conn.execute_batch("COMMIT").map_err(DbError::from);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let err = commit.err();
        for finish in finishers {
            finish(err.clone());
        }
    }
}
