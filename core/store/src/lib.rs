//! `RunStore`: the durable home of run records, stage transitions and owner leases.
//!
//! Contract (held by [`test_suite`], run against every backend):
//! * [`RunStore::insert`] is durable when it returns; with an idempotency key already used for the
//!   same algorithm it stores nothing and returns the existing run ([`Inserted::Existing`]).
//! * [`RunStore::transition`] is a compare-and-set on the stored stage: it succeeds only when the
//!   stored stage equals `from` and `from → to` is legal ([`nexus_model::run::Stage::can_transition_to`]);
//!   otherwise it changes nothing and returns [`StoreError::Conflict`] with the stored stage.
//!   Unknown ids return [`StoreError::NotFound`]. A terminal stage is never left.
//! * [`RunStore::insert_batch`] stores every run of a [`RunBatch`] or none of them, durably when
//!   it returns; with a batch key already used for the same algorithm it stores nothing and
//!   returns the first batch's runs in order ([`BatchInserted::Existing`]).
//! * Lookups by tag, by owner+stage and by parent return runs in acceptance order.
//! * [`RunStore::list`] pages through the runs matching a [`RunFilter`], newest first (by id:
//!   UUIDv7, submission order), each run exactly once across pages (see [`listing`]).
//! * Leases: [`RunStore::heartbeat`] creates or extends an owner's lease; [`RunStore::leases`] lists
//!   them with their expiry; [`RunStore::release_lease`] removes one.
//! * Leadership: [`RunStore::lead`] takes or renews a named leadership by compare-and-set (several
//!   supervisor replicas, one active); [`RunStore::resign`] gives it up.

use async_trait::async_trait;

use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunId, RunPatch, Stage};

#[cfg(feature = "cassandra")]
pub mod cassandra;
pub mod leader;
pub mod listing;
pub mod memory;
#[cfg(any(test, feature = "testsuite"))]
pub mod test_suite;
pub mod watch;

#[cfg(feature = "cassandra")]
pub use cassandra::CassandraRunStore;
pub use listing::{ListPage, Position, RunFilter};
pub use memory::InMemoryRunStore;

/// Errors of a [`RunStore`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No run with this id.
    #[error("run {0} not found")]
    NotFound(RunId),
    /// The compare-and-set precondition did not hold; nothing changed.
    #[error("run {id} is {current}, expected {expected}")]
    Conflict {
        /// The run.
        id: RunId,
        /// Its stored stage.
        current: Stage,
        /// The stage the caller expected.
        expected: Stage,
    },
    /// The transition is not in the legal table.
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition {
        /// From.
        from: Stage,
        /// To.
        to: Stage,
    },
    /// The backend failed.
    #[error("run store {kind:?}: {message}")]
    Backend {
        /// What kind of failure.
        kind: ErrorKind,
        /// Details.
        message: String,
    },
}

impl StoreError {
    /// Returns the error kind.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Conflict { .. } | StoreError::IllegalTransition { .. } => {
                ErrorKind::Conflict
            }
            StoreError::Backend { kind, .. } => *kind,
        }
    }

    /// Builds a backend error.
    pub fn backend(kind: ErrorKind, message: impl Into<String>) -> Self {
        StoreError::Backend {
            kind,
            message: message.into(),
        }
    }
}

/// Name of the stage-change counter every backend feeds.
pub const STAGE_CHANGES: &str = "nexus_run_stage_changes_total";

/// Declares [`STAGE_CHANGES`] (idempotent; every component calls it).
pub fn describe() {
    metrics::describe_counter!(
        STAGE_CHANGES,
        "Stage changes of runs stored by this process, by stage before (from), stage after (to) \
         and the component that made them (by). Terminal stages: sum by (to)."
    );
}

/// Counts one stored stage change of run `id` (called by each backend after a successful
/// compare-and-set; changes within a stage are not counted) and announces an end to the run's
/// waiters in this process ([`watch`]).
pub fn stage_changed(id: RunId, from: Stage, to: Stage, by: &'static str) {
    if to.is_terminal() {
        watch::finished(id);
    }
    if from != to {
        metrics::counter!(STAGE_CHANGES, "from" => from.as_str(), "to" => to.as_str(), "by" => by)
            .increment(1);
    }
}

/// Who a patch says makes its change (`nexus` without a note), for [`stage_changed`].
#[must_use]
pub fn changed_by(patch: &RunPatch) -> &'static str {
    patch.note.as_ref().map_or("nexus", |n| n.by)
}

/// The compare-and-set precondition every backend applies, in the contract's order: the stored
/// stage must be `from` (else `Conflict`), and `from → to` must be legal (else
/// `IllegalTransition`).
///
/// # Errors
/// As above.
pub fn check_transition(
    id: RunId,
    stored: Stage,
    from: Stage,
    to: Stage,
) -> Result<(), StoreError> {
    if stored != from {
        return Err(StoreError::Conflict {
            id,
            current: stored,
            expected: from,
        });
    }
    if !from.can_transition_to(to) {
        return Err(StoreError::IllegalTransition { from, to });
    }
    Ok(())
}

/// Result of [`RunStore::insert`].
// Short-lived return value: boxing the rare `Existing` case buys nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// The run was stored.
    Created,
    /// A run with the same (algorithm, idempotency key) exists; nothing was written.
    Existing(Run),
}

/// Most runs in one [`RunBatch`] any backend accepts (admission bounds batches far lower, by
/// configuration; this is the store's own guard).
pub const MAX_BATCH_RUNS: usize = 10_000;

/// Runs of one algorithm to be stored all or none ([`RunStore::insert_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunBatch {
    /// The algorithm of every run.
    pub algorithm: String,
    /// The batch's idempotency key, if any: a repeated batch with the same key (and algorithm)
    /// returns the first batch's runs.
    pub key: Option<String>,
    /// The runs, in the order the client gave them.
    pub runs: Vec<Run>,
}

impl RunBatch {
    /// Returns a batch of `runs` (all of `algorithm`) under `key`. With a key, each run's
    /// idempotency key becomes [`batch_run_key`]`(key, index)`, so the runs of a batch can be
    /// found again by the key alone, and never collide with the key of a single submission.
    #[must_use]
    pub fn new(algorithm: impl Into<String>, key: Option<String>, mut runs: Vec<Run>) -> Self {
        if let Some(k) = &key {
            for (i, run) in runs.iter_mut().enumerate() {
                run.idempotency_key = Some(batch_run_key(k, i));
            }
        }
        Self {
            algorithm: algorithm.into(),
            key,
            runs,
        }
    }

    /// Checks the batch's shape: 1 to [`MAX_BATCH_RUNS`] runs, all of its algorithm, with the
    /// idempotency keys [`RunBatch::new`] gives and distinct ids.
    ///
    /// # Errors
    /// `Backend{InvalidInput}` naming what is wrong (a caller bug: admission builds batches).
    pub fn check(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::backend(ErrorKind::InvalidInput, m));
        if self.runs.is_empty() || self.runs.len() > MAX_BATCH_RUNS {
            return bad(format!(
                "a batch holds 1 to {MAX_BATCH_RUNS} runs, got {}",
                self.runs.len()
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.runs.len());
        for (i, run) in self.runs.iter().enumerate() {
            if run.algorithm != self.algorithm {
                return bad(format!(
                    "run {} of a batch of {} is of algorithm {}",
                    run.id, self.algorithm, run.algorithm
                ));
            }
            let want = self.key.as_deref().map(|k| batch_run_key(k, i));
            if run.idempotency_key != want {
                return bad(format!(
                    "run {} of a batch carries idempotency key {:?}, expected {want:?}",
                    run.id, run.idempotency_key
                ));
            }
            if !seen.insert(run.id) {
                return bad(format!("run {} appears twice in a batch", run.id));
            }
        }
        Ok(())
    }
}

/// The idempotency key of run `index` of the batch keyed `key`: `"<key> #<index>"`. The space
/// keeps it apart from every single-submission key (those are visible ASCII only).
#[must_use]
pub fn batch_run_key(key: &str, index: usize) -> String {
    format!("{key} #{index}")
}

/// Result of [`RunStore::insert_batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum BatchInserted {
    /// Every run was stored.
    Created,
    /// A batch with the same (algorithm, key) exists; nothing was written. Its runs, in order.
    Existing(Vec<Run>),
}

/// An owner's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Owner (instance) id.
    pub owner: String,
    /// When the lease lapses unless renewed.
    pub expires_at: Millis,
}

/// Durable store of run records. See the module docs for the contract.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new run durably.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; a duplicate id is `Conflict`.
    async fn insert(&self, run: Run) -> Result<Inserted, StoreError>;

    /// Stores a new run whose id the caller has just minted ([`RunId::new`]: a UUIDv7 with 74
    /// random bits, never handed out before). As [`RunStore::insert`], except that a store may
    /// skip its duplicate-id check, which for such ids can only catch bugs: on Cassandra that
    /// check is a read on the hot path of every accept.
    ///
    /// # Errors
    /// As [`RunStore::insert`] (a store that skips the check reports no duplicate).
    async fn insert_minted(&self, run: Run) -> Result<Inserted, StoreError> {
        self.insert(run).await
    }

    /// Stores every run of `batch` durably, or none (all or nothing, also across a crash of the
    /// caller or of the store's process: see each backend's docs for how).
    ///
    /// # Errors
    /// [`RunBatch::check`]'s; a duplicate id is `Conflict` (and nothing is stored);
    /// [`StoreError::Backend`].
    async fn insert_batch(&self, batch: RunBatch) -> Result<BatchInserted, StoreError>;

    /// Completes batches whose insert was decided but not finished (their writer died half-way)
    /// and that are older than `older_than`, at most `limit`; returns how many were completed.
    /// Backends that store a batch in one transaction have none and return 0.
    ///
    /// # Errors
    /// Backend failures.
    async fn resume_batches(&self, older_than: Millis, limit: usize) -> Result<usize, StoreError> {
        let _ = (older_than, limit);
        Ok(0)
    }

    /// Returns the run, or `None` when unknown.
    ///
    /// # Errors
    /// [`StoreError::Backend`] only: an unreachable store is never reported as "not found".
    async fn get(&self, id: RunId) -> Result<Option<Run>, StoreError>;

    /// Compare-and-set: moves the run from `from` to `to` and applies `patch`, stamping
    /// `last_modified` (and `finished_at` when `to` is terminal). Returns the updated run.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` (stored stage differs), `IllegalTransition`, `Backend`.
    async fn transition(
        &self,
        id: RunId,
        from: Stage,
        to: Stage,
        patch: RunPatch,
    ) -> Result<Run, StoreError>;

    /// Sets or clears the client tag (any stage, including terminal ones). Returns the run.
    ///
    /// # Errors
    /// `NotFound`, `Backend`.
    async fn set_tag(&self, id: RunId, tag: Option<String>) -> Result<Run, StoreError>;

    /// Returns the runs carrying `tag`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// `Backend`.
    async fn by_tag(&self, tag: &str, limit: usize) -> Result<Vec<Run>, StoreError>;

    /// Returns the runs owned by `owner` in `stage`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// `Backend`.
    async fn by_owner_stage(
        &self,
        owner: &str,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError>;

    /// Returns up to `limit` runs owned by `owner` in `stage` with ids above `after` (from the
    /// first when `None`), by ascending id: a cursor over a large set (a restarted scheduler's
    /// backlog) that runs staying in the stage do not hold up. The next page starts after the
    /// last id returned; a page shorter than `limit` is the last.
    ///
    /// # Errors
    /// `Backend`.
    async fn by_owner_stage_after(
        &self,
        owner: &str,
        stage: Stage,
        after: Option<RunId>,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let mut runs = self.by_owner_stage(owner, stage, usize::MAX).await?;
        runs.retain(|r| after.is_none_or(|a| r.id.0 > a.0));
        runs.sort_by_key(|r| r.id.0);
        runs.truncate(limit);
        Ok(runs)
    }

    /// Returns the direct children of `parent`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// `Backend`.
    async fn by_parent(&self, parent: RunId, limit: usize) -> Result<Vec<Run>, StoreError>;

    /// Returns up to `limit` runs matching `filter` with ids below `after` (all when `None`),
    /// newest first, and where the next page starts. A page may be shorter than `limit` (even
    /// empty) while `next` is `Some`, when the backend bounded its work; `next` is `None` only
    /// when no more run can match. Runs created after the listing began may or may not appear.
    ///
    /// # Errors
    /// `Backend`.
    async fn list(
        &self,
        filter: &RunFilter,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ListPage, StoreError>;

    /// Returns the distinct owners of runs in `stage` (used to find orphans of lapsed owners).
    ///
    /// # Errors
    /// `Backend`.
    async fn owners_in_stage(&self, stage: Stage) -> Result<Vec<String>, StoreError>;

    /// Creates or extends `owner`'s lease to `now + ttl_ms`.
    ///
    /// # Errors
    /// `Backend`.
    async fn heartbeat(&self, owner: &str, now: Millis, ttl_ms: i64) -> Result<Lease, StoreError>;

    /// Lists all leases.
    ///
    /// # Errors
    /// `Backend`.
    async fn leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Removes `owner`'s lease (graceful shutdown). Unknown owners are not an error.
    ///
    /// # Errors
    /// `Backend`.
    async fn release_lease(&self, owner: &str) -> Result<(), StoreError>;

    /// Leader election: takes the leadership `name` for `holder` until `now + ttl_ms` when it is
    /// free, lapsed (`expires_at <= now`) or already `holder`'s (renewal), atomically
    /// (compare-and-set). Returns the leadership as it stands afterwards: `holder` leads iff the
    /// returned lease's owner is `holder`.
    ///
    /// # Errors
    /// Backend failures (never taken as "nobody leads").
    async fn lead(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Lease, StoreError>;

    /// Gives up the leadership `name` if `holder` holds it (a standby takes over at once).
    ///
    /// # Errors
    /// Backend failures.
    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// How many children `parent` has, counting at most `limit` (fan-out limits).
    ///
    /// # Errors
    /// Backend failures.
    async fn count_children(&self, parent: RunId, limit: usize) -> Result<usize, StoreError> {
        Ok(self.by_parent(parent, limit).await?.len())
    }

    /// Garbage collection: up to `limit` runs that reached a terminal stage before
    /// `finished_before`, oldest first, for [`RunStore::purge`] once their objects are deleted.
    /// Backends whose finished rows expire by themselves (Cassandra: a TTL of the remaining
    /// retention) return none.
    ///
    /// # Errors
    /// Backend failures (never taken as "nothing expired").
    async fn expired(&self, finished_before: Millis, limit: usize) -> Result<Vec<Run>, StoreError>;

    /// Deletes run `id` if it is terminal; `Ok(false)` (nothing deleted) when it is not, or is
    /// unknown. A run that is not finished is never deleted.
    ///
    /// # Errors
    /// Backend failures.
    async fn purge(&self, id: RunId) -> Result<bool, StoreError>;

    /// Garbage collection of lookup rows that no longer match their run (left by a transition
    /// that crashed between its steps), at most `limit` examined; returns how many were removed.
    /// Only rows proven stale are removed (never because a read failed). Backends that keep
    /// lookups in the run's own transaction have none and return 0.
    ///
    /// # Errors
    /// Backend failures.
    async fn sweep_lookups(&self, limit: usize) -> Result<usize, StoreError> {
        let _ = limit;
        Ok(0)
    }
}
